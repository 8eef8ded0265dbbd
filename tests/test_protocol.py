"""Comparison protocols: ``official`` keeps each method's published settings; ``matched`` gives every method
the same KL reduction, schedule and attack budget (InfoARD's), so only the objective differs; both are
recorded by ``method.describe()``."""
from __future__ import annotations

import json

import pytest
import torch

from infoard_deploy.errors import UserError
from infoard_deploy.methods import METHODS, StepContext, build_method, matched_settings, method_options
from infoard_deploy.models import build_model

NAMES = METHODS.names()
OFFICIAL = {  # docs/reference-ard-methods.md §2-5 and §11
    "ard": ("mean", 200, 2e-4), "rslad": ("mean", 300, 2e-4), "iad": ("batchmean", 200, 2e-4),
    "adaad": ("mean", 200, 5e-4), "infoard": ("batchmean", 300, 2e-4),
}


def test_official_is_unchanged():
    for name in NAMES:
        d = build_method(name).describe()
        red, epochs, wd = OFFICIAL[name]
        assert d["protocol"] == "official" and d["kl_reduction"] == red
        assert d["schedule"]["epochs"] == epochs and d["schedule"]["weight_decay"] == wd
        assert d["attack"]["steps"] == 10 and d["attack"]["step_ratio"] == 0.25 and d["attack"]["eps_scale"] == 1.0
        assert build_method(name, protocol="official").describe() == d
        assert method_options(name, protocol="official") == method_options(name)
    # the class-level schedules are not touched by building matched methods
    build_method("adaad", protocol="matched")
    assert METHODS.get("adaad").schedule.weight_decay == 5e-4 and build_method("adaad").schedule.epochs == 200


def test_matched_shares_reduction_schedule_and_attack():
    ds = {n: build_method(n, protocol="matched").describe() for n in NAMES}
    ref = build_method("infoard").describe()
    shared = matched_settings()
    assert shared["kl_reduction"] == "batchmean"
    for name, d in ds.items():
        assert d["protocol"] == "matched" and d["kl_reduction"] == "batchmean", name
        assert d["schedule"] == ref["schedule"], name  # InfoARD's: SGD 0.1, wd 2e-4, batch 128, 300 epochs
        budget = {k: d["attack"][k] for k in ("steps", "step_ratio", "eps_scale")}
        assert budget == {k: ref["attack"][k] for k in budget} == {k: shared[k] for k in budget}, name
        assert d["overrides"] == []
        json.dumps(d)  # results store it as is
    # the objectives still differ: attack loss form and BN mode stay per method
    assert ds["ard"]["attack"]["init"] == "uniform" and ds["rslad"]["attack"]["init"] == "normal"
    assert ds["ard"]["options"]["tau"] == 30.0 and ds["rslad"]["options"]["w_adv"] == pytest.approx(5 / 6)
    # InfoARD on another base gets the matched schedule too (AdaAD's official wd is 5e-4)
    assert build_method("infoard", base="adaad", protocol="matched").describe()["schedule"] == ref["schedule"]


def test_matched_plug_ins_equal_infoard_on_that_base():
    """Under matched, ``<base>`` + MIM is InfoARD-on-<base> without ASA, option for option."""
    for base in ("ard", "rslad", "iad", "adaad"):
        a = build_method(base, mim=True, protocol="matched").describe()
        b = build_method("infoard", base=base, asa=False, protocol="matched").describe()
        assert a["options"] == b["options"] and a["mim"] == b["mim"], base


def _models():
    torch.manual_seed(0)
    return (build_model("cnn-small", 10, 1, 8, [0.5], [0.25]).train(),
            build_model("cnn-mnist", 10, 1, 8, [0.5], [0.25]).eval())


@pytest.mark.parametrize("name", ["ard", "rslad", "adaad"])
def test_matched_loss_is_per_sample_kl(name):
    """The matched loss equals the official objective built with kl_reduction=batchmean (C times the element mean)."""
    g = torch.Generator().manual_seed(1)
    x, y = torch.rand(6, 1, 8, 8, generator=g), torch.randint(0, 10, (6,), generator=g)
    losses = []
    for kw in ({"protocol": "matched"}, {"kl_reduction": "batchmean"}, {}):
        s, t = _models()
        m = build_method(name, **kw)
        m.setup(s, t, num_train=8, num_classes=10, eps=0.1, student_arch="cnn-small", teacher_arch="cnn-mnist",
                input_shape=[1, 8, 8])
        out = m(s, t, x, y, torch.arange(6), StepContext(0, 1, 0.1, 10, generator=torch.Generator().manual_seed(2)))
        losses.append(out.loss.item())
    assert losses[0] == pytest.approx(losses[1], rel=1e-6)
    assert losses[0] != pytest.approx(losses[2], rel=1e-3)


def test_protocol_options_and_errors():
    m = build_method("ard", protocol="matched", steps="3")  # a grid passes the same budget to every method
    d = m.describe()
    assert d["attack"]["steps"] == 3 and d["overrides"] == ["steps"] and d["kl_reduction"] == "batchmean"
    assert method_options("ard", protocol="matched")["kl_reduction"] == "batchmean"
    assert build_method("ard", protocol=" Matched ").protocol == "matched"
    with pytest.raises(UserError, match="protocol 'official' to set kl_reduction"):
        build_method("rslad", protocol="matched", kl_reduction="mean")
    with pytest.raises(UserError, match="protocol must be one of official, matched"):
        build_method("ard", protocol="fair")
    assert build_method("rslad", kl_reduction="sum").describe()["overrides"] == ["kl_reduction"]
