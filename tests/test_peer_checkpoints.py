"""Checkpoints saved the way other projects' official code saves them load card-less with equal logits.

Each peer model is built from this toolkit's key-compatible definition with random weights (BatchNorm
statistics randomised too, so they must load), saved exactly as the peer's training code saves it, loaded
through :func:`load_model_ex` with no card and no ``--arch``, and compared with the original on the same
[0,1] input (atol 1e-5). Peers: TRADES (``model_cifar_wrn.pt``, WRN with ``sub_block1``), RobustBench
(``{"state_dict": {"module.*"}}``, no ``sub_block1``, ``model.`` prefix, ``{"last": ...}``), AdaAD's
teacher, ARD (``{"net": ..., "optimizer": ...}`` as ``epoch=N.t7``), RSLAD (DataParallel ResNet-18),
DeepMind WRNs (safetensors, normalisation from the definition), and graph formats (TorchScript, ONNX).
Small widths stand in for the big teachers (WRN-16-4 for WRN-34-10 / 70-16); those are checked on the meta
device, names and shapes only.
"""
from __future__ import annotations

import random
import warnings

import pytest
import torch
from torch import nn

from infoard_deploy.card import ModelCard
from infoard_deploy.checkpoint import load_model, load_model_ex
from infoard_deploy.errors import UserError
from infoard_deploy.models import MODELS, Normalized
from infoard_deploy.models.infer import infer_architecture
from infoard_deploy.models.normalisation import CIFAR10_MEAN, CIFAR10_STD, CIFAR100_MEAN, CIFAR100_STD

RAW = ([0.0] * 3, [1.0] * 3)


def peer_net(arch: str, k: int = 10, c: int = 3, seed: int = 0) -> nn.Module:
    """The raw network (no normalisation wrapper) with random weights and BatchNorm statistics."""
    torch.manual_seed(seed)
    net = MODELS.get(arch)(num_classes=k, in_channels=c)
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.2, 0.2)
                m.running_var.uniform_(0.5, 1.5)
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.2, 0.2)
    return net.eval()


def x_batch(c: int = 3, side: int = 32) -> torch.Tensor:
    return torch.rand(3, c, side, side, generator=torch.Generator().manual_seed(1))


def expected(net: nn.Module, mean, std, x: torch.Tensor) -> torch.Tensor:
    m = torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1)
    s = torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1)
    with torch.no_grad():
        return net((x - m) / s)


def assert_logits(model: nn.Module, want: torch.Tensor, x: torch.Tensor) -> None:
    with torch.no_grad():
        torch.testing.assert_close(model(x), want, atol=1e-5, rtol=1e-5)


def save_as_peer(net: nn.Module, how: str, path) -> None:
    sd = net.state_dict()
    module = {f"module.{k}": v for k, v in sd.items()}
    if how == "plain":  # TRADES: torch.save(model.state_dict(), 'model_cifar_wrn.pt')
        torch.save(sd, path)
    elif how == "pre-0.4.1":  # files from PyTorch < 0.4.1 have no BatchNorm num_batches_tracked
        torch.save({k: v for k, v in sd.items() if not k.endswith("num_batches_tracked")}, path)
    elif how == "module":  # RSLAD / AdaAD: torch.save(nn.DataParallel(model).state_dict(), ...)
        torch.save(module, path)
    elif how == "state_dict+module":  # RobustBench files such as Carmon2019Unlabeled
        torch.save({"state_dict": module, "epoch": 99}, path)
    elif how == "model-prefix":  # RobustBench Chen2020Efficient: keys 'model.*'
        torch.save({"state_dict": {f"model.{k}": v for k, v in sd.items()}}, path)
    elif how == "ard":  # ARD main.py: {'net': state_dict, 'epoch': e, 'optimizer': opt.state_dict()} as epoch=N.t7
        opt = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9)
        net(torch.rand(2, 3, 32, 32)).sum().backward()
        opt.step()
        net.eval()
        torch.save({"net": net.state_dict(), "epoch": 3, "optimizer": opt.state_dict()}, path)
    elif how == "last+legacy":  # fast_adversarial / Andriushchenko2020: {'last': sd, 'best': sd}, old format
        torch.save({"last": sd, "best": sd}, path, _use_new_zipfile_serialization=False)
    elif how == "safetensors":
        from safetensors.torch import save_file

        save_file({k: v.contiguous() for k, v in sd.items()}, str(path))
    else:
        raise ValueError(how)


