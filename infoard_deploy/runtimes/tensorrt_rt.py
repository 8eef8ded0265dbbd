"""TensorRT engines behind the :class:`Runtime` interface (TensorRT 10.x / 11.x name-based API).

Inference follows the 10.x API (TensorRT migration guide "Migrating I/O buffer allocation to named
tensors"): ``engine.num_io_tensors`` / ``get_tensor_name`` / ``get_tensor_mode`` to find the I/O,
``context.set_input_shape`` for the dynamic batch, ``context.set_tensor_address`` with torch CUDA
buffers (no pycuda, no binding indices), ``context.execute_async_v3(stream)`` on a torch CUDA stream.
Batches below the engine profile's minimum are zero-padded; above its maximum they are chunked.

``import tensorrt`` happens on :meth:`open` only (``infoard_deploy.exporting.tensorrt.import_tensorrt``),
so importing this module costs nothing without TensorRT.
"""
from __future__ import annotations

from typing import Optional, Union

import numpy as np
import torch

from ..errors import UserError
from ..utils import require_file
from .base import Runtime

_DTYPES = {"FLOAT": torch.float32, "HALF": torch.float16, "BF16": torch.bfloat16, "INT8": torch.int8,
           "INT32": torch.int32, "INT64": torch.int64, "BOOL": torch.bool, "UINT8": torch.uint8}


def torch_dtype(trt_dtype) -> torch.dtype:
    """``trt.DataType.HALF`` -> ``torch.float16`` (by member name, stable across 10.x and 11.x)."""
    name = getattr(trt_dtype, "name", None) or str(trt_dtype).rsplit(".", 1)[-1]
    if name not in _DTYPES:
        raise UserError(f"TensorRT engine uses an I/O type this runtime does not handle: {name}")
    return _DTYPES[name]


class TrtRuntime(Runtime):
    name = "tensorrt"

    def __init__(self, path: str, precision: str = "fp16", max_batch: int = 256,
                 device: Optional[Union[str, torch.device]] = None):
        super().__init__(path=path, precision=precision, max_batch=max_batch)
        self.device = torch.device(device) if device is not None else torch.device("cuda")
        if self.device.type != "cuda":
            raise UserError(f"TensorRT engines run on a CUDA device, not '{self.device}' (use --device cuda)")
        self.engine = self.context = self._stream = None
        self.min_batch = 1

    def _load(self) -> None:
        from ..exporting.tensorrt import import_tensorrt

        trt = import_tensorrt()
        data = require_file(self.path, "TensorRT engine").read_bytes()
        self._logger = trt.Logger(trt.Logger.WARNING)
        self._trt_runtime = trt.Runtime(self._logger)
        with torch.cuda.device(self.device):
            self.engine = self._trt_runtime.deserialize_cuda_engine(data)
            if self.engine is None:
                raise UserError(f"TensorRT cannot load {self.path}: built by another TensorRT version or for "
                                f"another GPU? (engines are not portable; rebuild it with infoard-deploy export)")
            self.context = self.engine.create_execution_context()
            self._stream = torch.cuda.Stream(self.device)
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        inputs = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        outputs = [n for n in names if n not in inputs]
        if len(inputs) != 1 or len(outputs) < 1:
            raise UserError(f"{self.path}: expected one input and one output tensor, got {inputs} / {outputs}")
        self._in, self._out = inputs[0], outputs[0]
        self._in_dtype = torch_dtype(self.engine.get_tensor_dtype(self._in))
        self._out_dtype = torch_dtype(self.engine.get_tensor_dtype(self._out))
        shape = tuple(self.engine.get_tensor_shape(self._in))
        self._chw = tuple(int(s) for s in shape[1:])
        if shape[0] == -1:  # dynamic batch: the range comes from optimisation profile 0
            bmin, _, bmax = self.engine.get_tensor_profile_shape(self._in, 0)
            self.min_batch, engine_max = int(bmin[0]), int(bmax[0])
        else:
            self.min_batch = engine_max = int(shape[0])
        self.max_batch = min(self.max_batch, engine_max)

    def _unload(self) -> None:
        self.context = self.engine = self._stream = None

    def _run(self, x: np.ndarray) -> np.ndarray:
        n = x.shape[0]
        if tuple(x.shape[1:]) != self._chw:
            raise UserError(f"{self.path} takes (N, {', '.join(map(str, self._chw))}) inputs, got {x.shape}")
        if n < self.min_batch:  # pad up to the profile's minimum; padded rows are dropped below
            x = np.concatenate([x, np.zeros((self.min_batch - n, *x.shape[1:]), x.dtype)])
        with torch.cuda.device(self.device), torch.cuda.stream(self._stream):
            xin = torch.from_numpy(x).to(self.device, non_blocking=True).to(self._in_dtype).contiguous()
            if not self.context.set_input_shape(self._in, tuple(xin.shape)):
                raise UserError(f"{self.path}: batch {xin.shape[0]} is outside the engine's optimisation profile")
            out = torch.empty(tuple(self.context.get_tensor_shape(self._out)), dtype=self._out_dtype,
                              device=self.device)
            self.context.set_tensor_address(self._in, xin.data_ptr())
            self.context.set_tensor_address(self._out, out.data_ptr())
            if not self.context.execute_async_v3(self._stream.cuda_stream):
                raise RuntimeError(f"TensorRT execution failed for {self.path}")
            result = out[:n].float().cpu()  # .cpu() waits for the stream
        self._stream.synchronize()
        return result.numpy()

    @property
    def input_shape(self):
        return getattr(self, "_chw", None)

    @property
    def arithmetic(self) -> str:
        return f"{self.precision} (TensorRT engine, strongly typed from the ONNX graph)"


__all__ = ["TrtRuntime", "torch_dtype"]
