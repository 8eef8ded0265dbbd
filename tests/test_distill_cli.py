"""`infoard-deploy distill` end to end: teacher loading and checks, the CLI path, its one-line errors.

The trainer itself (resume, kill -9, metrics, teacher methods) is covered in test_train.py.
"""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from infoard_deploy.checkpoint import load_model
from infoard_deploy.errors import UserError
from infoard_deploy.models import build_model
from infoard_deploy.train import TrainConfig, build_teacher_method, train
from infoard_deploy.utils import seed_everything

# -- distill ----------------------------------------------------------------------------------------

@pytest.fixture(scope="session")
def digits_teacher(tmp_path_factory):
    """A PGD-AT cnn-small teacher on digits, trained with our own trainer (2 epochs)."""
    from infoard_deploy.data import load_data

    bundle = load_data("digits")
    out = tmp_path_factory.mktemp("teacher")
    seed_everything(1)
    r = train(build_model("cnn-small", bundle.num_classes, 1, 8, bundle.mean, bundle.std), build_teacher_method("pgd-at", steps=5), bundle,
              TrainConfig(epochs=2, batch_size=64, lr=0.05, out_dir=str(out), model_name="teacher", progress=False,
                          val_n=100, device="cpu"), card_base={"architecture": "cnn-small"})
    return r.final_model_path


def test_teacher_must_match_the_data(digits_teacher, tiny_bundle, tmp_path):
    from infoard_deploy.api.training import load_teacher
    from infoard_deploy.data import ArraySet, DataBundle

    t = load_teacher(str(digits_teacher), tiny_bundle, None, None, None)
    model, card = t.model, t.card
    assert card.architecture == "cnn-small" and not model.training
    # same 8x8 images, 5 classes: class-count mismatch
    five = DataBundle("five", tiny_bundle.train, tiny_bundle.test, [str(i) for i in range(5)], (1, 8, 8), [0.3], [0.4])
    with pytest.raises(UserError, match="has 10 classes but five has 5"):
        load_teacher(str(digits_teacher), five, None, None, None)
    big = ArraySet(np.zeros((4, 16, 16, 1), np.uint8), np.arange(4) % 10, "big")
    sixteen = DataBundle("big", big, big, [str(i) for i in range(10)], (1, 16, 16), [0.3], [0.4])
    with pytest.raises(UserError, match=r"takes \[1, 8, 8\] inputs but big images are \[1, 16, 16\]"):
        load_teacher(str(digits_teacher), sixteen, None, None, None)
    # a card-less state dict: the architecture is inferred from its keys and shapes (TRADES' WRN files)
    sd = torch.load(digits_teacher, weights_only=True)
    bare = tmp_path / "bare.pt"
    torch.save({"state_dict": {f"module.{k}": v for k, v in sd.items()}}, bare)
    t2 = load_teacher(str(bare), tiny_bundle, None, None, None)
    c2 = t2.card
    assert c2.architecture == "cnn-small" and c2.mean == [0.0] and c2.num_classes == 10  # raw [0,1] convention
    # ... unless it matches no registered architecture: then --teacher-arch is asked for
    odd = tmp_path / "odd.pt"
    torch.save({k: v for k, v in sd.items() if not k.startswith("fc1")}, odd)
    with pytest.raises(UserError, match="pass --teacher-arch"):
        load_teacher(str(odd), tiny_bundle, None, None, None)
    with pytest.raises(UserError, match="does not match architecture 'cnn-small'"):
        load_teacher(str(odd), tiny_bundle, "cnn-small", None, None)


@pytest.mark.parametrize("method,extra", [
    ("ard", ["--epochs", "2"]),  # full digits: learns well above chance (10 %) in 2 epochs
    ("infoard", ["--epochs", "1", "--train-limit", "256", "--opt", "mim_tau=0.2", "--asa"]),  # flags reach it (ASA is opt-in)
])
def test_distill_end_to_end(cli, digits_teacher, tmp_path, method, extra):
    out = tmp_path / method
    code, stdout, err = cli("--device", "cpu", "distill", "--teacher", digits_teacher, "--student", "cnn-small",
                            "--data", "digits", "--method", method, "--batch-size", "64", "--val-n", "64",
                            "--out", out, "--json", *extra)
    assert code == 0, err
    res = json.loads(stdout)
    assert res["completed"] and res["teacher_val_clean"] > 0.5
    model, card = load_model(out / "student.pt")
    assert card.architecture == "cnn-small" and card.provenance["teacher_sha256"]
    assert card.provenance["teacher_architecture"] == "cnn-small" and card.provenance["method"] == res["method"]
    h = res["history"]
    assert all(r["loss"] == r["loss"] for r in h)  # finite
    if method == "ard":
        assert len(h) == 2 and h[-1]["val_clean"] > 0.25 and h[-1]["loss"] < h[0]["loss"]
    else:
        assert card.provenance["asa"] is True and card.provenance["mim"] is True
        assert card.provenance["config"]["opts"] == {"mim_tau": "0.2"}


def test_distill_cli_errors(cli, digits_teacher, tmp_path):
    code, _, err = cli("distill", "--teacher", tmp_path / "nope.pt", "--student", "cnn-small", "--data", "digits")
    assert code == 2 and "not found" in err
    code, _, err = cli("distill", "--teacher", digits_teacher, "--student", "cnn-smal", "--data", "digits")
    assert code == 2 and "did you mean" in err
    code, _, err = cli("distill", "--teacher", digits_teacher, "--student", "cnn-small", "--data", "digits",
                       "--opt", "nonsense")
    assert code == 2 and "key=value" in err
    code, _, err = cli("distill", "--teacher", digits_teacher, "--student", "cnn-small", "--data", "fashion-mnist",
                       "--method", "ard", "--out", tmp_path / "x")
    assert code == 2 and "inputs but fashion-mnist images are [1, 28, 28]" in err
