"""RobustBench names: the table (architecture, normalisation, dataset, threat model, Drive id), resolving
``robustbench:NAME`` in RobustBench's model-dir layout, the normalisation its classes apply (which the files
lack), and the Google Drive fetch (exercised offline with a fake server)."""
from __future__ import annotations

import io
import re
import urllib.error

import pytest
import torch
from torch import nn

from infoard_deploy.checkpoint import load_model, load_model_ex
from infoard_deploy.errors import UserError
from infoard_deploy.models import MODELS
from infoard_deploy.models import robustbench as rbm
from infoard_deploy.models.normalisation import CIFAR10_MEAN, CIFAR100_MEAN, CIFAR100_STD
from infoard_deploy.models.robustbench import TABLE, lookup, resolve_robustbench

C10_MU = [0.4914, 0.4822, 0.4465]
C10_SIGMA = [0.2471, 0.2435, 0.2616]

# name -> (architecture, mean) as RobustBench's cifar10.py / cifar100.py build them
EXPECTED = {
    "Carmon2019Unlabeled": ("wrn-28-10", [0.0] * 3),
    "Zhang2019Theoretically": ("wrn-34-10", [0.0] * 3),
    "Wu2020Adversarial": ("wrn-34-10-nosub", [0.0] * 3),
    "Wu2020Adversarial_extra": ("wrn-28-10", [0.0] * 3),
    "Gowal2020Uncovering_28_10_extra": ("dm-wrn-28-10", list(CIFAR10_MEAN)),
    "Gowal2020Uncovering_70_16_extra": ("dm-wrn-70-16", list(CIFAR10_MEAN)),
    "Rebuffi2021Fixing_28_10_cutmix_ddpm": ("dm-wrn-28-10", list(CIFAR10_MEAN)),
    "Rebuffi2021Fixing_70_16_cutmix_extra": ("dm-wrn-70-16", list(CIFAR10_MEAN)),
    "Sehwag2021Proxy": ("wrn-34-10-nosub", [0.0] * 3),
    "Chen2021LTD_WRN34_10": ("wrn-34-10-nosub", [0.0] * 3),
    "Chen2021LTD_WRN34_20": ("wrn-34-20-nosub", [0.0] * 3),
    "Addepalli2022Efficient_WRN_34_10": ("wrn-34-10-nosub", [0.0] * 3),
    "Standard": ("wrn-28-10-nosub", [0.0] * 3),
    "Andriushchenko2020Understanding": ("preact-resnet18-nobn", [0.0] * 3),
    "Wong2020Fast": ("preact-resnet18-nobn", C10_MU),
    "Rice2020Overfitting": ("wrn-34-20-nosub", C10_MU),
    "Hendrycks2019Using": ("wrn-28-10-nosub", [0.5] * 3),
    "Sridhar2021Robust_34_15": ("wrn-34-15", [0.0] * 3),
    "Jia2022LAS-AT_70_16": ("wrn-70-16-nosub", [0.0] * 3),
}


@pytest.mark.parametrize("name", list(EXPECTED))
def test_cifar10_linf_entries(name):
    arch, mean = EXPECTED[name]
    e = lookup(name)
    assert (e.arch, e.dataset, e.threat_model, e.num_classes) == (arch, "cifar10", "Linf", 10)
    assert e.mean == pytest.approx(mean)


def test_other_datasets_and_threat_models():
    e = lookup("robustbench:cifar100/Linf/Wu2020Adversarial")  # its class normalises with mu/sigma
    assert e.arch == "wrn-34-10-nosub" and e.num_classes == 100
    assert e.mean == pytest.approx([0.50708, 0.48655, 0.44092], abs=1e-5)
    g = lookup("cifar100/Gowal2020Uncovering")  # DMWideResNet(mean=CIFAR100_MEAN, ...)
    assert g.arch == "dm-wrn-70-16" and g.mean == list(CIFAR100_MEAN) and g.std == list(CIFAR100_STD)
    assert lookup("cifar100/linf/Hendrycks2019Using").std == [0.5] * 3
    k = lookup("CIFAR10/corruptions/Kireev2021Effectiveness_RLAT")
    assert k.arch == "preact-resnet18" and k.mean == pytest.approx(C10_MU)
    assert lookup("cifar10/l2/Rice2020Overfitting").arch == "preact-resnet18"  # PreActBlockV2 + bn_before_fc
    with pytest.raises(UserError, match="did you mean Wu2020Adversarial"):
        lookup("Wu2020Adverserial")
    with pytest.raises(UserError, match="threat model 'Linfinity' is unknown"):
        lookup("cifar10/Linfinity/Standard")


