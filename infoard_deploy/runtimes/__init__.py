"""Runtimes: torch (reference, differentiable), ONNX Runtime, TensorRT. See :mod:`.base`.

:data:`RUNTIMES` maps a runtime name to its class; :func:`open_artifact` picks one from a file suffix.
"""
from __future__ import annotations

from ..registry import Registry
from .base import Runtime
from .onnxrt import OrtRuntime
from .torch_rt import TorchRuntime

RUNTIMES: Registry = Registry("runtime")
RUNTIMES.register("torch", TorchRuntime, about="PyTorch eager module (reference, differentiable)")
RUNTIMES.register("onnxruntime", OrtRuntime, about="ONNX Runtime (CPU; CUDA EP with infoard-deploy[gpu])")

__all__ = ["RUNTIMES", "Runtime", "OrtRuntime", "TorchRuntime"]
