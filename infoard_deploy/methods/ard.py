"""ARD -- Goldblum, Fowl, Feizi, Goldstein, "Adversarially Robust Distillation", AAAI 2020.

Faithful to goldblum/AdversariallyRobustDistillation ``main.py`` (see docs/reference-ard-methods.md §2):

* inner max: PGD on the student's cross-entropy with the hard label, ``CE(S(x'), y)`` summed over the
  batch, start ``x + U(-eps, eps)``, 10 steps of eps/4 (2/255 at 8/255), **student in train mode**
  (its BN statistics see the attack passes, as in the official ``AttackPGD`` wrapper);
* outer: ``alpha * tau^2 * KL_mean(p_T^tau(x) || p_S^tau(x')) + (1 - alpha) * CE(S(x), y)``, teacher on
  the **clean** x, ``KL_mean`` = ``nn.KLDivLoss()`` element mean over B*C; alpha = 1, tau = 30;
* SGD lr 0.1, momentum 0.9, wd 2e-4, 200 epochs, lr x0.1 at epochs 100 and 150, batch 128.

Deviation: :func:`infoard_deploy.attacks.pgd.pgd` clips the random start to [0,1] before the first
gradient (the official code clips only after the first step). The clean student forward ``S(x)`` runs
even at alpha = 1 (without a graph), because the official code runs it in train mode and it moves the
BN running statistics. Shapes: x (B, C, H, W) in [0,1], y (B,) int64.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .base import AdversarialDistillation, Schedule, StepContext, StepOutput
from .kl import kl_logits


class ARD(AdversarialDistillation):
    name = "ard"
    schedule = Schedule(epochs=200, lr=0.1, momentum=0.9, weight_decay=2e-4, milestones=[0.5, 0.75], gamma=0.1,
                        batch_size=128)
    defaults = {"tau": 30.0, "alpha": 1.0, "kl_reduction": "mean", "init": "uniform", "bn_eval": False}

    def forward(self, student: nn.Module, teacher: nn.Module, x: torch.Tensor, y: torch.Tensor, idx: torch.Tensor,
                ctx: StepContext) -> StepOutput:
        hp = self.hp
        tau, alpha = float(hp["tau"]), float(hp["alpha"])
        t_nat = self.teacher_logits(teacher, x, "clean", y)  # before the attack: ASA's teacher rule reads it
        eps, step = self.radius(idx, ctx, x, teacher, y)
        x_adv = self.attack(student, lambda z: F.cross_entropy(student(z), y, reduction="none"), x, eps, step, ctx,
                            bn_eval=bool(hp["bn_eval"]), init=str(hp["init"]))
        s_adv = self.student_adv(student, x_adv)
        kl = kl_logits(s_adv, t_nat, str(hp["kl_reduction"]), tau)
        loss = alpha * tau * tau * kl
        if alpha < 1.0:
            s_nat = student(x)
            loss = loss + (1.0 - alpha) * F.cross_entropy(s_nat, y)
        else:
            with torch.no_grad():
                s_nat = student(x)
        return self.finish(loss, {"kl_adv": kl.detach()}, teacher, x, x_adv, y, idx, ctx, s_adv, s_nat)
