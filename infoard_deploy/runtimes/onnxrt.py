"""ONNX Runtime sessions (CPU, CUDA EP) behind the :class:`Runtime` interface.

``OrtRuntime(path, providers=None, precision="fp32", max_batch=256, threads=0, device=None)``:

* ``providers`` left out: the CUDA execution provider when ``device`` is a CUDA device *and* the
  installed onnxruntime has it (``onnxruntime-gpu``, extra ``infoard-deploy[gpu]``), else the CPU EP.
  Naming a provider that is not installed is a one-line :class:`UserError`.
* On the CUDA EP inputs and outputs go through IOBinding (ONNX Runtime docs, "I/O Binding"): a torch
  CUDA tensor given to :meth:`predict_tensor` is bound by pointer and the logits are written straight
  into a torch CUDA tensor, so a query attack running on the GPU never copies through the host.
* A graph whose input is float16 (an fp16 export without ``keep_io_types``) gets its inputs cast
  here, so callers always pass float32 in [0,1]; outputs are returned as float32 (N, K).
* An INT8 graph on the CPU EP runs with its int8 activations shifted to uint8 (zero point + 128) and its
  ReLU islands as lookup tables, exact rewrites that let ORT's x86 kernels fuse every Q/DQ group
  (:mod:`.ort_int8`); the file on disk is untouched and ``cpu_int8_shift=False`` runs it as stored.
"""
from __future__ import annotations

from typing import List, Optional, Union

import numpy as np
import torch

from ..errors import UserError
from .base import Runtime

_ORT_TO_NP = {"tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(double)": np.float64}


def _cuda_index(device: Optional[Union[str, torch.device]]) -> Optional[int]:
    """``cuda`` / ``cuda:1`` / torch.device -> device index; anything else -> None."""
    if device is None:
        return None
    d = torch.device(device)
    if d.type != "cuda":
        return None
    return d.index if d.index is not None else 0


