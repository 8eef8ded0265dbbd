"""Distillation methods: registry-generated invariants, golden losses and attacks, build_method.

Golden references are written here independently from docs/reference-ard-methods.md (the official
code's formulas: ``nn.KLDivLoss`` reductions, RSLAD's hand-written KL, IAD's trust weights), not by
calling the package's KL helpers.
"""
from __future__ import annotations

import copy

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from infoard_deploy.attacks.pgd import pgd
from infoard_deploy.errors import UserError
from infoard_deploy.methods import METHODS, StepContext, build_method, method_options
from infoard_deploy.methods.kl import kl_logits, kl_to_probs
from infoard_deploy.models import build_model

EPS = 0.1
B = 12
# the golden references use the official code's legacy nn.KLDivLoss forms on purpose
pytestmark = [pytest.mark.filterwarnings("ignore:reduction. 'mean' divides:UserWarning"),
              pytest.mark.filterwarnings("ignore:size_average and reduce args:UserWarning")]



def _models(seed: int = 0):
    torch.manual_seed(seed)
    s = build_model("cnn-small", 10, 1, 8, [0.5], [0.25])
    t = build_model("cnn-mnist", 10, 1, 8, [0.5], [0.25])
    # give the teacher's BN non-trivial running statistics so eval mode differs from train mode
    with torch.no_grad():
        for _ in range(3):
            t.train()(torch.rand(32, 1, 8, 8))
    return s.train(), t.eval()


def _batch(seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(B, 1, 8, 8, generator=g)
    y = torch.randint(0, 10, (B,), generator=g)
    return x, y, torch.arange(B) * 3  # indices need not be contiguous


def _ctx(epoch=1, epochs=2, seed=7):
    return StepContext(epoch=epoch, epochs=epochs, eps=EPS, num_classes=10,
                       generator=torch.Generator().manual_seed(seed))


def _setup(m, s, t, num_train=64):
    m.setup(s, t, num_train=num_train, num_classes=10, eps=EPS, student_arch="cnn-small", teacher_arch="cnn-mnist",
            input_shape=[1, 8, 8])
    return m


COMBOS = [(n, a, m) for n in METHODS.names() for a in (False, True) for m in (False, True)]


@pytest.mark.parametrize("name,asa,mim", COMBOS, ids=[f"{n}-asa{int(a)}-mim{int(m)}" for n, a, m in COMBOS])
def test_method_invariants(name, asa, mim):
    s, t = _models()
    x, y, idx = _batch()
    t_before = copy.deepcopy(t.state_dict())
    method = _setup(build_method(name, asa=asa, mim=mim, asa_warmup=0.0), s, t)
    radius = method.asa.eps_mem[idx].clone() if asa else torch.full((B,), EPS)  # memory starts at eps
    out = method(s, t, x, y, idx, _ctx())
    assert out.loss.dim() == 0 and torch.isfinite(out.loss)
    out.loss.backward()
    # gradients reach the student ...
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in s.parameters())
    # ... and the MIM heads, never the teacher; the teacher stays frozen and in eval mode
    if mim:
        heads = [p for n_, p in method.named_parameters() if "proj" in n_]
        assert heads and all(p.grad is not None and p.grad.abs().sum() > 0 for p in heads)
        lv = method.mim_levels()  # registered teacher: every level runs on named layers
        assert lv["feature"] == "penultimate" and lv["attention"] == 2 and lv["teacher_points"] == "registered"
        assert not lv["partial"]
    else:
        assert not list(method.parameters())
    assert all(p.grad is None for p in t.parameters())
    assert not t.training and s.training
    for k, v in t.state_dict().items():
        assert torch.equal(v, t_before[k]), k
    # x' lies in the (per-sample) ball and in [0, 1]
    delta = (out.x_adv - x).abs().flatten(1).amax(1)
    assert torch.all(delta <= radius + 1e-6) and out.x_adv.min() >= 0 and out.x_adv.max() <= 1
    assert torch.all(delta > 0.5 * radius)  # the attack moved every sample
    assert all(isinstance(v, float) for v in out.logs.values())
    method.sync()  # no-op without torch.distributed
    method.teardown()


# -- golden values: KL reductions on fixed tensors ------------------------------------------------------

