"""Confidence bounds for the verification gates, and the one decision rule they all share.

Every rate-type gate compares per-sample outcomes of the artifact with the reference's *on the same
samples*, so the statistics are paired:

* a single rate (robust-to-broken flips, broken-to-robust flips, top-1 disagreements): ``k`` events in
  ``n`` samples, bounded with the Wilson score interval (Wilson 1927);
* a paired difference (robust-accuracy drop or gain, clean-accuracy drop, Square-only breaks on the
  artifact minus those on the reference): the 2x2 table ``a`` (event on both), ``b`` (reference only),
  ``c`` (artifact only), ``d`` (neither) gives ``delta = (b - c) / n``, bounded with Newcombe's hybrid
  score interval for paired proportions (Newcombe 1998, "Improved confidence intervals for the
  difference between binomial proportions based on paired data", method 10), which stays inside
  [-1, 1] and behaves at small counts where the Wald interval does not.

**Decision rule** (:func:`decide`). With point estimate ``p``, one-sided upper confidence bound
``ucb`` (confidence ``1 - alpha``, default 95 %), allowed bound ``B`` and minimum effect
``m = max(B * min_effect_ratio, one sample)`` (ratio 2/3 by default; one sample = ``100 / n`` points)::

    fail  <=>  p > m  and  ucb > B

So an observed effect above the allowed bound always fails (``ucb >= p > B``, once it is more than one
sample); an effect at or below the noise floor ``m`` never fails, whatever ``n`` -- a single discordant
sample is never evidence; an effect between the two fails unless ``n`` is large enough to show the true
value is within ``B``. The decision therefore holds at the ``n`` used: small runs cannot certify a
marginal artifact, and faithful exports (whose drift stays under ``m``) never fail. With an explicit bound
of 0 (``--max-flip-rate 0``) the rule is "any event fails".
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any, Dict, Tuple

_Z_CACHE: Dict[float, float] = {}


def z_one_sided(confidence: float) -> float:
    """The standard-normal quantile for a one-sided bound at ``confidence`` (0.95 -> 1.645)."""
    if not 0.5 <= confidence < 1.0:
        raise ValueError(f"confidence must lie in [0.5, 1), got {confidence}")
    if confidence not in _Z_CACHE:
        from statistics import NormalDist

        _Z_CACHE[confidence] = NormalDist().inv_cdf(confidence)
    return _Z_CACHE[confidence]


def wilson(k: int, n: int, z: float) -> Tuple[float, float]:
    """Wilson score interval ``(lo, hi)`` for ``k`` successes in ``n`` trials (fractions; (0, 1) when n = 0)."""
    if n <= 0:
        return 0.0, 1.0
    p = k / n
    den = 1.0 + z * z / n
    centre = (p + z * z / (2 * n)) / den
    half = z * math.sqrt(max(p * (1 - p) / n + z * z / (4 * n * n), 0.0)) / den
    return max(0.0, centre - half), min(1.0, centre + half)


def newcombe_paired(a: int, b: int, c: int, d: int, z: float) -> Tuple[float, float, float]:
    """``(delta, lo, hi)`` for ``delta = p1 - p2`` of paired binary outcomes (Newcombe 1998, method 10).

    ``p1 = (a + b) / n`` (event on the reference), ``p2 = (a + c) / n`` (event on the artifact).
    """
    n = a + b + c + d
    if n <= 0:
        return 0.0, -1.0, 1.0
    p1, p2 = (a + b) / n, (a + c) / n
    delta = p1 - p2
    l1, u1 = wilson(a + b, n, z)
    l2, u2 = wilson(a + c, n, z)
    prod = (a + b) * (c + d) * (a + c) * (b + d)
    phi = (a * d - b * c) / math.sqrt(prod) if prod > 0 else 0.0
    dl = (p1 - l1) ** 2 - 2 * phi * (p1 - l1) * (u2 - p2) + (u2 - p2) ** 2
    du = (u1 - p1) ** 2 - 2 * phi * (u1 - p1) * (p2 - l2) + (p2 - l2) ** 2
    return delta, max(-1.0, delta - math.sqrt(max(dl, 0.0))), min(1.0, delta + math.sqrt(max(du, 0.0)))


@dataclass
class Decision:
    """One statistical gate decision; every number in percent (points) of n."""

    point: float
    lcb: float
    ucb: float
    bound: float
    min_effect: float
    failed: bool

    def to_dict(self) -> Dict[str, Any]:
        return asdict(self)


def decide(point: float, lcb: float, ucb: float, bound: float, min_effect: float, n: int = 0) -> Decision:
    """The rule of the module docstring (inputs in percent): fail iff ``point > m and ucb > bound`` with
    ``m = max(min(min_effect, bound), 100 / n)`` (``m = 0`` when ``bound`` is 0)."""
    m = min(min_effect, bound)
    if bound > 0 and n > 0:
        m = max(m, 100.0 / n)
    failed = point > m + 1e-9 and ucb > bound + 1e-9
    return Decision(point, lcb, ucb, bound, m, failed)


def rate_decision(k: int, n: int, bound_pct: float, min_effect_pct: float, z: float) -> Decision:
    """Decision for a single rate ``k / n`` (Wilson bounds)."""
    lo, hi = wilson(k, n, z)
    return decide(100.0 * k / max(n, 1), 100.0 * lo, 100.0 * hi, bound_pct, min_effect_pct, n)


def paired_decision(a: int, b: int, c: int, d: int, bound_pct: float, min_effect_pct: float, z: float) -> Decision:
    """Decision for the paired difference ``(b - c) / n`` (Newcombe bounds)."""
    delta, lo, hi = newcombe_paired(a, b, c, d, z)
    return decide(100.0 * delta, 100.0 * lo, 100.0 * hi, bound_pct, min_effect_pct, a + b + c + d)


def table(ref_event, art_event) -> Tuple[int, int, int, int]:
    """The paired 2x2 counts ``(a, b, c, d)`` of two boolean arrays (reference, artifact)."""
    import numpy as np

    r, s = np.asarray(ref_event, bool), np.asarray(art_event, bool)
    return int((r & s).sum()), int((r & ~s).sum()), int((~r & s).sum()), int((~r & ~s).sum())


__all__ = ["wilson", "newcombe_paired", "decide", "rate_decision", "paired_decision", "table", "Decision",
           "z_one_sided"]
