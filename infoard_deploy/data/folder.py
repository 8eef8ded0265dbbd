"""``imagefolder``: ``root/train/<class>/*.png|jpg`` and ``root/test/<class>/...`` (torchvision layout).

Images are decoded lazily with Pillow, one batch at a time, so memory is bounded by the batch size.
At load time only the file headers are read (size and colour mode), which catches unreadable files
and inconsistent sizes before training starts. Grey vs RGB: if any image is in colour, the set is
RGB and grey images are replicated to three channels; otherwise it is one-channel grey (``channels``
forces either). All images must share one size unless ``resize=(H, W)`` (or ``"HxW"``/an int) is
given, which resizes with bilinear filtering. Class names are the sorted sub-folders of ``train``;
``test`` (or ``val``) may hold a subset of them. Normalisation statistics are measured on a seeded
sample of the training images.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, List, Optional, Sequence, Tuple

import numpy as np

from ..errors import UserError
from .base import MAX_CLASSES, MAX_SIDE, DataBundle
from .stats import pixel_stats, safe_std

IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm")
_GREY_MODES = {"1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "I;16N", "F"}
_STATS_SAMPLES = 512


def _pil():
    """``(Image, errors)``: the exceptions that mean "this file is not an image we can read", among them
    Pillow's DecompressionBombError (an image of hundreds of megapixels)."""
    try:
        from PIL import Image, UnidentifiedImageError
    except ImportError:  # pragma: no cover - Pillow comes with matplotlib
        raise UserError("reading an image folder needs Pillow (pip install pillow)") from None
    return Image, (UnidentifiedImageError, Image.DecompressionBombError, OSError, ValueError)


def parse_size(resize: Any) -> Optional[Tuple[int, int]]:
    """``None`` | ``32`` | ``"32"`` | ``"28x32"`` | ``(28, 32)`` -> ``(H, W)``."""
    if resize in (None, "", 0):
        return None
    try:
        if isinstance(resize, (int, np.integer)):
            hw = (int(resize), int(resize))
        elif isinstance(resize, str):
            parts = [int(p) for p in resize.lower().replace(",", "x").split("x") if p.strip()]
            hw = (parts[0], parts[0]) if len(parts) == 1 else (parts[0], parts[1])
            if len(parts) not in (1, 2):
                raise ValueError
        else:
            h, w = resize
            hw = (int(h), int(w))
    except (ValueError, TypeError, IndexError):
        raise UserError(f"resize must be N, HxW or (H, W), got {resize!r}") from None
    if min(hw) <= 0 or max(hw) > MAX_SIDE:
        raise UserError(f"resize must lie in 1..{MAX_SIDE} pixels per side, got {resize!r}")
    return hw


def _scan(split_dir: Path, classes: Optional[List[str]]) -> Tuple[List[str], List[Path], List[int]]:
    if not split_dir.is_dir():
        raise UserError(f"image folder split not found: {split_dir} (expected <root>/train/<class>/*.png)")
    found = sorted(d.name for d in split_dir.iterdir() if d.is_dir() and not d.name.startswith("."))
    if not found:
        raise UserError(f"{split_dir} has no class sub-folders (expected {split_dir}/<class>/*.png)")
    if len(found) > MAX_CLASSES:
        raise UserError(f"{split_dir} has {len(found)} class sub-folders; at most {MAX_CLASSES} classes")
    if classes is None:
        classes = found
    else:
        extra = [c for c in found if c not in classes]
        if extra:
            raise UserError(f"{split_dir} has classes not in train: {', '.join(extra[:5])}")
    paths: List[Path] = []
    labels: List[int] = []
    for c in found:
        files = sorted(p for p in (split_dir / c).iterdir()
                       if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in IMAGE_EXTS)
        if not files and split_dir.name == "train":
            raise UserError(f"class folder {split_dir / c} holds no images ({', '.join(IMAGE_EXTS[:3])}, ...)")
        paths += files
        labels += [classes.index(c)] * len(files)
    if not paths:
        raise UserError(f"{split_dir} holds no images")
    return classes, paths, labels


def _headers(paths: Sequence[Path]) -> Tuple[List[Tuple[int, int]], List[str]]:
    """(H, W) and colour mode of each file, reading headers only."""
    Image, Unidentified = _pil()
    sizes, modes = [], []
    for p in paths:
        try:
            with Image.open(p) as im:
                sizes.append((im.height, im.width))
                modes.append(im.mode)
        except Unidentified as e:
            raise UserError(f"cannot read image {p}: {' '.join(str(e).split())}") from None
    return sizes, modes


