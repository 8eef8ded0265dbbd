"""Provenance records: software versions, the data fingerprint, the seed scheme, normalisation and its source."""
from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch

from infoard_deploy import provenance as P
from infoard_deploy.models import build_model


def test_software_versions_name_every_package():
    v = P.software_versions()
    assert {"python", *P.PACKAGES} <= set(v)
    assert v["python"] == ".".join(map(str, sys.version_info[:3]))
    assert v["torch"] == torch.__version__ and v["numpy"] == np.__version__
    import torchattacks

    assert v["torchattacks"] == torchattacks.__version__ == "3.5.1"
    assert v["infoard_deploy"]
    assert P._version("surely-not-an-installed-package") is None  # missing -> null


def test_provenance_import_is_light():
    code = "import sys, infoard_deploy.provenance; print('torch' in sys.modules, 'numpy' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out == ["False", "False"]


def _data(n=12, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 3, 4, 4, generator=g), torch.randint(0, 10, (n,), generator=g)


def test_fingerprint_is_stable_batch_independent_and_content_sensitive():
    x, y = _data()
    ref = P.DataFingerprint.of(x, y)
    assert ref.count == 12 and ref.to_json()["n"] == 12 and ref.shape == [3, 4, 4]
    assert len(ref.hexdigest()) == 64 and ref.hexdigest() == P.DataFingerprint.of(x.clone(), y.clone()).hexdigest()
    streamed = P.DataFingerprint()
    for sl in (slice(0, 5), slice(5, 6), slice(6, 12)):  # any batching of the same examples
        streamed.update(x[sl], y[sl])
    assert streamed.hexdigest() == ref.hexdigest()
    # numpy and float64 inputs hash as the float32 values that are evaluated
    assert P.DataFingerprint.of(x.numpy().astype(np.float64), y.numpy()).hexdigest() == ref.hexdigest()
    perm = torch.arange(12).roll(1)
    assert P.DataFingerprint.of(x[perm], y[perm]).hexdigest() != ref.hexdigest()  # order-sensitive
    x1 = x.clone()
    x1[7, 2, 3, 1] += 1e-3  # one pixel
    assert P.DataFingerprint.of(x1, y).hexdigest() != ref.hexdigest()
    y1 = y.clone()
    y1[0] = (y1[0] + 1) % 10  # one label
    assert P.DataFingerprint.of(x, y1).hexdigest() != ref.hexdigest()
    assert P.DataFingerprint.of(x[:11], y[:11]).hexdigest() != ref.hexdigest()
    with pytest.raises(ValueError):
        P.DataFingerprint.of(x, y[:3])


def test_fingerprint_summarises_dataset_indices():
    x, y = _data()
    fp = P.DataFingerprint().update(x[:5], y[:5], np.arange(10, 15)).update(x[5:], y[5:], torch.arange(15, 22))
    ind = fp.to_json()["indices"]
    assert ind["first"] == 10 and ind["last"] == 21 and ind["contiguous"] is True and len(ind["sha256"]) == 64
    assert fp.hexdigest() == P.DataFingerprint.of(x, y).hexdigest()  # indices do not enter the content hash
    gap = P.DataFingerprint().update(x[:2], y[:2], [0, 1]).update(x[2:4], y[2:4], [5, 6]).to_json()["indices"]
    assert gap["contiguous"] is False and gap["sha256"] != ind["sha256"]
    assert "indices" not in P.DataFingerprint.of(x, y).to_json()
    assert "indices" not in P.DataFingerprint().update(x[:2], y[:2], ["a.png", "b.png"]).to_json()


def test_seed_scheme_matches_the_evaluator():
    import importlib

    # by module path: the package also exposes an ``evaluate`` API function
    assert importlib.import_module("infoard_deploy.evaluation")._batch_seed is P.batch_seed
    s = P.seed_scheme("evaluate", seed=7, attacks=["clean", "pgd20", "aa"], batch_size=64, batches=3)
    assert s["seed"] == 7 and s["attack_order"] == ["clean", "pgd20", "aa"] and s["batch_size"] == 64
    # the formula in the record is the one the code uses
    for seed, b, a in ((0, 0, 1), (7, 2, 2), (123456, 99, 5)):
        formula = s["formula"].split("=", 1)[1].replace("mod", "%").replace("seed", str(seed))
        formula = formula.replace("batch", str(b)).replace("attack", str(a))
        assert eval(formula) == P.batch_seed(seed, b, a)  # noqa: S307 (our own string)
    v = P.seed_scheme("verify", seed=3)
    assert v["formula"] == "s = seed + batch" and v["seed"] == 3
    with pytest.raises(ValueError):
        P.seed_scheme("train")


def test_normalisation_record_and_its_warnings():
    w: list = []
    rec = P.normalisation_record((0.5, 0.4), [0.2, 0.3], "card", w)
    assert rec == {"mean": [0.5, 0.4], "std": [0.2, 0.3], "source": "card"} and w == []
    for src in ("flag", "file", "architecture"):
        P.normalisation_record([0.5], [0.2], src, w)
    assert w == []
    P.normalisation_record([0.5], [0.2], "assumed", w)
    assert len(w) == 1 and "assumed" in w[0]
    P.normalisation_record([0.5], [0.2], None, w)
    assert len(w) == 2 and "not recorded" in w[1]
    with pytest.raises(ValueError, match="source"):
        P.normalisation_record([0.5], [0.2], "guess")


def test_resolve_normalisation_reads_and_checks_the_model():
    model = build_model("cnn-small", 10, 1, 8, [0.25], [0.5])
    assert P.model_normalisation(model) == ([0.25], [0.5])
    w: list = []
    assert P.resolve_normalisation(model, {"source": "card"}, w) == {"mean": [0.25], "std": [0.5], "source": "card"}
    assert w == []
    P.resolve_normalisation(model, {"mean": [0.1], "std": [0.5], "source": "flag"}, w)
    assert len(w) == 1 and "model's own layer" in w[0]
    with pytest.raises(ValueError, match="mean, std and source"):
        P.resolve_normalisation(model, {"median": [0.1]}, w)
    assert P.model_normalisation(torch.nn.Linear(2, 2)) is None


def test_runtime_record():
    r = P.runtime_record("cpu")
    assert r["device"] == "cpu" and r["threads"] == torch.get_num_threads()
    assert isinstance(r["tf32_matmul"], bool) and isinstance(r["deterministic_algorithms"], bool)
