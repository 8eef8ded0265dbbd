"""RSLAD -- Zi, Zhao, Ma, Jiang, "Revisiting Adversarial Robustness Distillation: Robust Soft Labels
Make Student Better", ICCV 2021.

Faithful to zibojia/RSLAD ``rslad_loss.py`` + ``resnet18_rslad_cifar10.py`` (docs/reference-ard-methods.md §3):

* inner max: PGD on ``sum KL(p_T(x) || p_S(x'))`` with the teacher's **clean** soft label (robust soft
  label), start ``x + 0.001 N(0, I)``, 10 steps of eps/4 (the scripts pass 2/255), **student in eval mode**;
* outer: ``5/6 KL(p_T(x) || p_S(x')) + 1/6 KL(p_T(x) || p_S(x))``, tau = 1, no CE, with RSLAD's
  hand-written KL ``-a*b + log(b + 1e-5)*b`` averaged over B*C (``kl_reduction="mean"``, ``log_eps=1e-5``);
* SGD lr 0.1, momentum 0.9, wd 2e-4, batch 128, 300 epochs, lr x0.1 at epochs 215, 260, 285.

(The CIFAR-100 scripts multiply both terms by 10 to undo the element mean's 1/C; use
``kl_reduction=batchmean`` for a class-count-free scale.) Shapes: x (B, C, H, W) in [0,1], y (B,).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .base import AdversarialDistillation, Schedule, StepContext, StepOutput
from .kl import kl_to_probs


class RSLAD(AdversarialDistillation):
    name = "rslad"
    schedule = Schedule(epochs=300, lr=0.1, momentum=0.9, weight_decay=2e-4,
                        milestones=[215 / 300, 260 / 300, 285 / 300], gamma=0.1, batch_size=128)
    defaults = {"w_adv": 5 / 6, "w_nat": 1 / 6, "kl_reduction": "mean", "log_eps": 1e-5, "init": "normal",
                "bn_eval": True}

    def forward(self, student: nn.Module, teacher: nn.Module, x: torch.Tensor, y: torch.Tensor, idx: torch.Tensor,
                ctx: StepContext) -> StepOutput:
        hp = self.hp
        red, log_eps = str(hp["kl_reduction"]), (float(hp["log_eps"]) or None)
        t_nat = self.teacher_logits(teacher, x, "clean", y)
        p_t = F.softmax(t_nat.float(), dim=1)
        eps, step = self.radius(idx, ctx, x, teacher, y)
        # attack: nn.KLDivLoss(size_average=False) summed -> per-sample KL (exact, no 1e-5)
        x_adv = self.attack(student, lambda z: kl_to_probs(student(z), p_t, "none"), x, eps, step, ctx,
                            bn_eval=bool(hp["bn_eval"]), init=str(hp["init"]))
        s_adv = self.student_adv(student, x_adv)
        s_nat = student(x)
        kl_adv = kl_to_probs(s_adv, p_t, red, log_eps=log_eps)
        kl_nat = kl_to_probs(s_nat, p_t, red, log_eps=log_eps)
        loss = float(hp["w_adv"]) * kl_adv + float(hp["w_nat"]) * kl_nat
        return self.finish(loss, {"kl_adv": kl_adv.detach(), "kl_nat": kl_nat.detach()}, teacher, x, x_adv, y, idx,
                           ctx, s_adv, s_nat)
