"""Every registered architecture builds and runs at its typical input size, and with other
channel / class counts; hook points and the classifier head are where the registry says."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from infoard_deploy.card import ModelCard
from infoard_deploy.errors import UserError
from infoard_deploy.models import MODELS, Normalized, build_model, head_name, model_from_card, stage_names

# typical (C, H, W) per architecture: CIFAR models at 32x32 RGB, the small CNNs at their data sizes
TYPICAL = {"cnn-small": (1, 8, 8), "cnn-mnist": (1, 28, 28), "cnn-mnist-small": (1, 28, 28)}
BIG = {"wrn-34-10", "wrn-34-20", "wrn-28-10"}  # one tiny forward each: 36M-185M parameters
SLOW = {"wrn-34-20"}  # building 185M parameters alone takes ~5 s on 2 cores


def _params():
    out = []
    for name in MODELS.names():
        marks = [pytest.mark.slow] if name in SLOW else []
        out.append(pytest.param(name, marks=marks, id=name))
    return out


def _build(arch, k, c, hw):
    torch.manual_seed(0)
    return build_model(arch, k, c, hw, [0.5] * c, [0.25] * c)


def _module(model: nn.Module, dotted: str) -> nn.Module:
    return dict(model.named_modules())[dotted]


@pytest.mark.parametrize("arch", _params())
def test_typical_size_forward_hooks_and_head(arch):
    c, h, w = TYPICAL.get(arch, (3, 32, 32))
    model = _build(arch, 10, c, h).eval()
    feats, pen = {}, {}
    hooks = [_module(model, s).register_forward_hook(lambda m, i, o, s=s: feats.__setitem__(s, o))
             for s in stage_names(arch)]
    head = _module(model, head_name(arch))
    assert isinstance(head, nn.Linear) and head.out_features == 10
    hooks.append(head.register_forward_pre_hook(lambda m, i: pen.__setitem__("x", i[0])))
    n = 1 if arch in BIG else 2
    with torch.no_grad():
        out = model(torch.rand(n, c, h, w, generator=torch.Generator().manual_seed(0)))
    for hk in hooks:
        hk.remove()
    assert out.shape == (n, 10) and torch.isfinite(out).all()
    assert list(feats) == stage_names(arch) and all(f.dim() == 4 and f.shape[0] == n for f in feats.values())
    assert pen["x"].shape == (n, head.in_features)
    # deeper stages never grow spatially (they are hook points ordered shallow -> deep)
    sides = [f.shape[-1] for f in feats.values()]
    assert sides == sorted(sides, reverse=True)


@pytest.mark.parametrize("arch", [a for a in MODELS.names() if a not in BIG])
def test_other_channels_and_classes(arch):
    c0, h, _ = TYPICAL.get(arch, (3, 32, 32))
    c = 1 if c0 == 3 else 3
    side = max(MODELS.meta(arch)["min_size"], 8) if arch not in TYPICAL else h
    with torch.no_grad():
        assert _build(arch, 2, c, side).eval()(torch.rand(1, c, side, side)).shape == (1, 2)
    model = _build(arch, 100, c, side)
    model.train()  # batch statistics path, as in adversarial training
    x = torch.rand(2, c, side, side, requires_grad=True)
    out = model(x)
    assert out.shape == (2, 100)
    out.logsumexp(1).sum().backward()  # input gradients are what every attack needs
    assert x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0


def test_normalized_applies_mean_std_inside():
    net = nn.Sequential(nn.Flatten(), nn.Linear(12, 3))
    model = Normalized(net, [0.1, 0.2, 0.3], [0.5, 0.25, 2.0])
    x = torch.rand(4, 3, 2, 2)
    mean = torch.tensor([0.1, 0.2, 0.3]).view(1, 3, 1, 1)
    std = torch.tensor([0.5, 0.25, 2.0]).view(1, 3, 1, 1)
    torch.testing.assert_close(model(x), net((x - mean) / std))


def test_model_from_card_matches_card():
    card = ModelCard("cnn-mnist-small", 7, [1, 28, 28], [0.13], [0.31])
    m = model_from_card(card)
    assert m(torch.rand(2, 1, 28, 28)).shape == (2, 7)
    assert m.mean.flatten().tolist() == pytest.approx([0.13]) and m.std.flatten().tolist() == pytest.approx([0.31])


def test_build_rejects_bad_arguments():
    with pytest.raises(UserError, match="did you mean"):
        build_model("resnet19", 10, 3, 32, [0] * 3, [1] * 3)
    with pytest.raises(UserError, match="at least 8x8"):
        build_model("resnet18", 10, 3, 4, [0] * 3, [1] * 3)
    with pytest.raises(UserError, match="num_classes"):
        build_model("cnn-small", 1, 1, 8, [0], [1])
    with pytest.raises(UserError, match="normalisation"):
        build_model("cnn-small", 10, 3, 8, [0], [1])


def test_registry_metadata_complete():
    for name in MODELS.names():
        meta = MODELS.meta(name)
        assert meta["about"] and meta["role"] in ("student", "teacher", "both")
        assert meta["stages"] and meta["head"] and meta["min_size"] >= 1
