"""Data-source interface: every source yields images as uint8 NHWC (or float in [0,1]) plus int labels.

A source returns a :class:`DataBundle` holding a train and a test :class:`ImageSet`. The loader turns
them into float32 NCHW tensors in [0,1] (normalisation lives inside the model, never in the data).
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import List, Optional, Protocol, Sequence, Tuple

import numpy as np

# Untrusted data files are held to the model card's bounds: a single label of 10,000,000 must not
# build a 10M-class model, nor an array header a terabyte allocation.
from ..card import MAX_CHANNELS, MAX_CLASSES, MAX_SIDE
from ..errors import UserError


def check_labels(ys: Sequence[np.ndarray], source: str, num_names: Optional[int] = None) -> int:
    """The class count K implied by integer labels ``ys`` (all splits): labels must be 0..K-1.

    K is the largest label + 1 (or ``num_names`` when class names are given). Refused: K above
    :data:`MAX_CLASSES`, or labels so sparse that K exceeds the number of examples -- a typo or a
    foreign id column, not a class index.
    """
    ys = [np.asarray(y) for y in ys if len(y)]
    if not ys:
        raise UserError(f"{source}: no labels")
    top = max(int(y.max()) for y in ys)
    n = sum(len(y) for y in ys)
    k = top + 1
    if num_names is not None:
        if num_names > MAX_CLASSES:
            raise UserError(f"{source}: {num_names} class names are given; at most {MAX_CLASSES} classes")
        if k > num_names:
            raise UserError(f"{source}: labels go up to {top} but only {num_names} class names are given")
        k = num_names
    if k > MAX_CLASSES or (num_names is None and k > n):
        distinct = len(np.unique(np.concatenate(ys)))
        raise UserError(f"{source}: labels go up to {top} but only {distinct} distinct values occur in {n} "
                        f"examples; labels must be 0..K-1 (K = number of classes, at most {MAX_CLASSES})")
    return k


def memory_budget() -> int:
    """Physical memory in bytes (the most any single dataset may claim); 64 GiB where unknown."""
    try:
        return int(os.sysconf("SC_PAGE_SIZE")) * int(os.sysconf("SC_PHYS_PAGES"))
    except (ValueError, OSError, AttributeError):
        return 64 << 30


def check_image_shape(h: int, w: int, c: int, source: str, max_side: int = MAX_SIDE) -> None:
    """Refuse image sizes no model here can take (and whose arrays would not fit in memory)."""
    if not (1 <= h <= max_side and 1 <= w <= max_side):
        raise UserError(f"{source}: images are {h}x{w}; sides must lie in 1..{max_side} pixels")
    if not 1 <= c <= MAX_CHANNELS:
        raise UserError(f"{source}: images have {c} channels; at most {MAX_CHANNELS}")


class ImageSet(Protocol):
    """Random access to images: ``get(idx) -> (x (n,H,W,C) uint8 or float32 in [0,1], y (n,) int64)``."""

    def __len__(self) -> int: ...

    def get(self, idx: np.ndarray) -> Tuple[np.ndarray, np.ndarray]: ...


@dataclass
class ArraySet:
    """An in-memory image set. ``x``: (N, H, W, C) uint8, or float32 already in [0,1]; ``y``: (N,) int."""

    x: np.ndarray
    y: np.ndarray
    source: str = "array"

    def __post_init__(self) -> None:
        self.x = validate_images(self.x, self.source)
        y = np.asarray(self.y)
        if y.ndim != 1 or len(y) != len(self.x):
            raise UserError(f"{self.source}: labels must be a 1-D array with one label per image "
                            f"(got {y.shape} for {len(self.x)} images)")
        if not np.issubdtype(y.dtype, np.integer):
            if np.issubdtype(y.dtype, np.floating) and np.all(np.isfinite(y)) and np.all(y == np.round(y)):
                y = y.astype(np.int64)
            else:
                raise UserError(f"{self.source}: labels must be integers, got {y.dtype}")
        if len(y) and y.min() < 0:
            raise UserError(f"{self.source}: labels must be >= 0 (found {int(y.min())})")
        self.y = y.astype(np.int64)

    def __len__(self) -> int:
        return len(self.x)

    def get(self, idx: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
        return self.x[idx], self.y[idx]


def validate_images(x: np.ndarray, source: str) -> np.ndarray:
    """Check shape (N,H,W,C) and range; uint8 as is, float must be finite and in [0,1]."""
    x = np.asarray(x)
    if x.ndim == 3:  # (N, H, W) grey
        x = x[..., None]
    if x.ndim != 4:
        raise UserError(f"{source}: images must be (N, H, W, C), got shape {x.shape}")
    if x.shape[0] == 0:
        raise UserError(f"{source}: no images")
    check_image_shape(int(x.shape[1]), int(x.shape[2]), int(x.shape[3]), source)
    if x.dtype == np.uint8:
        return x
    if np.issubdtype(x.dtype, np.floating):
        if not np.all(np.isfinite(x)):
            raise UserError(f"{source}: images contain NaN or infinite pixels")
        lo, hi = float(x.min()), float(x.max())
        if lo < 0.0 or hi > 1.0:
            raise UserError(f"{source}: float pixels must lie in [0,1] (found [{lo:g}, {hi:g}]); store 0-255 images as uint8")
        return x.astype(np.float32, copy=False)
    if np.issubdtype(x.dtype, np.integer):
        lo, hi = int(x.min()), int(x.max())
        if lo < 0 or hi > 255:
            raise UserError(f"{source}: integer pixels must lie in [0,255] (found [{lo}, {hi}])")
        return x.astype(np.uint8)
    raise UserError(f"{source}: unsupported pixel type {x.dtype}")


@dataclass
class DataBundle:
    """A dataset: train and test image sets, class names, and per-source defaults.

    ``mean``/``std`` are the customary statistics of the dataset; models built for it put them inside
    (``Normalized``). ``augment`` names the standard training augmentation (see ``loader.augment``).
    """

    name: str
    train: ImageSet
    test: ImageSet
    classes: List[str]
    input_shape: Tuple[int, int, int]  # (C, H, W)
    mean: Sequence[float]
    std: Sequence[float]
    augment: str = "none"
    default_eps: Optional[float] = None
    info: dict = field(default_factory=dict)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def check(self) -> "DataBundle":
        k = self.num_classes
        if not 2 <= k <= MAX_CLASSES:
            raise UserError(f"{self.name}: a classifier needs 2..{MAX_CLASSES} classes, found {k}")
        for split, s in (("train", self.train), ("test", self.test)):
            if len(s) == 0:
                raise UserError(f"{self.name}: the {split} split is empty")
            y = getattr(s, "y", None)  # every in-tree set keeps its labels in memory: a cheap full check
            if y is not None and len(y) and (int(np.min(y)) < 0 or int(np.max(y)) >= k):
                raise UserError(f"{self.name}: {split} labels must lie in 0..{k - 1} ({k} classes), found "
                                f"{int(np.min(y))}..{int(np.max(y))}")
            xb, yb = s.get(np.arange(min(len(s), 1)))
            if tuple(xb.shape[1:]) != (self.input_shape[1], self.input_shape[2], self.input_shape[0]):
                raise UserError(f"{self.name}: {split} images are {xb.shape[1:]}, expected HWC "
                                f"{(self.input_shape[1], self.input_shape[2], self.input_shape[0])}")
        return self
