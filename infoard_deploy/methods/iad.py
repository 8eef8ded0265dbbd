"""IAD-I -- Zhu, Yao, Han, Zhang, Liu, Niu, Zhou, Xu, Yang, "Reliable Adversarial Distillation with
Unreliable Teachers", ICLR 2022.

Faithful to ZFancy/IAD ``IAD-I.py`` (the ARD-based variant; docs/reference-ard-methods.md §4):

* inner max: ARD's -- PGD on ``CE(S(x'), y)`` (summed), start ``x + U(-eps, eps)``, 10 steps of eps/4,
  **student in train mode**;
* outer, before epoch ``begin`` (60 of 200 -> fraction 0.3): ``alpha tau^2 KL_bm(p_T^tau(x) || p_S^tau(x'))
  + (1 - alpha) CE(S(x), y)``; from ``begin`` on, plus the introspection term
  ``alpha * (1/B) sum_i (1 - a_i) KL(p_S(x_i) || p_S(x'_i))`` with the trust weight
  ``a_i = P_T(y_i | x'_i)^beta`` (teacher on x', no gradient; ``.item()`` in the code). Teacher on the
  **clean** x in the distillation term; ``p_S(x)`` is **not** detached (as in the code);
  ``KL_bm`` = ``(1/B) sum KLDivLoss(reduce=False)`` = batchmean. Defaults alpha = 1, tau = 1, beta = 0.1;
* SGD lr 0.1, momentum 0.9, wd 2e-4, batch 128, 200 epochs, lr x0.1 at 100 and 150.

The teacher pass on x' (``guide``) runs only from ``begin`` on (the official code also runs it before,
unused). Shapes: x (B, C, H, W) in [0,1], y (B,).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .base import AdversarialDistillation, Schedule, StepContext, StepOutput
from .kl import kl_logits, kl_to_probs


def weighted_kl_reduce(per_sample: torch.Tensor, weight: torch.Tensor, reduction: str,
                       num_classes: int) -> torch.Tensor:
    """Reduce per-sample KLs (B,) x weights like :mod:`.kl` reduces unweighted ones."""
    s = (per_sample * weight).sum()
    if reduction == "sum":
        return s
    if reduction == "batchmean":
        return s / per_sample.shape[0]
    if reduction == "mean":
        return s / (per_sample.shape[0] * num_classes)
    raise ValueError(f"unsupported reduction '{reduction}'")


class IAD(AdversarialDistillation):
    name = "iad"
    schedule = Schedule(epochs=200, lr=0.1, momentum=0.9, weight_decay=2e-4, milestones=[0.5, 0.75], gamma=0.1,
                        batch_size=128)
    defaults = {"tau": 1.0, "alpha": 1.0, "beta": 0.1, "begin": 0.3, "kl_reduction": "batchmean",
                "init": "uniform", "bn_eval": False}

    def begin_epoch(self, epochs: int) -> int:
        return int(round(float(self.hp["begin"]) * epochs))

    def forward(self, student: nn.Module, teacher: nn.Module, x: torch.Tensor, y: torch.Tensor, idx: torch.Tensor,
                ctx: StepContext) -> StepOutput:
        hp = self.hp
        tau, alpha, red = float(hp["tau"]), float(hp["alpha"]), str(hp["kl_reduction"])
        t_nat = self.teacher_logits(teacher, x, "clean", y)
        eps, step = self.radius(idx, ctx, x, teacher, y)
        x_adv = self.attack(student, lambda z: F.cross_entropy(student(z), y, reduction="none"), x, eps, step, ctx,
                            bn_eval=bool(hp["bn_eval"]), init=str(hp["init"]))
        s_adv = self.student_adv(student, x_adv)
        introspect = ctx.epoch >= self.begin_epoch(ctx.epochs)
        need_grad = introspect or alpha < 1.0
        if need_grad:
            s_nat = student(x)
        else:
            with torch.no_grad():
                s_nat = student(x)
        kl = kl_logits(s_adv, t_nat, red, tau)
        loss = alpha * tau * tau * kl
        logs = {"kl_adv": kl.detach()}
        if introspect:
            t_adv = self.teacher_logits(teacher, x_adv, "adv")
            trust = F.softmax(t_adv.float(), dim=1).gather(1, y.view(-1, 1)).squeeze(1).pow(float(hp["beta"]))
            self_kl = kl_to_probs(s_adv, F.softmax(s_nat.float(), dim=1), "none")  # KL(p_S(x) || p_S(x'))
            intro = weighted_kl_reduce(self_kl, 1.0 - trust.detach(), red, s_adv.shape[1])
            loss = loss + alpha * intro
            logs.update({"kl_intro": intro.detach(), "trust": trust.mean()})
        if alpha < 1.0:
            loss = loss + (1.0 - alpha) * F.cross_entropy(s_nat, y)
        return self.finish(loss, logs, teacher, x, x_adv, y, idx, ctx, s_adv, s_nat)
