"""ASA: the per-sample strength memory follows its rule exactly on crafted signals; DDP sync keeps ranks equal."""
from __future__ import annotations

import os
import socket

import pytest
import torch

from infoard_deploy.methods.asa import ASA

EPS = 0.1



def _logits(classes, conf):
    """(B, 10) logits whose argmax is ``classes[i]`` with softmax probability ``conf[i]`` there."""
    out = torch.zeros(len(classes), 10)
    for i, (c, p) in enumerate(zip(classes, conf)):
        # one logit L against nine zeros: p = e^L / (e^L + 9)  ->  L = log(9p / (1 - p))
        out[i, c] = torch.log(torch.tensor(9 * p / (1 - p)))
    return out


def _asa(**kw):
    a = ASA(**{"eps_min": 0.5, "eps_max": 1.2, "eps_init": 0.8, "step": 0.1, "momentum": 0.5, "warmup": 0.0,
               "conf": 0.6, **kw})
    a.setup(num_train=10, eps=EPS)
    return a


def test_update_rule_on_crafted_case():
    a = _asa()
    a.eps_mem[7] = 1.2 * EPS  # already at the cap
    a.eps_mem[8] = 0.5 * EPS  # already at the floor
    idx = torch.tensor([0, 1, 2, 3, 7, 8])
    y = torch.tensor([3, 3, 3, 3, 3, 3])
    student = _logits([3, 5, 3, 3, 3, 1], [0.9] * 6)  # sample 1 and 8: broken by the attack
    teacher = _logits([3, 3, 4, 3, 3, 3], [0.9, 0.9, 0.9, 0.4, 0.9, 0.9])  # 2: teacher wrong, 3: unsure
    good = a.update(idx, y, student, [teacher, None], epoch=0, epochs=10)
    assert good.tolist() == [True, False, False, False, True, False]
    up = 0.5 * 0.08 + 0.5 * (0.08 + 0.01)  # EMA of the raised proposal
    down = 0.5 * 0.08 + 0.5 * (0.08 - 0.01)
    expected = torch.tensor([up, down, down, down, 0.12, 0.05])
    assert torch.allclose(a.eps_mem[idx], expected, atol=1e-7)
    assert torch.allclose(a.eps_mem[[4, 5, 6, 9]], torch.full((4,), 0.08))  # unseen samples untouched
    # a second teacher view (x') that disagrees lowers an otherwise good sample
    a2 = _asa()
    t_adv = _logits([3], [0.3])
    a2.update(torch.tensor([0]), torch.tensor([3]), _logits([3], [0.9]), [_logits([3], [0.9]), t_adv], 0, 10)
    assert a2.eps_mem[0].item() == pytest.approx(down)


def test_momentum_one_is_cat_and_clamping():
    a = _asa(momentum=1.0, step=0.3)
    for _ in range(5):  # always good: +0.3 eps per visit until the cap
        a.update(torch.tensor([0]), torch.tensor([1]), _logits([1], [0.9]), [_logits([1], [0.9])], 0, 10)
    assert a.eps_mem[0].item() == pytest.approx(1.2 * EPS)
    for _ in range(5):
        a.update(torch.tensor([0]), torch.tensor([1]), _logits([2], [0.9]), [_logits([1], [0.9])], 0, 10)
    assert a.eps_mem[0].item() == pytest.approx(0.5 * EPS)


def test_warmup_ramp_and_frozen_memory():
    a = _asa(warmup=0.3)  # 3 of 10 epochs
    idx = torch.tensor([0, 1])
    assert torch.allclose(a.radius(idx, 0, 10), torch.full((2,), 0.08 / 3))
    assert torch.allclose(a.radius(idx, 2, 10), torch.full((2,), 0.08))
    a.update(idx, torch.tensor([1, 1]), _logits([1, 1], [0.9, 0.9]), [_logits([1, 1], [0.9, 0.9])], 1, 10)
    assert torch.allclose(a.eps_mem[idx], torch.full((2,), 0.08))  # frozen during warm-up
    a.update(idx, torch.tensor([1, 1]), _logits([1, 1], [0.9, 0.9]), [_logits([1, 1], [0.9, 0.9])], 3, 10)
    assert torch.all(a.eps_mem[idx] > 0.08)
    stats = a.epoch_stats()
    assert stats["asa_good"] == 1.0 and 0.8 < stats["asa_eps_mean"] < 0.9


