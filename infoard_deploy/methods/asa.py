"""ASA, Attack-Strength Adaptation: a per-sample L-inf radius that evolves across epochs.

InfoARD (Cai et al., IEEE TIP 2025, DOI 10.1109/TIP.2025.3637689) tailors the attack strength to each
instance; the paper's rule is not public, so this is our design (see docs/infoard-design.md), built from
the closest published rules: CAT's +/- eta per visit (Cheng et al. 2020), IAAT's EMA and warm-up
(Balaji et al. 2019), and the teacher trust signals of IAD / DGAD (teacher correctness / confidence).

State: ``eps_mem`` (num_train,) float32, radius in [0,1] pixel units, indexed by dataset index, saved in
the method's ``state_dict``. Per visit of sample i (after the attack, from signals the step already has):

* ``good_i`` = student correct at x'_i  AND  teacher correct with p_T(y_i) >= ``conf`` on every teacher
  view the step computed (clean x always, x' when the base method evaluates it);
* ``proposal = clamp(eps_i + eta*eps if good_i else eps_i - eta*eps, eps_min*eps, eps_max*eps)``;
* ``eps_i <- (1 - m) * eps_i + m * proposal`` (EMA, momentum ``m``; ``m = 1`` is CAT's hard update).

``asa_rule="teacher"`` (added after the rule above measured inert, issue 16) needs no visits: the radius
is set at every step from the teacher's clean margin on the true class,
``m_i = clamp(p_T(y_i|x_i) - max_{k != y_i} p_T(k|x_i), 0, 1)`` (0 where the teacher is wrong), as
``eps_i = (eps_min + (eps_max - eps_min) * m_i) * eps``: samples whose soft label the teacher is sure of are
attacked harder (its label stays informative further out), those it gets wrong or barely right more gently.
The memory then only records the last radius used (statistics, checkpoints). ``asa_rule="teacher-inv"`` inverts
the map, ``eps_i = (eps_max - (eps_max - eps_min) * m_i) * eps``: the samples near the teacher's boundary get the
larger radius (tried because the ``teacher`` rule lost to one uniform radius of the same mean, BENCHMARKS.md).

The radius used at epoch e is ``ramp(e) * eps_i`` with a linear warm-up ``ramp = min(1, (e+1)/W)``
over the first ``warmup`` fraction of epochs (W epochs; AdaAD reports an increasing radius helps);
the memory is frozen during warm-up, because signals measured at a ramped radius say nothing about eps_i.
The PGD step is ``alpha_i = step_ratio * radius_i`` (c/K = 2.5/10 as in 2/255 at 8/255): still one PGD
run per batch, so ASA costs a few vector operations.

``sync()`` all-gathers the (idx, eps) pairs updated since the last call across DDP ranks, so every
rank's memory stays identical; without ``torch.distributed`` it only clears the pending list.
"""
from __future__ import annotations

from typing import Dict, Iterable, List, Optional

import torch
import torch.nn.functional as F
from torch import nn

# Option keys (as passed to build_method) -> default. Radii are multiples of the nominal eps.
ASA_DEFAULTS: Dict[str, object] = {
    "asa_eps_min": 0.5,  # lower clamp, x eps
    "asa_eps_max": 1.0,  # upper clamp, x eps (cap at the evaluation radius unless measured better)
    "asa_eps_init": 1.0,  # starting radius, x eps
    "asa_step": 0.1,  # eta, x eps, per visit
    "asa_momentum": 0.5,  # EMA momentum m
    "asa_warmup": 0.1,  # fraction of epochs with a linear global ramp (memory frozen)
    "asa_conf": 0.5,  # teacher confidence p_T(y) needed to trust a sample
    "asa_rule": "visit",  # visit: the memory rule above; teacher / teacher-inv: from the teacher's clean margin
}
ASA_RULES = ("visit", "teacher", "teacher-inv")


