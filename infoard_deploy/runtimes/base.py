"""One inference interface for torch, ONNX Runtime and TensorRT (Polygraphy-style runners).

``predict(x) -> logits``: ``x`` float32 (N, C, H, W) in [0,1] (numpy or torch), any N (chunked by
``max_batch``); returns float32 numpy (N, K). Runtimes are context managers (``with rt: ...``) that open
sessions / engines on enter and free them on exit. Only the torch runtime is differentiable.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Optional, Tuple, Union

import numpy as np
import torch

ArrayLike = Union[np.ndarray, torch.Tensor]


class Runtime(ABC):
    name: str = "runtime"
    differentiable: bool = False

    def __init__(self, path: Optional[str] = None, precision: str = "fp32", max_batch: int = 256):
        self.path = path
        self.precision = precision
        self.max_batch = max_batch
        self._open = False

    # -- lifecycle --------------------------------------------------------------------------
    def open(self) -> "Runtime":
        if not self._open:
            self._load()
            self._open = True
        return self

    def close(self) -> None:
        if self._open:
            self._unload()
            self._open = False

    def __enter__(self) -> "Runtime":
        return self.open()

    def __exit__(self, *exc) -> None:
        self.close()

    @abstractmethod
    def _load(self) -> None: ...

    def _unload(self) -> None:
        pass

    # -- inference --------------------------------------------------------------------------
    @abstractmethod
    def _run(self, x: np.ndarray) -> np.ndarray:
        """One chunk: float32 contiguous (n, C, H, W), n <= max_batch -> float32 (n, K)."""

    def predict(self, x: ArrayLike) -> np.ndarray:
        if not self._open:
            self.open()
        if isinstance(x, torch.Tensor):
            x = x.detach().to("cpu", torch.float32).numpy()
        x = np.ascontiguousarray(x, dtype=np.float32)
        if x.ndim != 4:
            raise ValueError(f"predict expects (N, C, H, W), got {x.shape}")
        outs = [self._run(np.ascontiguousarray(x[i:i + self.max_batch])) for i in range(0, len(x), self.max_batch)]
        return np.concatenate(outs, axis=0).astype(np.float32, copy=False) if outs else np.zeros((0, 0), np.float32)

    def describe(self) -> str:
        return f"{self.name}:{self.precision}" + (f" ({self.path})" if self.path else "")

    @property
    def input_shape(self) -> Optional[Tuple[int, int, int]]:
        return None
