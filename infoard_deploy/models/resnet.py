"""ResNet-18 and PreAct-ResNet-18, CIFAR variants (3x3 stride-1 stem, no max-pool).

He et al., CVPR 2016 / ECCV 2016; layout of kuangliu/pytorch-cifar as used by ARD, RSLAD, IAD, AdaAD
(ResNet-18; also RobustBench ``ResNet18``: Sehwag2021Proxy_R18, Addepalli2022Efficient_RN18) and by
RobustBench ``model_zoo/architectures/resnet.py`` (PreAct-ResNet-18). Two PreAct variants exist there with
*identical* parameter names, told apart only by the BN before the head:

* ``PreActResNet(PreActBlockV2, bn_before_fc=True)`` (or ``PreActBlock, out_shortcut=True``): the shortcut
  projection sees the activated input, and a BN-ReLU precedes the head. Rice2020Overfitting,
  Kireev2021Effectiveness, Addepalli2021Towards_PARN18. Registered as ``preact-resnet18``.
* ``PreActResNet18()`` = ``PreActResNet(PreActBlock)``: the projection sees the raw block input and there is
  no BN before the head. Wong2020Fast, Andriushchenko2020Understanding. ``preact-resnet18-nobn``.

Input (N, C, H, W), already normalised; 32x32 ends at 4x4 where the originals' ``avg_pool2d(4)`` equals the
global average pool used here. Output logits (N, K).
"""
from __future__ import annotations

from functools import partial

import torch
import torch.nn.functional as F
from torch import nn


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, in_planes: int, planes: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut = nn.Sequential()
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Sequential(nn.Conv2d(in_planes, planes, 1, stride=stride, bias=False), nn.BatchNorm2d(planes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class PreActBlock(nn.Module):
    """BN-ReLU-conv3x3-BN-ReLU-conv3x3 + shortcut (1x1 projection when the shape changes).

    ``raw_shortcut=False`` (RobustBench ``PreActBlockV2``): the projection sees ``relu(bn1(x))``;
    ``raw_shortcut=True`` (RobustBench / fast_adversarial ``PreActBlock``): it sees ``x``.
    """

    expansion = 1

    def __init__(self, in_planes: int, planes: int, stride: int = 1, raw_shortcut: bool = False):
        super().__init__()
        self.raw_shortcut = raw_shortcut
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Sequential(nn.Conv2d(in_planes, planes, 1, stride=stride, bias=False))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(x))
        if hasattr(self, "shortcut"):
            shortcut = self.shortcut(x if self.raw_shortcut else out)
        else:
            shortcut = x
        out = self.conv1(out)
        out = self.conv2(F.relu(self.bn2(out)))
        return out + shortcut


class ResNet(nn.Module):
    """``preact=False``: conv-BN-ReLU stem; ``preact=True``: bare conv stem, and ``final_bn`` (default on)
    adds the BN-ReLU (``bn``) before pooling."""

    def __init__(self, block, num_blocks, num_classes: int = 10, in_channels: int = 3, preact: bool = False,
                 final_bn: bool = True):
        super().__init__()
        self.in_planes = 64
        self.preact = preact
        self.final_bn = preact and final_bn
        self.conv1 = nn.Conv2d(in_channels, 64, 3, stride=1, padding=1, bias=False)
        if not preact:
            self.bn1 = nn.BatchNorm2d(64)
        self.layer1 = self._make_layer(block, 64, num_blocks[0], 1)
        self.layer2 = self._make_layer(block, 128, num_blocks[1], 2)
        self.layer3 = self._make_layer(block, 256, num_blocks[2], 2)
        self.layer4 = self._make_layer(block, 512, num_blocks[3], 2)
        if self.final_bn:
            self.bn = nn.BatchNorm2d(512)
        self.linear = nn.Linear(512, num_classes)

    def _make_layer(self, block, planes: int, n: int, stride: int) -> nn.Sequential:
        layers = []
        for s in [stride] + [1] * (n - 1):
            layers.append(block(self.in_planes, planes, s))
            self.in_planes = planes
        return nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv1(x)
        if not self.preact:
            out = F.relu(self.bn1(out))
        out = self.layer4(self.layer3(self.layer2(self.layer1(out))))
        if self.final_bn:
            out = F.relu(self.bn(out))
        out = F.adaptive_avg_pool2d(out, 1).flatten(1)
        return self.linear(out)


def resnet18(num_classes: int = 10, in_channels: int = 3) -> ResNet:
    return ResNet(BasicBlock, [2, 2, 2, 2], num_classes, in_channels)


def preact_resnet18(num_classes: int = 10, in_channels: int = 3) -> ResNet:
    """RobustBench ``PreActResNet(PreActBlockV2, [2,2,2,2], bn_before_fc=True)``."""
    return ResNet(PreActBlock, [2, 2, 2, 2], num_classes, in_channels, preact=True)


def preact_resnet18_nobn(num_classes: int = 10, in_channels: int = 3) -> ResNet:
    """RobustBench ``PreActResNet18()`` = ``PreActResNet(PreActBlock, [2,2,2,2])``: no BN before the head."""
    return ResNet(partial(PreActBlock, raw_shortcut=True), [2, 2, 2, 2], num_classes, in_channels, preact=True,
                  final_bn=False)
