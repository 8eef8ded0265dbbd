"""Paired statistics for per-sample robustness flags of two models on the same images.

Two models evaluated on the same test images differ per image, so the difference of their accuracies is measured
on the pairs (image difficulty cancels): the mean difference in points, a bootstrap interval that resamples
images within each seed, and McNemar's exact test on the discordant pairs (robust under A only vs B only).
"""
from __future__ import annotations

import math
from typing import Dict, Sequence

import numpy as np


def mcnemar_exact(a_only: int, b_only: int) -> float:
    """Two-sided exact McNemar p-value: binomial test of ``a_only`` out of the discordant pairs at p = 1/2."""
    n = int(a_only) + int(b_only)
    if n == 0:
        return 1.0
    k = min(int(a_only), int(b_only))
    tail = sum(math.comb(n, i) for i in range(k + 1)) / 2.0 ** n
    return float(min(1.0, 2.0 * tail))


def paired_difference(a: Sequence[np.ndarray], b: Sequence[np.ndarray], reps: int = 10000,
                      seed: int = 0) -> Dict[str, object]:
    """``a``, ``b``: per-seed boolean arrays over the same images (same length within a seed).

    Returns the mean difference A - B in points over all (seed, image) pairs, a 95 % percentile-bootstrap
    interval resampling images within each seed, the discordant counts per seed and McNemar's exact p-value on
    the pooled discordant pairs.
    """
    if len(a) != len(b) or not a:
        raise ValueError("paired_difference needs the same (non-zero) number of seeds for A and B")
    d = []
    for ai, bi in zip(a, b):
        ai, bi = np.asarray(ai, bool), np.asarray(bi, bool)
        if ai.shape != bi.shape:
            raise ValueError(f"paired flags must cover the same images ({ai.shape} vs {bi.shape})")
        d.append(ai.astype(float) - bi.astype(float))
    rng = np.random.default_rng(seed)
    boots = np.zeros(reps)
    weights = np.array([len(di) for di in d], float)
    for di, w in zip(d, weights):  # the pooled mean weights each seed by its image count
        if len(di):
            boots += di[rng.integers(0, len(di), size=(reps, len(di)))].mean(1) * w
    boots *= 100.0 / weights.sum()
    lo, hi = np.percentile(boots, [2.5, 97.5])
    a_only = [int((np.asarray(ai, bool) & ~np.asarray(bi, bool)).sum()) for ai, bi in zip(a, b)]
    b_only = [int((np.asarray(bi, bool) & ~np.asarray(ai, bool)).sum()) for ai, bi in zip(a, b)]
    p = mcnemar_exact(sum(a_only), sum(b_only))
    return {"diff": round(100.0 * float(np.concatenate(d).mean()), 3),
            "ci95": [round(float(lo), 3), round(float(hi), 3)],
            "a_only": a_only, "b_only": b_only, "mcnemar_p": float(f"{p:.3g}"),  # 3 significant digits, never rounded to 0
            "pairs": int(weights.sum())}


__all__ = ["mcnemar_exact", "paired_difference"]
