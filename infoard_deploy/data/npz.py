"""``npz``: images already in arrays.

Accepted layouts (``np.load(allow_pickle=False)``, so a file can never run code):

* one ``.npz`` file with ``x_train``, ``y_train``, ``x_test``, ``y_test``;
* a folder with ``train.npz`` and ``test.npz``, each holding ``x`` and ``y``.

``x`` is uint8 (N, H, W, C) or (N, H, W) for grey; float ``x`` is accepted only if finite and in
[0,1]. ``y`` holds integer labels. An optional ``classes`` array (strings) names the classes;
otherwise classes are ``0..K-1`` with K = the largest label + 1, which must not exceed the number of
examples nor 100,000 (see :func:`.base.check_labels`). Normalisation statistics are the
per-channel mean/std of the training images.
"""
from __future__ import annotations

import math
import zipfile
import zlib
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import numpy as np

from ..errors import UserError
from .base import ArraySet, DataBundle, check_image_shape, check_labels, memory_budget
from .stats import pixel_stats, safe_std


def _load_npz(path: Path) -> Dict[str, np.ndarray]:
    if not zipfile.is_zipfile(path):
        raise UserError(f"{path.name} is not a valid .npz file (not a zip archive; save with numpy.savez)")
    _check_headers(path)
    try:
        with np.load(path, allow_pickle=False) as z:
            return {k: z[k] for k in z.files}
    except ValueError as e:
        if "allow_pickle" in str(e) or "Object arrays" in str(e):
            raise UserError(f"{path.name} holds Python objects (pickled arrays are refused); store numeric arrays") from None
        raise UserError(f"{path.name} is not a valid .npz file ({' '.join(str(e).split())})") from None
    except (zipfile.BadZipFile, OSError, EOFError, KeyError, zlib.error) as e:
        raise UserError(f"{path.name} is not a valid .npz file ({' '.join(str(e).split()) or type(e).__name__})") from None


def _read_header(f) -> Tuple[Tuple[int, ...], np.dtype]:
    version = np.lib.format.read_magic(f)
    if version == (1, 0):
        shape, _, dtype = np.lib.format.read_array_header_1_0(f)
    elif version == (2, 0):
        shape, _, dtype = np.lib.format.read_array_header_2_0(f)
    else:  # 3.0 (utf-8 field names) has no public reader
        shape, _, dtype = np.lib.format._read_array_header(f, version)
    return tuple(int(d) for d in shape), dtype


def _check_headers(path: Path) -> None:
    """Read every array's .npy header (not its data) and refuse sizes before numpy allocates them.

    numpy allocates the whole array a header declares before reading a byte of it, so a few-KB file
    declaring (10**6, 10**5, 10**5) would ask for petabytes. Refused: data larger than the member's
    declared size (a lying header), image sides beyond MAX_SIDE, and a total beyond this machine's memory.
    """
    total = 0
    try:
        with zipfile.ZipFile(path) as zf:
            for info in zf.infolist():
                if not info.filename.endswith(".npy"):
                    continue
                key = info.filename[:-4]
                with zf.open(info) as f:
                    shape, dtype = _read_header(f)
                if dtype.hasobject:
                    raise UserError(f"{path.name} holds Python objects (pickled arrays are refused); store numeric arrays")
                nbytes = math.prod(shape) * dtype.itemsize
                if nbytes > info.file_size:
                    raise UserError(f"{path.name}: '{key}' declares shape {shape} ({nbytes} bytes) but holds only "
                                    f"{info.file_size} bytes; the file is corrupt")
                if key in ("x", "x_train", "x_test") and len(shape) in (3, 4):
                    check_image_shape(shape[1], shape[2], shape[3] if len(shape) == 4 else 1, f"{path.name}/{key}")
                total += nbytes
    except UserError:
        raise
    except (zipfile.BadZipFile, OSError, EOFError, ValueError, zlib.error) as e:
        raise UserError(f"{path.name} is not a valid .npz file ({' '.join(str(e).split()) or type(e).__name__})") from None
    if total > memory_budget():
        raise UserError(f"{path.name} holds {total / 2**30:.1f} GiB of arrays, more than this machine's memory "
                        f"({memory_budget() / 2**30:.1f} GiB)")


