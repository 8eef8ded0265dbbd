"""Runtimes: torch (reference, differentiable), ONNX Runtime, TensorRT. See :mod:`.base`.

:data:`RUNTIMES` maps a runtime name to its class; :func:`open_artifact` picks one from a file suffix.
"""
from __future__ import annotations

from ..registry import Registry
from .base import Runtime
from .onnx_torch import GraphRuntime
from .onnxrt import OrtRuntime
from .tensorrt_rt import TrtRuntime  # cheap: tensorrt itself is imported only when an engine is opened
from .torch_rt import TorchRuntime

RUNTIMES: Registry = Registry("runtime")
RUNTIMES.register("torch", TorchRuntime, about="PyTorch eager module (reference, differentiable)")
RUNTIMES.register("onnxruntime", OrtRuntime, about="ONNX Runtime (CPU; CUDA EP with infoard-deploy[gpu])")
RUNTIMES.register("torch-graph", GraphRuntime, about="an ONNX graph run op by op in torch (fp16 arithmetic on the CPU)")
RUNTIMES.register("tensorrt", TrtRuntime, about="TensorRT 10.x/11.x strongly typed engine (infoard-deploy[trt], NVIDIA GPU)")

__all__ = ["RUNTIMES", "Runtime", "OrtRuntime", "TorchRuntime", "TrtRuntime", "GraphRuntime"]
