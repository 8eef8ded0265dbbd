"""Writers for small data files in the official on-disk formats (used by the data and bad-input tests).

* IDX (LeCun's MNIST format): magic ``00 00 08 NDIM``, big-endian uint32 dims, then uint8 data.
* CIFAR python version: Python-2-style pickles of dicts with bytes keys (``b"data"`` (N, 3072) uint8
  channel-planar rows, ``b"labels"`` or ``b"fine_labels"``), inside ``cifar-10-batches-py/`` or
  ``cifar-100-python/``, optionally packed as the official ``.tar.gz``.
"""
from __future__ import annotations

import gzip
import io
import pickle
import struct
import tarfile
from pathlib import Path
from typing import Dict, Tuple

import numpy as np


def idx_bytes(a: np.ndarray) -> bytes:
    a = np.ascontiguousarray(a, dtype=np.uint8)
    return struct.pack(">HBB", 0, 0x08, a.ndim) + struct.pack(">" + "I" * a.ndim, *a.shape) + a.tobytes()


def write_idx(path: Path, a: np.ndarray, gz: bool = True) -> Path:
    raw = idx_bytes(a)
    path = Path(str(path) + ".gz") if gz else Path(path)
    path.write_bytes(gzip.compress(raw) if gz else raw)
    return path


def write_mnist(root: Path, n_train: int = 24, n_test: int = 12, hw: int = 12, gz: bool = True,
                seed: int = 0) -> Dict[str, np.ndarray]:
    """Tiny MNIST-layout IDX files; returns the arrays written."""
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    arrays = {
        "train_x": rng.integers(0, 256, (n_train, hw, hw), dtype=np.uint8),
        "train_y": rng.integers(0, 10, n_train).astype(np.uint8),
        "test_x": rng.integers(0, 256, (n_test, hw, hw), dtype=np.uint8),
        "test_y": rng.integers(0, 10, n_test).astype(np.uint8),
    }
    names = {"train_x": "train-images-idx3-ubyte", "train_y": "train-labels-idx1-ubyte",
             "test_x": "t10k-images-idx3-ubyte", "test_y": "t10k-labels-idx1-ubyte"}
    for k, a in arrays.items():
        write_idx(root / names[k], a, gz)
    return arrays


class _Py2Pickler(pickle._Pickler):
    """Writes str and bytes as Python 2 ``str`` (SHORT_BINSTRING / BINSTRING), as cPickle did."""

    dispatch = dict(pickle._Pickler.dispatch)

    def _save_py2_str(self, obj):
        b = obj.encode("latin1") if isinstance(obj, str) else obj
        if len(b) < 256:
            self.write(pickle.SHORT_BINSTRING + bytes([len(b)]) + b)
        else:
            self.write(pickle.BINSTRING + struct.pack("<i", len(b)) + b)
        self.memoize(obj)

    dispatch[str] = _save_py2_str
    dispatch[bytes] = _save_py2_str


def py2_pickle(obj) -> bytes:
    """Pickle like the official CIFAR files (Python 2 cPickle, protocol 2): every string a py2 ``str``
    (even numpy's dtype code), numpy named ``numpy.core.multiarray``."""
    f = io.BytesIO()
    _Py2Pickler(f, protocol=2).dump(obj)
    return f.getvalue().replace(b"numpy._core.multiarray", b"numpy.core.multiarray")


def _batch(x_nhwc: np.ndarray, y: np.ndarray, label_key: str, extra: Dict = None) -> bytes:
    d = {b"batch_label": b"synthetic batch", label_key.encode(): [int(v) for v in y],
         b"data": x_nhwc.transpose(0, 3, 1, 2).reshape(len(x_nhwc), -1).copy(),
         b"filenames": [f"img_{i}.png".encode() for i in range(len(y))]}
    d.update(extra or {})
    return py2_pickle(d)


def write_cifar(root: Path, kind: str = "cifar10", per_batch: int = 4, n_test: int = 6, packed: bool = True,
                seed: int = 0, corrupt: Dict[str, bytes] = None) -> Tuple[Path, Dict[str, np.ndarray]]:
    """Write a tiny official-layout CIFAR-10/100 set under ``root``; returns (path, NHWC arrays).

    ``packed``: the ``.tar.gz`` archive (path returned) or the extracted folder. ``corrupt`` replaces
    member files' bytes (e.g. a malicious pickle).
    """
    rng = np.random.default_rng(seed)
    k = 10 if kind == "cifar10" else 100
    folder = "cifar-10-batches-py" if kind == "cifar10" else "cifar-100-python"
    files: Dict[str, bytes] = {}
    xs, ys = [], []
    if kind == "cifar10":
        for i in range(1, 6):
            x = rng.integers(0, 256, (per_batch, 32, 32, 3), dtype=np.uint8)
            y = rng.integers(0, k, per_batch)
            files[f"data_batch_{i}"] = _batch(x, y, "labels")
            xs.append(x), ys.append(y)
        xt = rng.integers(0, 256, (n_test, 32, 32, 3), dtype=np.uint8)
        yt = rng.integers(0, k, n_test)
        files["test_batch"] = _batch(xt, yt, "labels")
        files["batches.meta"] = py2_pickle({b"label_names": [f"class{i}".encode() for i in range(k)],
                                            b"num_cases_per_batch": per_batch, b"num_vis": 3072})
    else:
        x = rng.integers(0, 256, (per_batch * 5, 32, 32, 3), dtype=np.uint8)
        y = rng.integers(0, k, per_batch * 5)
        files["train"] = _batch(x, y, "fine_labels", {b"coarse_labels": [int(v) // 5 for v in y]})
        xs.append(x), ys.append(y)
        xt = rng.integers(0, 256, (n_test, 32, 32, 3), dtype=np.uint8)
        yt = rng.integers(0, k, n_test)
        files["test"] = _batch(xt, yt, "fine_labels", {b"coarse_labels": [int(v) // 5 for v in yt]})
        files["meta"] = py2_pickle({b"fine_label_names": [f"fine{i}".encode() for i in range(k)],
                                    b"coarse_label_names": [f"coarse{i}".encode() for i in range(20)]})
    files.update(corrupt or {})
    arrays = {"train_x": np.concatenate(xs), "train_y": np.concatenate(ys), "test_x": xt, "test_y": yt}
    root.mkdir(parents=True, exist_ok=True)
    if packed:
        path = root / ("cifar-10-python.tar.gz" if kind == "cifar10" else "cifar-100-python.tar.gz")
        with tarfile.open(path, "w:gz") as tar:
            for name, data in files.items():
                info = tarfile.TarInfo(f"{folder}/{name}")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
        return path, arrays
    out = root / folder
    out.mkdir(parents=True, exist_ok=True)
    for name, data in files.items():
        (out / name).write_bytes(data)
    return out, arrays


class _Evil:
    """Unpickling this calls ``open(path, 'w')``: proof of code execution if the marker appears."""

    def __init__(self, path: str):
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


def evil_pickle(marker: Path) -> bytes:
    return pickle.dumps({b"data": _Evil(str(marker)), b"labels": [0]}, protocol=2)