# id: (architecture, how the peer saves it, file name, normalisation the definition implies)
LAYOUTS = {
    "trades-wrn-sub_block1": ("wrn-16-4", "plain", "model_cifar_wrn.pt", RAW),
    "trades-pytorch-0.4-no-num_batches_tracked": ("wrn-16-4", "pre-0.4.1", "model_cifar_wrn.pt", RAW),
    "robustbench-wrn-nosub": ("wrn-16-4-nosub", "state_dict+module", "Wu2020Adversarial.pt", RAW),
    "robustbench-model-prefix": ("wrn-16-4", "model-prefix", "Chen2020Efficient.pt", RAW),
    "adaad-teacher-nosub": ("wrn-16-4-nosub", "module", "teacher_wrn.pth", RAW),
    "ard-mobilenetv2-t7": ("mobilenetv2", "ard", "epoch=3.t7", RAW),
    "rslad-resnet18-dataparallel": ("resnet18", "module", "resnet18-CIFAR10_RSLAD0.53.pth", RAW),
    "andriushchenko-preact-legacy-tar": ("preact-resnet18-nobn", "last+legacy", "checkpoint.pth.tar", RAW),
    "rice-preact-bn": ("preact-resnet18", "state_dict+module", "model_best.pth", RAW),
    "dm-wrn-safetensors": ("dm-wrn-16-4", "safetensors", "gowal.safetensors", (list(CIFAR10_MEAN), list(CIFAR10_STD))),
    "dm-wrn-plain": ("dm-wrn-16-4", "plain", "rebuffi.pt", (list(CIFAR10_MEAN), list(CIFAR10_STD))),
    "safetensors-named-pth": ("wrn-16-4-nosub", "safetensors", "weights.pth", RAW),
    "zip-named-safetensors": ("wrn-16-4", "plain", "weights.safetensors", RAW),
}


@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_peer_layout_loads_without_card_or_arch(tmp_path, layout):
    arch, how, fname, (mean, std) = LAYOUTS[layout]
    net = peer_net(arch)
    p = tmp_path / fname
    save_as_peer(net, how, p)
    model, card, info = load_model_ex(p)
    assert card.architecture == arch and info.architecture_source == "inferred"
    assert card.num_classes == 10 and card.input_shape == [3, 32, 32] and not model.training
    assert card.mean == pytest.approx(mean) and card.std == pytest.approx(std)
    x = x_batch()
    assert_logits(model, expected(net, mean, std, x), x)
    if arch.startswith("dm-"):  # the DM definition normalises with CIFAR-10 statistics, not in the file
        assert info.normalisation_source == "architecture" and not info.warnings
    else:
        assert info.normalisation_source == "assumed" and len(info.warnings) == 1
        assert "assumed mean 0 / std 1 (raw [0,1] inputs)" in info.warnings[0] and "--mean/--std" in info.warnings[0]
    assert info.format == {"safetensors": "safetensors", "last+legacy": "state-dict-legacy"}.get(how, "state-dict")


def test_inference_ignores_key_order_and_file_suffix():
    sd = peer_net("wrn-16-4-nosub").state_dict()
    keys = list(sd)
    for order in (sorted(keys), list(reversed(keys)), random.Random(0).sample(keys, len(keys))):
        res = infer_architecture({k: sd[k] for k in order})
        assert (res.architecture, res.num_classes, res.in_channels) == ("wrn-16-4-nosub", 10, 3)


@pytest.mark.parametrize("arch", ["wrn-34-10", "wrn-34-10-nosub", "wrn-34-15", "wrn-34-20-nosub", "wrn-70-16",
                                  "wrn-70-16-nosub", "dm-wrn-28-10", "dm-wrn-70-16", "dm-wrn-106-16"])
@pytest.mark.parametrize("k", [10, 100])
def test_big_teachers_inferred_on_meta(arch, k):
    """Names and shapes only: meta tensors stand in for the 46M-416M-parameter files."""
    with torch.device("meta"):
        sd = MODELS.get(arch)(num_classes=k, in_channels=3).state_dict()
    res = infer_architecture(sd)
    assert (res.architecture, res.num_classes, res.in_channels) == (arch, k, 3)


