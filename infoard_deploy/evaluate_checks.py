"""Named sanity checks for a robustness evaluation (AutoAttack's ``checks.py`` / ``flags_doc.md`` red flags).

Each check yields a :class:`Check` with ``status`` ``ok`` | ``warn`` | ``error`` | ``skipped``:

* ``logits_not_probabilities`` (warning): the model returns rows in [0,1] that sum to 1, i.e. softmax
  probabilities; CE/DLR on probabilities saturates and attacks under-perform (AA flag "softmax output").
* ``deterministic_eval`` (warning): two eval-mode forward passes on one batch differ (dropout left on,
  added noise, randomised defence) -> plain attacks overestimate robustness; use EoT (AA ``version='rand'``).
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
    """``logits_not_probabilities``: fed every batch of clean outputs (B, K)."""

    name = "logits_not_probabilities"

    def __init__(self, frac: float = 0.5, sum_tol: float = 1e-3):
        self.frac, self.sum_tol = frac, sum_tol
        self.rows = self.prob_rows = 0

    def update(self, out: torch.Tensor) -> None:
        out = out.detach().float()
        like = (out.amin(1) >= -1e-6) & (out.amax(1) <= 1 + 1e-6) & ((out.sum(1) - 1).abs() <= self.sum_tol)
        self.rows += out.shape[0]
        self.prob_rows += int(like.sum())

    def result(self) -> Check:
        if not self.rows:
            return Check(self.name, "warning", "skipped", "no outputs seen")
        share = self.prob_rows / self.rows
        if share > self.frac:
            return _fail(self.name, "warning", f"{share:.0%} of output rows are probabilities (in [0,1], sum 1); "
                         "attacks need logits -- remove the final softmax", share=share)
        return Check(self.name, "warning", "ok", "outputs are logits", {"share": share})


@torch.no_grad()
def deterministic_check(model: nn.Module, x: torch.Tensor, rtol: float = 1e-4) -> Check:
    """``deterministic_eval``: two eval-mode forwards on the same batch ``x`` (B, C, H, W) must agree."""
    name = "deterministic_eval"
    a, b = model(x).float(), model(x).float()
    diff = float((a - b).abs().max()) if a.numel() else 0.0
    scale = 1.0 + float(a.abs().max()) if a.numel() else 1.0
    if not np.isfinite(diff) or diff > rtol * scale:
        return _fail(name, "warning", f"two eval-mode forward passes differ (max |diff| {diff:.3g}): the model is "
                     "randomised (dropout on? noise?); its robustness is overestimated by plain attacks", max_diff=diff)
    return Check(name, "warning", "ok", "eval-mode forward passes agree", {"max_diff": diff})


def gradient_check(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> Check:
    """``nonzero_input_gradients``: input gradient of the margin loss max_{j!=y} z_j - z_y, per sample.

    The margin (not CE) is used because CE's gradient underflows to 0 on very confident samples, which
    would be a false alarm; a zero margin gradient means the model is locally flat (masking).
    """
    name = "nonzero_input_gradients"
    x = x.detach().clone().requires_grad_(True)
    with torch.enable_grad():
        z = model(x).float()
        if z.shape[1] < 2:
            return Check(name, "warning", "skipped", "fewer than 2 outputs")
        zy = z.gather(1, y[:, None]).squeeze(1)
        other = z.masked_fill(torch.nn.functional.one_hot(y, z.shape[1]).bool(), float("-inf")).amax(1)
        loss = (other - zy).sum()
        # a graph that does not reach the input (no autograd at all) counts as zero gradient everywhere
        g = torch.autograd.grad(loss, [x], allow_unused=True)[0] if loss.requires_grad else None
    if g is None:
        zero = torch.ones(x.shape[0], dtype=torch.bool)
    else:
        zero = g.flatten(1).abs().amax(1) == 0
    n = int(zero.sum())
    if n:
        return _fail(name, "warning", f"{n} of {x.shape[0]} samples have an all-zero input gradient: gradient "
                     "masking; white-box results are unreliable (use Square / an adaptive attack)", zero=n, of=x.shape[0])
    return Check(name, "warning", "ok", "input gradients are non-zero", {"zero": 0, "of": int(x.shape[0])})


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