class FolderSet:
    """Lazily decoded image files: ``get(idx) -> ((n, H, W, C) uint8, (n,) int64)``."""

    def __init__(self, paths: Sequence[Path], labels: Sequence[int], size: Tuple[int, int], channels: int,
                 resize: bool, source: str):
        self.paths = list(paths)
        self.y = np.asarray(labels, dtype=np.int64)
        self.size, self.channels, self.resize, self.source = size, channels, resize, source

    def __len__(self) -> int:
        return len(self.paths)

    def _load(self, p: Path) -> np.ndarray:
        Image, Unidentified = _pil()
        try:
            with Image.open(p) as im:
                im.load()
                if im.mode.startswith("I") or im.mode == "F":
                    # 16-bit / float grey: scale to 8 bits instead of PIL's clipping convert("L")
                    a = np.asarray(im, dtype=np.float64)
                    scale = 65535.0 if a.max() > 255 else 255.0
                    im = Image.fromarray(np.clip(np.round(a * (255.0 / scale)), 0, 255).astype(np.uint8), "L")
                im = im.convert("RGB" if self.channels == 3 else "L")
                if (im.height, im.width) != self.size:
                    if not self.resize:
                        raise UserError(f"{p} is {im.height}x{im.width}, the set is {self.size[0]}x{self.size[1]}; "
                                        f"give resize=HxW")
                    im = im.resize((self.size[1], self.size[0]), Image.BILINEAR)
                a = np.asarray(im, dtype=np.uint8)
        except Unidentified as e:
            raise UserError(f"cannot decode image {p}: {' '.join(str(e).split())}") from None
        return a[..., None] if a.ndim == 2 else a

    def get(self, idx: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
        idx = np.atleast_1d(np.asarray(idx, dtype=np.int64))
        x = np.stack([self._load(self.paths[i]) for i in idx]) if len(idx) else \
            np.zeros((0, *self.size, self.channels), np.uint8)
        return x, self.y[idx]


def load_folder_bundle(root=None, download: bool = False, resize: Any = None, channels: Optional[int] = None,
                       augment: str = "none", eps: Optional[float] = None, **_: Any) -> DataBundle:
    if download:
        raise UserError("imagefolder data cannot be downloaded; point --data-dir at <root> with train/ and test/")
    if root is None:
        raise UserError("imagefolder needs --data-dir <root> holding train/<class>/ and test/<class>/")
    root = Path(root)
    if not root.is_dir():
        raise UserError(f"image folder root not found or not a folder: {root}")
    if channels not in (None, 1, 3):
        raise UserError(f"channels must be 1 or 3, got {channels}")
    hw = parse_size(resize)
    resizing = hw is not None
    classes, tr_paths, tr_labels = _scan(root / "train", None)
    test_dir = root / "test" if (root / "test").is_dir() or not (root / "val").is_dir() else root / "val"
    _, te_paths, te_labels = _scan(test_dir, classes)
    sizes, modes = _headers(tr_paths + te_paths)
    # Source images larger than a model input are fine when resized (photos), within reason.
    limit = MAX_SIDE * 4 if resizing else MAX_SIDE
    big = next((i for i, (h, w) in enumerate(sizes) if max(h, w) > limit), None)
    if big is not None:
        h, w = sizes[big]
        raise UserError(f"image {(tr_paths + te_paths)[big]} is {h}x{w}; images may be at most {limit} pixels per "
                        f"side" + ("" if resizing else " (or pass resize=HxW)"))
    if hw is None:
        hw = sizes[0]
        allp = tr_paths + te_paths
        odd = next((i for i, s in enumerate(sizes) if s != hw), None)
        if odd is not None:
            raise UserError(f"images differ in size: {allp[0].name} is {hw[0]}x{hw[1]} but {allp[odd]} is "
                            f"{sizes[odd][0]}x{sizes[odd][1]}; pass resize=HxW")
    if channels is None:
        channels = 1 if all(m in _GREY_MODES for m in modes) else 3
    train = FolderSet(tr_paths, tr_labels, hw, channels, resizing, f"imagefolder/{root.name}/train")
    test = FolderSet(te_paths, te_labels, hw, channels, resizing, f"imagefolder/{root.name}/{test_dir.name}")
    st = pixel_stats(train, max_samples=_STATS_SAMPLES, seed=0)
    return DataBundle(
        name="imagefolder",
        train=train,
        test=test,
        classes=classes,
        input_shape=(channels, hw[0], hw[1]),
        mean=st["mean"],
        std=safe_std(st["std"]),
        augment=augment,
        default_eps=eps,
        info={"source": str(root), "stats_from": f"{st['images']} training images", "resized": resizing},
    )


__all__ = ["FolderSet", "load_folder_bundle", "parse_size", "IMAGE_EXTS"]