def test_our_normalized_state_dict_keeps_its_normalisation(tmp_path):
    """``torch.save(Normalized(...).state_dict())``: keys mean, std, net.*; the buffers must be used."""
    mean, std = [0.4914, 0.4822, 0.4465], [0.2471, 0.2435, 0.2616]
    net = peer_net("wrn-16-4-nosub")
    wrapped = Normalized(net, mean, std).eval()
    p = tmp_path / "student.pt"
    torch.save(wrapped.state_dict(), p)
    model, card, info = load_model_ex(p)
    assert info.normalisation_source == "file" and not info.warnings and card.architecture == "wrn-16-4-nosub"
    assert card.mean == pytest.approx(mean) and card.std == pytest.approx(std)
    x = x_batch()
    assert_logits(model, wrapped(x), x)


@pytest.mark.parametrize("prefix", ["", "module."])
def test_robustbench_mu_sigma_buffers_are_used(tmp_path, prefix):
    """RobustBench ``Wong2020FastNet`` saved with ``model.state_dict()``: top-level ``mu``/``sigma`` (1,3,1,1)."""
    mu, sigma = [0.4914, 0.4822, 0.4465], [0.2471, 0.2435, 0.2616]
    net = peer_net("preact-resnet18-nobn")
    sd = {**net.state_dict(), "mu": torch.tensor(mu).view(1, 3, 1, 1), "sigma": torch.tensor(sigma).view(1, 3, 1, 1)}
    p = tmp_path / "Wong2020Fast.pt"
    torch.save({prefix + k: v for k, v in sd.items()}, p)
    model, card, info = load_model_ex(p)
    assert info.normalisation_source == "file" and card.architecture == "preact-resnet18-nobn"
    assert card.mean == pytest.approx(mu) and card.std == pytest.approx(sigma)
    x = x_batch()
    assert_logits(model, expected(net, mu, sigma, x), x)


def test_nested_normalisations_compose(tmp_path):
    """Our wrapper around a net that normalises with mu/sigma itself: both are applied, in that order."""
    m1, s1, mu, sigma = [0.1, 0.2, 0.3], [0.5, 0.6, 0.7], [0.4, 0.5, 0.6], [0.2, 0.3, 0.4]
    net = peer_net("wrn-16-4-nosub")
    sd = {"mean": torch.tensor(m1).view(1, 3, 1, 1), "std": torch.tensor(s1).view(1, 3, 1, 1),
          "net.mu": torch.tensor(mu).view(1, 3, 1, 1), "net.sigma": torch.tensor(sigma).view(1, 3, 1, 1),
          **{f"net.{k}": v for k, v in net.state_dict().items()}}
    p = tmp_path / "nested.pt"
    torch.save(sd, p)
    model, _, info = load_model_ex(p)
    x = x_batch()
    inner = (x - torch.tensor(m1).view(1, 3, 1, 1)) / torch.tensor(s1).view(1, 3, 1, 1)
    assert info.normalisation_source == "file"
    assert_logits(model, expected(net, mu, sigma, inner), x)


def test_dm_normalisation_by_class_count_dataset_and_buffers(tmp_path):
    x = x_batch()
    net100 = peer_net("dm-wrn-16-4", k=100)
    p = tmp_path / "c100.pt"
    torch.save(net100.state_dict(), p)
    model, card, info = load_model_ex(p)  # RobustBench's CIFAR-100 DM models use CIFAR-100 statistics ...
    assert info.normalisation_source == "architecture" and card.mean == pytest.approx(list(CIFAR100_MEAN))
    assert len(info.warnings) == 1 and "RSLAD" in info.warnings[0]  # ... RSLAD's do not: say so
    assert_logits(model, expected(net100, CIFAR100_MEAN, CIFAR100_STD, x), x)
    ds_mean, ds_std = [0.5, 0.45, 0.4], [0.25, 0.24, 0.26]  # the caller's dataset statistics win for DM
    model, card, info = load_model_ex(p, dataset_mean=ds_mean, dataset_std=ds_std)
    assert info.normalisation_source == "architecture" and card.mean == ds_mean and not info.warnings
    assert_logits(model, expected(net100, ds_mean, ds_std, x), x)
    # DM code whose mean/std are persistent buffers, shape (3, 1, 1): the file's values are used
    net = peer_net("dm-wrn-16-4")
    sd = {**net.state_dict(), "mean": torch.tensor(ds_mean).view(3, 1, 1), "std": torch.tensor(ds_std).view(3, 1, 1)}
    torch.save(sd, p)
    model, card, info = load_model_ex(p)
    assert info.normalisation_source == "file" and card.std == pytest.approx(ds_std)
    assert_logits(model, expected(net, ds_mean, ds_std, x), x)


