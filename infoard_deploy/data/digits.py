"""scikit-learn's bundled 8x8 handwritten digits (UCI ML hand-written digits, 1,797 images).

The embedded default: real data that needs no download. Pixels are 0..16 in the source; they are
scaled to uint8 0..255. Split: a fixed, seeded 80/20 train/test split (the set has no official one).
"""
from __future__ import annotations

import numpy as np

from .base import ArraySet, DataBundle


def load_digits_bundle(root=None, download: bool = False, seed: int = 0, **_) -> DataBundle:
    from sklearn.datasets import load_digits

    d = load_digits()
    x = np.clip(np.round(d.images * (255.0 / 16.0)), 0, 255).astype(np.uint8)[..., None]  # (N, 8, 8, 1)
    y = d.target.astype(np.int64)
    perm = np.random.default_rng(seed).permutation(len(x))
    n_test = len(x) // 5
    test, train = perm[:n_test], perm[n_test:]
    return DataBundle(
        name="digits",
        train=ArraySet(x[train], y[train], "digits/train"),
        test=ArraySet(x[test], y[test], "digits/test"),
        classes=[str(i) for i in range(10)],
        input_shape=(1, 8, 8),
        mean=[float(x[train].mean() / 255.0)],
        std=[float(x[train].std() / 255.0)],
        augment="none",
        default_eps=0.1,
        info={"source": "sklearn.datasets.load_digits", "split": f"seeded 80/20 (seed {seed})"},
    )
