"""Normalisation baked into the model, so every model takes inputs in [0,1].

This keeps eps meaning the same thing in torch, ONNX and TensorRT, and lets a teacher and a
student use different statistics. The wrapped network is the submodule ``net``.
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn


class Normalized(nn.Module):
    """``y = net((x - mean) / std)`` with ``x`` float (N, C, H, W) in [0, 1]; returns logits (N, K)."""

    def __init__(self, net: nn.Module, mean: Sequence[float], std: Sequence[float]):
        super().__init__()
        self.net = net
        c = len(mean)
        self.register_buffer("mean", torch.tensor(list(mean), dtype=torch.float32).view(1, c, 1, 1))
        self.register_buffer("std", torch.tensor(list(std), dtype=torch.float32).view(1, c, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net((x - self.mean.to(x.dtype)) / self.std.to(x.dtype))
