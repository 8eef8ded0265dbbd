"""Model zoo: students and teachers that take [0,1] inputs and normalise inside.

Every entry of :data:`MODELS` is a factory ``(num_classes, in_channels) -> nn.Module`` registered with
metadata:

* ``role``: ``student``, ``teacher`` or ``both`` (informational; any model can play either role),
* ``stages``: module names (inside the raw network) whose outputs are the per-stage feature maps used
  by MIM attention / feature losses, shallow to deep,
* ``head``: the final ``nn.Linear``; its *input* is the penultimate feature vector; its weight (K, D) gives
  the class count when the architecture is inferred from a state dict,
* ``stem``: the first conv; its weight (O, C, k, k) gives the input channel count,
* ``min_size``: the smallest input side the architecture accepts; ``input_size``: the usual side
  (the default input shape of a card-less checkpoint),
* ``normalisation``: what the original definition does to its input, for card-less checkpoints
  (``None``: nothing; ``"dataset"``: DM WideResNets normalise with the training set's statistics;
  see :mod:`.normalisation`).

:func:`build_model` wraps the network in :class:`Normalized`, so hook names seen from outside are
``net.<stage>``.
"""
from __future__ import annotations

from typing import Callable, List, Sequence

from torch import nn

from ..errors import UserError
from ..registry import Registry
from .dm_wrn import DMWideResNet
from .mobilenetv2 import MobileNetV2
from .normalized import Normalized
from .resnet import preact_resnet18, preact_resnet18_nobn, resnet18
from .small import cnn_mnist, cnn_mnist_small, cnn_small
from .wrn import WideResNet

MODELS: Registry[Callable[..., nn.Module]] = Registry("architecture")

_RES_STAGES = ["layer1", "layer2", "layer3", "layer4"]
_WRN_STAGES = ["block1", "block2", "block3"]
_DM_STAGES = ["layer.0", "layer.1", "layer.2"]
_CIFAR = dict(min_size=8, input_size=32, stem="conv1", head="linear")


def _meta(**kw):
    kw.setdefault("normalisation", None)
    return kw


MODELS.register("mobilenetv2", lambda num_classes=10, in_channels=3: MobileNetV2(num_classes, in_channels),
                **_meta(role="student", stages=["layers.3", "layers.6", "layers.13", "layers.16"], **_CIFAR,
                        about="MobileNetV2, CIFAR variant (ARD/RSLAD/AdaAD student), 2.2M params"))
MODELS.register("resnet18", lambda num_classes=10, in_channels=3: resnet18(num_classes, in_channels),
                **_meta(role="student", stages=_RES_STAGES, **_CIFAR,
                        about="ResNet-18, CIFAR variant (ARD/RSLAD/AdaAD student, RobustBench ResNet18), 11M params"))
MODELS.register("preact-resnet18", lambda num_classes=10, in_channels=3: preact_resnet18(num_classes, in_channels),
                **_meta(role="both", stages=_RES_STAGES, **_CIFAR,
                        about="PreAct-ResNet-18 with BN before the head (RobustBench PreActBlockV2, bn_before_fc: "
                              "Rice2020Overfitting, Kireev2021), 11M params"))
MODELS.register("preact-resnet18-nobn",
                lambda num_classes=10, in_channels=3: preact_resnet18_nobn(num_classes, in_channels),
                **_meta(role="both", stages=_RES_STAGES, **_CIFAR,
                        about="PreAct-ResNet-18 without BN before the head (RobustBench PreActResNet18(): "
                              "Wong2020Fast, Andriushchenko2020Understanding), 11M params"))

# (depth, width, params without / with sub_block1, params in the DM layout or None when not registered)
_WRN_SIZES = [(16, 4, "2.7M", "2.9M", "2.7M"), (28, 10, "36M", "38M", "36M"), (34, 10, "46M", "48M", "46M"),
              (34, 15, "104M", "109M", None), (34, 20, "185M", "193M", "185M"), (40, 2, "2.2M", "2.4M", None),
              (70, 16, "267M", "279M", "267M"), (106, 16, None, None, "416M")]


def _wrn(d: int, w: int, sub: bool):
    return lambda num_classes=10, in_channels=3: WideResNet(d, w, num_classes, in_channels, sub_block=sub)


def _dm(d: int, w: int):
    return lambda num_classes=10, in_channels=3: DMWideResNet(d, w, num_classes, in_channels)


_WRN_META = dict(role="teacher", stages=_WRN_STAGES, head="fc", stem="conv1", min_size=4, input_size=32)
for _d, _w, _p_nosub, _p_sub, _p_dm in _WRN_SIZES:
    if _p_sub:
        MODELS.register(f"wrn-{_d}-{_w}", _wrn(_d, _w, True), **_meta(
            **_WRN_META, about=f"WideResNet-{_d}-{_w}, TRADES layout with the unused sub_block1 (TRADES, ARD, RSLAD; "
                               f"RobustBench sub_block1=True), {_p_sub} params"))
        MODELS.register(f"wrn-{_d}-{_w}-nosub", _wrn(_d, _w, False), **_meta(
            **_WRN_META, about=f"WideResNet-{_d}-{_w}, TRADES layout without sub_block1 (RobustBench WideResNet "
                               f"default, AdaAD teacher), {_p_nosub} params"))
    if _p_dm:
        MODELS.register(f"dm-wrn-{_d}-{_w}", _dm(_d, _w), **_meta(
            role="teacher", stages=_DM_STAGES, head="logits", stem="init_conv", min_size=4, input_size=32,
            normalisation="dataset",
            about=f"WideResNet-{_d}-{_w}, DeepMind layout with Swish (Gowal2020/Rebuffi2021/Pang2022, RSLAD "
                  f"WRN-70-16; normalises with CIFAR statistics), {_p_dm} params"))

MODELS.register("cnn-small", lambda num_classes=10, in_channels=1: cnn_small(num_classes, in_channels),
                **_meta(role="student", stages=["stage1", "stage2"], head="linear", stem="stage1.0", min_size=4,
                        input_size=8, about="tiny 2-stage CNN for 8x8 inputs (digits demo), ~30k params"))
MODELS.register("cnn-mnist", lambda num_classes=10, in_channels=1: cnn_mnist(num_classes, in_channels),
                **_meta(role="teacher", stages=["stage1", "stage2"], head="linear", stem="stage1.0", min_size=8,
                        input_size=28, about="MNIST-robustness CNN 32-32-64-64 + FC200 for 28x28 inputs, ~0.3M params"))
MODELS.register("cnn-mnist-small", lambda num_classes=10, in_channels=1: cnn_mnist_small(num_classes, in_channels),
                **_meta(role="student", stages=["stage1", "stage2"], head="linear", stem="stage1.0", min_size=8,
                        input_size=28, about="compact 16-16-32-32 + FC64 CNN for 28x28 inputs, ~30k params"))


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
