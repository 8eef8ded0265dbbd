"""Robust-teacher training methods, as :class:`DistillMethod` objects that need no teacher.

* ``pgd-at`` -- Madry, Makelov, Schmidt, Tsipras, Vladu, "Towards Deep Learning Models Resistant to
  Adversarial Attacks", ICLR 2018. Inner max: PGD on CE(f(x'), y) from a uniform random start in the
  eps-ball (the paper's "PGD with random start"); outer: CE(f(x'), y). The model stays in train mode
  during the attack, as in Madry et al.'s code (one graph for attack and update) and Rice et al. 2020.
* ``trades`` -- Zhang, Yu, Jiao, Xing, El Ghaoui, Jordan, "Theoretically Principled Trade-off between
  Robustness and Accuracy", ICML 2019 (code: yaodongyu/TRADES ``trades.py``). Inner max: PGD on
  KL(p(x) || p(x')) summed per sample, from x + 0.001 N(0, I), model in **eval** mode (as the official
  code); outer: CE(f(x), y) + beta * KL(p(x) || p(x')) with ``batchmean`` reduction (the official
  ``(1/B) * KLDivLoss(size_average=False)``), gradients through both terms, beta = 6.

Both attack with 10 steps of size eps/4 by default (CIFAR: 8/255 with steps 2/255, the ARD-lineage
convention). Inputs ``x`` float (B, C, H, W) in [0,1]; ``ctx.eps`` is the L-inf radius in the same units.
"""
from __future__ import annotations

from typing import Any, Callable, Dict

import torch
import torch.nn.functional as F
from torch import nn

from .attacks.pgd import pgd, pgd_ce
from .errors import UserError
from .methods.base import DistillMethod, Schedule, StepContext, StepOutput
from .registry import Registry

TEACHER_METHODS: Registry[Callable[..., DistillMethod]] = Registry("teacher method")


def _check_attack(steps: int, step_frac: float) -> None:
    if int(steps) < 1:
        raise UserError(f"attack steps must be >= 1, got {steps}")
    if not 0.0 < float(step_frac) <= 1.0:
        raise UserError(f"attack step size must be a fraction of eps in (0, 1], got {step_frac}")


class PGDAT(DistillMethod):
    """Madry et al. 2018 adversarial training: ``loss = CE(f(x'), y)``, x' = PGD-K on CE (uniform start)."""

    name = "pgd-at"
    needs_teacher = False
    # Rice et al. 2020 / common PGD-AT setup: SGD 0.1, wd 5e-4, decay x0.1 at 50 % and 75 % of the epochs.
    schedule = Schedule(epochs=100, lr=0.1, momentum=0.9, weight_decay=5e-4, milestones=[0.5, 0.75], gamma=0.1,
                        batch_size=128)

    def __init__(self, steps: int = 10, step_frac: float = 0.25):
        super().__init__()
        _check_attack(steps, step_frac)
        self.steps, self.step_frac = int(steps), float(step_frac)

    def forward(self, student: nn.Module, teacher, x: torch.Tensor, y: torch.Tensor, idx: torch.Tensor,
                ctx: StepContext) -> StepOutput:
        x_adv = pgd_ce(student, x, y, ctx.eps, ctx.eps * self.step_frac, self.steps, init="uniform",
                       generator=ctx.generator)
        loss = F.cross_entropy(student(x_adv), y)
        return StepOutput(loss=loss, x_adv=x_adv, logs={"ce_adv": float(loss.detach())})


class TRADES(DistillMethod):
    """Zhang et al. 2019: ``loss = CE(f(x), y) + beta * KL_batchmean(p(x) || p(x'))``."""

    name = "trades"
    needs_teacher = False
    # TRADES' CIFAR script: SGD 0.1, momentum 0.9, wd 2e-4; decay at 50 % / 75 % here (task standard).
    schedule = Schedule(epochs=100, lr=0.1, momentum=0.9, weight_decay=2e-4, milestones=[0.5, 0.75], gamma=0.1,
                        batch_size=128)

    def __init__(self, steps: int = 10, step_frac: float = 0.25, beta: float = 6.0):
        super().__init__()
        _check_attack(steps, step_frac)
        if not float(beta) >= 0.0:
            raise UserError(f"TRADES beta must be >= 0, got {beta}")
        self.steps, self.step_frac, self.beta = int(steps), float(step_frac), float(beta)

    def forward(self, student: nn.Module, teacher, x: torch.Tensor, y: torch.Tensor, idx: torch.Tensor,
                ctx: StepContext) -> StepOutput:
        was_training = student.training
        student.eval()  # official TRADES crafts x' with BN in eval mode
        with torch.no_grad():
            p_nat = F.softmax(student(x).float(), dim=1)

        def kl_per_sample(z: torch.Tensor) -> torch.Tensor:
            return F.kl_div(F.log_softmax(student(z).float(), dim=1), p_nat, reduction="none").sum(1)

        x_adv = pgd(kl_per_sample, x, ctx.eps, ctx.eps * self.step_frac, self.steps, init="normal", init_std=0.001,
                    generator=ctx.generator)
        student.train(was_training)
        logits_nat = student(x)
        logits_adv = student(x_adv)
        loss_nat = F.cross_entropy(logits_nat, y)
        # KL(p(x) || p(x')): the target p(x) keeps its gradient, as in the official code.
        loss_rob = F.kl_div(F.log_softmax(logits_adv.float(), dim=1), F.softmax(logits_nat.float(), dim=1),
                            reduction="batchmean")
        loss = loss_nat + self.beta * loss_rob
        return StepOutput(loss=loss, x_adv=x_adv,
                          logs={"ce_nat": float(loss_nat.detach()), "kl_rob": float(loss_rob.detach())})


TEACHER_METHODS.register("pgd-at", PGDAT, options=("steps", "step_frac"),
                         about="Madry et al. 2018 PGD adversarial training (CE on PGD-10, uniform start)")
TEACHER_METHODS.register("trades", TRADES, options=("steps", "step_frac", "beta"),
                         about="Zhang et al. 2019 TRADES (CE + beta*KL(p(x)||p(x')), beta 6)")


def build_teacher_method(name: str, **opts: Any) -> DistillMethod:
    """``build_teacher_method("trades", steps=10, beta=6.0)``; None values mean the method's default."""
    cls = TEACHER_METHODS.get(name)
    allowed = TEACHER_METHODS.meta(name)["options"]
    given: Dict[str, Any] = {k: v for k, v in opts.items() if v is not None}
    unknown = sorted(set(given) - set(allowed))
    if unknown:
        raise UserError(f"teacher method '{name}' has no option {', '.join(unknown)} (options: {', '.join(allowed)})")
    return cls(**given)


__all__ = ["TEACHER_METHODS", "PGDAT", "TRADES", "build_teacher_method"]
