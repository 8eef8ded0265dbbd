"""Output parity between the torch reference and a deployed artifact on identical cached inputs.

Modelled on Polygraphy's ``Comparator``: every runtime is fed the same input arrays (the clean batch
and each adversarial set crafted once on the reference), and the outputs are compared with pluggable
statistics: top-1 agreement and the max / mean absolute logit difference. Statistics are streamed
per batch (memory bounded by the batch size), keyed by input-set name (``clean``, ``pgd20`` ...).

Shapes: reference and artifact logits float (B, K).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict

import torch


@dataclass
class ParityStats:
    n: int = 0             # samples compared
    agree: int = 0         # same arg-max class
    max_abs: float = 0.0   # max |ref - art| over all logits seen
    sum_abs: float = 0.0   # sum |ref - art| over all logits (for the mean)
    count: int = 0         # logits seen
    nonfinite: int = 0     # artifact rows with NaN/inf logits (an fp16 overflow, a broken scale)

    def update(self, ref: torch.Tensor, art: torch.Tensor) -> None:
        ref = ref.detach().float().cpu()
        art = art.detach().float().cpu()
        if ref.shape != art.shape:
            raise ValueError(f"parity: reference logits {tuple(ref.shape)} vs artifact {tuple(art.shape)}")
        if ref.numel() == 0:
            return
        finite = torch.isfinite(art).all(dim=1)
        self.nonfinite += int((~finite).sum())
        diff = (ref - art).abs()
        diff = torch.where(torch.isfinite(diff), diff, torch.full_like(diff, float("inf")))
        self.n += ref.shape[0]
        self.agree += int((ref.argmax(1) == art.argmax(1)).sum())
        self.max_abs = max(self.max_abs, float(diff.max()))
        self.sum_abs += float(diff[torch.isfinite(diff)].sum())
        self.count += int(torch.isfinite(diff).sum())

    @property
    def top1_agreement(self) -> float:
        """Percent of samples whose arg-max class matches the reference (100 when none compared)."""
        return 100.0 * self.agree / self.n if self.n else 100.0

    @property
    def mean_abs(self) -> float:
        return self.sum_abs / self.count if self.count else 0.0

    def to_dict(self) -> Dict[str, float]:
        return {"n": self.n, "top1_agreement": self.top1_agreement, "disagree": self.n - self.agree,
                "max_abs_delta": self.max_abs, "mean_abs_delta": self.mean_abs, "nonfinite_rows": self.nonfinite}


class ParityTable:
    """``ParityStats`` per input-set name, in first-seen order."""

    def __init__(self) -> None:
        self.sets: Dict[str, ParityStats] = {}

    def update(self, set_name: str, ref: torch.Tensor, art: torch.Tensor) -> None:
        self.sets.setdefault(set_name, ParityStats()).update(ref, art)

    def worst_agreement(self):
        """``(set name, agreement %)`` of the set with the lowest top-1 agreement."""
        if not self.sets:
            return ("clean", 100.0)
        name = min(self.sets, key=lambda k: self.sets[k].top1_agreement)
        return name, self.sets[name].top1_agreement

    def worst_delta(self):
        if not self.sets:
            return ("clean", 0.0)
        name = max(self.sets, key=lambda k: self.sets[k].max_abs)
        return name, self.sets[name].max_abs

    def to_dict(self) -> Dict[str, Dict[str, float]]:
        return {k: v.to_dict() for k, v in self.sets.items()}


__all__ = ["ParityStats", "ParityTable"]
