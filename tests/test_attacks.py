"""Evaluation attack suite: threat-model bounds for every registered attack, seeding, settings, the AA cascade."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from infoard_deploy.attacks import ATTACKS
from infoard_deploy.attacks.cascade import AutoAttackCascade
from infoard_deploy.attacks.cw import cw_margin_loss
from infoard_deploy.attacks.suite import as_target, make_attack, project_into_ball
from infoard_deploy.errors import UserError
from infoard_deploy.models import build_model

# Small settings: the bounds must hold whatever the budget, so tiny budgets keep the file fast.
FAST = {"pgd20": {"steps": 5}, "cw": {"steps": 5}, "apgd-ce": {"steps": 5}, "apgd-t": {"steps": 5, "n_target_classes": 3},
        "fab-t": {"steps": 5, "n_target_classes": 3}, "square": {"n_queries": 40}}
FAST["aa"] = {k.replace("-", "_"): v for k, v in FAST.items() if k in ("apgd-ce", "apgd-t", "fab-t", "square")}



@pytest.fixture(scope="module")
def toy():
    """cnn-small after one plain epoch on digits (no robustness); labels = its own predictions on 6 test
    images, so every sample is clean-correct and gets attacked."""
    from infoard_deploy.data import BatchLoader, load_data, to_tensor

    bundle = load_data("digits")
    torch.manual_seed(0)
    model = build_model("cnn-small", 10, 1, 8, bundle.mean, bundle.std)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    for xb, yb, _ in BatchLoader(bundle.train, batch_size=64, shuffle=True, seed=0):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(xb), yb).backward()
        opt.step()
    model.eval()
    x = to_tensor(bundle.test.get(np.arange(6))[0])
    with torch.no_grad():
        y = model(x).argmax(1)
    return model, x, y


@pytest.mark.parametrize("name", ATTACKS.names())
def test_every_attack_stays_in_the_threat_model(toy, name):
    model, x, y = toy
    eps = 0.2
    atk = make_attack(name, model, eps, num_classes=10, seed=3, **FAST.get(name, {}))
    adv = atk(x, y)
    assert adv.shape == x.shape and torch.isfinite(adv).all()
    assert float((adv - x).abs().max()) <= eps + 1e-6
    assert float(adv.min()) >= 0.0 and float(adv.max()) <= 1.0
    with torch.no_grad():
        broken = int((model(adv).argmax(1) != y).sum())
    if name == "clean":
        assert torch.equal(adv, x) and broken == 0
    else:  # an untrained model at eps 0.2: every attack must actually do something
        assert broken > 0, f"{name} broke nothing"


def test_attacks_are_seeded_and_leave_the_global_rng_alone(toy):
    model, x, y = toy
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    a1 = make_attack("pgd20", model, 0.05, num_classes=10, seed=7, steps=3)(x, y)
    after = torch.rand(3)
    a2 = make_attack("pgd20", model, 0.05, num_classes=10, seed=7, steps=3)(x, y)
    a3 = make_attack("pgd20", model, 0.05, num_classes=10, seed=8, steps=3)(x, y)
    assert torch.equal(after, expected)  # torchattacks' re-seeding did not leak out
    assert torch.equal(a1, a2) and not torch.equal(a1, a3)


def test_defaults_follow_the_published_settings(toy):
    model, _, _ = toy
    eps = 8 / 255
    pgd = make_attack("pgd20", model, eps, num_classes=10)
    assert pgd.settings == {"steps": 20, "alpha": pytest.approx(2 / 255), "random_start": True}
    cw = make_attack("cw", model, eps, num_classes=10)
    assert cw.settings["steps"] == 30 and cw.settings["alpha"] == pytest.approx(2 / 255)
    aa = make_attack("aa", model, eps, num_classes=10)
    assert aa.names == ["apgd-ce", "apgd-t", "fab-t", "square"]
    s = aa.settings
    assert s["apgd-ce"]["steps"] == 100 and s["apgd-t"]["n_target_classes"] == 9
    assert s["fab-t"]["n_target_classes"] == 9 and s["square"]["n_queries"] == 5000
    assert make_attack("apgd-t", model, eps, num_classes=5).settings["n_target_classes"] == 4


def test_settings_are_checked(toy):
    model, _, _ = toy
    with pytest.raises(UserError, match="did you mean"):
        make_attack("pgd2", model, 0.1, num_classes=10)
    with pytest.raises(UserError, match="no setting 'stepz'"):
        make_attack("pgd20", model, 0.1, num_classes=10, stepz=3)
    with pytest.raises(UserError, match="positive integer"):
        make_attack("pgd20", model, 0.1, num_classes=10, steps="0")
    with pytest.raises(UserError, match="must be int"):
        make_attack("square", model, 0.1, num_classes=10, n_queries="many")
    with pytest.raises(UserError, match="component"):
        make_attack("aa", model, 0.1, num_classes=10, steps=3)
    with pytest.raises(UserError, match="n_target_classes"):
        make_attack("fab-t", model, 0.1, num_classes=10, n_target_classes=12)
    assert make_attack("pgd20", model, 0.1, num_classes=10, alpha="1/255").settings["alpha"] == pytest.approx(1 / 255)
    with pytest.raises(UserError, match="4 classes"):
        make_attack("apgd-t", build_model("cnn-small", 3, 1, 8, [0.5], [0.25]), 0.1, num_classes=3)


def test_cw_margin_loss_values():
    z = torch.tensor([[2.0, 1.0, 0.0], [0.0, 3.0, 1.0]])
    y = torch.tensor([0, 0])
    assert cw_margin_loss(z, y, kappa=0.0).tolist() == [-1.0, 0.0]  # margin 1; already wrong -> 0
    assert cw_margin_loss(z, y, kappa=50.0).tolist() == [-51.0, -47.0]


def test_projection_measures_and_repairs():
    x = torch.full((3, 1, 2, 2), 0.5)
    adv = x.clone()
    adv[1, 0, 0, 0] = 0.9  # 0.4 away at eps 0.1
    adv[2, 0, 0, 1] = float("nan")
    valid, linf, rng = project_into_ball(x, adv, 0.1)
    assert linf[0] <= 0 and linf[1] == pytest.approx(0.3) and torch.isinf(linf[2])
    assert float((valid - x).abs().max()) <= 0.1 + 1e-7 and torch.isfinite(valid).all()
    _, _, rng2 = project_into_ball(torch.zeros(1, 1, 1, 1), torch.full((1, 1, 1, 1), -0.05), 0.1)
    assert rng2[0] == pytest.approx(0.05)


class _MeanModel(nn.Module):
    """Class 1 when the image mean exceeds 0.5, else class 0 (2 logits)."""

    def forward(self, x):
        m = x.flatten(1).mean(1)
        return torch.stack([0.5 - m, m - 0.5], 1)


class _Breaker:
    """A fake cascade component that breaks the samples whose id (encoded in the pixel value) it targets."""

    def __init__(self, name, targets, eps):
        self.name, self.targets, self.eps, self.settings, self.seen = name, set(targets), eps, {}, []

    def reseed(self, seed):
        pass

    def __call__(self, x, y):
        ids = torch.round((x.flatten(1).mean(1) - 0.6) / 0.01).long().tolist()
        self.seen.append(ids)
        adv = x.clone()
        for j, i in enumerate(ids):
            if i in self.targets:
                adv[j] = x[j] - self.eps  # mean drops below 0.5 -> class 0
        return adv


def test_cascade_counts_a_sample_robust_only_if_it_survives_every_attack():
    eps = 0.2
    x = (0.6 + 0.01 * torch.arange(6, dtype=torch.float32)).view(6, 1, 1, 1).expand(6, 1, 2, 2).clone()
    y = torch.ones(6, dtype=torch.long)
    y[5] = 0  # misclassified clean: never attacked, never robust
    comps = [_Breaker("a", {0, 1}, eps), _Breaker("b", {1, 2}, eps), _Breaker("c", set(), eps), _Breaker("d", {3}, eps)]
    out = AutoAttackCascade(as_target(_MeanModel()), comps, eps).run(x, y)
    assert out.robust.tolist() == [False, False, False, False, True, False]
    assert out.broken_by.tolist() == [1, 1, 2, 4, -1, 0]
    assert comps[0].seen == [[0, 1, 2, 3, 4]]
    assert comps[1].seen == [[2, 3, 4]]  # only the samples still robust after "a"
    assert comps[3].seen == [[3, 4]]
    assert out.attacked == [5, 3, 2, 2]
    assert float((out.x_adv - x).abs().max()) <= eps + 1e-6
    assert torch.equal(out.x_adv[4], x[4])  # unbroken samples keep the clean input


# fra31/auto-attack AutoAttack(norm='Linf', version='standard'): constructor values, then set_version('standard')
AA_STANDARD = {
    "apgd-ce": {"steps": 100, "n_restarts": 1, "loss": "ce", "eot_iter": 1, "thr_decr": 0.75, "norm": "Linf"},
    "apgd-t": {"steps": 100, "n_restarts": 1, "n_target_classes": 9, "eot_iter": 1, "thr_decr": 0.75, "norm": "Linf"},
    "fab-t": {"steps": 100, "n_restarts": 1, "n_target_classes": 9, "multi_targeted": True, "alpha_max": 0.1,
              "eta": 1.05, "beta": 0.9, "norm": "Linf"},
    "square": {"n_queries": 5000, "n_restarts": 1, "p_init": 0.8, "loss": "margin", "rescale_schedule": False,
               "norm": "Linf"},
}


def test_aa_standard_uses_the_reference_settings_for_every_component(toy):
    """Read back from the built torchattacks objects: what runs is the reference's standard version."""
    import torchattacks

    model, _, _ = toy
    eps = 8 / 255
    aa = make_attack("aa", model, eps, num_classes=10)
    assert aa.version == "standard" and aa.settings["version"] == "standard"
    assert aa.names == ["apgd-ce", "apgd-t", "fab-t", "square"]  # the reference's order
    classes = {"apgd-ce": torchattacks.APGD, "apgd-t": torchattacks.APGDT, "fab-t": torchattacks.FAB,
               "square": torchattacks.Square}
    for comp in aa.components:
        built = comp.attack
        assert type(built) is classes[comp.name]
        assert built.eps == pytest.approx(eps)
        for attr, want in AA_STANDARD[comp.name].items():
            assert getattr(built, attr) == want, f"{comp.name}.{attr} = {getattr(built, attr)}, reference {want}"
        # standalone components are the same attack with the same settings
        alone = make_attack(comp.name, model, eps, num_classes=10).attack
        assert {a: getattr(alone, a) for a in AA_STANDARD[comp.name]} == AA_STANDARD[comp.name]
    assert aa.components[-1].attack.rescale_schedule is False  # torchattacks' default is True
    assert "resc_schedule off" in ATTACKS.meta("square")["about"]


