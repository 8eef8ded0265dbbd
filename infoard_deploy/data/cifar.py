"""CIFAR-10 and CIFAR-100 from the official python-version archives (Krizhevsky, 2009).

``cifar-10-python.tar.gz`` holds ``cifar-10-batches-py/{data_batch_1..5, test_batch, batches.meta}``;
``cifar-100-python.tar.gz`` holds ``cifar-100-python/{train, test, meta}``. The archive is read in
place (no extraction) or an extracted folder is used. Each batch is a Python-2 pickle of a dict with
``data`` (N, 3072) uint8, channel-planar R|G|B of 32x32, and ``labels`` (CIFAR-10) or
``fine_labels`` (CIFAR-100) lists.

Pickles can run code, so they are read with :func:`.safe_pickle.safe_loads`, which resolves no real
global: numpy array reconstruction maps to checked stand-ins and anything else is refused. Images
come out as (N, 32, 32, 3) uint8; models normalise with the customary statistics inside.
"""
from __future__ import annotations

import tarfile
import zlib
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Tuple

import numpy as np

from ..errors import UserError
from .base import ArraySet, DataBundle
from .safe_pickle import safe_loads

SPECS: Dict[str, Dict[str, Any]] = {
    "cifar10": {
        "archive": "cifar-10-python.tar.gz", "folder": "cifar-10-batches-py",
        "train": [f"data_batch_{i}" for i in range(1, 6)], "test": ["test_batch"],
        "meta": "batches.meta", "names_key": "label_names", "labels_key": "labels", "num_classes": 10,
        "mean": [0.4914, 0.4822, 0.4465], "std": [0.2471, 0.2435, 0.2616],
    },
    "cifar100": {
        "archive": "cifar-100-python.tar.gz", "folder": "cifar-100-python",
        "train": ["train"], "test": ["test"],
        "meta": "meta", "names_key": "fine_label_names", "labels_key": "fine_labels", "num_classes": 100,
        "mean": [0.5071, 0.4865, 0.4409], "std": [0.2673, 0.2564, 0.2762],
    },
}


def safe_unpickle(raw: bytes, source: str) -> Any:
    """Unpickle CIFAR batch bytes with the restricted unpickler (see :mod:`.safe_pickle`)."""
    return safe_loads(raw, source, what="CIFAR batch pickle")


def _key(d: dict, name: str, source: str) -> Any:
    for k in (name.encode(), name):
        if k in d:
            return d[k]
    raise UserError(f"{source} has no '{name}' entry (is this a CIFAR python-version file?)")


def _members(name: str, location: Path) -> Iterator[Tuple[str, bytes]]:
    """Yield ``(member, bytes)`` for the batch and meta files, in storage order.

    A ``.tar.gz`` is read in one sequential pass (random access would re-decompress from the start
    for every member), so only one member's bytes are held at a time.
    """
    spec = SPECS[name]
    wanted = set(spec["train"]) | set(spec["test"]) | {spec["meta"]}
    if location.is_dir():
        for m in sorted(wanted):
            path = location / m
            if not path.is_file():
                raise UserError(f"{path} not found (expected the extracted {spec['folder']} folder)")
            yield m, path.read_bytes()
        return
    seen = set()
    try:
        with tarfile.open(location, "r:*") as tar:
            for info in tar:
                base = Path(info.name).name  # the archive nests the files in one top folder
                if base in wanted and base not in seen and info.isfile():
                    f = tar.extractfile(info)
                    if f is None:
                        raise UserError(f"{location.name}/{base} is not a regular file in the archive")
                    seen.add(base)
                    yield base, f.read()
    except (tarfile.TarError, EOFError, OSError, zlib.error) as e:
        raise UserError(f"{location.name} is not a readable tar archive ({' '.join(str(e).split())})") from None
    missing = sorted(wanted - seen)
    if missing:
        raise UserError(f"{location.name} has no {', '.join(missing)} (is it the python-version archive "
                        f"{spec['archive']}?)")


