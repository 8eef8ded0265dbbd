"""WideResNet in the DeepMind layout (Gowal et al. 2020, Rebuffi et al. 2021), with Swish activations.

Module names match ``DMWideResNet`` of google-deepmind/deepmind-research
``adversarial_robustness/pytorch/model_zoo.py`` as copied by RobustBench
(``model_zoo/architectures/dm_wide_resnet.py``) and by RSLAD's WRN-70-16 / WRN-34-20 teachers:
``init_conv``, ``layer.{0,1,2}.block.{i}.{batchnorm_0,conv_0,batchnorm_1,conv_1,shortcut}``, ``batchnorm``,
``logits``.

The original normalises inside ``forward`` with ``(x - mean) / std`` where mean/std are plain attributes
(or, in later RobustBench versions, non-persistent buffers): they are *not* in the checkpoint files. They
are the training set's statistics (CIFAR-10 or CIFAR-100, see :mod:`.normalisation`). Here the network
takes already-normalised input and :class:`~infoard_deploy.models.Normalized` applies mean/std, so a
checkpoint that does carry ``mean``/``std`` tensors has them read by the loader instead.

Swish is ``x * sigmoid(x)`` (DM's custom autograd function computes the same value and gradient;
``nn.SiLU`` also exports to ONNX). Input (N, C, H, W); 32x32 ends at 8x8 where the original's
``avg_pool2d(8)`` equals the global average pool used here. Output logits (N, K).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class DMBlock(nn.Module):
    """BN-act-conv3x3-BN-act-conv3x3 with TensorFlow 'SAME' padding done by hand (as in the original).

    Stride 1 pads 1 on every side; stride 2 pads only right and bottom, which is what makes the weights
    of a TF-trained / DM-trained model give the same outputs.
    """

    def __init__(self, in_planes: int, out_planes: int, stride: int, activation=nn.SiLU):
        super().__init__()
        if stride not in (1, 2):
            raise ValueError("DM WideResNet blocks support stride 1 or 2")
        self.batchnorm_0 = nn.BatchNorm2d(in_planes)
        self.relu_0 = activation()
        self.conv_0 = nn.Conv2d(in_planes, out_planes, 3, stride=stride, padding=0, bias=False)
        self.batchnorm_1 = nn.BatchNorm2d(out_planes)
        self.relu_1 = activation()
        self.conv_1 = nn.Conv2d(out_planes, out_planes, 3, stride=1, padding=1, bias=False)
        self.has_shortcut = in_planes != out_planes
        self.shortcut = nn.Conv2d(in_planes, out_planes, 1, stride=stride, padding=0, bias=False) \
            if self.has_shortcut else None
        self._pad = (1, 1, 1, 1) if stride == 1 else (0, 1, 0, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        act = self.relu_0(self.batchnorm_0(x))
        if self.has_shortcut:
            x = act  # the projection shortcut sees the activated input, like the residual branch
        out = self.conv_0(F.pad(act, self._pad))
        out = self.conv_1(self.relu_1(self.batchnorm_1(out)))
        return (self.shortcut(x) if self.has_shortcut else x) + out


class DMBlockGroup(nn.Module):
    def __init__(self, num_blocks: int, in_planes: int, out_planes: int, stride: int, activation=nn.SiLU):
        super().__init__()
        self.block = nn.Sequential(*[
            DMBlock(in_planes if i == 0 else out_planes, out_planes, stride if i == 0 else 1, activation)
            for i in range(num_blocks)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.block(x)


class DMWideResNet(nn.Module):
    """WRN-``depth``-``width`` (DM layout): 16 / 16w / 32w / 64w channels, (depth-4)/6 blocks per group."""

    def __init__(self, depth: int = 28, width: int = 10, num_classes: int = 10, in_channels: int = 3,
                 activation=nn.SiLU):
        super().__init__()
        if (depth - 4) % 6 != 0:
            raise ValueError("WideResNet depth must be 6n+4")
        n = (depth - 4) // 6
        ch = [16, 16 * width, 32 * width, 64 * width]
        self.init_conv = nn.Conv2d(in_channels, ch[0], 3, stride=1, padding=1, bias=False)
        self.layer = nn.Sequential(
            DMBlockGroup(n, ch[0], ch[1], 1, activation),
            DMBlockGroup(n, ch[1], ch[2], 2, activation),
            DMBlockGroup(n, ch[2], ch[3], 2, activation),
        )
        self.batchnorm = nn.BatchNorm2d(ch[3])
        self.relu = activation()
        self.logits = nn.Linear(ch[3], num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.layer(self.init_conv(x))
        out = self.relu(self.batchnorm(out))
        out = F.adaptive_avg_pool2d(out, 1).flatten(1)
        return self.logits(out)