def test_settings_record_the_constructor_arguments(toy):
    model, _, _ = toy
    aa = make_attack("aa", model, 8 / 255, num_classes=10)
    d = aa.describe()
    assert d["version"] == "standard" and d["order"] == aa.names
    sq = d["square"]["constructor"]
    assert sq["class"] == "torchattacks.attacks.square.Square"
    assert sq["args"] == {"norm": "Linf", "eps": pytest.approx(8 / 255), "n_queries": 5000, "n_restarts": 1,
                          "p_init": 0.8, "loss": "margin", "resc_schedule": False}
    assert d["apgd-ce"]["constructor"]["args"]["rho"] == 0.75 and d["apgd-ce"]["constructor"]["args"]["loss"] == "ce"
    assert d["apgd-t"]["constructor"]["args"]["n_classes"] == 10  # 9 target classes
    assert d["fab-t"]["constructor"]["args"]["multi_targeted"] is True
    pgd = make_attack("pgd20", model, 0.1, num_classes=10).describe()["constructor"]["args"]
    assert pgd == {"eps": 0.1, "alpha": pytest.approx(0.025), "steps": 20, "random_start": True}
    assert make_attack("cw", model, 0.1, num_classes=10).describe()["constructor"]["args"]["kappa"] == 50.0
    # any override makes the cascade "custom", and the override is what the object holds
    custom = make_attack("aa", model, 8 / 255, num_classes=10, square={"n_queries": 100, "resc_schedule": "true"})
    assert custom.version == "custom" and custom.describe()["version"] == "custom"
    assert custom.components[-1].attack.n_queries == 100 and custom.components[-1].attack.rescale_schedule is True
