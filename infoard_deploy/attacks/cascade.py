"""AutoAttack "standard" as a per-sample cascade (Croce & Hein 2020; fra31/auto-attack ``run_standard_evaluation``).

Each attack runs only on the samples still robust after the previous ones; a sample counts as robust only
if it survives every attack, so the result is the per-sample worst case (not an average). The order is
APGD-CE -> APGD-T -> FAB-T -> Square, each with the reference's standard settings (see :mod:`.suite`); every
component gets the same per-call seed, as in fra31's ``run_standard_evaluation``. Every adversarial example
is projected back into the threat model before it is judged, and how far it had strayed is recorded for the
``adv_in_bounds`` check. ``version`` is ``standard`` while every component keeps the reference settings.

Shapes: ``x`` float (B, C, H, W) in [0,1], ``y`` int64 (B,).
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Dict, List

import torch

from .suite import AttackTarget, EvalAttack, project_into_ball


@dataclass
class CascadeOutput:
    """Per-sample result of one cascade call on a batch of B samples.

    ``robust`` (B,) bool: correctly classified and unbroken by every component. ``broken_by`` (B,) int8:
    -1 robust, 0 misclassified clean, k >= 1 broken first by component k-1 (``names[k-1]``).
    ``seconds``/``attacked``: per component. ``linf_excess``/``range_excess``: per component, the largest
    violation of ``||x_adv - x||_inf <= eps`` / of [0,1] seen (<= 0 means none); ``violations``: count.
    """

    x_adv: torch.Tensor
    robust: torch.Tensor
    broken_by: torch.Tensor
    names: List[str]
    seconds: List[float] = field(default_factory=list)
    attacked: List[int] = field(default_factory=list)
    linf_excess: List[float] = field(default_factory=list)
    range_excess: List[float] = field(default_factory=list)
    violations: List[int] = field(default_factory=list)


class AutoAttackCascade:
    """``run(x, y) -> CascadeOutput``; ``cascade(x, y) -> x_adv`` (the worst case found per sample)."""

    name = "aa"
    white_box = False  # mixed: white-box components then the black-box Square

    def __init__(self, target: AttackTarget, components: List[EvalAttack], eps: float, seed: int = 0, tol: float = 1e-6,
                 version: str = "standard"):
        self.target, self.components, self.eps, self.tol = target, components, float(eps), tol
        self.seed, self.version = int(seed), version

    @property
    def names(self) -> List[str]:
        return [c.name for c in self.components]

    @property
    def settings(self) -> Dict[str, Any]:
        """``version`` is ``standard`` while every component keeps the reference settings, else ``custom``."""
        return {"version": self.version, "order": self.names, **{c.name: c.settings for c in self.components}}

    def describe(self) -> Dict[str, Any]:
        """Settings plus each component's full description (class and constructor arguments)."""
        return {"eps": self.eps, "version": self.version, "reference": "fra31/auto-attack set_version('standard')",
                "order": self.names, "seeding": "every component gets the cascade's per-call seed",
                **{c.name: c.describe() if hasattr(c, "describe") else c.settings for c in self.components}}

    def reseed(self, seed: int) -> None:
        # fra31 gives every component the same seed
        self.seed = int(seed)
        for c in self.components:
            c.reseed(seed)

    @torch.no_grad()
    def _predict(self, x: torch.Tensor) -> torch.Tensor:
        return self.target(x).argmax(1)

    def run(self, x: torch.Tensor, y: torch.Tensor) -> CascadeOutput:
        x, y = x.detach(), y.detach()
        robust = self._predict(x) == y
        broken_by = torch.where(robust, -1, 0).to(torch.int8)
        out = CascadeOutput(x.clone(), robust, broken_by, self.names)
        for k, comp in enumerate(self.components, start=1):
            idx = robust.nonzero().flatten()
            t0 = time.perf_counter()
            lx, rx, nv = float("-inf"), 0.0, 0
            if idx.numel():
                xs, ys = x[idx], y[idx]
                adv, linf, rng = project_into_ball(xs, comp(xs, ys), self.eps)
                lx, rx = float(linf.max()), float(rng.max())
                nv = int(((linf > self.tol) | (rng > self.tol)).sum())
                broke = self._predict(adv) != ys
                hit = idx[broke]
                robust[hit] = False
                out.broken_by[hit] = k
                out.x_adv[hit] = adv[broke]
            out.seconds.append(time.perf_counter() - t0)
            out.attacked.append(int(idx.numel()))
            out.linf_excess.append(lx)
            out.range_excess.append(rx)
            out.violations.append(nv)
        out.robust = robust
        return out

    def __call__(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.run(x, y).x_adv
