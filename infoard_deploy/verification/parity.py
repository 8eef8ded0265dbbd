"""Output parity between the torch reference and a deployed artifact on identical cached inputs.

Modelled on Polygraphy's ``Comparator``: every runtime is fed the same input arrays (the clean batch
and each adversarial set crafted once on the reference), and the outputs are compared with pluggable
statistics: top-1 agreement, the max / mean absolute logit difference, the max difference relative to
``max(1, max |reference logit|)`` (as the export-time parity check), and how many output rows look like
probability vectors (in [0,1], summing to 1) on each side. Statistics are streamed
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
    ref_absmax: float = 0.0  # max |reference logit| (scale of the relative delta)
    prob_rows: int = 0     # artifact rows that are probability vectors
    ref_prob_rows: int = 0  # reference rows that are probability vectors

    def update(self, ref: torch.Tensor, art: torch.Tensor) -> None:
        ref = ref.detach().float().cpu()
        art = art.detach().float().cpu()
        if ref.shape != art.shape:
            raise ValueError(f"parity: reference logits {tuple(ref.shape)} vs artifact {tuple(art.shape)}")
        if ref.numel() == 0:
            return
        finite = torch.isfinite(art).all(dim=1)
        self.nonfinite += int((~finite).sum())
        self.prob_rows += int(probability_rows(art).sum())
        self.ref_prob_rows += int(probability_rows(ref).sum())
        ref_fin = ref[torch.isfinite(ref)]
        if ref_fin.numel():
            self.ref_absmax = max(self.ref_absmax, float(ref_fin.abs().max()))
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

    @property
    def max_rel(self) -> float:
        return self.max_abs / max(1.0, self.ref_absmax)

    def to_dict(self) -> Dict[str, float]:
        return {"n": self.n, "top1_agreement": self.top1_agreement, "disagree": self.n - self.agree,
                "max_abs_delta": self.max_abs, "max_rel_delta": self.max_rel, "mean_abs_delta": self.mean_abs,
                "nonfinite_rows": self.nonfinite, "probability_rows": self.prob_rows,
                "reference_probability_rows": self.ref_prob_rows}


def probability_rows(t: torch.Tensor, tol: float = 1e-3) -> torch.Tensor:
    """(B,) bool: rows that are probability vectors (finite, every entry in [0,1], summing to 1)."""
    t = t.detach().float()
    fin = torch.isfinite(t).all(1)
    inside = ((t >= -1e-6) & (t <= 1 + 1e-6)).all(1)
    return fin & inside & ((t.sum(1) - 1).abs() < tol)


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

    def worst_agreement_excluding(self, skip: str = "clean"):
        """``(set name, agreement %, disagreements, n)`` of the worst set other than ``skip``; None if none."""
        rest = [k for k in self.sets if k != skip and self.sets[k].n]
        if not rest:
            return None
        name = min(rest, key=lambda k: self.sets[k].top1_agreement)
        s = self.sets[name]
        return name, s.top1_agreement, s.n - s.agree, s.n

    def worst_delta(self):
        if not self.sets:
            return ("clean", 0.0)
        name = max(self.sets, key=lambda k: self.sets[k].max_abs)
        return name, self.sets[name].max_abs

    def worst_rel(self):
        if not self.sets:
            return ("clean", 0.0)
        name = max(self.sets, key=lambda k: self.sets[k].max_rel)
        return name, self.sets[name].max_rel

    def totals(self):
        """``(rows, artifact probability rows, reference probability rows)`` over every set."""
        v = list(self.sets.values())
        return sum(s.n for s in v), sum(s.prob_rows for s in v), sum(s.ref_prob_rows for s in v)

    def to_dict(self) -> Dict[str, Dict[str, float]]:
        return {k: v.to_dict() for k, v in self.sets.items()}


__all__ = ["ParityStats", "ParityTable", "probability_rows"]
