"""Checkpoint loading in every supported layout and format, model cards, and atomic saving."""
from __future__ import annotations

import json
import warnings
from pathlib import Path

import pytest
import torch

from infoard_deploy.card import ModelCard, card_path_for, load_card, provenance
from infoard_deploy.checkpoint import load_model, load_state, save_model, save_state
from infoard_deploy.errors import UserError
from infoard_deploy.models import build_model
from infoard_deploy.models.wrn import WideResNet

MEAN, STD = [0.3], [0.4]
FLAGS = dict(arch="cnn-small", num_classes=10, input_shape=[1, 8, 8], mean=MEAN, std=STD)


@pytest.fixture
def ref():
    """A cnn-small whose BatchNorm running statistics are not the defaults (so they must load)."""
    torch.manual_seed(0)
    m = build_model("cnn-small", 10, 1, 8, MEAN, STD)
    m.train()
    with torch.no_grad():
        m(torch.rand(16, 1, 8, 8))
    return m.eval()


def _x(n=4, shape=(1, 8, 8)):
    return torch.rand(n, *shape, generator=torch.Generator().manual_seed(1))


def _same(a, b, x, atol=1e-6):
    with torch.no_grad():
        torch.testing.assert_close(a(x), b(x), atol=atol, rtol=1e-5)


@pytest.mark.parametrize("layout", ["raw", "state_dict", "model", "module", "normalized", "compiled"])
def test_state_dict_layouts(tmp_path, ref, layout):
    sd = ref.net.state_dict()
    obj = {
        "raw": sd,
        "state_dict": {"state_dict": sd, "epoch": 7, "best_acc": 0.5},
        "model": {"model": sd, "optimizer": {"state": {}, "param_groups": [{"lr": 0.1}]}},
        "module": {f"module.{k}": v for k, v in sd.items()},
        "normalized": ref.state_dict(),  # the Normalized wrapper itself: net.* plus mean/std
        "compiled": {f"_orig_mod.{k}": v for k, v in sd.items()},
    }[layout]
    p = tmp_path / "m.pt"
    torch.save(obj, p)
    model, card = load_model(p, **FLAGS)
    assert card.architecture == "cnn-small" and card.num_classes == 10 and not model.training
    _same(model, ref, _x())


@pytest.mark.parametrize("prefix", ["", "module."])
def test_trades_style_wrn_state_dict(tmp_path, prefix):
    """TRADES saves WideResNet.state_dict() (with the unused sub_block1) and feeds raw [0,1] pixels."""
    torch.manual_seed(0)
    net = WideResNet(16, 4, num_classes=10).eval()
    assert any(k.startswith("sub_block1.") for k in net.state_dict())
    p = tmp_path / "model_cifar_wrn.pt"
    torch.save({prefix + k: v for k, v in net.state_dict().items()}, p)
    model, card = load_model(p, arch="wrn-16-4")  # classes and channels are read from the weights
    assert card.num_classes == 10 and card.input_shape == [3, 32, 32] and card.mean == [0.0] * 3
    _same(model, net, _x(2, (3, 32, 32)), atol=1e-5)


def test_safetensors_with_card(tmp_path, ref):
    card = ModelCard("cnn-small", 10, [1, 8, 8], MEAN, STD, classes=[str(i) for i in range(10)], eps=0.1,
                     dataset="digits", provenance=provenance(seed=0))
    p = save_model(ref, tmp_path / "m.safetensors", card)
    assert card_path_for(p).exists()
    model, got = load_model(p)  # everything comes from the card beside the file
    d = got.to_dict()
    assert d["provenance"].pop("normalisation_source") == "card"
    assert d["provenance"].pop("architecture_source") == "card"
    assert d == load_card(p).to_dict() and got.eps == 0.1 and got.dataset == "digits"
    _same(model, ref, _x())


def test_torchscript(tmp_path, ref):
    p = tmp_path / "m.pt"
    torch.jit.trace(ref.net, _x(2)).save(str(p))
    model, card = load_model(p, num_classes=10, input_shape=[1, 8, 8], mean=MEAN, std=STD)
    assert card.architecture == "torchscript"
    _same(model, ref, _x())


def test_onnx_outputs_match_and_gradients_flow(tmp_path, ref):
    p = tmp_path / "m.onnx"
    # opset 17: onnx2torch 1.5 has no AveragePool-19 converter (what torch 2.14's default exporter emits)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(ref.net, (_x(2),), str(p), dynamo=False, opset_version=17, input_names=["x"],
                          output_names=["logits"], dynamic_axes={"x": {0: "n"}, "logits": {0: "n"}})
    model, card = load_model(p, num_classes=10, input_shape=[1, 8, 8], mean=MEAN, std=STD)
    assert card.architecture == "onnx"
    _same(model, ref, _x(), atol=1e-5)
    xa = _x().requires_grad_(True)
    xb = _x().requires_grad_(True)
    torch.nn.functional.cross_entropy(model(xa), torch.arange(4)).backward()
    torch.nn.functional.cross_entropy(ref(xb), torch.arange(4)).backward()
    assert xa.grad is not None and xa.grad.abs().sum() > 0
    torch.testing.assert_close(xa.grad, xb.grad, atol=1e-5, rtol=1e-4)


