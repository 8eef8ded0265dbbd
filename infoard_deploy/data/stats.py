"""Per-channel pixel statistics of an :class:`ImageSet`, computed in bounded memory.

Used for the normalisation of custom sources (imagefolder, npz), whose mean/std are not customary
constants, and by ``infoard-deploy data`` to report what a source actually holds.
"""
from __future__ import annotations

from typing import Dict, Optional

import numpy as np

from .base import ImageSet


def pixel_stats(data: ImageSet, max_samples: Optional[int] = None, seed: int = 0,
                batch: int = 512) -> Dict[str, object]:
    """Mean/std/min/max per channel in [0,1] units over (a seeded sample of) ``data``.

    ``max_samples`` bounds the work on large or lazily loaded sets; the sample is drawn with
    ``numpy.random.default_rng(seed)`` so the statistics are reproducible.
    """
    n = len(data)
    idx = np.arange(n)
    if max_samples is not None and n > max_samples:
        idx = np.sort(np.random.default_rng(seed).choice(n, size=max_samples, replace=False))
    s = sq = None
    lo = hi = None
    count = 0
    for start in range(0, len(idx), batch):
        x, _ = data.get(idx[start:start + batch])
        x = np.asarray(x)
        xf = x.astype(np.float64) / 255.0 if x.dtype == np.uint8 else x.astype(np.float64)
        flat = xf.reshape(-1, xf.shape[-1])  # (pixels, C)
        s = flat.sum(0) if s is None else s + flat.sum(0)
        sq = (flat ** 2).sum(0) if sq is None else sq + (flat ** 2).sum(0)
        lo = flat.min(0) if lo is None else np.minimum(lo, flat.min(0))
        hi = flat.max(0) if hi is None else np.maximum(hi, flat.max(0))
        count += flat.shape[0]
    mean = s / count
    std = np.sqrt(np.maximum(sq / count - mean ** 2, 0.0))
    return {"mean": [float(v) for v in mean], "std": [float(v) for v in std],
            "min": [float(v) for v in lo], "max": [float(v) for v in hi], "images": int(len(idx))}


def safe_std(std: list, floor: float = 1e-3) -> list:
    """A constant channel has std 0; models divide by it, so keep it positive."""
    return [max(float(v), floor) for v in std]


__all__ = ["pixel_stats", "safe_std"]