def _need(d: Dict[str, np.ndarray], key: str, source: str) -> np.ndarray:
    if key not in d:
        raise UserError(f"{source} has no '{key}' array (has: {', '.join(sorted(d)) or 'nothing'})")
    return d[key]


def _images(x: np.ndarray, source: str) -> np.ndarray:
    x = np.asarray(x)
    if x.ndim == 4 and x.shape[-1] not in (1, 3) and x.shape[1] in (1, 3):
        raise UserError(f"{source}: images look channel-first {x.shape}; store them as (N, H, W, C)")
    if x.ndim == 4 and x.shape[-1] not in (1, 3):
        raise UserError(f"{source}: images must have 1 or 3 channels (N, H, W, C), got shape {x.shape}")
    return x


def read_arrays(root: Path) -> Tuple[Tuple[np.ndarray, np.ndarray], Tuple[np.ndarray, np.ndarray], Optional[List[str]], str]:
    """Return ``((x_train, y_train), (x_test, y_test), classes or None, description)``."""
    if root.is_file():
        d = _load_npz(root)
        tr = (_need(d, "x_train", root.name), _need(d, "y_train", root.name))
        te = (_need(d, "x_test", root.name), _need(d, "y_test", root.name))
        classes = d.get("classes")
        where = str(root)
    elif root.is_dir():
        ftr, fte = root / "train.npz", root / "test.npz"
        if not (ftr.is_file() and fte.is_file()):
            raise UserError(f"{root} must hold train.npz and test.npz (each with x and y), or pass one .npz "
                            f"with x_train/y_train/x_test/y_test")
        dtr, dte = _load_npz(ftr), _load_npz(fte)
        tr = (_need(dtr, "x", ftr.name), _need(dtr, "y", ftr.name))
        te = (_need(dte, "x", fte.name), _need(dte, "y", fte.name))
        classes = dtr.get("classes", dte.get("classes"))
        where = str(root)
    else:
        raise UserError(f"npz data not found: {root}")
    names = None
    if classes is not None:
        c = np.asarray(classes)
        if c.ndim != 1 or not (c.dtype.kind in "US" or np.issubdtype(c.dtype, np.integer)):
            raise UserError(f"{root.name}: 'classes' must be a 1-D array of names")
        names = [x.decode() if isinstance(x, bytes) else str(x) for x in c.tolist()]
    return tr, te, names, where


def load_npz_bundle(root=None, download: bool = False, augment: str = "none", eps: Optional[float] = None,
                    **_: Any) -> DataBundle:
    if download:
        raise UserError("npz data cannot be downloaded; point --data-dir at a .npz file or a folder with train/test.npz")
    if root is None:
        raise UserError("npz needs --data-dir: a .npz file or a folder holding train.npz and test.npz")
    root = Path(root)
    (xtr, ytr), (xte, yte), names, where = read_arrays(root)
    train = ArraySet(_images(xtr, f"{root.name}/train"), ytr, f"{root.name}/train")
    test = ArraySet(_images(xte, f"{root.name}/test"), yte, f"{root.name}/test")
    if train.x.shape[1:] != test.x.shape[1:]:
        raise UserError(f"{root.name}: train images are {train.x.shape[1:]} but test images are {test.x.shape[1:]}")
    k = check_labels([train.y, test.y], root.name, len(names) if names is not None else None)
    if names is None:
        names = [str(i) for i in range(k)]
    if len(names) < 2:
        raise UserError(f"{root.name}: a classifier needs at least 2 classes, found {len(names)}")
    _, h, w, c = train.x.shape
    st = pixel_stats(train)
    return DataBundle(
        name="npz",
        train=train,
        test=test,
        classes=names,
        input_shape=(c, h, w),
        mean=st["mean"],
        std=safe_std(st["std"]),
        augment=augment,
        default_eps=eps,
        info={"source": where, "dtype": str(train.x.dtype)},
    )


__all__ = ["load_npz_bundle", "read_arrays"]