def test_kl_reductions_golden():
    s = torch.tensor([[0.0, 0.0], [1.0, 0.0]])
    p = torch.tensor([[0.75, 0.25], [0.5, 0.5]])
    # per-sample KL(p || softmax(s)) by hand: q0 = (0.5, 0.5); q1 = (e/(1+e), 1/(1+e))
    import math

    k0 = 0.75 * math.log(0.75 / 0.5) + 0.25 * math.log(0.25 / 0.5)
    q1 = math.e / (1 + math.e)
    k1 = 0.5 * math.log(0.5 / q1) + 0.5 * math.log(0.5 / (1 - q1))
    assert torch.allclose(kl_to_probs(s, p, "none"), torch.tensor([k0, k1]), atol=1e-6)
    assert kl_to_probs(s, p, "batchmean").item() == pytest.approx((k0 + k1) / 2, abs=1e-6)
    assert kl_to_probs(s, p, "mean").item() == pytest.approx((k0 + k1) / 4, abs=1e-6)  # / (B*C)
    assert kl_to_probs(s, p, "sum").item() == pytest.approx(k0 + k1, abs=1e-6)
    # RSLAD's log(b + 1e-5) form is slightly different from the exact one
    rs = kl_to_probs(s, p, "mean", log_eps=1e-5).item()
    exp = ((-F.log_softmax(s, 1) * p + torch.log(p + 1e-5) * p).mean()).item()
    assert rs == pytest.approx(exp, abs=1e-7) and rs != pytest.approx((k0 + k1) / 4, abs=1e-9)
    # temperature: ARD's tau^2 * KLDivLoss()(log_softmax(s/tau), softmax(t/tau))
    t = torch.tensor([[2.0, -1.0], [0.5, 0.0]])
    ref = nn.KLDivLoss()(F.log_softmax(s / 30, 1), F.softmax(t / 30, 1))
    assert kl_logits(s, t, "mean", tau=30).item() == pytest.approx(ref.item(), rel=1e-5)


# -- golden values: each base method's attack and outer loss --------------------------------------------

def _kl_mean(student_logits, target_probs):  # nn.KLDivLoss() default: element mean over B*C
    return nn.KLDivLoss(reduction="mean")(F.log_softmax(student_logits, dim=1), target_probs)


def _run(name, **opts):
    s, t = _models(3)
    x, y, idx = _batch(4)
    ref_s = copy.deepcopy(s)
    method = _setup(build_method(name, **opts), s, t)
    out = method(s, t, x, y, idx, _ctx(epoch=1, epochs=2, seed=11))
    return out, ref_s, t, x, y


def _reference_attack(loss_fn, x, init, seed=11):
    return pgd(loss_fn, x, EPS, EPS / 4, 10, init=init, init_std=0.001, generator=torch.Generator().manual_seed(seed))


def test_ard_golden():
    out, s, t, x, y = _run("ard")
    s.train()  # ARD attacks with the student in train mode, CE with the hard label, uniform start
    x_ref = _reference_attack(lambda z: F.cross_entropy(s(z), y, reduction="none"), x, "uniform")
    assert torch.allclose(out.x_adv, x_ref, atol=1e-6)
    tau = 30.0
    with torch.no_grad():
        expected = tau * tau * _kl_mean(s(x_ref) / tau, F.softmax(t(x) / tau, dim=1))
    assert out.loss.item() == pytest.approx(expected.item(), rel=1e-4)


def test_rslad_golden():
    out, s, t, x, y = _run("rslad")
    with torch.no_grad():
        p_t = F.softmax(t(x), dim=1)
    s.eval()  # RSLAD attacks in eval mode, KL(T(x)||S(x')) summed, 0.001*N start
    x_ref = _reference_attack(lambda z: nn.KLDivLoss(reduction="none")(F.log_softmax(s(z), 1), p_t).sum(1), x, "normal")
    assert torch.allclose(out.x_adv, x_ref, atol=1e-6)
    s.train()

    def rslad_kl(a, b):  # zibojia/RSLAD: -a*b + log(b + 1e-5)*b, torch.mean
        return torch.mean(-a * b + torch.log(b + 1e-5) * b)

    with torch.no_grad():
        expected = 5 / 6 * rslad_kl(F.log_softmax(s(x_ref), 1), p_t) + 1 / 6 * rslad_kl(F.log_softmax(s(x), 1), p_t)
    assert out.loss.item() == pytest.approx(expected.item(), rel=1e-4)