def _parse_batch(raw: bytes, src: str, labels_key: str, num_classes: int) -> Tuple[np.ndarray, np.ndarray]:
    d = safe_unpickle(raw, src)
    if not isinstance(d, dict):
        raise UserError(f"{src} is not a CIFAR batch (a {type(d).__name__}, expected a dict)")
    data = np.asarray(_key(d, "data", src))
    labels = np.asarray(_key(d, labels_key, src))
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
        raise UserError(f"{src}: 'data' must be uint8 of shape (N, 3072), got {data.dtype} {data.shape}")
    if labels.ndim != 1 or len(labels) != len(data) or not np.issubdtype(labels.dtype, np.integer):
        raise UserError(f"{src}: {len(data)} images but labels of shape {labels.shape} ({labels.dtype})")
    if len(labels) and (labels.min() < 0 or labels.max() >= num_classes):
        raise UserError(f"{src}: labels must lie in [0, {num_classes - 1}], found [{labels.min()}, {labels.max()}]")
    # channel-planar rows (R 1024 | G 1024 | B 1024) -> NHWC
    return np.ascontiguousarray(data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)), labels.astype(np.int64)


def _parse_names(raw: bytes, src: str, key: str, num_classes: int) -> List[str]:
    meta = safe_unpickle(raw, src)
    if not isinstance(meta, dict):
        raise UserError(f"{src} is not a CIFAR meta file")
    names = [n.decode("utf-8", "replace") if isinstance(n, bytes) else str(n) for n in _key(meta, key, src)]
    if len(names) != num_classes:
        raise UserError(f"{src} lists {len(names)} class names, expected {num_classes}")
    return names


def read_cifar(name: str, location: Path) -> Tuple[Tuple[np.ndarray, np.ndarray], Tuple[np.ndarray, np.ndarray], List[str]]:
    """``((x_train, y_train), (x_test, y_test), class names)`` with x (N, 32, 32, 3) uint8."""
    spec = SPECS[name]
    k = spec["num_classes"]
    batches: Dict[str, Tuple[np.ndarray, np.ndarray]] = {}
    names: List[str] = []
    for member, raw in _members(name, location):
        src = f"{location.name}/{member}"
        if member == spec["meta"]:
            names = _parse_names(raw, src, spec["names_key"], k)
        else:
            batches[member] = _parse_batch(raw, src, spec["labels_key"], k)

    def cat(members: List[str]) -> Tuple[np.ndarray, np.ndarray]:
        xs = [batches[m][0] for m in members]
        ys = [batches[m][1] for m in members]
        return (xs[0], ys[0]) if len(xs) == 1 else (np.concatenate(xs), np.concatenate(ys))

    return cat(spec["train"]), cat(spec["test"]), names


def find_location(name: str, root: Optional[Path]) -> Optional[Path]:
    """The archive or extracted folder under ``root`` (``root`` may be either itself)."""
    if root is None:
        return None
    spec = SPECS[name]
    cands = [root, root / spec["folder"], root / spec["archive"], root / name / spec["folder"], root / name / spec["archive"]]
    for c in cands:
        if c.is_file() and (c.name.endswith((".tar.gz", ".tgz", ".tar")) or c == root):
            return c
        if c.is_dir() and (c / spec["meta"]).exists():
            return c
    return None


def load_cifar_bundle(name: str, root=None, download: bool = False, **_: Any) -> DataBundle:
    """``root``: a folder holding the archive or its extracted folder, or either one itself."""
    spec = SPECS[name]
    from .download import default_cache

    root_p = Path(root) if root else default_cache(name)
    where = find_location(name, root_p)
    if where is None and download:
        from .download import download_dataset

        where = find_location(name, download_dataset(name, root_p))
    if where is None:
        raise UserError(f"{name}: neither {spec['archive']} nor {spec['folder']}/ found in {root_p}; "
                        f"pass --data-dir or --download")
    (xtr, ytr), (xte, yte), classes = read_cifar(name, where)
    return DataBundle(
        name=name,
        train=ArraySet(xtr, ytr, f"{name}/train"),
        test=ArraySet(xte, yte, f"{name}/test"),
        classes=classes,
        input_shape=(3, 32, 32),
        mean=list(spec["mean"]),
        std=list(spec["std"]),
        augment="crop_flip:4",  # the standard CIFAR recipe: pad 4, random 32x32 crop, h-flip
        default_eps=8 / 255,
        info={"source": str(where)},
    )


__all__ = ["SPECS", "safe_unpickle", "load_cifar_bundle", "read_cifar", "find_location"]
