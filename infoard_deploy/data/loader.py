"""Seeded batch iteration over an :class:`ImageSet`, with the standard training augmentation.

Yields ``(x, y, idx)``: ``x`` float32 (B, C, H, W) in [0,1], ``y`` int64 (B,), ``idx`` int64 (B,) the
dataset indices (per-sample memories such as ASA's attack strength are keyed by them). Only one batch
is materialised at a time, so memory is bounded by the batch size. Shuffling depends only on
``(seed, epoch)``, so an interrupted run resumes on the same order; with ``world_size > 1`` each rank
takes a disjoint, equal-sized shard (DistributedSampler semantics).
"""
from __future__ import annotations

from typing import Iterator, Optional, Tuple

import numpy as np
import torch

from ..errors import UserError
from .base import ImageSet


def split_indices(n: int, val_fraction: float, seed: int, limit: Optional[int] = None) -> Tuple[np.ndarray, np.ndarray]:
    """Carve a seeded validation split out of the *training* data (never the test set).

    ``limit`` optionally keeps only that many training examples (after removing validation ones).
    """
    if not 0.0 <= val_fraction < 1.0:
        raise UserError(f"validation fraction must lie in [0, 1), got {val_fraction}")
    perm = np.random.default_rng(seed + 7919).permutation(n)
    n_val = int(round(n * val_fraction))
    val, train = np.sort(perm[:n_val]), perm[n_val:]
    if limit is not None:
        if limit <= 0:
            raise UserError(f"training subset size must be positive, got {limit}")
        train = train[:limit]
    return np.sort(train), val


def augment_batch(x: np.ndarray, kind: str, rng: np.random.Generator) -> np.ndarray:
    """``kind``: ``none`` | ``crop:P`` | ``flip`` | ``crop_flip:P`` (zero-pad P then random crop; h-flip p=0.5).

    ``x``: (B, H, W, C) array; returns the same shape and dtype.
    """
    if kind in ("none", "", None):
        return x
    name, _, arg = kind.partition(":")
    if name not in ("crop", "flip", "crop_flip"):
        raise UserError(f"unknown augmentation '{kind}' (none, crop:P, flip, crop_flip:P)")
    out = x
    if name in ("crop", "crop_flip"):
        pad = int(arg or 4)
        b, h, w, _ = x.shape
        padded = np.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
        oy = rng.integers(0, 2 * pad + 1, size=b)
        ox = rng.integers(0, 2 * pad + 1, size=b)
        out = np.stack([padded[i, oy[i]:oy[i] + h, ox[i]:ox[i] + w] for i in range(b)])
    if name in ("flip", "crop_flip"):
        flip = rng.random(len(out)) < 0.5
        out = out.copy() if out is x else out
        out[flip] = out[flip, :, ::-1]
    return out


def to_tensor(x: np.ndarray) -> torch.Tensor:
    """(B, H, W, C) uint8 or float [0,1] -> float32 (B, C, H, W) in [0,1]."""
    t = torch.from_numpy(np.ascontiguousarray(x))
    t = t.float().div_(255.0) if t.dtype == torch.uint8 else t.float()
    return t.permute(0, 3, 1, 2).contiguous()


class BatchLoader:
    def __init__(self, data: ImageSet, indices: Optional[np.ndarray] = None, batch_size: int = 128,
                 shuffle: bool = False, augment: str = "none", seed: int = 0, drop_last: bool = False,
                 rank: int = 0, world_size: int = 1):
        if batch_size <= 0:
            raise UserError(f"batch size must be positive, got {batch_size}")
        self.data = data
        self.indices = np.arange(len(data)) if indices is None else np.asarray(indices, dtype=np.int64)
        self.batch_size, self.shuffle, self.augment = batch_size, shuffle, augment
        self.seed, self.drop_last, self.rank, self.world_size = seed, drop_last, rank, world_size
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _order(self) -> np.ndarray:
        idx = self.indices
        if self.shuffle:
            idx = idx[np.random.default_rng((self.seed, self.epoch)).permutation(len(idx))]
        if self.world_size > 1:  # pad to a multiple of world_size, then stride (DistributedSampler)
            total = -(-len(idx) // self.world_size) * self.world_size
            idx = np.concatenate([idx, idx[: total - len(idx)]])[self.rank::self.world_size]
        return idx

    def __len__(self) -> int:
        n = len(self._order())
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def __iter__(self) -> Iterator[Tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        order = self._order()
        rng = np.random.default_rng((self.seed, self.epoch, self.rank, 1))
        for s in range(0, len(order), self.batch_size):
            b = order[s:s + self.batch_size]
            if self.drop_last and len(b) < self.batch_size:
                break
            x, y = self.data.get(b)
            x = augment_batch(x, self.augment, rng)
            yield to_tensor(x), torch.from_numpy(np.asarray(y, dtype=np.int64)), torch.from_numpy(b.astype(np.int64))
