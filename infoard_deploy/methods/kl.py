"""KL divergences with the exact reductions the official ARD-family code uses.

All functions compute ``KL(P || Q) = sum_c P_c (log P_c - log Q_c)`` for a *target* distribution ``P``
and the student's distribution ``Q = softmax(logits / tau)``; this is what
``nn.KLDivLoss()(log_softmax(student), softmax(teacher))`` computes, i.e. KL(p_T || p_S).

Reductions (``reduction=``), shapes ``(B, C)`` -> scalar unless ``none``:

* ``mean``      element mean over B*C (= batchmean / C): ``nn.KLDivLoss()`` default, used by
                ARD (goldblum/AdversariallyRobustDistillation main.py), RSLAD (hand-written, then
                ``torch.mean``) and AdaAD on CIFAR-10 (boyellow/AdaAD main.py). Shrinks with C, which is
                why RSLAD multiplies its CIFAR-100 losses by 10 (zibojia/RSLAD README).
* ``batchmean`` sum over classes, mean over the batch (the true KL per sample): IAD
                (ZFancy/IAD IAD-I.py ``(1/len(outputs))*torch.sum(...)``), AdaAD on CIFAR-100.
* ``sum``       sum over everything: the inner-maximisation losses of RSLAD / AdaAD
                (``KLDivLoss(size_average=False)``), where only the gradient sign matters.
* ``none``      per-sample KL, shape ``(B,)``.

``log_eps`` reproduces RSLAD's hand-written KL ``-a*b + log(b + 1e-5)*b`` (the target's log uses
``log(P + 1e-5)``); ``None`` is the exact ``xlogy`` form PyTorch uses (0 log 0 = 0).
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F

REDUCTIONS = ("mean", "batchmean", "sum", "none")


def _reduce(per_elem: torch.Tensor, reduction: str) -> torch.Tensor:
    if reduction == "mean":
        return per_elem.mean()
    if reduction == "batchmean":
        return per_elem.sum() / per_elem.shape[0]
    if reduction == "sum":
        return per_elem.sum()
    if reduction == "none":
        return per_elem.sum(dim=1)
    raise ValueError(f"unknown KL reduction '{reduction}' (choose from {', '.join(REDUCTIONS)})")


def kl_to_probs(student_logits: torch.Tensor, target_probs: torch.Tensor, reduction: str = "mean",
                tau: float = 1.0, log_eps: Optional[float] = None) -> torch.Tensor:
    """KL(target || softmax(student_logits / tau)); ``target_probs`` (B, C) rows sum to 1.

    Computed in float32 even under autocast (soft labels of a confident teacher underflow in fp16).
    The target may carry gradients (IAD's introspection term does not detach ``p_S(x)``).
    """
    log_q = F.log_softmax(student_logits.float() / tau, dim=1)
    p = target_probs.float()
    log_p = torch.log(p + log_eps) if log_eps is not None else None
    per_elem = (p * (log_p - log_q)) if log_p is not None else (torch.xlogy(p, p) - p * log_q)
    return _reduce(per_elem, reduction)


def kl_logits(student_logits: torch.Tensor, target_logits: torch.Tensor, reduction: str = "mean",
              tau: float = 1.0, log_eps: Optional[float] = None) -> torch.Tensor:
    """KL(softmax(target_logits / tau) || softmax(student_logits / tau)) with the given reduction."""
    return kl_to_probs(student_logits, F.softmax(target_logits.float() / tau, dim=1), reduction, tau, log_eps)


def swap_wrong_teacher_logits(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """DGAD's error-corrective label swapping (Park & Min, ECCV 2024; kunsaram01/DGAD ``AT_helper.py``).

    ``logits`` (B, C), ``y`` (B,). Where the teacher's top class is not ``y`` the two logits trade places,
    so the soft label puts the teacher's top confidence on the true class and keeps the rest of its
    "dark knowledge" (the ranking of the other classes); rows the teacher gets right are unchanged.
    A new tensor; the input is not modified.
    """
    # Rows the teacher gets right have top == y, so both writes put back the value already there: no branch,
    # no host sync on the training step.
    top, yy = logits.argmax(1, keepdim=True), y.view(-1, 1)
    l_top, l_y = logits.gather(1, top), logits.gather(1, yy)
    return logits.clone().scatter_(1, yy, l_top).scatter_(1, top, l_y)


__all__ = ["REDUCTIONS", "kl_to_probs", "kl_logits", "swap_wrong_teacher_logits"]
