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
REAL_LIMIT = 12_000_000  # larger models (WRN-28-10 .. WRN-106-16: 36M-416M parameters) run on the meta device


def _n_params(arch: str) -> int:
    with torch.device("meta"):
        return sum(p.numel() for p in MODELS.get(arch)(num_classes=10, in_channels=3).parameters())


SIZES = {name: _n_params(name) for name in MODELS.names()}
SMALL = [a for a in MODELS.names() if SIZES[a] <= REAL_LIMIT]


def _build(arch, k, c, hw):
    torch.manual_seed(0)
    return build_model(arch, k, c, hw, [0.5] * c, [0.25] * c)


def _module(model: nn.Module, dotted: str) -> nn.Module:
    return dict(model.named_modules())[dotted]


@pytest.mark.parametrize("arch", MODELS.names())
def test_typical_size_forward_hooks_and_head(arch):
    """Real forward for small models; shape-only (meta device) forward for the big teachers: same hooks."""
    c, h, w = TYPICAL.get(arch, (3, 32, 32))
    dev = "cpu" if SIZES[arch] <= REAL_LIMIT else "meta"
    with torch.device(dev):
        model = _build(arch, 10, c, h).eval()
    feats, pen = {}, {}
    hooks = [_module(model, s).register_forward_hook(lambda m, i, o, s=s: feats.__setitem__(s, o))
             for s in stage_names(arch)]
    head = _module(model, head_name(arch))
    assert isinstance(head, nn.Linear) and head.out_features == 10
    hooks.append(head.register_forward_pre_hook(lambda m, i: pen.__setitem__("x", i[0])))
    n = 2
    x = torch.rand(n, c, h, w, generator=torch.Generator().manual_seed(0)).to(dev)
    with torch.no_grad():
        out = model(x)
    for hk in hooks:
        hk.remove()
    assert out.shape == (n, 10) and (dev == "meta" or torch.isfinite(out).all())
    assert list(feats) == stage_names(arch) and all(f.dim() == 4 and f.shape[0] == n for f in feats.values())
    assert pen["x"].shape == (n, head.in_features)
    # deeper stages never grow spatially (they are hook points ordered shallow -> deep)
    sides = [f.shape[-1] for f in feats.values()]
    assert sides == sorted(sides, reverse=True)


@pytest.mark.parametrize("arch", SMALL)
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


@pytest.mark.parametrize("arch", [a for a in MODELS.names() if SIZES[a] > REAL_LIMIT])
def test_big_models_other_classes_on_meta(arch):
    with torch.device("meta"):
        model = build_model(arch, 100, 1, 32, [0.5], [0.25])
        assert model(torch.rand(2, 1, 32, 32)).shape == (2, 100)


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
        assert meta["input_size"] >= meta["min_size"] and meta["normalisation"] in (None, "dataset")
        with torch.device("meta"):
            net = MODELS.get(name)(num_classes=7, in_channels=2)
        sd = net.state_dict()  # head and stem are found by name: (K, D) and (O, C, k, k)
        assert sd[meta["head"] + ".weight"].shape[0] == 7 and sd[meta["stem"] + ".weight"].shape[1] == 2


def _shapes(arch, k=10, c=3):
    with torch.device("meta"):
        return {n: tuple(v.shape) for n, v in MODELS.get(arch)(num_classes=k, in_channels=c).state_dict().items()}


def test_wrn_layouts_match_the_originals_keys():
    """Names and shapes of the TRADES / RobustBench ``WideResNet`` (with and without ``sub_block1``) and of
    DeepMind's ``DMWideResNet``, as written in their sources; the 267M / 416M models only on the meta device."""
    trades = _shapes("wrn-70-16")
    nosub = _shapes("wrn-70-16-nosub")
    assert set(trades) - set(nosub) == {k for k in trades if k.startswith("sub_block1.")} != set()
    assert nosub["conv1.weight"] == (16, 3, 3, 3) and nosub["fc.weight"] == (10, 1024)
    assert nosub["block1.layer.0.convShortcut.weight"] == (256, 16, 1, 1)
    assert "block1.layer.1.convShortcut.weight" not in nosub and "block3.layer.10.conv2.weight" in nosub
    assert "block3.layer.11.conv2.weight" not in nosub and nosub["bn1.running_var"] == (1024,)
    assert len([k for k in nosub if k.endswith(".conv1.weight")]) == 33  # (70 - 4) / 6 = 11 blocks per group
    dm = _shapes("dm-wrn-70-16", k=100)
    assert dm["init_conv.weight"] == (16, 3, 3, 3) and dm["logits.weight"] == (100, 1024)
    assert dm["layer.0.block.0.shortcut.weight"] == (256, 16, 1, 1)
    assert dm["layer.2.block.10.conv_1.weight"] == (1024, 1024, 3, 3)
    assert "layer.0.block.1.shortcut.weight" not in dm and dm["batchnorm.num_batches_tracked"] == ()
    assert len(_shapes("dm-wrn-106-16")) == len(dm) + 6 * 3 * 12  # 6 more blocks per group, 12 tensors each
    assert _shapes("wrn-34-15")["sub_block1.layer.4.conv2.weight"] == (240, 240, 3, 3)
    assert _shapes("wrn-40-2-nosub")["fc.weight"] == (10, 128)


def test_preact_variants_differ_where_robustbench_does():
    """``preact-resnet18`` (PreActBlockV2 + BN before the head) and ``preact-resnet18-nobn`` (PreActBlock):
    same block parameters, only ``bn.*`` apart; the projection shortcut sees the activated input in the
    first and the raw input in the second (so outputs differ on the same weights)."""
    a, b = _shapes("preact-resnet18"), _shapes("preact-resnet18-nobn")
    assert set(a) - set(b) == {"bn.weight", "bn.bias", "bn.running_mean", "bn.running_var", "bn.num_batches_tracked"}
    assert not set(b) - set(a)
    torch.manual_seed(0)
    v2 = build_model("preact-resnet18", 10, 3, 32, [0] * 3, [1] * 3).eval()
    v1 = build_model("preact-resnet18-nobn", 10, 3, 32, [0] * 3, [1] * 3).eval()
    v1.net.load_state_dict({k: v for k, v in v2.net.state_dict().items() if not k.startswith("bn.")})
    x = torch.rand(1, 3, 32, 32)
    blk1, blk2 = v1.net.layer2[0], v2.net.layer2[0]  # a block with a projection shortcut
    h = torch.rand(1, 64, 16, 16)
    with torch.no_grad():
        assert not torch.allclose(blk1(h), blk2(h))
        assert v1(x).shape == v2(x).shape == (1, 10)


def test_dm_block_pads_like_tensorflow_same():
    """Stride-2 DM blocks pad right/bottom only (TF 'SAME'): equal to a conv on the explicitly padded input."""
    from infoard_deploy.models.dm_wrn import DMBlock

    torch.manual_seed(0)
    blk = DMBlock(8, 16, 2).eval()
    x = torch.randn(1, 8, 8, 8)
    with torch.no_grad():
        act = blk.relu_0(blk.batchnorm_0(x))
        ref = torch.nn.functional.conv2d(torch.nn.functional.pad(act, (0, 1, 0, 1)), blk.conv_0.weight, stride=2)
        ref = blk.conv_1(blk.relu_1(blk.batchnorm_1(ref))) + blk.shortcut(act)
        torch.testing.assert_close(blk(x), ref)
    assert blk(x).shape == (1, 16, 4, 4)
