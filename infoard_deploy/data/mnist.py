"""MNIST and Fashion-MNIST from the official IDX files (``*-idx3-ubyte[.gz]``, ``*-idx1-ubyte[.gz]``).

Fashion-MNIST is found automatically where Debian's ``dataset-fashion-mnist`` installs it
(``/usr/share/datasets/fashion-mnist``). ``download=True`` fetches the official files and checks their
SHA-256 (see ``download.py``).
"""
from __future__ import annotations

import gzip
import struct
from pathlib import Path
from typing import Optional

import numpy as np

from ..errors import UserError
from .base import ArraySet, DataBundle

FASHION_CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]
SYSTEM_DIRS = {"fashion-mnist": ["/usr/share/datasets/fashion-mnist"], "mnist": ["/usr/share/datasets/mnist"]}
FILES = {
    "train_x": "train-images-idx3-ubyte", "train_y": "train-labels-idx1-ubyte",
    "test_x": "t10k-images-idx3-ubyte", "test_y": "t10k-labels-idx1-ubyte",
}


def read_idx(path: Path) -> np.ndarray:
    """Parse an IDX file (optionally gzipped): magic 0x0000 08 NDIM (unsigned byte), big-endian dims."""
    try:
        raw = gzip.open(path, "rb").read() if path.suffix == ".gz" else path.read_bytes()
    except (OSError, EOFError) as e:
        raise UserError(f"cannot read {path}: {e}") from None
    if len(raw) < 4:
        raise UserError(f"{path.name} is not an IDX file (too short)")
    zero, dtype, ndim = struct.unpack(">HBB", raw[:4])
    if zero != 0 or dtype != 0x08 or ndim not in (1, 3):
        raise UserError(f"{path.name} is not an unsigned-byte IDX file (bad magic number)")
    dims = struct.unpack(">" + "I" * ndim, raw[4:4 + 4 * ndim])
    body = np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim)
    if body.size != int(np.prod(dims)):
        raise UserError(f"{path.name} is truncated: {body.size} bytes of data for dims {dims}")
    return body.reshape(dims)


def _find(root: Path, stem: str) -> Optional[Path]:
    for cand in (root / f"{stem}.gz", root / stem, root / stem.replace("-idx", ".idx")):
        if cand.exists():
            return cand
    return None


def find_root(name: str, root: Optional[Path]) -> Optional[Path]:
    roots = [Path(root)] if root else []
    if root:
        roots.append(Path(root) / name)
    roots += [Path(p) for p in SYSTEM_DIRS.get(name, [])]
    for r in roots:
        if all(_find(r, s) for s in FILES.values()):
            return r
    return None


def load_idx_bundle(name: str, root=None, download: bool = False, **_) -> DataBundle:
    where = find_root(name, Path(root) if root else None)
    if where is None and download:
        from .download import download_dataset

        where = download_dataset(name, Path(root or Path.home() / ".cache" / "infoard-deploy" / name))
    if where is None:
        hint = " (apt-get install dataset-fashion-mnist)" if name == "fashion-mnist" else ""
        raise UserError(f"{name} IDX files not found in {root or 'the default locations'}; pass --data-dir or --download{hint}")
    arrays = {k: read_idx(_find(where, s)) for k, s in FILES.items()}
    for split in ("train", "test"):
        if arrays[f"{split}_x"].ndim != 3 or arrays[f"{split}_y"].ndim != 1:
            raise UserError(f"{name}: {split} images must be a 3-D IDX file and labels a 1-D one")
        if len(arrays[f"{split}_x"]) != len(arrays[f"{split}_y"]):
            raise UserError(f"{name}: {split} has {len(arrays[f'{split}_x'])} images but {len(arrays[f'{split}_y'])} labels")
    h, w = arrays["train_x"].shape[1:]
    train = ArraySet(arrays["train_x"][..., None], arrays["train_y"], f"{name}/train")
    classes = FASHION_CLASSES if name == "fashion-mnist" else [str(i) for i in range(10)]
    fashion = name == "fashion-mnist"
    return DataBundle(
        name=name,
        train=train,
        test=ArraySet(arrays["test_x"][..., None], arrays["test_y"], f"{name}/test"),
        classes=classes,
        input_shape=(1, h, w),
        mean=[0.2860] if fashion else [0.1307],
        std=[0.3530] if fashion else [0.3081],
        # Fashion items are left/right symmetric, digits are not; a 2-px shift suits 28x28 either way.
        augment="crop_flip:2" if fashion else "crop:2",
        default_eps=0.1 if fashion else 0.3,
        info={"source": str(where)},
    )
