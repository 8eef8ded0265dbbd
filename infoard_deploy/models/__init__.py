"""Model zoo: students and teachers that take [0,1] inputs and normalise inside.

Every entry of :data:`MODELS` is a factory ``(num_classes, in_channels) -> nn.Module`` registered with
metadata:

* ``role``: ``student``, ``teacher`` or ``both`` (informational; any model can play either role),
* ``stages``: module names (inside the raw network) whose outputs are the per-stage feature maps used
  by MIM attention / feature losses, shallow to deep,
* ``head``: the final ``nn.Linear``; its *input* is the penultimate feature vector,
* ``min_size``: the smallest input side the architecture accepts.

:func:`build_model` wraps the network in :class:`Normalized`, so hook names seen from outside are
``net.<stage>``.
"""
from __future__ import annotations

from typing import Callable, List, Sequence

from torch import nn

from ..errors import UserError
from ..registry import Registry
from .mobilenetv2 import MobileNetV2
from .normalized import Normalized
from .resnet import preact_resnet18, resnet18
from .small import cnn_mnist, cnn_mnist_small, cnn_small
from .wrn import WideResNet

MODELS: Registry[Callable[..., nn.Module]] = Registry("architecture")

_RES_STAGES = ["layer1", "layer2", "layer3", "layer4"]
_WRN_STAGES = ["block1", "block2", "block3"]

MODELS.register("mobilenetv2", lambda num_classes=10, in_channels=3: MobileNetV2(num_classes, in_channels),
                role="student", stages=["layers.3", "layers.6", "layers.13", "layers.16"], head="linear", min_size=8,
                about="MobileNetV2, CIFAR variant (ARD/RSLAD student), 2.2M params")
MODELS.register("resnet18", lambda num_classes=10, in_channels=3: resnet18(num_classes, in_channels),
                role="student", stages=_RES_STAGES, head="linear", min_size=8, about="ResNet-18, CIFAR variant, 11M params")
MODELS.register("preact-resnet18", lambda num_classes=10, in_channels=3: preact_resnet18(num_classes, in_channels),
                role="both", stages=_RES_STAGES, head="linear", min_size=8, about="PreAct-ResNet-18 (RobustBench layout)")
for _depth, _width, _params in [(34, 10, "46M"), (34, 20, "185M"), (28, 10, "36M"), (16, 4, "2.7M")]:
    MODELS.register(
        f"wrn-{_depth}-{_width}",
        (lambda d, w: (lambda num_classes=10, in_channels=3: WideResNet(d, w, num_classes, in_channels)))(_depth, _width),
        role="teacher", stages=_WRN_STAGES, head="fc", min_size=4,
        about=f"WideResNet-{_depth}-{_width} (TRADES layout, loads TRADES/RobustBench weights), {_params} params",
    )
MODELS.register("cnn-small", lambda num_classes=10, in_channels=1: cnn_small(num_classes, in_channels),
                role="student", stages=["stage1", "stage2"], head="linear", min_size=4,
                about="tiny 2-stage CNN for 8x8 inputs (digits demo), ~30k params")
MODELS.register("cnn-mnist", lambda num_classes=10, in_channels=1: cnn_mnist(num_classes, in_channels),
                role="teacher", stages=["stage1", "stage2"], head="linear", min_size=8,
                about="MNIST-robustness CNN 32-32-64-64 + FC200 for 28x28 inputs, ~0.3M params")
MODELS.register("cnn-mnist-small", lambda num_classes=10, in_channels=1: cnn_mnist_small(num_classes, in_channels),
                role="student", stages=["stage1", "stage2"], head="linear", min_size=8,
                about="compact 16-16-32-32 + FC64 CNN for 28x28 inputs, ~30k params")


def build_model(arch: str, num_classes: int, in_channels: int, input_size: int,
                mean: Sequence[float], std: Sequence[float]) -> Normalized:
    """Build ``arch`` wrapped in :class:`Normalized`; inputs (N, in_channels, input_size, input_size) in [0,1]."""
    factory = MODELS.get(arch)
    meta = MODELS.meta(arch)
    if num_classes < 2:
        raise UserError(f"num_classes must be >= 2, got {num_classes}")
    if in_channels < 1:
        raise UserError(f"in_channels must be >= 1, got {in_channels}")
    if input_size < meta.get("min_size", 1):
        raise UserError(f"{arch} needs inputs of at least {meta['min_size']}x{meta['min_size']}, got {input_size}")
    if len(mean) != in_channels or len(std) != in_channels:
        raise UserError(f"normalisation has {len(mean)} mean / {len(std)} std values for {in_channels} channels")
    return Normalized(factory(num_classes=num_classes, in_channels=in_channels), mean, std)


def model_from_card(card) -> Normalized:
    c, h, _ = card.input_shape
    return build_model(card.architecture, card.num_classes, c, h, card.mean, card.std)


def stage_names(arch: str) -> List[str]:
    """Feature-map hook points of ``arch`` as seen on the :class:`Normalized` wrapper."""
    return [f"net.{s}" for s in MODELS.meta(arch)["stages"]]


def head_name(arch: str) -> str:
    """The classifier layer; a forward pre-hook on it yields the penultimate features (N, D)."""
    return f"net.{MODELS.meta(arch)['head']}"


__all__ = ["MODELS", "Normalized", "build_model", "model_from_card", "stage_names", "head_name"]
