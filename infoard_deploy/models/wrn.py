"""WideResNet (Zagoruyko & Komodakis, BMVC 2016) in the TRADES / RobustBench layout.

Module names (``conv1``, ``block1.layer.0.bn1``, ``convShortcut``, ``sub_block1``, ``bn1``, ``fc``) match
yaodongyu/TRADES ``models/wideresnet.py`` and RobustBench ``model_zoo/architectures/wide_resnet.py``, so
their state dicts load as they are. Two layouts exist in the wild:

* ``sub_block=True``: TRADES, ARD, RSLAD and RobustBench entries built with ``sub_block1=True``
  (Zhang2019Theoretically, Carmon2019Unlabeled, ...). ``sub_block1`` is a block that ``forward`` never
  uses; it exists only because those checkpoints contain it.
* ``sub_block=False``: RobustBench's ``WideResNet`` default (Wu2020Adversarial, Sehwag2021Proxy,
  Chen2021LTD, Addepalli2022Efficient, Standard, Jia2022LAS-AT) and AdaAD's teacher.

Input (N, C, H, W), already normalised; output logits (N, K). The 32x32 CIFAR input ends at 8x8, where the
originals' ``avg_pool2d(8)`` equals the global average pool used here (which also allows other sizes).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class WBlock(nn.Module):
    """Pre-activation basic block (``BasicBlock`` in TRADES): BN-ReLU-conv3x3-BN-ReLU-conv3x3 + shortcut.

    When the width changes, BN-ReLU is applied to the input before both branches and the shortcut is a
    1x1 ``convShortcut``; otherwise the shortcut is the raw input.
    """

    def __init__(self, in_planes: int, out_planes: int, stride: int, drop_rate: float = 0.0):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.relu1 = nn.ReLU(inplace=True)
        self.conv1 = nn.Conv2d(in_planes, out_planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_planes)
        self.relu2 = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(out_planes, out_planes, 3, stride=1, padding=1, bias=False)
        self.drop_rate = drop_rate
        self.equal_in_out = in_planes == out_planes
        self.convShortcut = (
            None if self.equal_in_out else nn.Conv2d(in_planes, out_planes, 1, stride=stride, padding=0, bias=False)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.equal_in_out:
            x = self.relu1(self.bn1(x))
            out = self.relu2(self.bn2(self.conv1(x)))
        else:
            out = self.relu2(self.bn2(self.conv1(self.relu1(self.bn1(x)))))
        if self.drop_rate > 0:
            out = F.dropout(out, p=self.drop_rate, training=self.training)
        out = self.conv2(out)
        return (x if self.equal_in_out else self.convShortcut(x)) + out


class NetworkBlock(nn.Module):
    def __init__(self, n: int, in_planes: int, out_planes: int, stride: int, drop_rate: float = 0.0):
        super().__init__()
        self.layer = nn.Sequential(
            *[WBlock(in_planes if i == 0 else out_planes, out_planes, stride if i == 0 else 1, drop_rate) for i in range(n)]
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layer(x)


class WideResNet(nn.Module):
    """WRN-``depth``-``widen_factor``: stem conv (16 ch), three groups of (depth-4)/6 blocks with
    16k / 32k / 64k channels (strides 1, 2, 2), BN-ReLU, global average pool, ``fc``."""

    def __init__(self, depth: int = 34, widen_factor: int = 10, num_classes: int = 10, in_channels: int = 3,
                 drop_rate: float = 0.0, sub_block: bool = True):
        super().__init__()
        if (depth - 4) % 6 != 0:
            raise ValueError("WideResNet depth must be 6n+4")
        n = (depth - 4) // 6
        ch = [16, 16 * widen_factor, 32 * widen_factor, 64 * widen_factor]
        self.conv1 = nn.Conv2d(in_channels, ch[0], 3, stride=1, padding=1, bias=False)
        self.block1 = NetworkBlock(n, ch[0], ch[1], 1, drop_rate)
        if sub_block:
            self.sub_block1 = NetworkBlock(n, ch[0], ch[1], 1, drop_rate)  # unused, TRADES-compatible
        self.block2 = NetworkBlock(n, ch[1], ch[2], 2, drop_rate)
        self.block3 = NetworkBlock(n, ch[2], ch[3], 2, drop_rate)
        self.bn1 = nn.BatchNorm2d(ch[3])
        self.relu = nn.ReLU(inplace=True)
        self.fc = nn.Linear(ch[3], num_classes)
        if self.fc.weight.device.type == "meta":
            return  # shape-only build (architecture inference): the custom init would only cost time
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                m.weight.data.fill_(1)
                m.bias.data.zero_()
            elif isinstance(m, nn.Linear):
                m.bias.data.zero_()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.block3(self.block2(self.block1(self.conv1(x))))
        out = self.relu(self.bn1(out))
        out = F.adaptive_avg_pool2d(out, 1).flatten(1)
        return self.fc(out)
