"""The reference runtime: a torch ``nn.Module`` (differentiable, so white-box attacks can use it)."""
from __future__ import annotations

from typing import Optional

import numpy as np
import torch
from torch import nn

from .base import Runtime


class TorchRuntime(Runtime):
    name = "torch"
    differentiable = True

    def __init__(self, model: nn.Module, device: Optional[torch.device] = None, max_batch: int = 256,
                 path: Optional[str] = None):
        super().__init__(path=path, precision="fp32", max_batch=max_batch)
        self.model = model
        self.device = device or torch.device("cpu")

    def _load(self) -> None:
        self.model.to(self.device).eval()

    @property
    def arithmetic(self) -> str:
        dt = next((p.dtype for p in self.model.parameters() if p.is_floating_point()), torch.float32)
        return f"{'fp16' if dt == torch.float16 else 'fp32'} (torch {self.device.type.upper()})"

    @torch.no_grad()
    def _run(self, x: np.ndarray) -> np.ndarray:
        return self.model(torch.from_numpy(x).to(self.device)).float().cpu().numpy()
