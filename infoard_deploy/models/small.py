"""Small CNNs sized for 8x8 (scikit-learn digits) and 28x28 (MNIST / Fashion-MNIST) inputs.

``cnn-small``: two 3x3 conv stages (8x8 -> 4x4 -> 2x2), ~30k parameters; the demo student.
``cnn-mnist``: the classic 4-conv MNIST robustness CNN (as in TRADES' MNIST SmallCNN: 32-32-64-64,
two max-pools, a 200-unit FC layer), the benchmark teacher. ``cnn-mnist-small``: a compact student
(16-32 channels, one 64-unit FC) ~10x fewer parameters than the teacher.
All use adaptive pooling before the classifier so any input size the pooling allows works.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class SmallCNN(nn.Module):
    """conv stages -> adaptive avg pool to ``pool`` x ``pool`` -> MLP head."""

    def __init__(self, num_classes: int, in_channels: int, widths, fc: int, pool: int, min_size: int):
        super().__init__()
        self.min_size = min_size
        stages, c = [], in_channels
        for i, w in enumerate(widths):
            stages.append(
                nn.Sequential(
                    nn.Conv2d(c, w, 3, padding=1, bias=False), nn.BatchNorm2d(w), nn.ReLU(inplace=True),
                    nn.Conv2d(w, w, 3, padding=1, bias=False), nn.BatchNorm2d(w), nn.ReLU(inplace=True),
                    nn.MaxPool2d(2),
                )
            )
            c = w
        self.stage1, self.stage2 = stages
        self.pool = pool
        self.fc1 = nn.Linear(c * pool * pool, fc)
        self.linear = nn.Linear(fc, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.stage2(self.stage1(x))
        out = F.adaptive_avg_pool2d(out, self.pool).flatten(1)
        out = F.relu(self.fc1(out))
        return self.linear(out)


def cnn_small(num_classes: int = 10, in_channels: int = 1) -> SmallCNN:
    return SmallCNN(num_classes, in_channels, (16, 32), fc=64, pool=2, min_size=4)


def cnn_mnist(num_classes: int = 10, in_channels: int = 1) -> SmallCNN:
    return SmallCNN(num_classes, in_channels, (32, 64), fc=200, pool=4, min_size=8)


def cnn_mnist_small(num_classes: int = 10, in_channels: int = 1) -> SmallCNN:
    return SmallCNN(num_classes, in_channels, (16, 32), fc=64, pool=3, min_size=8)