def test_sync_without_distributed_is_noop_and_state_resizes():
    a = _asa()
    a.update(torch.tensor([0]), torch.tensor([1]), _logits([1], [0.9]), [_logits([1], [0.9])], 0, 10)
    before = a.eps_mem.clone()
    a.sync()
    assert torch.equal(a.eps_mem, before) and a._pending == []
    b = ASA()
    b.load_state_dict(a.state_dict())  # an un-setup ASA adopts the saved memory's size
    assert torch.equal(b.eps_mem, a.eps_mem)
    with pytest.raises(ValueError):
        ASA(eps_min=1.5, eps_max=1.0)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ddp_worker(rank: int, world: int, port: int, out_path: str) -> None:
    import torch.distributed as dist

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        a = _asa()
        # each rank sees different samples (and rank 1 one more step, as an uneven last batch)
        a.update(torch.tensor([rank, 2 + rank]), torch.tensor([1, 1]), _logits([1, 1 + rank], [0.9, 0.9]),
                 [_logits([1, 1], [0.9, 0.9])], 0, 10)
        if rank == 1:
            a.update(torch.tensor([9]), torch.tensor([1]), _logits([1], [0.9]), [_logits([1], [0.9])], 0, 10)
        a.sync()
        torch.save(a.eps_mem, f"{out_path}.{rank}")
    finally:
        dist.destroy_process_group()


def test_sync_all_gathers_across_ranks(tmp_path):
    import torch.multiprocessing as mp

    out = str(tmp_path / "mem")
    mp.spawn(_ddp_worker, args=(2, _free_port(), out), nprocs=2, join=True)
    m0, m1 = torch.load(f"{out}.0"), torch.load(f"{out}.1")
    assert torch.equal(m0, m1)
    up, down = 0.085, 0.075
    assert torch.allclose(m0[[0, 1, 2, 3, 9]], torch.tensor([up, up, up, down, up]))
    assert torch.allclose(m0[[4, 5, 6, 7, 8]], torch.full((5,), 0.08))


def test_teacher_rule_radius_from_teacher_margin():
    """asa_rule=teacher: eps_i = (eps_min + (eps_max - eps_min) * clamp(p_y - max_other, 0, 1)) * eps."""
    a = _asa(rule="teacher", eps_min=0.5, eps_max=1.5)
    y = torch.tensor([3, 3, 3])
    t = _logits([3, 3, 4], [0.9, 0.4, 0.9])  # sure and right / unsure and right / wrong
    r = a.radius(torch.tensor([0, 1, 2]), 5, 10, t, y)
    p = torch.softmax(t, 1)
    m0 = (p[0, 3] - p[0, torch.arange(10) != 3].max()).item()
    m1 = (p[1, 3] - p[1, torch.arange(10) != 3].max()).item()
    assert r.tolist() == pytest.approx([(0.5 + m0) * EPS, (0.5 + m1) * EPS, 0.5 * EPS], abs=1e-7)
    assert a.eps_mem[:3].tolist() == pytest.approx(r.tolist())  # recorded for statistics
    # no memory update from visits, and the rule refuses to run without the teacher's logits
    before = a.eps_mem.clone()
    a.update(torch.tensor([0]), torch.tensor([3]), _logits([3], [0.9]), [t[:1]], 5, 10)
    assert torch.equal(a.eps_mem, before)
    with pytest.raises(RuntimeError, match="teacher"):
        a.radius(torch.tensor([0]), 5, 10)
    inv = _asa(rule="teacher-inv", eps_min=0.5, eps_max=1.5)  # the inverse map: wrong teacher -> largest radius
    r_inv = inv.radius(torch.tensor([0, 1, 2]), 5, 10, t, y)
    assert r_inv.tolist() == pytest.approx([(1.5 - m0) * EPS, (1.5 - m1) * EPS, 1.5 * EPS], abs=1e-7)
    with pytest.raises(ValueError, match="asa_rule"):
        ASA(rule="nope")


@pytest.mark.parametrize("base,rule", [("rslad", "teacher"), ("ard", "teacher"), ("iad", "teacher-inv"),
                                       ("adaad", "teacher")])
def test_teacher_rule_runs_inside_every_base(base, rule):
    """The teacher rule gets the teacher's clean logits in every base method's step (ARD / AdaAD compute them
    for it) and the attack uses one radius per sample."""
    from infoard_deploy.methods import StepContext, build_method
    from infoard_deploy.models import build_model

    torch.manual_seed(0)
    student = build_model("cnn-small", 10, 1, 8, [0.5], [0.5])
    teacher = build_model("cnn-small", 10, 1, 8, [0.5], [0.5])
    m = build_method("infoard", base=base, mim=False, asa=True, asa_rule=rule, asa_eps_min=0.5, asa_eps_max=1.5,
                     asa_warmup=0.0, steps=2)
    m.setup(student, teacher, num_train=16, num_classes=10, eps=EPS)
    x, y = torch.rand(8, 1, 8, 8), torch.randint(0, 10, (8,))
    out = m(student, teacher, x, y, torch.arange(8), StepContext(epoch=0, epochs=1, eps=EPS, num_classes=10))
    out.loss.backward()
    used = m.asa.eps_mem[:8]
    assert ((used >= 0.5 * EPS - 1e-7) & (used <= 1.5 * EPS + 1e-7)).all() and used.unique().numel() > 1
    assert ((out.x_adv - x).abs().amax(dim=(1, 2, 3)) <= used + 1e-6).all()
    assert m.describe()["asa"]["rule"] == rule