def test_iad_golden_before_and_after_begin():
    for epoch, introspect in ((0, False), (1, True)):
        s, t = _models(5)
        x, y, idx = _batch(6)
        ref = copy.deepcopy(s)
        m = _setup(build_method("iad", begin=0.5), s, t)  # begin epoch round(0.5 * 2) = 1
        out = m(s, t, x, y, idx, _ctx(epoch=epoch, epochs=2, seed=11))
        ref.train()
        x_ref = _reference_attack(lambda z: F.cross_entropy(ref(z), y, reduction="none"), x, "uniform")
        assert torch.allclose(out.x_adv, x_ref, atol=1e-6)
        kl = nn.KLDivLoss(reduce=False)
        with torch.no_grad():
            s_adv, s_nat, t_nat = ref(x_ref), ref(x), t(x)
            expected = (1 / B) * torch.sum(kl(F.log_softmax(s_adv, 1), F.softmax(t_nat, 1)).sum(1))
            if introspect:
                alpha = F.softmax(t(x_ref), 1).gather(1, y.view(-1, 1)).squeeze(1).pow(0.1)
                expected += (1 / B) * torch.sum(kl(F.log_softmax(s_adv, 1), F.softmax(s_nat, 1)).sum(1).mul(1 - alpha))
        assert out.loss.item() == pytest.approx(expected.item(), rel=1e-4)
        assert ("kl_intro" in out.logs) == introspect


def test_adaad_golden():
    out, s, t, x, y = _run("adaad")
    s.eval()  # the teacher is re-evaluated at the moving x' inside the attack
    x_ref = _reference_attack(
        lambda z: nn.KLDivLoss(reduction="none")(F.log_softmax(s(z), 1), F.softmax(t(z), 1)).sum(1), x, "normal")
    assert torch.allclose(out.x_adv, x_ref, atol=1e-6)
    s.train()
    with torch.no_grad():
        expected = _kl_mean(s(x_ref), F.softmax(t(x_ref), 1))
    assert out.loss.item() == pytest.approx(expected.item(), rel=1e-4)


def test_infoard_is_rslad_plus_terms():
    """With ASA and MIM off InfoARD is exactly its base (RSLAD with the per-sample KL); MIM adds its logged
    terms on top."""
    a, *_ = _run("infoard", asa=False, mim=False)
    b, *_ = _run("rslad", kl_reduction="batchmean")
    assert method_options("infoard")["kl_reduction"] == "batchmean"
    assert method_options("rslad")["kl_reduction"] == "mean"
    assert a.loss.item() == pytest.approx(b.loss.item(), rel=1e-6)
    c, *_ = _run("infoard", asa=False)
    mo = method_options("infoard")
    extra = mo["mim_feat"] * c.logs["mim_nce"] + mo["mim_att"] * c.logs["mim_att"]
    assert c.loss.item() == pytest.approx(c.logs["loss_base"] + extra, rel=1e-4)


def test_asa_radius_reaches_attack():
    """ASA's per-sample radius replaces the base method's fixed eps in its own inner maximisation."""
    s, t = _models()
    x, y, idx = _batch()
    m = _setup(build_method("rslad", asa=True, asa_eps_min=0.2, asa_warmup=0.0), s, t)
    radii = torch.linspace(0.2, 1.0, B) * EPS
    m.asa.eps_mem[idx] = radii
    out = m(s, t, x, y, idx, _ctx())
    delta = (out.x_adv - x).abs().flatten(1).amax(1)
    assert torch.all(delta <= radii + 1e-6)
    assert torch.all(delta >= 0.9 * radii)  # 10 steps of radius/4 saturate the ball
    assert out.logs["asa_eps"] == pytest.approx(float(radii.mean() / EPS), rel=1e-5)


# -- construction ---------------------------------------------------------------------------------------

def test_build_method_defaults_and_switches():
    for name in ("ard", "rslad", "iad", "adaad"):
        m = build_method(name)
        assert m.asa is None and m.mim is None and m.name == name
    info = build_method("infoard")
    # ASA is opt-in for InfoARD (it measured no gain over the same radius for every sample, BENCHMARKS.md)
    assert info.asa is None and info.mim is not None and info.name == "infoard"
    assert build_method("infoard", asa=True).asa is not None and build_method("infoard", mim=False).mim is None
    assert build_method("ard", asa=True, mim=True).mim is not None
    ada = build_method("infoard", base="adaad")
    assert type(ada).__name__ == "AdaAD" and ada.name == "infoard" and ada.schedule.weight_decay == 5e-4
    assert ada.mim.teacher_input == "adv"  # AdaAD already evaluates the teacher on x'
    assert build_method("infoard", base="adaad", mim_teacher_input="clean").mim.teacher_input == "clean"


