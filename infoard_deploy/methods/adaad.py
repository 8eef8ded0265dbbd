"""AdaAD -- Huang, Chen, Wang, Lu, Cheng, Wang, "Boosting Accuracy and Robustness of Student Models via
Adaptive Adversarial Distillation", CVPR 2023.

Faithful to boyellow/AdaAD ``AT_helper.adaad_inner_loss`` + ``main.py`` (docs/reference-ard-methods.md §5):

* inner max: PGD on ``sum KL(p_T(x') || p_S(x'))`` with the **teacher re-evaluated at the moving x'**
  (the teacher takes part in the search; gradients flow through it to the input, never to its weights),
  start ``x + 0.001 N(0, I)``, 10 steps of eps/4 (README Table-2 setting 8/255, 2/255; the larger search
  radius of the paper is ``eps_scale=2``), **student in eval mode**;
* outer: ``alpha * KL(p_T(x') || p_S(x')) + (1 - alpha) * KL(p_T(x) || p_S(x))``, alpha = 1, element-mean
  ``nn.KLDivLoss()`` (CIFAR-10 script; CIFAR-100 uses ``batchmean``), tau = 1;
* SGD lr 0.1, momentum 0.9, **wd 5e-4**, batch 128, 200 epochs, lr x0.1 at 100 and x0.01 at 150.

The clean student pass ``S(x)`` runs every step in train mode, as in the official code (BN statistics);
the clean teacher pass runs only when something uses it (alpha < 1, MIM on clean features).
Shapes: x (B, C, H, W) in [0,1], y (B,).
"""
from __future__ import annotations

import torch
from torch import nn

from .base import AdversarialDistillation, Schedule, StepContext, StepOutput
from .kl import kl_logits


class AdaAD(AdversarialDistillation):
    name = "adaad"
    schedule = Schedule(epochs=200, lr=0.1, momentum=0.9, weight_decay=5e-4, milestones=[0.5, 0.75], gamma=0.1,
                        batch_size=128)
    defaults = {"alpha": 1.0, "kl_reduction": "mean", "init": "normal", "bn_eval": True}

    def forward(self, student: nn.Module, teacher: nn.Module, x: torch.Tensor, y: torch.Tensor, idx: torch.Tensor,
                ctx: StepContext) -> StepOutput:
        hp = self.hp
        alpha, red = float(hp["alpha"]), str(hp["kl_reduction"])
        if teacher.training:
            teacher.eval()
        eps, step = self.radius(idx, ctx, x, teacher, y)
        x_adv = self.attack(student, lambda z: kl_logits(student(z), teacher(z), "none"), x, eps, step, ctx,
                            bn_eval=bool(hp["bn_eval"]), init=str(hp["init"]))
        s_nat = student(x) if alpha < 1.0 else None
        if s_nat is None:
            with torch.no_grad():
                s_nat = student(x)
        s_adv = self.student_adv(student, x_adv)
        t_adv = self.teacher_logits(teacher, x_adv, "adv", y)
        kl_adv = kl_logits(s_adv, t_adv, red)
        loss = alpha * kl_adv
        logs = {"kl_adv": kl_adv.detach()}
        if alpha < 1.0:
            t_nat = self.teacher_logits(teacher, x, "clean", y)
            kl_nat = kl_logits(s_nat, t_nat, red)
            loss = loss + (1.0 - alpha) * kl_nat
            logs["kl_nat"] = kl_nat.detach()
        return self.finish(loss, logs, teacher, x, x_adv, y, idx, ctx, s_adv, s_nat)
