"""Robustness evaluation: attack ordering on a PGD-trained model, the sanity checks, JSON report, CLI."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from infoard_deploy.attacks import ATTACKS
from infoard_deploy.attacks.suite import AttackSpec
from infoard_deploy.data import BatchLoader, load_data
from infoard_deploy.evaluation import evaluate_model
from infoard_deploy.evaluation_checks import BoundsTracker, black_box_check
from infoard_deploy.models import build_model

EPS = 0.1  # the digits default radius
# AA with smaller budgets (3 targets, fewer FAB steps, 100 Square queries) keeps the file fast.
SMALL_AA = {"apgd-t": {"steps": 30, "n_target_classes": 3}, "fab-t": {"steps": 20, "n_target_classes": 3},
            "square": {"n_queries": 100}}



@pytest.fixture(scope="session")
def digits():
    return load_data("digits")


@pytest.fixture(scope="session")
def robust_model(digits):
    """cnn-small after 4 epochs of PGD-AT (PGD-5, eps 0.1) on digits: ~97% clean, ~75% PGD-20 (seeded)."""
    from infoard_deploy.attacks import pgd_ce

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # session fixtures start before the module's one-thread fixture
    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = build_model("cnn-small", 10, 1, 8, digits.mean, digits.std)
        opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
        gen = torch.Generator().manual_seed(0)
        loader = BatchLoader(digits.train, batch_size=64, shuffle=True, seed=0)
        for ep in range(4):
            loader.set_epoch(ep)
            for x, y, _ in loader:
                model.eval()
                x_adv = pgd_ce(model, x, y, EPS, EPS / 4, 5, generator=gen)
                model.train()
                opt.zero_grad()
                F.cross_entropy(model(x_adv), y).backward()
                opt.step()
    torch.set_num_threads(threads)
    return model.eval()


def _test_loader(digits, n, batch_size=32):
    return BatchLoader(digits.test, np.arange(n), batch_size=batch_size)


def test_attack_strength_ordering_and_cascade(digits, robust_model):
    res = evaluate_model(robust_model, _test_loader(digits, 48), EPS, "clean,pgd20,cw,aa", seed=0, progress=False,
                         overrides=SMALL_AA, dataset="digits", split="test")
    clean, pgd, cw, aa = (res.robust_acc(k) for k in ("clean", "pgd20", "cw", "aa"))
    assert clean > 0.85
    assert pgd < clean  # a finite-eps attack on a small model breaks something
    assert aa <= cw  # AutoAttack is at least as strong as CW-inf
    assert 0.3 < aa  # and the model is genuinely (partly) robust
    # per-sample logic: robust under an attack implies clean-correct; worst case = AND over attacks
    for name, a in res.attacks.items():
        assert not np.any(a.robust & ~res.clean), name
    assert np.array_equal(res.worst_case, np.logical_and.reduce([a.robust for a in res.attacks.values()]))
    assert res.worst_case_acc <= min(a.robust_acc for a in res.attacks.values())
    # aa flags agree with the cascade record: robust <=> never broken
    assert np.array_equal(res.attacks["aa"].robust, res.aa_broken_by == -1)
    assert np.array_equal(res.aa_broken_by == 0, ~res.clean)
    after = [c["robust_acc_after"] for c in res.aa_components]
    assert after == sorted(after, reverse=True) and after[-1] == pytest.approx(aa)
    assert res.checks["adv_in_bounds"].status == "ok"
    assert res.checks["logits_not_probabilities"].status == "ok"
    assert res.checks["deterministic_eval"].status == "ok"
    assert not res.errors


def test_json_report_has_every_field(digits, robust_model):
    res = evaluate_model(robust_model, _test_loader(digits, 20, batch_size=8), EPS, ["fgsm", "square", "aa"], seed=3,
                         progress=False, overrides=SMALL_AA, architecture="cnn-small", dataset="digits", split="test")
    j = json.loads(json.dumps(res.to_json()))
    for key in ("clean_acc", "AA", "eps", "architecture", "n_examples", "seed", "attack_settings", "dataset", "split",
                "checks", "robust_acc", "worst_case_acc", "timings", "aa_cascade", "per_sample"):
        assert key in j, key
    assert j["n_examples"] == 20 and j["seed"] == 3 and j["eps"] == EPS and j["architecture"] == "cnn-small"
    assert set(j["checks"]) == {"logits_not_probabilities", "deterministic_eval", "nonzero_input_gradients",
                                "adv_in_bounds", "black_box_beats_white_box"}
    assert all({"status", "level", "message"} <= set(c) for c in j["checks"].values())
    assert j["attack_settings"]["square"]["n_queries"] == 100
    assert j["attack_settings"]["aa"]["square"]["n_queries"] == 100  # component overrides reach the cascade
    assert j["AA"] == pytest.approx(100 * res.robust_acc("aa"))
    assert all(len(v) == 20 for v in j["per_sample"]["robust"].values())
    assert len(j["per_sample"]["aa_broken_by"]) == 20
    assert j["timings"]["aa"]["attacked"] == int(res.clean.sum())
    # provenance: enough to reproduce the numbers from the JSON alone
    from infoard_deploy.data import to_tensor
    from infoard_deploy.provenance import PACKAGES, DataFingerprint

    prov = j["provenance"]
    assert {"software", "data", "seed_scheme", "normalisation", "runtime"} <= set(prov)
    assert {"python", *PACKAGES} <= set(prov["software"]) and prov["software"]["torch"] == torch.__version__
    x, y = digits.test.get(np.arange(20))
    assert prov["data"]["sha256"] == DataFingerprint.of(to_tensor(x), torch.from_numpy(y)).hexdigest()
    assert prov["data"]["name"] == "digits" and prov["data"]["split"] == "test" and prov["data"]["n"] == 20
    assert prov["data"]["indices"]["first"] == 0 and prov["data"]["indices"]["last"] == 19
    assert prov["data"]["indices"]["contiguous"] is True
    s = prov["seed_scheme"]
    assert s["seed"] == 3 and s["attack_order"] == ["clean", "fgsm", "square", "aa"]
    assert s["batch_size"] == 8 and s["batches"] == 3 and "formula" in s
    assert prov["normalisation"] == {"mean": pytest.approx(list(digits.mean)), "std": pytest.approx(list(digits.std)),
                                     "source": None}  # read from the model; nobody said where it came from
    assert any("normalisation source not recorded" in w for w in j["warnings"])
    # every attack's full settings, AA components included, as the torchattacks objects hold them
    aa = j["attack_settings"]["aa"]
    assert aa["version"] == "custom" and aa["order"] == ["apgd-ce", "apgd-t", "fab-t", "square"]  # SMALL_AA
    assert aa["square"]["constructor"]["args"]["resc_schedule"] is False
    assert aa["square"]["constructor"]["args"]["n_queries"] == 100
    assert aa["apgd-t"]["constructor"]["args"]["steps"] == 30 and aa["fab-t"]["constructor"]["args"]["n_classes"] == 4
    assert j["attack_settings"]["fgsm"]["constructor"]["args"] == {"eps": EPS}
    assert all(c["checked"] == 20 for k, c in j["checks"].items() if k != "black_box_beats_white_box"
               and "checked" in c)


def test_normalisation_and_caller_warnings_are_recorded(digits, robust_model):
    loader = lambda: _test_loader(digits, 8)  # noqa: E731
    mean, std = list(digits.mean), list(digits.std)
    res = evaluate_model(robust_model, loader(), EPS, "clean", progress=False,
                         normalisation={"mean": mean, "std": std, "source": "card"}, warnings=["loader: note"])
    j = res.to_json()
    assert j["provenance"]["normalisation"]["source"] == "card" and j["warnings"] == ["loader: note"]
    j = evaluate_model(robust_model, loader(), EPS, "clean", progress=False,
                       normalisation={"mean": mean, "std": std, "source": "assumed"}).to_json()
    assert len(j["warnings"]) == 1 and "assumed" in j["warnings"][0]
    j = evaluate_model(robust_model, loader(), EPS, "clean", progress=False,
                       normalisation={"mean": [0.5], "std": [0.5], "source": "flag"}).to_json()
    assert any("model's own layer" in w for w in j["warnings"])
    from infoard_deploy.errors import UserError

    with pytest.raises(UserError, match="source"):
        evaluate_model(robust_model, loader(), EPS, "clean", progress=False, normalisation={"source": "guess"})


def test_streaming_stops_at_n_and_is_deterministic(digits, robust_model):
    pulled = []

    def batches():  # an endless stream of (x, y): evaluation must stop after n examples
        from infoard_deploy.data import to_tensor

        b = 0
        while True:
            idx = np.arange(b * 16, b * 16 + 16) % len(digits.test)
            x, y = digits.test.get(idx)
            pulled.append(b)
            b += 1
            yield to_tensor(x), torch.from_numpy(y)

    r1 = evaluate_model(robust_model, batches(), EPS, "pgd20,cw", n=40, seed=5, progress=False)
    assert r1.n_examples == 40 and len(pulled) == 3
    r2 = evaluate_model(robust_model, _test_loader(digits, 40, batch_size=16), EPS, "pgd20,cw", n=40, seed=5,
                        progress=False)
    for k in ("clean", "pgd20", "cw"):
        assert np.array_equal(r1.attacks[k].robust, r2.attacks[k].robust), k


class _Softmax(nn.Module):
    def __init__(self, net):
        super().__init__()
        self.net = net

    def forward(self, x):
        return self.net(x).softmax(1)


class _Noisy(nn.Module):
    """Dropout that stays on in eval mode: a randomised defence."""

    def __init__(self, net):
        super().__init__()
        self.net = net

    def forward(self, x):
        return self.net(F.dropout(x, 0.3, training=True))


class _Rounded(nn.Module):
    """Quantises the input to 5 levels first: zero input gradient (gradient masking)."""

    def __init__(self, net):
        super().__init__()
        self.net = net

    def forward(self, x):
        return self.net(torch.round(x * 4) / 4)


def test_softmax_output_is_flagged(digits, robust_model):
    res = evaluate_model(_Softmax(robust_model), _test_loader(digits, 16), EPS, "clean", progress=False)
    assert res.checks["logits_not_probabilities"].status == "warn"
    assert "logits_not_probabilities" in res.warned_checks
    assert any(w.startswith("logits_not_probabilities: ") for w in res.warnings)


def test_randomised_model_is_flagged(digits, robust_model):
    res = evaluate_model(_Noisy(robust_model), _test_loader(digits, 16), EPS, "clean", progress=False)
    assert res.checks["deterministic_eval"].status == "warn"


def test_gradient_masking_is_flagged(digits, robust_model):
    eps = 0.3
    res = evaluate_model(_Rounded(robust_model), _test_loader(digits, 32), eps, "clean,pgd20,square", seed=0,
                         progress=False, overrides={"square": {"n_queries": 200}})
    bb = res.checks["black_box_beats_white_box"]
    assert bb.status == "warn" and bb.details["square_only_breaks"] > 0
    assert res.robust_acc("square") < res.robust_acc("pgd20")
    assert res.checks["nonzero_input_gradients"].status == "warn"
    # the same model without the masking layer, at its training radius: Square finds nothing PGD missed
    plain = evaluate_model(robust_model, _test_loader(digits, 32), EPS, "clean,pgd20,square", seed=0,
                           progress=False, overrides={"square": {"n_queries": 200}})
    ok = plain.checks["black_box_beats_white_box"]
    assert ok.status == "ok" and ok.details["white_box_robust"] > 10
    assert plain.checks["nonzero_input_gradients"].status == "ok"


class _Marked(nn.Module):
    """Misbehaves only on images whose first pixel is exactly 1 (the second batch in the test below)."""

    def __init__(self, net, how):
        super().__init__()
        self.net, self.how = net, how

    def forward(self, x):
        out = self.net(x)
        mark = (x[:, 0, 0, 0] == 1.0)[:, None]
        bad = {"softmax": lambda: out.softmax(1), "flat": lambda: out.detach(),
               "noisy": lambda: out + torch.randn_like(out)}[self.how]()
        return torch.where(mark, bad, out)


@pytest.mark.parametrize("how,check", [("softmax", "logits_not_probabilities"), ("flat", "nonzero_input_gradients"),
                                       ("noisy", "deterministic_eval")])
def test_checks_cover_every_batch(digits, robust_model, how, check):
    """A model that is fine on the first batch and misbehaves on the second is still caught."""
    from infoard_deploy.data import to_tensor
    from infoard_deploy.evaluation_checks import deterministic_check, gradient_check

    x, y = digits.test.get(np.arange(16))
    x, y = to_tensor(x), torch.from_numpy(y)
    assert float(x[:, 0, 0, 0].max()) < 1.0
    x[8:, 0, 0, 0] = 1.0
    model = _Marked(robust_model, how).eval()
    batches = [(x[:8], y[:8]), (x[8:], y[8:])]
    # the first batch alone looks clean (what a first-batch-only check would have seen)
    assert deterministic_check(model, x[:8]).status == "ok" and gradient_check(model, x[:8], y[:8]).status == "ok"
    res = evaluate_model(model, batches, EPS, "clean", progress=False)
    c = res.checks[check]
    assert c.status == "warn" and c.details["checked"] == 16, c.message
    assert "16" in c.message
    if how == "flat":
        assert c.details["zero"] == 8 and c.details["of"] == 16
    elif how == "softmax":
        assert c.details["flagged_batches"] == [1]
    else:
        assert c.details["differing"] == 8
    assert check in res.warned_checks and all(res.checks[k].status == "ok" for k in
                                              ("logits_not_probabilities", "deterministic_eval",
                                               "nonzero_input_gradients") if k != check)


def test_out_of_bounds_attack_is_an_error(digits, robust_model, monkeypatch):
    class Overshoot:
        """A broken attack that steps 3 * eps and leaves [0,1]."""

        def __init__(self, model, eps):
            self.model, self.eps = model, eps

        def set_model_training_mode(self, **_):
            pass

        def __call__(self, x, y):
            return x + 3 * self.eps

    spec = AttackSpec(lambda e, k: {}, lambda t, e, s: Overshoot(t, e), True)
    monkeypatch.setitem(ATTACKS._items, "overshoot", spec)
    monkeypatch.setitem(ATTACKS._meta, "overshoot", {"about": "test only", "white_box": True})
    res = evaluate_model(robust_model, _test_loader(digits, 16), EPS, "overshoot", progress=False)
    chk = res.checks["adv_in_bounds"]
    assert chk.status == "error" and res.errors == ["adv_in_bounds"]
    assert chk.details["attacks"]["overshoot"]["violations"] == int(res.clean.sum())
    assert chk.details["attacks"]["overshoot"]["linf_excess"] == pytest.approx(2 * EPS, abs=1e-5)


def test_check_helpers():
    t = BoundsTracker()
    t.update("a", torch.tensor([-0.1, 0.0]), torch.tensor([0.0, 0.0]))
    assert t.result().status == "ok"
    t.update("a", torch.tensor([1e-3]), torch.tensor([0.0]))
    assert t.result().status == "error"
    wb = np.array([True, True, True, True])
    assert black_box_check(np.array([False] * 4), wb).status == "ok"
    assert black_box_check(np.array([True, False, False, False]), wb).status == "warn"
    assert black_box_check(None, wb).status == "skipped"


def test_bad_inputs_fail_cleanly(digits, robust_model):
    from infoard_deploy.errors import UserError

    with pytest.raises(UserError, match="did you mean"):
        evaluate_model(robust_model, _test_loader(digits, 8), EPS, "clean,pgd", progress=False)
    with pytest.raises(UserError, match=r"\(0, 1\]"):
        evaluate_model(robust_model, _test_loader(digits, 8), 0.0, "clean", progress=False)
    with pytest.raises(UserError, match=r"\[0,1\]"):
        evaluate_model(robust_model, [(torch.full((2, 1, 8, 8), 2.0), torch.zeros(2, dtype=torch.long))], EPS,
                       "clean", progress=False)


# ---- CLI -------------------------------------------------------------------------------------------------

@pytest.fixture(scope="session")
def ckpt(tmp_path_factory, robust_model, digits):
    from infoard_deploy.card import ModelCard
    from infoard_deploy.checkpoint import save_model

    path = tmp_path_factory.mktemp("eval") / "student.pt"
    card = ModelCard("cnn-small", 10, [1, 8, 8], list(digits.mean), list(digits.std), eps=EPS, dataset="digits")
    save_model(robust_model, path, card)
    return path


def test_cli_evaluate_json_and_out(cli, ckpt, tmp_path):
    out = tmp_path / "report.json"
    args = ["--device", "cpu", "evaluate", "--model", ckpt, "--data", "digits", "--attacks", "clean,fgsm,pgd20",
            "--n", "24", "--batch-size", "16", "--no-progress"]
    code, stdout, err = cli(*args, "--json", "--out", out)
    assert code == 0, err
    j = json.loads(stdout)
    assert j["n_examples"] == 24 and j["eps"] == EPS and j["architecture"] == "cnn-small" and j["dataset"] == "digits"
    assert j["split"] == "test" and "model_sha256" in j and 0 <= j["robust_acc"]["pgd20"] <= j["clean_acc"]
    assert json.loads(out.read_text())["robust_acc"] == j["robust_acc"]
    code, _, err = cli(*args, "--out", out)  # exists -> refuse without --force
    assert code == 2 and "--force" in err
    code, stdout, _ = cli(*args, "--out", out, "--force")  # table mode
    assert code == 0 and "worst case" in stdout and "pgd20" in stdout


def test_cli_bad_arguments_are_one_line(cli, ckpt):
    base = ["--device", "cpu", "evaluate", "--model", ckpt, "--data", "digits", "--n", "8", "--no-progress"]
    code, _, err = cli(*base, "--attacks", "clean,pgd2")
    assert code == 2 and "did you mean" in err and "pgd20" in err and len(err.strip().splitlines()) == 1
    code, _, err = cli(*base, "--eps", "0")
    assert code == 2 and "--eps" in err and len(err.strip().splitlines()) == 1
    code, _, err = cli(*base, "--attack-opt", "pgd20.stepz=3")
    assert code == 2 and "stepz" in err and len(err.strip().splitlines()) == 1
    code, _, err = cli(*base, "--split", "train")
    assert code == 2 and len(err.strip().splitlines()) == 1