def test_build_method_options_and_errors():
    m = build_method("ard", tau="10", steps="5", eps_scale="2", asa_eps_max="1.25")  # strings, as from a CLI
    assert m.hp["tau"] == 10.0 and m.hp["steps"] == 5 and m.hp["eps_scale"] == 2.0
    m = build_method("rslad", asa=True, asa_eps_max="5/4", mim=True, mim_att_mode="NCE")
    assert m.asa.eps_max == 1.25 and m.mim.att_mode == "nce"
    with pytest.raises(UserError, match="valid options: .*alpha"):
        build_method("ard", temperature=3)
    with pytest.raises(UserError, match="expects an int"):
        build_method("ard", steps="ten")
    with pytest.raises(UserError, match="must be one of"):
        build_method("rslad", kl_reduction="avg")
    with pytest.raises(UserError, match="asa_eps_min <= asa_eps_max"):
        build_method("infoard", asa=True, asa_eps_min=2.0, asa_eps_max=1.0)
    with pytest.raises(UserError, match="did you mean"):
        build_method("rslda")
    for name in METHODS.names():
        assert METHODS.meta(name)["about"]


def test_method_state_roundtrip():
    s, t = _models()
    x, y, idx = _batch()
    m = _setup(build_method("infoard", asa=True, asa_warmup=0.0), s, t)
    m(s, t, x, y, idx, _ctx()).loss.backward()
    state = copy.deepcopy(m.state_dict())
    assert "asa.eps_mem" in state and any(k.startswith("mim.proj_s") for k in state)
    fresh = _setup(build_method("infoard", asa=True, asa_warmup=0.0), *_models())
    fresh.load_state_dict(state)
    assert torch.equal(fresh.asa.eps_mem, m.asa.eps_mem)
    assert not torch.equal(fresh.asa.eps_mem, torch.full_like(fresh.asa.eps_mem, EPS))  # it moved


# -- teacher_fix: DGAD's error-corrective label swapping ------------------------------------------------

def test_swap_wrong_teacher_logits_golden():
    from infoard_deploy.methods.kl import swap_wrong_teacher_logits

    t = torch.tensor([[1.0, 3.0, 2.0], [5.0, 0.0, 1.0], [0.5, -1.0, 4.0]])
    y = torch.tensor([0, 0, 1])
    out = swap_wrong_teacher_logits(t, y)
    # row 0: top class 1 (3.0) swaps with y=0 (1.0); row 1 is right and kept; row 2: 4.0 <-> -1.0
    assert torch.equal(out, torch.tensor([[3.0, 1.0, 2.0], [5.0, 0.0, 1.0], [0.5, 4.0, -1.0]]))
    assert torch.equal(t[0], torch.tensor([1.0, 3.0, 2.0]))  # input untouched
    assert torch.equal(out.argmax(1), y)


@pytest.mark.parametrize("name", ["ard", "rslad", "iad", "adaad"])
def test_teacher_fix_swap_changes_targets_not_trust(name):
    """``teacher_fix=swap`` corrects the distillation target where the teacher is wrong, leaves the batch
    unchanged where it is right, and ASA still reads the teacher's own logits (its trust signal)."""
    x, _, idx = _batch()

    def run(y, **opts):  # fresh models each time: train-mode passes move the student's BN statistics
        s, t = _models()
        m = _setup(build_method(name, **opts), s, t)
        return m, m(s, t, x, y, idx, _ctx())

    _, first = run(torch.zeros(B, dtype=torch.long))
    _, t = _models()
    with torch.no_grad():  # AdaAD distils the teacher at x' (its attack ignores y), the others at x
        y_right = t(first.x_adv if name == "adaad" else x).argmax(1)
    plain = run(y_right)[1].loss.item()
    assert run(y_right, teacher_fix="swap")[1].loss.item() == pytest.approx(plain, rel=1e-6)  # a no-op
    y_wrong = (y_right + 1) % 10  # the teacher is wrong on every sample: the targets must change
    a = run(y_wrong)[1].loss.item()
    assert run(y_wrong, teacher_fix="swap")[1].loss.item() != pytest.approx(a, rel=1e-3)
    m, _ = run(y_wrong, teacher_fix="swap", asa=True, asa_warmup=0.0, asa_conf=0.0)
    assert m.asa.epoch_stats()["asa_good"] == 0.0  # ASA judged the teacher by its own (wrong) logits
    with pytest.raises(UserError, match="teacher_fix"):
        build_method(name, teacher_fix="flip")
