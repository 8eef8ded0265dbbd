"""MNIST and Fashion-MNIST from the official IDX files (``*-idx3-ubyte[.gz]``, ``*-idx1-ubyte[.gz]``).

Fashion-MNIST is found automatically where Debian's ``dataset-fashion-mnist`` installs it
(``/usr/share/datasets/fashion-mnist``). ``download=True`` fetches the official files and checks their
SHA-256 (see ``download.py``).
"""
from __future__ import annotations

import gzip
import math
import struct
import zlib
from pathlib import Path
from typing import Optional

import numpy as np

from ..errors import UserError
from .base import ArraySet, DataBundle, check_image_shape, memory_budget

FASHION_CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]
SYSTEM_DIRS = {"fashion-mnist": ["/usr/share/datasets/fashion-mnist"], "mnist": ["/usr/share/datasets/mnist"]}
FILES = {
    "train_x": "train-images-idx3-ubyte", "train_y": "train-labels-idx1-ubyte",
    "test_x": "t10k-images-idx3-ubyte", "test_y": "t10k-labels-idx1-ubyte",
}


def read_idx(path: Path) -> np.ndarray:
    """Parse an IDX file (optionally gzipped): magic 0x0000 08 NDIM (unsigned byte), big-endian dims.

    The header is checked before the body is read, so a file (or a gzip bomb) declaring huge dims is
    refused instead of decompressed into memory.
    """
    try:
        with (gzip.open(path, "rb") if path.suffix == ".gz" else open(path, "rb")) as f:
            head = f.read(4)
            if len(head) < 4:
                raise UserError(f"{path.name} is not an IDX file (too short)")
            zero, dtype, ndim = struct.unpack(">HBB", head)
            if zero != 0 or dtype != 0x08 or ndim not in (1, 3):
                raise UserError(f"{path.name} is not an unsigned-byte IDX file (bad magic number)")
            raw_dims = f.read(4 * ndim)
            if len(raw_dims) < 4 * ndim:
                raise UserError(f"{path.name} is truncated inside its header")
            dims = struct.unpack(">" + "I" * ndim, raw_dims)
            if ndim == 3:
                check_image_shape(dims[1], dims[2], 1, path.name)
            n = math.prod(dims)
            if n > memory_budget():
                raise UserError(f"{path.name} declares dims {dims} ({n} bytes), more than this machine's memory")
            body = f.read(n + 1)  # one byte more reveals trailing data
    except UserError:
        raise
    except (OSError, EOFError, zlib.error) as e:
        raise UserError(f"cannot read {path}: {e}") from None
    if len(body) < n:
        raise UserError(f"{path.name} is truncated: {len(body)} bytes of data for dims {dims}")
    if len(body) > n:
        raise UserError(f"{path.name} has data beyond its dims {dims} (not an IDX file of this layout)")
    return np.frombuffer(body, dtype=np.uint8).reshape(dims)


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
