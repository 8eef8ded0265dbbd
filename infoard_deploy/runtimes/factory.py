"""Open the right :class:`Runtime` for a model object or an artifact path (Polygraphy-style runner choice).

``open_runtime(path_or_model, device="cpu", *, precision=None, max_batch=256, providers=None, threads=0)``
(``threads``: ONNX Runtime intra-op threads, 0 = its default):

* an ``nn.Module``                  -> :class:`TorchRuntime` (differentiable reference)
* ``.onnx``                         -> :class:`OrtRuntime` (CUDA EP + IOBinding when ``device`` is CUDA
  and onnxruntime-gpu is installed, else CPU)
* ``.engine`` / ``.plan`` / ``.trt`` -> ``infoard_deploy.runtimes.tensorrt_rt.TrtRuntime``, imported lazily
  so that everything else works without TensorRT
* ``.pt`` / ``.pth`` / ``.safetensors`` / TorchScript -> :func:`checkpoint.load_model` + :class:`TorchRuntime`

``fp16_cpu="torch"`` runs an fp16 ONNX graph that would land on ONNX Runtime's CPU provider (which has
no x86 fp16 Conv/Gemm kernels and silently computes them in fp32) op by op in torch with fp16 arithmetic
instead (:class:`~.onnx_torch.GraphRuntime`: every op's output rounded to float16, as fp16 kernels do), so
an fp16 overflow shows; ``"ort"`` (the default) keeps ONNX Runtime. The ``verify`` command uses ``"torch"``.

The runtime is returned *unopened*; use it as a context manager. ``precision`` defaults to the model
card's (``x.card.json`` beside the file) or, for ONNX, is read off the graph (:func:`onnx_precision`).
"""
from __future__ import annotations

from pathlib import Path
from typing import List, Optional, Union

import torch
from torch import nn

from ..errors import UserError
from ..utils import require_file
from .base import Runtime
from .onnxrt import OrtRuntime
from .torch_rt import TorchRuntime

ENGINE_SUFFIXES = (".engine", ".plan", ".trt")
TORCH_SUFFIXES = (".pt", ".pth", ".safetensors", ".ts", ".jit", ".bin", ".ckpt")

_QUANT_OPS = {"QuantizeLinear", "DequantizeLinear", "QLinearConv", "QLinearMatMul", "ConvInteger", "MatMulInteger",
              "DynamicQuantizeLinear"}


def onnx_precision(path: Union[str, Path]) -> str:
    """``int8`` when the graph holds Q/DQ or integer ops, ``fp16`` when it holds float16 weights, else ``fp32``."""
    import onnx

    try:
        m = onnx.load(str(path), load_external_data=False)
    except Exception as e:
        raise UserError(f"{Path(path).name} is not a readable ONNX model: {str(e).splitlines()[0]}") from None
    if any(n.op_type in _QUANT_OPS for n in m.graph.node):
        return "int8"
    if any(t.data_type == onnx.TensorProto.FLOAT16 for t in m.graph.initializer):
        return "fp16"
    return "fp32"


def _card_precision(path: Path) -> Optional[str]:
    from ..card import load_card

    try:
        card = load_card(path, required=False)
    except UserError:
        return None
    return card.precision if card is not None and card.kind != "checkpoint" else None


def _ort_cuda(dev: torch.device, providers: Optional[List[str]]) -> bool:
    """Would ONNX Runtime run this on its CUDA provider (real fp16 kernels)?"""
    if providers is not None:
        return "CUDAExecutionProvider" in providers
    if dev.type != "cuda":
        return False
    try:
        import onnxruntime as ort
    except ImportError:
        return False
    return "CUDAExecutionProvider" in ort.get_available_providers()


def runtime_kind(path: Union[str, Path]) -> str:
    """``onnxruntime`` | ``tensorrt`` | ``torch``: from the suffix for ONNX / engines / torch files, and for any
    other name from the bytes (ARD's ``epoch=N.t7``, a ``.tar`` or ``.bin`` holding a state dict)."""
    suffix = Path(path).suffix.lower()
    if suffix == ".onnx":
        return "onnxruntime"
    if suffix in ENGINE_SUFFIXES:
        return "tensorrt"
    if suffix in TORCH_SUFFIXES:
        return "torch"
    if Path(path).is_file():
        from ..models.files import sniff_format

        fmt = sniff_format(Path(path))
        if fmt == "onnx":
            return "onnxruntime"
        if fmt is not None:
            return "torch"
    raise UserError(f"cannot tell which runtime runs '{Path(path).name}' (use .onnx, .engine/.plan, "
                    f".pt/.pth/.safetensors or TorchScript)")


def open_runtime(path_or_model: Union[str, Path, nn.Module], device: Union[str, torch.device] = "cpu", *,
                 precision: Optional[str] = None, max_batch: int = 256,
                 providers: Optional[List[str]] = None, threads: int = 0, fp16_cpu: str = "ort") -> Runtime:
    """Build (not open) the runtime for ``path_or_model``; see the module docstring for the dispatch."""
    dev = torch.device(device)
    if isinstance(path_or_model, nn.Module):
        return TorchRuntime(path_or_model, dev, max_batch=max_batch)
    path = require_file(path_or_model, "artifact")
    kind = runtime_kind(path)
    if kind == "onnxruntime":
        prec = precision or _card_precision(path) or onnx_precision(path)
        if fp16_cpu not in ("ort", "torch"):
            raise UserError(f"fp16_cpu must be 'ort' or 'torch', got '{fp16_cpu}'")
        if prec == "fp16" and fp16_cpu == "torch" and not _ort_cuda(dev, providers):
            from .onnx_torch import GraphRuntime

            return GraphRuntime(str(path), precision=prec, max_batch=max_batch, device=torch.device("cpu"))
        return OrtRuntime(str(path), providers=providers, precision=prec, max_batch=max_batch, device=dev,
                          threads=threads)
    if kind == "tensorrt":
        if dev.type != "cuda":
            raise UserError(f"{path.name} is a TensorRT engine: it needs a CUDA device (--device cuda)")
        try:
            from .tensorrt_rt import TrtRuntime
        except ImportError as e:
            missing = getattr(e, "name", None) or str(e)
            raise UserError(f"running {path.name} needs TensorRT ({missing} missing): "
                            f"pip install infoard-deploy[trt]") from None
        prec = precision or _card_precision(path) or "unknown"
        return TrtRuntime(str(path), precision=prec, max_batch=max_batch, device=dev)
    from ..checkpoint import load_model

    model, card = load_model(path)
    rt = TorchRuntime(model, dev, max_batch=max_batch, path=str(path))
    rt.precision = precision or card.precision or "fp32"
    return rt


__all__ = ["open_runtime", "onnx_precision", "runtime_kind", "ENGINE_SUFFIXES"]