def test_table_is_consistent():
    assert len(TABLE) >= 90
    for (ds, tm, name), e in TABLE.items():
        assert e.arch in MODELS, name
        assert ds in rbm.DATASETS and tm in rbm.THREATS and (e.name, e.dataset, e.threat_model) == (name, ds, tm)
        assert re.fullmatch(r"[0-9A-Za-z_-]{25,40}", e.gdrive_id), name
        assert len(e.mean) == len(e.std) == 3 and all(s > 0 for s in e.std)
        assert e.path("models").as_posix() == f"models/{ds}/{tm}/{name}.pt"
        assert MODELS.meta(e.arch)["normalisation"] is None or e.normalisation == "dm", name


def test_missing_file_says_where_to_put_it(tmp_path):
    with pytest.raises(UserError) as err:
        resolve_robustbench("Wu2020Adversarial", tmp_path)
    msg = str(err.value)
    assert "\n" not in msg and str(tmp_path / "cifar10" / "Linf" / "Wu2020Adversarial.pt") in msg
    assert "13LBcgNvhFppCFG22i1xATrahFPfMgXGf" in msg
    with pytest.raises(UserError, match=r"put its checkpoint at .*cifar100/Linf/Sehwag2021Proxy\.pt"):
        load_model("robustbench:cifar100/Sehwag2021Proxy", robustbench_dir=tmp_path)


def _net(arch, k=10, seed=0):
    torch.manual_seed(seed)
    net = MODELS.get(arch)(num_classes=k, in_channels=3)
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.2, 0.2)
                m.running_var.uniform_(0.5, 1.5)
    return net.eval()


def _logits(net, mean, std, x):
    with torch.no_grad():
        return net((x - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1))


def test_wong2020fast_gets_its_mu_sigma(tmp_path):
    """RobustBench's Wong2020Fast file has no mu/sigma (RobustBench loads it with strict=False): the table's
    normalisation is applied, whether the file is named ``robustbench:...`` or just sits in that layout."""
    net = _net("preact-resnet18-nobn")
    path = tmp_path / "cifar10" / "Linf" / "Wong2020Fast.pt"
    path.parent.mkdir(parents=True)
    torch.save({"state_dict": {f"module.{k}": v for k, v in net.state_dict().items()}}, path)
    assert resolve_robustbench("Wong2020Fast", tmp_path) == (path, "preact-resnet18-nobn", lookup("Wong2020Fast").mean,
                                                            lookup("Wong2020Fast").std, "cifar10")
    x = torch.rand(2, 3, 32, 32)
    for spec in ("robustbench:Wong2020Fast", path):
        model, card, info = load_model_ex(spec, robustbench_dir=tmp_path)
        assert (info.architecture_source, info.normalisation_source) == ("robustbench", "architecture")
        assert card.dataset == "cifar10" and card.provenance["robustbench"] == "cifar10/Linf/Wong2020Fast"
        with torch.no_grad():
            torch.testing.assert_close(model(x), _logits(net, C10_MU, C10_SIGMA, x), atol=1e-5, rtol=1e-5)
    # the same model saved by someone from robustbench.load_model(...).state_dict(): mu/sigma in the file win
    torch.save({**net.state_dict(), "mu": torch.full((1, 3, 1, 1), 0.5), "sigma": torch.full((1, 3, 1, 1), 0.25)}, path)
    _, card, info = load_model_ex("robustbench:Wong2020Fast", robustbench_dir=tmp_path)
    assert info.normalisation_source == "file" and card.mean == [0.5] * 3 and card.std == [0.25] * 3