class OrtRuntime(Runtime):
    name = "onnxruntime"

    def __init__(self, path: str, providers: Optional[List[str]] = None, precision: str = "fp32",
                 max_batch: int = 256, threads: int = 0, device: Optional[Union[str, torch.device]] = None,
                 cpu_int8_shift: bool = True):
        super().__init__(path=path, precision=precision, max_batch=max_batch)
        self.cpu_int8_shift = cpu_int8_shift
        self.shifted_nodes = 0  # activation Q nodes moved to uint8 for the CPU EP (0: graph run as stored)
        self.relu_lookups = 0  # DQ -> Relu -> Q islands run as exact lookup tables
        self.device_id = _cuda_index(device)
        self._explicit_providers = providers is not None
        self.providers = list(providers) if providers else None
        self.threads = threads
        self.session = None
        self.on_cuda = False

    # -- lifecycle --------------------------------------------------------------------------
    def _pick_providers(self, available: List[str]) -> List[str]:
        if self.providers:
            missing = [p for p in self.providers if p not in available]
            if missing:
                hint = " (pip install infoard-deploy[gpu])" if "CUDAExecutionProvider" in missing else ""
                raise UserError(f"ONNX Runtime provider(s) {', '.join(missing)} not available "
                                f"(have: {', '.join(available)}){hint}")
            return self.providers
        if self.device_id is not None and "CUDAExecutionProvider" in available:
            return ["CUDAExecutionProvider", "CPUExecutionProvider"]
        # CUDA asked for but onnxruntime-gpu absent: run on the CPU rather than fail; describe() says so.
        return ["CPUExecutionProvider"]

    def _load(self) -> None:
        try:
            import onnxruntime as ort
        except ImportError:
            raise UserError("onnxruntime is not installed (pip install onnxruntime, or infoard-deploy[gpu])") from None
        self.providers = self._pick_providers(ort.get_available_providers())
        opts = ort.SessionOptions()
        if self.threads:
            opts.intra_op_num_threads = self.threads
        # Idle ORT worker threads spin by default; interleaved with torch work (a query attack's
        # bookkeeping between calls) they steal the cores torch needs (measured 10x slower Square on 2 cores).
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        provider_args = [("CUDAExecutionProvider", {"device_id": self.device_id or 0}) if p == "CUDAExecutionProvider"
                         else p for p in self.providers]
        try:
            source = str(self.path)
            self.shifted_nodes = self.relu_lookups = 0
            if self.cpu_int8_shift and self.precision == "int8" and self.providers == ["CPUExecutionProvider"]:
                from .ort_int8 import int8_model_bytes_for_cpu

                rewritten, info = int8_model_bytes_for_cpu(source)
                if info["shifted_q"]:
                    source, self.shifted_nodes, self.relu_lookups = rewritten, info["shifted_q"], info["relu_lookup"]
            self.session = ort.InferenceSession(source, sess_options=opts, providers=provider_args)
        except Exception as e:
            raise UserError(f"ONNX Runtime cannot open {self.path}: {str(e).splitlines()[0]}") from None
        inp, out = self.session.get_inputs()[0], self.session.get_outputs()[0]
        self._in, self._out = inp.name, out.name
        self._in_dtype = _ORT_TO_NP.get(inp.type, np.float32)
        self._out_dtype = _ORT_TO_NP.get(out.type, np.float32)
        self._out_classes = out.shape[-1] if out.shape and isinstance(out.shape[-1], int) else None
        # The session may have fallen back to the CPU EP (e.g. missing CUDA libraries): trust what it reports.
        self.on_cuda = "CUDAExecutionProvider" in self.session.get_providers()
        self._io_device = "cuda"  # where IOBinding places tensors (tests point it at "cpu" to exercise the path)

    def _unload(self) -> None:
        self.session = None
        self.on_cuda = False

    # -- inference --------------------------------------------------------------------------
    def _run(self, x: np.ndarray) -> np.ndarray:
        if self._in_dtype is not np.float32:
            x = x.astype(self._in_dtype)
        if self.on_cuda:
            return self._run_iobinding_host(np.ascontiguousarray(x))
        return np.asarray(self.session.run([self._out], {self._in: x})[0], dtype=np.float32)

    def _run_iobinding_host(self, x: np.ndarray) -> np.ndarray:
        """Host arrays on the CUDA EP: one explicit upload, outputs left on the device then copied once."""
        import onnxruntime as ort

        io = self.session.io_binding()
        dev = self.device_id or 0
        io.bind_ortvalue_input(self._in, ort.OrtValue.ortvalue_from_numpy(x, self._io_device, dev))
        io.bind_output(self._out, self._io_device, dev)
        self.session.run_with_iobinding(io)
        return np.asarray(io.copy_outputs_to_cpu()[0], dtype=np.float32)

    def predict_tensor(self, x: torch.Tensor) -> torch.Tensor:
        """Logits as a float32 torch tensor on ``x``'s device (chunked by ``max_batch``).

        On the CUDA EP with ``x`` on the same CUDA device, input and output are bound by pointer
        (IOBinding) with no host round trip; otherwise this is :meth:`predict` plus a tensor wrap.
        """
        if not self._open:
            self.open()
        bound = (self.on_cuda and self._out_classes is not None and x.device.type == self._io_device
                 and (x.device.type == "cpu" or (x.device.index or 0) == (self.device_id or 0)))
        if not bound:
            if x.device.type == "cpu":
                if x.dtype == torch.float32 and x.dim() == 4 and x.shape[0] <= self.max_batch and x.is_contiguous():
                    # One chunk, already float32 and contiguous: skip predict()'s generic conversions
                    # (a query attack makes thousands of small calls; see benchmarks/verify_overhead.py).
                    return torch.from_numpy(self._run(x.detach().numpy()))
                return torch.from_numpy(self.predict(x))
            return torch.from_numpy(self.predict(x)).to(x.device)
        in_t = torch.float16 if self._in_dtype is np.float16 else torch.float32
        out_t = torch.float16 if self._out_dtype is np.float16 else torch.float32
        x = x.detach().to(in_t).contiguous()
        out = torch.empty((x.shape[0], self._out_classes), dtype=out_t, device=x.device)
        dev = self.device_id or 0
        if x.is_cuda:  # ORT launches on its own stream: make sure torch has finished writing x first
            torch.cuda.current_stream(x.device).synchronize()
        for s in range(0, x.shape[0], self.max_batch):
            xc, oc = x[s:s + self.max_batch], out[s:s + self.max_batch]
            io = self.session.io_binding()
            io.bind_input(self._in, self._io_device, dev, self._in_dtype, tuple(xc.shape), xc.data_ptr())
            io.bind_output(self._out, self._io_device, dev, self._out_dtype, tuple(oc.shape), oc.data_ptr())
            self.session.run_with_iobinding(io)
        return out.float()

    @property
    def arithmetic(self) -> str:
        """What arithmetic the session really runs (the CPU EP has no x86 fp16 Conv/Gemm kernels)."""
        if self.session is None:
            return f"{self.precision} (onnxruntime, not opened)"
        if self.on_cuda:
            return f"{self.precision} (ORT CUDA EP)"
        if self.precision == "fp16":
            return "fp32 (ORT CPU inserted casts around fp16 ops)"
        if self.precision == "int8":
            if self.shifted_nodes:
                return (f"int8 (ORT CPU integer kernels; int8 activations run as uint8+128 at {self.shifted_nodes} "
                        f"Q nodes, {self.relu_lookups} ReLU lookups: exact uint8 rewrite)")
            return "int8 (ORT CPU, Q/DQ graph as stored)"
        return f"{self.precision} (ORT CPU)"

    def describe(self) -> str:
        where = "cuda" if self.on_cuda else "cpu"
        shift = (f" [int8 activations as uint8+128 at {self.shifted_nodes} Q nodes, {self.relu_lookups} ReLU "
                 f"lookups]" if self.shifted_nodes else "")
        return f"{self.name}[{where}]:{self.precision}" + (f" ({self.path})" if self.path else "") + shift

    @property
    def input_shape(self):
        if self.session is None:
            return None
        shape = self.session.get_inputs()[0].shape[1:]
        return tuple(int(s) for s in shape) if all(isinstance(s, int) for s in shape) else None

    @property
    def num_classes(self) -> Optional[int]:
        return self._out_classes if self.session is not None else None