def test_model_card_round_trip(tmp_path):
    card = ModelCard("resnet18", 10, [3, 32, 32], [0.4914, 0.4822, 0.4465], [0.2471, 0.2435, 0.2616],
                     classes=[f"c{i}" for i in range(10)], eps=8 / 255, dataset="cifar10", precision="fp16",
                     provenance=provenance(method="infoard"), metrics={"clean": 0.8}, extra={"note": "x"})
    p = card.save(tmp_path / "m.card.json")
    back = load_card(p)
    assert back.to_dict() == card.to_dict() and back.eps == pytest.approx(8 / 255)
    assert load_card(tmp_path / "m.pt").metrics == {"clean": 0.8}  # found beside the artifact
    assert json.loads(p.read_text())["infoard_deploy_version"]


def test_save_is_atomic(tmp_path, ref, monkeypatch):
    card = ModelCard("cnn-small", 10, [1, 8, 8], MEAN, STD)
    p = save_model(ref, tmp_path / "m.pt", card)
    before = p.read_bytes()

    def broken_save(obj, f, *a, **k):  # the disk fills up half-way through the write
        if hasattr(f, "write"):
            f.write(before[: len(before) // 2])
        else:
            Path(f).write_bytes(before[: len(before) // 2])
        raise OSError("No space left on device")

    monkeypatch.setattr(torch, "save", broken_save)
    other = build_model("cnn-small", 10, 1, 8, MEAN, STD)
    with pytest.raises(OSError):
        save_model(other, p, card)
    monkeypatch.undo()
    assert p.read_bytes() == before  # the old checkpoint is intact ...
    assert sorted(q.name for q in tmp_path.iterdir()) == ["m.card.json", "m.pt"]  # ... and no temp file is left
    model, _ = load_model(p)
    _same(model, ref, _x())


def test_training_state_round_trip(tmp_path):
    state = {"epoch": 3, "model": {"w": torch.ones(2)}, "rng": [1, 2], "name": "x"}
    save_state(state, tmp_path / "s.pt")
    back = load_state(tmp_path / "s.pt")
    assert back["epoch"] == 3 and torch.equal(back["model"]["w"], torch.ones(2)) and back["name"] == "x"


def test_inspect_command(cli, tmp_path, ref):
    card = ModelCard("cnn-small", 10, [1, 8, 8], MEAN, STD, dataset="digits")
    p = save_model(ref, tmp_path / "m.pt", card)
    code, out, err = cli("inspect", p, "--json")
    assert code == 0, err
    rep = json.loads(out)
    assert rep["format"] == "state-dict" and rep["card"]["architecture"] == "cnn-small"
    assert rep["parameters"] == sum(q.numel() for q in ref.parameters())
    assert rep["forward"]["output_shape"] == [2, 10] and rep["forward"]["finite"]
    with torch.no_grad():
        expect = ref(torch.rand((2, 1, 8, 8), generator=torch.Generator().manual_seed(0))).argmax(1).tolist()
    assert rep["forward"]["predictions"] == expect
    ts = tmp_path / "t.pt"
    torch.jit.trace(ref.net, _x(2)).save(str(ts))
    code, out, err = cli("inspect", ts, "--num-classes", "10", "--input-shape", "1,8,8", "--mean", "0.3",
                         "--std", "0.4")
    assert code == 0, err
    assert "torchscript" in out and "[2, 10]" in out
    code, out, _ = cli("inspect", p, "--input-shape", "1x16x16", "--json")  # flags override the card
    assert code == 0 and json.loads(out)["forward"]["input_shape"] == [2, 1, 16, 16]


def test_architecture_inferred_without_card(tmp_path, ref):
    """No card, no --arch: the architecture comes from the weights, the normalisation is an explicit assumption."""
    from infoard_deploy.checkpoint import load_model_ex

    p = tmp_path / "m.pt"
    torch.save(ref.net.state_dict(), p)
    model, card, info = load_model_ex(p)
    assert card.architecture == "cnn-small" and info.architecture_source == "inferred"
    assert card.input_shape == [1, 8, 8] and card.num_classes == 10  # channels / classes from stem and head
    assert info.normalisation_source == "assumed" and card.mean == [0.0] and card.std == [1.0]
    assert len(info.warnings) == 1 and "assumed mean 0 / std 1 (raw [0,1] inputs)" in info.warnings[0]
    assert card.extra["warnings"] == info.warnings and card.provenance["normalisation_source"] == "assumed"
    # a state dict that matches nothing: the error names the closest registered architecture and asks for --arch
    torch.save({k: v for k, v in ref.net.state_dict().items() if not k.startswith("fc1")}, p)
    closest = r"match no registered architecture \(closest: 'cnn-(mnist-)?small' \(2 missing.*pass --arch"
    with pytest.raises(UserError, match=closest):
        load_model(p)


def test_own_dynamo_onnx_export_loads_back_as_differentiable_teacher(tmp_path):
    """Graphs from torch's dynamo exporter (opset 18: ReduceMean axes input, Reshape allowzero) are
    rewritten for onnx2torch, so a student exported by this toolkit can serve as an ONNX teacher."""
    import torch

    from infoard_deploy.checkpoint import load_model
    from infoard_deploy.exporting.onnx import export_onnx
    from infoard_deploy.models import build_model

    torch.manual_seed(0)
    m = build_model("cnn-mnist-small", 10, 1, 28, [0.5], [0.25]).eval()
    p = export_onnx(m, tmp_path / "t.onnx", (1, 28, 28))
    t, card = load_model(p, num_classes=10, input_shape=[1, 28, 28], mean=[0.0], std=[1.0])
    x = torch.rand(3, 1, 28, 28, requires_grad=True)
    out = t(x)
    assert torch.allclose(out, m(x), atol=1e-5)
    out.sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0


def test_identical_weights_give_identical_files(tmp_path, ref):
    """The weight file's bytes depend on the weights only: not on the file name, the temp name or the time."""
    from infoard_deploy.utils import sha256_file

    card = ModelCard("cnn-small", 10, [1, 8, 8], MEAN, STD)
    for suffix in (".pt", ".safetensors"):
        a = save_model(ref, tmp_path / "a" / f"m{suffix}", card)
        b = save_model(ref, tmp_path / "b" / f"another-name{suffix}", card)
        first = sha256_file(a)
        save_model(ref, a, card)  # saved again over itself
        assert sha256_file(a) == sha256_file(b) == first
    copy = build_model("cnn-small", 10, 1, 8, MEAN, STD)
    copy.load_state_dict(ref.state_dict())  # other tensors, same values
    assert sha256_file(save_model(copy, tmp_path / "c.pt", card)) == sha256_file(tmp_path / "a" / "m.pt")
    state = {"epoch": 3, "model": ref.net.state_dict(), "rng": [1, 2]}
    save_state(state, tmp_path / "s1.pt")
    save_state(state, tmp_path / "s2.pt")
    assert sha256_file(tmp_path / "s1.pt") == sha256_file(tmp_path / "s2.pt")


def _broken_torchscript(ref, path):
    import zipfile

    good = path.with_name("good.pt")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.jit.trace(ref.net, _x(2)).save(str(good))
    with zipfile.ZipFile(good) as src, zipfile.ZipFile(path, "w") as out:
        for n in src.namelist():  # code that does not parse: torch's message starts with a newline
            out.writestr(n, b"this is not ((( python" if n.endswith(".py") else src.read(n))


@pytest.mark.parametrize("case,match", [
    ("random", r"r\.bin is not a recognised checkpoint format \(expected a PyTorch state dict"),
    ("empty", r"e\.pt is empty"),
    ("torchscript", r"t\.pt looks like a TorchScript archive but torch\.jit\.load cannot read it \(\S"),
    ("evil", r"refused to load p\.pt: it is a pickle that would run code"),
    ("plain-pickle", r"q\.pkl is corrupt or not a PyTorch checkpoint \(\S"),
])
def test_unreadable_files_give_one_line_reasons(tmp_path, ref, case, match):
    import pickle

    if case == "random":
        p = tmp_path / "r.bin"
        noise = torch.randint(0, 256, (4000,), generator=torch.Generator().manual_seed(0)).tolist()
        p.write_bytes(b"\x13\x37" + bytes(noise))
    elif case == "empty":
        p = tmp_path / "e.pt"
        p.write_bytes(b"")
    elif case == "torchscript":
        p = tmp_path / "t.pt"
        _broken_torchscript(ref, p)
    elif case == "evil":
        p = tmp_path / "p.pt"
        torch.save({"state_dict": ref.net.state_dict(), "x": ModelCard("cnn-small", 10, [1, 8, 8], MEAN, STD)}, p)
    else:
        p = tmp_path / "q.pkl"
        p.write_bytes(pickle.dumps({"a": 1}, protocol=4))
    with pytest.raises(UserError, match=match) as err:
        load_model(p, **FLAGS)
    assert "\n" not in str(err.value) and str(err.value).strip() == str(err.value)