class ASA(nn.Module):
    def __init__(self, eps_min: float = 0.5, eps_max: float = 1.0, eps_init: float = 1.0, step: float = 0.1,
                 momentum: float = 0.5, warmup: float = 0.1, conf: float = 0.5, rule: str = "visit"):
        super().__init__()
        if rule not in ASA_RULES:
            raise ValueError(f"asa_rule must be one of {', '.join(ASA_RULES)}, got '{rule}'")
        self.rule = str(rule)
        if not 0.0 < eps_min <= eps_max:
            raise ValueError(f"ASA needs 0 < asa_eps_min <= asa_eps_max, got {eps_min} and {eps_max}")
        if not 0.0 < momentum <= 1.0:
            raise ValueError(f"asa_momentum must lie in (0, 1], got {momentum}")
        if not 0.0 <= warmup < 1.0:
            raise ValueError(f"asa_warmup must be a fraction of the epochs in [0, 1), got {warmup}")
        self.eps_min, self.eps_max = float(eps_min), float(eps_max)
        self.eps_init = min(max(float(eps_init), self.eps_min), self.eps_max)
        self.step, self.momentum, self.warmup, self.conf = float(step), float(momentum), float(warmup), float(conf)
        self.eps = 0.0  # nominal radius, set in setup
        self.register_buffer("eps_mem", torch.zeros(0))
        self.register_buffer("visited", torch.zeros(0, dtype=torch.bool), persistent=False)  # for statistics
        self._pending: List[tuple] = []
        self._stats = {"good": 0.0, "seen": 0.0}

    @classmethod
    def from_options(cls, opts: Dict[str, object]) -> "ASA":
        return cls(**{k[len("asa_"):]: opts[k] for k in ASA_DEFAULTS})

    # -- state ---------------------------------------------------------------------------------
    def setup(self, num_train: int, eps: float, device: Optional[torch.device] = None) -> None:
        self.eps = float(eps)
        if self.eps_mem.numel() != num_train:  # a resumed checkpoint of the right size is kept
            self.eps_mem = torch.full((num_train,), self.eps_init * self.eps, device=device)
        elif device is not None:
            self.eps_mem = self.eps_mem.to(device)
        self.visited = torch.zeros(num_train, dtype=torch.bool, device=self.eps_mem.device)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # Resize the memory to the saved one before copying (it is created at setup with num_train).
        key = prefix + "eps_mem"
        if key in state_dict and state_dict[key].shape != self.eps_mem.shape:
            self.eps_mem = torch.zeros_like(state_dict[key], device=self.eps_mem.device)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    # -- use -----------------------------------------------------------------------------------
    def ramp(self, epoch: int, epochs: int) -> float:
        w = int(round(self.warmup * epochs))
        return 1.0 if w <= 0 else min(1.0, (epoch + 1) / w)

    def radius(self, idx: torch.Tensor, epoch: int, epochs: int, teacher_logits: Optional[torch.Tensor] = None,
               y: Optional[torch.Tensor] = None) -> torch.Tensor:
        """(B,) radii for the samples ``idx`` at this epoch (warm-up ramp applied). The ``teacher`` rule needs
        the teacher's clean logits (B, C) and the labels (B,)."""
        if self.eps_mem.numel() == 0:
            raise RuntimeError("ASA.setup(num_train=...) must run before training")
        if self.rule in ("teacher", "teacher-inv"):
            if teacher_logits is None or y is None:
                raise RuntimeError("asa_rule=teacher needs the teacher's clean logits and the labels")
            with torch.no_grad():
                p = F.softmax(teacher_logits.float(), dim=1)
                p_y = p.gather(1, y.view(-1, 1)).squeeze(1)
                other = p.scatter(1, y.view(-1, 1), -1.0).max(1).values
                m = (p_y - other).clamp(0.0, 1.0)
                if self.rule == "teacher-inv":
                    m = 1.0 - m
                r = (self.eps_min + (self.eps_max - self.eps_min) * m) * self.eps
            self.eps_mem[idx.to(self.eps_mem.device)] = r.to(self.eps_mem.device)  # statistics only
            return r * self.ramp(epoch, epochs)
        return self.eps_mem[idx.to(self.eps_mem.device)] * self.ramp(epoch, epochs)

    @torch.no_grad()
    def update(self, idx: torch.Tensor, y: torch.Tensor, student_adv_logits: torch.Tensor,
               teacher_logits: Iterable[Optional[torch.Tensor]], epoch: int, epochs: int) -> torch.Tensor:
        """Apply one visit's rule (see module doc); returns the boolean ``good`` mask (B,)."""
        good = student_adv_logits.argmax(1) == y
        for t in teacher_logits:
            if t is None:
                continue
            p = F.softmax(t.float(), dim=1)
            p_y = p.gather(1, y.view(-1, 1)).squeeze(1)
            good &= (p.argmax(1) == y) & (p_y >= self.conf)
        self._stats["good"] += good.sum()  # tensors: no device sync per step
        self._stats["seen"] += good.numel()
        if self.visited.numel() == self.eps_mem.numel():
            self.visited[idx.to(self.visited.device)] = True
        if self.ramp(epoch, epochs) < 1.0 or self.rule != "visit":  # teacher rules: no memory to update
            return good
        dev = self.eps_mem.device
        idx, good = idx.to(dev), good.to(dev)
        old = self.eps_mem[idx]
        delta = torch.where(good, self.step * self.eps, -self.step * self.eps)
        proposal = (old + delta).clamp(self.eps_min * self.eps, self.eps_max * self.eps)
        new = (1.0 - self.momentum) * old + self.momentum * proposal
        self.eps_mem[idx] = new
        self._pending.append((idx.clone(), new.clone()))
        return good

    def sync(self) -> None:
        """All-gather pending (idx, eps) updates across DDP ranks; a no-op without torch.distributed."""
        pending, self._pending = self._pending, []
        dist = torch.distributed
        if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
            return
        dev = self.eps_mem.device
        idx = torch.cat([p[0] for p in pending]) if pending else torch.zeros(0, dtype=torch.long, device=dev)
        val = torch.cat([p[1] for p in pending]) if pending else torch.zeros(0, device=dev)
        ws = dist.get_world_size()
        n = torch.tensor([idx.numel()], device=dev)
        sizes = [torch.zeros_like(n) for _ in range(ws)]
        dist.all_gather(sizes, n)
        m = int(max(int(s) for s in sizes))
        if m == 0:
            return
        pad = m - idx.numel()
        idx_p = torch.cat([idx, idx.new_zeros(pad)])
        val_p = torch.cat([val, val.new_zeros(pad)])
        all_idx = [torch.zeros_like(idx_p) for _ in range(ws)]
        all_val = [torch.zeros_like(val_p) for _ in range(ws)]
        dist.all_gather(all_idx, idx_p)
        dist.all_gather(all_val, val_p)
        for r in range(ws):  # same order on every rank -> identical memories
            k = int(sizes[r])
            self.eps_mem[all_idx[r][:k]] = all_val[r][:k]

    def epoch_stats(self) -> Dict[str, float]:
        """Radius statistics (units of eps, over visited samples) and the share of 'good' visits; resets counters."""
        mem = self.eps_mem / max(self.eps, 1e-12)
        if self.visited.numel() == mem.numel() and bool(self.visited.any()):
            mem = mem[self.visited]
        out = {
            "asa_eps_mean": float(mem.mean()) if mem.numel() else 0.0,
            "asa_at_min": float((mem <= self.eps_min + 1e-6).float().mean()) if mem.numel() else 0.0,
            "asa_at_max": float((mem >= self.eps_max - 1e-6).float().mean()) if mem.numel() else 0.0,
            "asa_good": float(self._stats["good"]) / max(float(self._stats["seen"]), 1.0),
        }
        self._stats = {"good": 0.0, "seen": 0.0}
        return out


__all__ = ["ASA", "ASA_DEFAULTS", "ASA_RULES"]