def test_flags_override_file_buffers_with_a_warning(tmp_path):
    net = peer_net("wrn-16-4")
    torch.save(Normalized(net, [0.5] * 3, [0.25] * 3).state_dict(), tmp_path / "m.pt")
    model, card, info = load_model_ex(tmp_path / "m.pt", mean=[0.0] * 3, std=[1.0] * 3)
    assert info.normalisation_source == "flag" and card.mean == [0.0] * 3
    assert len(info.warnings) == 1 and "carries normalisation buffers" in info.warnings[0]


def test_torchscript_trace_without_card(tmp_path, recwarn, capfd):
    net = peer_net("wrn-16-4-nosub")
    p = tmp_path / "teacher.pt"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.jit.trace(net, x_batch()).save(str(p))
    capfd.readouterr()
    model, card, info = load_model_ex(p, input_shape=[3, 32, 32])
    assert not [w for w in recwarn if issubclass(w.category, FutureWarning)] and capfd.readouterr().err == ""
    assert (info.format, info.architecture_source, card.architecture, card.num_classes) == \
        ("torchscript", "graph", "torchscript", 10)
    assert info.normalisation_source == "assumed" and "assumed mean 0 / std 1" in info.warnings[0]
    x = x_batch()
    assert_logits(model, expected(net, *RAW, x), x)
    with pytest.raises(UserError, match="pass --input-shape"):
        load_model(p)


def test_onnx_without_card_is_an_explicit_assumption(tmp_path):
    """Shape from the graph, classes from a forward pass, mean 0 / std 1 only with the warning; by content."""
    net = peer_net("wrn-16-4-nosub")
    p = tmp_path / "teacher.bin"  # the suffix says nothing: the bytes say ONNX
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(net, (x_batch(),), str(p), dynamo=False, opset_version=17, input_names=["x"],
                          output_names=["logits"], dynamic_axes={"x": {0: "n"}, "logits": {0: "n"}})
    model, card, info = load_model_ex(p, dataset_mean=[0.49, 0.48, 0.45], dataset_std=[0.25, 0.24, 0.26])
    assert (info.format, info.architecture_source, card.input_shape, card.num_classes) == \
        ("onnx", "graph", [3, 32, 32], 10)
    assert info.normalisation_source == "assumed" and card.mean == [0.0] * 3 and card.std == [1.0] * 3
    assert len(info.warnings) == 1 and "assumed mean 0 / std 1 (raw [0,1] inputs)" in info.warnings[0]
    assert "--mean 0.49,0.48,0.45" in info.warnings[0]  # the dataset's statistics are named, never used silently
    assert card.extra["warnings"] == info.warnings and card.provenance["normalisation_source"] == "assumed"
    x = x_batch()
    assert_logits(model, expected(net, *RAW, x), x)


def test_card_architecture_mismatch_names_the_matching_one(tmp_path):
    net = peer_net("wrn-16-4-nosub")
    p = tmp_path / "m.pt"
    torch.save(net.state_dict(), p)
    ModelCard("wrn-16-4", 10, [3, 32, 32], [0.0] * 3, [1.0] * 3).save(tmp_path / "m.card.json")
    with pytest.raises(UserError, match=r"does not match architecture 'wrn-16-4': missing keys sub_block1\..*"
                                        r"the weights match 'wrn-16-4-nosub'") as e:
        load_model(p)
    assert "\n" not in str(e.value)
    model, card = load_model(p, arch="wrn-16-4-nosub")  # the flag overrides the card's architecture
    assert card.architecture == "wrn-16-4-nosub"