def test_hendrycks2019_takes_2x_minus_1(tmp_path):
    net = _net("wrn-28-10-nosub")  # 36M parameters: the real architecture of the entry
    path = tmp_path / "cifar10" / "Linf" / "Hendrycks2019Using.pt"
    path.parent.mkdir(parents=True)
    torch.save(net.state_dict(), path)
    model, card, info = load_model_ex("robustbench:Hendrycks2019Using", robustbench_dir=tmp_path)
    assert card.architecture == "wrn-28-10-nosub" and info.normalisation_source == "architecture"
    assert card.mean == [0.5] * 3 and card.std == [0.5] * 3
    x = torch.rand(1, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(model(x), net(2 * x - 1), atol=1e-5, rtol=1e-5)


def test_andriushchenko_last_wrapper(tmp_path):
    net = _net("preact-resnet18-nobn")
    path = tmp_path / "cifar10" / "Linf" / "Andriushchenko2020Understanding.pt"
    path.parent.mkdir(parents=True)
    torch.save({"last": net.state_dict(), "best": net.state_dict()}, path, _use_new_zipfile_serialization=False)
    model, card, info = load_model_ex("robustbench:Andriushchenko2020Understanding", robustbench_dir=tmp_path)
    assert info.format == "state-dict-legacy" and card.mean == [0.0] * 3 and info.normalisation_source == "architecture"
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(model(x), net(x), atol=1e-5, rtol=1e-5)


class _Resp(io.BytesIO):
    def __init__(self, body: bytes, ctype: str):
        super().__init__(body)
        self.headers = {"Content-Type": ctype}


def test_download_follows_drive_confirmation(tmp_path, monkeypatch):
    buf = io.BytesIO()
    torch.save({"w": torch.ones(2)}, buf)
    page = ('<html><form id="download-form" action="https://drive.usercontent.google.com/download" method="get">'
            '<input type="hidden" name="id" value="FILEID"><input type="hidden" name="confirm" value="t">'
            '<input type="hidden" name="uuid" value="abc-123"></form></html>').encode()
    urls = []

    def fake_open(url, timeout):
        urls.append(url)
        if len(urls) == 1:
            return _Resp(page, "text/html; charset=utf-8")
        return _Resp(buf.getvalue(), "application/octet-stream")

    monkeypatch.setattr(rbm, "_open", fake_open)
    dest = tmp_path / "cifar10" / "Linf" / "Standard.pt"
    path, arch, *_ = resolve_robustbench("Standard", tmp_path, download=True)
    assert path == dest and arch == "wrn-28-10-nosub" and dest.read_bytes() == buf.getvalue()
    assert "id=1t98aEuzeTL8P7Kpd5DIrCoCL21BNZUhC" in urls[0]
    assert urls[1].startswith("https://drive.usercontent.google.com/download?") and "uuid=abc-123" in urls[1]


def test_download_failures_are_one_line(tmp_path, monkeypatch):
    monkeypatch.setattr(rbm, "_open", lambda url, timeout: _Resp(b"<html>Quota exceeded</html>", "text/html"))
    with pytest.raises(UserError, match=r"\(quota or access page\); download https://drive.google.com/file/d/"):
        resolve_robustbench("Standard", tmp_path, download=True)
    monkeypatch.setattr(rbm, "_open", lambda url, timeout: _Resp(b"not a model at all", "application/octet-stream"))
    with pytest.raises(UserError, match="returned no checkpoint"):
        resolve_robustbench("Standard", tmp_path, download=True)

    def offline(url, timeout):
        raise urllib.error.URLError("Name or service not known")

    monkeypatch.setattr(rbm, "_open", offline)
    with pytest.raises(UserError, match=r"cannot download Google Drive file .*Name or service not known") as err:
        resolve_robustbench("Standard", tmp_path, download=True)
    assert "\n" not in str(err.value)
    assert not list(tmp_path.rglob("*.pt")) and not list(tmp_path.rglob(".*"))  # no partial files left


def test_a_file_merely_named_like_robustbench_falls_back_to_inference(tmp_path):
    path = tmp_path / "cifar10" / "Linf" / "Standard.pt"  # the table says wrn-28-10-nosub; this is not one
    path.parent.mkdir(parents=True)
    torch.save(_net("wrn-16-4").state_dict(), path)
    _, card, info = load_model_ex(path)
    assert card.architecture == "wrn-16-4" and info.architecture_source == "inferred"
    assert "robustbench" not in card.provenance and info.normalisation_source == "assumed"


def test_robustbench_names_in_the_commands(tmp_path, cli):
    """`evaluate --model robustbench:NAME --model-dir DIR` (data from the table, normalisation from the table) and
    `distill --teacher robustbench:NAME` with no file: one line saying where to put it."""
    import json
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).parent))
    from datafiles import write_cifar

    net = _net("preact-resnet18-nobn")
    path = tmp_path / "models" / "cifar10" / "Linf" / "Wong2020Fast.pt"
    path.parent.mkdir(parents=True)
    torch.save({"state_dict": {f"module.{k}": v for k, v in net.state_dict().items()}}, path)
    data, _ = write_cifar(tmp_path / "data", "cifar10", per_batch=2, n_test=6)
    code, out, err = cli("--device", "cpu", "evaluate", "--model", "robustbench:Wong2020Fast", "--model-dir",
                         tmp_path / "models", "--data-dir", data, "--attacks", "clean", "--json", "--no-progress")
    assert code == 0, err
    rep = json.loads(out)
    assert rep["dataset"] == "cifar10" and rep["n_examples"] == 6
    assert rep["provenance"]["normalisation"]["source"] == "architecture"
    assert rep["model_loading"]["architecture_source"] == "robustbench" and rep["model"] == str(path)
    code, _, err = cli("--device", "cpu", "distill", "--teacher", "robustbench:Carmon2019Unlabeled", "--model-dir",
                       tmp_path / "models", "--student", "resnet18", "--data", "cifar10", "--data-dir", data,
                       "--out", tmp_path / "o")
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert str(tmp_path / "models" / "cifar10" / "Linf" / "Carmon2019Unlabeled.pt") in err
