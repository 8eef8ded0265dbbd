"""Named sanity checks for a robustness evaluation (AutoAttack's ``checks.py`` / ``flags_doc.md`` red flags).

Every check sees *every* evaluated example: the evaluator feeds each batch to an accumulator
(:class:`ProbabilityCheck`, :class:`DeterminismCheck`, :class:`GradientCheck`, :class:`BoundsTracker`)
and reads one :class:`Check` at the end, whose JSON states how many examples it covered (``checked``)
-- fra31's checks look at the first batch only, which misses a model that misbehaves on later inputs.
Each :class:`Check` has ``status`` ``ok`` | ``warn`` | ``error`` | ``skipped``:

* ``logits_not_probabilities`` (warning): the model returns rows in [0,1] that sum to 1, i.e. softmax
  probabilities, on most rows overall or on most rows of any one batch; CE/DLR on probabilities
  saturates and attacks under-perform (AA flag "softmax output").
* ``deterministic_eval`` (warning): two eval-mode forward passes on the same inputs differ (dropout left
  on, added noise, randomised defence) -> plain attacks overestimate robustness; use EoT (AA ``version='rand'``).
* ``nonzero_input_gradients`` (warning): some samples have an all-zero input gradient of the margin loss
  (AA's ``check_zero_gradients``) -> gradient masking; gradient attacks cannot move those samples.
* ``adv_in_bounds`` (error): an attack returned points outside ``[x-eps, x+eps] ∩ [0,1]``. The evaluator
  projects them back before judging, but the attack (or a wrapper) is broken.
* ``black_box_beats_white_box`` (warning): Square breaks samples that every white-box attack missed, by
  more than ``alpha`` of the white-box robust accuracy (AA ``check_square_sr``, alpha = 0.002) -> the
  white-box numbers are likely inflated by gradient masking.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Tuple

import numpy as np
import torch
from torch import nn


@dataclass
class Check:
    name: str
    level: str  # "warning" | "error": what a failure means
    status: str  # "ok" | "warn" | "error" | "skipped"
    message: str
    details: Dict[str, Any] = field(default_factory=dict)

    @property
    def failed(self) -> bool:
        return self.status in ("warn", "error")

    def to_json(self) -> Dict[str, Any]:
        return {"status": self.status, "level": self.level, "message": self.message, **self.details}


def _fail(name: str, level: str, message: str, **details: Any) -> Check:
    return Check(name, level, "error" if level == "error" else "warn", message, details)


class ProbabilityCheck:
    """``logits_not_probabilities``: fed every batch of clean outputs (B, K).

    Fires when more than ``frac`` of all rows, or of the rows of any one batch, look like probabilities
    (a model that switches to softmax on some inputs is caught even when those are a minority overall).
    """

    name = "logits_not_probabilities"

    def __init__(self, frac: float = 0.5, sum_tol: float = 1e-3):
        self.frac, self.sum_tol = frac, sum_tol
        self.rows = self.prob_rows = self.batches = 0
        self.flagged_batches: List[int] = []

    def update(self, out: torch.Tensor) -> None:
        out = out.detach().float()
        like = (out.amin(1) >= -1e-6) & (out.amax(1) <= 1 + 1e-6) & ((out.sum(1) - 1).abs() <= self.sum_tol)
        n = int(like.sum())
        if out.shape[0] and n > self.frac * out.shape[0]:
            self.flagged_batches.append(self.batches)
        self.batches += 1
        self.rows += out.shape[0]
        self.prob_rows += n

    def result(self) -> Check:
        if not self.rows:
            return Check(self.name, "warning", "skipped", "no outputs seen")
        share = self.prob_rows / self.rows
        details = {"share": share, "checked": self.rows, "batches": self.batches,
                   "flagged_batches": self.flagged_batches}
        if share > self.frac or self.flagged_batches:
            return _fail(self.name, "warning", f"{self.prob_rows} of {self.rows} output rows ({share:.0%}) are "
                         f"probabilities (in [0,1], sum 1), most rows of batch(es) {self.flagged_batches}; "
                         "attacks need logits -- remove the final softmax", **details)
        return Check(self.name, "warning", "ok", f"outputs are logits (all {self.rows} examples checked)", details)


class DeterminismCheck:
    """``deterministic_eval``: per batch, a second eval-mode forward must reproduce the clean logits.

    ``update(model, x, first)`` with ``first`` the logits (B, K) already computed on ``x`` (B, C, H, W)
    costs one extra forward per batch; the largest relative difference and the differing rows accumulate.
    """

    name = "deterministic_eval"

    def __init__(self, rtol: float = 1e-4):
        self.rtol, self.rows, self.differ, self.max_diff = rtol, 0, 0, 0.0

    @torch.no_grad()
    def update(self, model: nn.Module, x: torch.Tensor, first: Optional[torch.Tensor] = None) -> None:
        a = (model(x) if first is None else first).detach().float()
        b = model(x).float()
        self.rows += int(x.shape[0])
        if not a.numel():
            return
        diff = (a - b).abs().amax(1)
        scale = 1.0 + a.abs().amax(1)
        bad = ~torch.isfinite(diff) | (diff > self.rtol * scale)
        self.differ += int(bad.sum())
        d = float(diff.max())
        self.max_diff = max(self.max_diff, d if np.isfinite(d) else float("inf"))

    def result(self) -> Check:
        details = {"max_diff": self.max_diff, "differing": self.differ, "checked": self.rows}
        if not self.rows:
            return Check(self.name, "warning", "skipped", "no inputs seen", details)
        if self.differ:
            return _fail(self.name, "warning", f"two eval-mode forward passes differ on {self.differ} of {self.rows} "
                         f"examples (max |diff| {self.max_diff:.3g}): the model is randomised (dropout on? noise?); "
                         "its robustness is overestimated by plain attacks", **details)
        return Check(self.name, "warning", "ok", f"eval-mode forward passes agree (all {self.rows} examples checked)",
                     details)


@torch.no_grad()
def deterministic_check(model: nn.Module, x: torch.Tensor, rtol: float = 1e-4) -> Check:
    """``deterministic_eval`` on one batch ``x`` (B, C, H, W): two eval-mode forwards must agree."""
    c = DeterminismCheck(rtol)
    c.update(model, x)
    return c.result()


def zero_gradient_rows(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> Optional[torch.Tensor]:
    """(B,) bool: samples whose input gradient of the margin loss max_{j!=y} z_j - z_y is all zero.

    The margin (not CE) is used because CE's gradient underflows to 0 on very confident samples, which
    would be a false alarm; a zero margin gradient means the model is locally flat (masking). A graph that
    does not reach the input counts as zero everywhere. None when the model has fewer than 2 outputs.
    """
    x = x.detach().clone().requires_grad_(True)
    with torch.enable_grad():
        z = model(x).float()
        if z.shape[1] < 2:
            return None
        zy = z.gather(1, y[:, None]).squeeze(1)
        other = z.masked_fill(torch.nn.functional.one_hot(y, z.shape[1]).bool(), float("-inf")).amax(1)
        loss = (other - zy).sum()
        g = torch.autograd.grad(loss, [x], allow_unused=True)[0] if loss.requires_grad else None
    if g is None:
        return torch.ones(x.shape[0], dtype=torch.bool)
    return (g.flatten(1).abs().amax(1) == 0).cpu()


class GradientCheck:
    """``nonzero_input_gradients`` over every batch: ``update(model, x, y)`` adds the zero-gradient count."""

    name = "nonzero_input_gradients"

    def __init__(self) -> None:
        self.rows = self.zero = 0
        self.no_classes = False

    def update(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> None:
        zero = zero_gradient_rows(model, x, y)
        if zero is None:
            self.no_classes = True
            return
        self.rows += int(x.shape[0])
        self.zero += int(zero.sum())

    def result(self) -> Check:
        if self.no_classes:
            return Check(self.name, "warning", "skipped", "fewer than 2 outputs")
        details = {"zero": self.zero, "of": self.rows, "checked": self.rows}
        if not self.rows:
            return Check(self.name, "warning", "skipped", "no inputs seen", details)
        if self.zero:
            return _fail(self.name, "warning", f"{self.zero} of {self.rows} samples have an all-zero input gradient: "
                         "gradient masking; white-box results are unreliable (use Square / an adaptive attack)",
                         **details)
        return Check(self.name, "warning", "ok", f"input gradients are non-zero (all {self.rows} examples checked)",
                     details)


def gradient_check(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> Check:
    """``nonzero_input_gradients`` on one batch (see :func:`zero_gradient_rows`)."""
    c = GradientCheck()
    c.update(model, x, y)
    return c.result()


class BoundsTracker:
    """``adv_in_bounds``: per attack, the worst ``||x_adv - x||_inf - eps`` and distance outside [0,1]."""

    name = "adv_in_bounds"

    def __init__(self, tol: float = 1e-6):
        self.tol = tol
        self.per_attack: Dict[str, Dict[str, float]] = {}

    def update(self, attack: str, linf_excess: Any, range_excess: Any, checked: Optional[int] = None) -> None:
        le = torch.as_tensor(linf_excess, dtype=torch.float64).flatten()
        re = torch.as_tensor(range_excess, dtype=torch.float64).flatten()
        if le.numel() == 0:
            return
        r = self.per_attack.setdefault(attack, {"linf_excess": float("-inf"), "range_excess": 0.0, "violations": 0,
                                                "checked": 0})
        r["linf_excess"] = max(r["linf_excess"], float(le.max()))
        r["range_excess"] = max(r["range_excess"], float(re.max()))
        r["violations"] += int(((le > self.tol) | (re > self.tol)).sum())
        r["checked"] += int(checked if checked is not None else le.numel())

    def update_counts(self, attack: str, linf_max: float, range_max: float, violations: int, checked: int) -> None:
        """Merge summary numbers already reduced elsewhere (the AA cascade reports per component)."""
        if checked == 0:
            return
        r = self.per_attack.setdefault(attack, {"linf_excess": float("-inf"), "range_excess": 0.0, "violations": 0,
                                                "checked": 0})
        r["linf_excess"] = max(r["linf_excess"], linf_max)
        r["range_excess"] = max(r["range_excess"], range_max)
        r["violations"] += violations
        r["checked"] += checked

    def result(self) -> Check:
        if not self.per_attack:
            return Check(self.name, "error", "skipped", "no adversarial examples were produced")
        bad = {k: v for k, v in self.per_attack.items() if v["violations"]}
        per = {k: {**v, "linf_excess": v["linf_excess"] if np.isfinite(v["linf_excess"]) else None}
               for k, v in self.per_attack.items()}
        if bad:
            parts = ", ".join(f"{k} ({v['violations']} points, Linf excess {v['linf_excess']:.3g}, "
                              f"range excess {v['range_excess']:.3g})" for k, v in bad.items())
            return _fail(self.name, "error", f"adversarial examples outside the eps-ball or [0,1]: {parts}; "
                         "they were projected back before judging", attacks=per)
        return Check(self.name, "error", "ok", "every adversarial example lies in the eps-ball and in [0,1]",
                     {"attacks": per})


def black_box_check(square_broken: Optional[np.ndarray], white_robust: Optional[np.ndarray],
                    alpha: float = 0.002) -> Check:
    """``black_box_beats_white_box`` from per-sample flags (n,): Square-broken and robust to all white-box attacks.

    Fires when ``#(square_broken & white_robust) > alpha * #white_robust`` -- AutoAttack's ``check_square_sr``:
    Square lowering the white-box robust accuracy by more than a relative ``alpha``.
    """
    name = "black_box_beats_white_box"
    if square_broken is None or white_robust is None:
        return Check(name, "warning", "skipped", "needs Square (square or aa) and at least one white-box attack")
    extra = int(np.sum(square_broken & white_robust))
    base = int(np.sum(white_robust))
    details = {"square_only_breaks": extra, "white_box_robust": base, "alpha": alpha}
    if extra > alpha * base:
        return _fail(name, "warning", f"Square (black-box) broke {extra} of {base} samples that every white-box attack "
                     "missed: likely gradient masking, the white-box robust accuracy is overestimated", **details)
    return Check(name, "warning", "ok", "black-box Square found nothing the white-box attacks missed", details)


def square_and_white_flags(clean: np.ndarray, attacks: Dict[str, Tuple[np.ndarray, bool]],
                           aa_broken_by: Optional[np.ndarray], aa_names: List[str]
                           ) -> Tuple[Optional[np.ndarray], Optional[np.ndarray]]:
    """Per-sample inputs of :func:`black_box_check` from a run's flags (all (n,) arrays).

    ``attacks``: name -> (robust flags, is white-box). Square counts standalone and inside ``aa``
    (``aa_broken_by == k`` for Square's 1-based position ``k`` in ``aa_names``); a sample is white-box
    robust if clean-correct, robust to every standalone white-box attack and not broken by a white-box
    AA component. Returns ``(square_broken or None, white_robust or None)``.
    """
    square_broken = clean & ~attacks["square"][0] if "square" in attacks else None
    white, any_white = clean.copy(), False
    for robust, white_box in attacks.values():
        if white_box:
            white &= robust
            any_white = True
    if aa_broken_by is not None:
        white_idx = [k for k, c in enumerate(aa_names, start=1) if c != "square"]
        if white_idx:
            any_white = True
            white &= ~np.isin(aa_broken_by, white_idx)
        if "square" in aa_names:
            hit = aa_broken_by == aa_names.index("square") + 1
            square_broken = hit if square_broken is None else (square_broken | hit)
    return square_broken, (white if any_white else None)
