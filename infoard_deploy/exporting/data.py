"""Images for export: calibration (training split) and parity checks (validation split of TRAIN).

The test split is never touched here: INT8 calibration and the export-time parity gate both draw from
the training data, carved with :func:`infoard_deploy.data.split_indices` exactly as training does
(validation = a seeded slice of TRAIN), calibration from the rest of TRAIN. A ``.npy`` file of images
(N, C, H, W float32 in [0,1], or N, H, W, C uint8) may be given instead; the user vouches for its split.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Optional, Sequence

import numpy as np

from ..errors import UserError


@dataclass
class ExportImages:
    """``calib`` (N, C, H, W) float32 [0,1] or None; ``check_x``/``check_y`` parity images and labels."""

    calib: Optional[np.ndarray]
    check_x: np.ndarray
    check_y: Optional[np.ndarray]
    info: Dict[str, Any] = field(default_factory=dict)


def _to_nchw_float(x: np.ndarray, source: str) -> np.ndarray:
    x = np.array(x)  # a copy: the input may be a read-only memory map of the user's file
    if x.ndim != 4:
        raise UserError(f"{source}: images must be 4-D (N, C, H, W float or N, H, W, C uint8), got {x.shape}")
    if x.dtype == np.uint8:
        return np.ascontiguousarray(x.transpose(0, 3, 1, 2), dtype=np.float32) / 255.0
    if not np.issubdtype(x.dtype, np.floating):
        raise UserError(f"{source}: images must be uint8 or float in [0,1], got {x.dtype}")
    x = x.astype(np.float32, copy=False)
    if not np.all(np.isfinite(x)) or x.min() < 0 or x.max() > 1:
        raise UserError(f"{source}: float images must be finite and lie in [0,1]")
    return x


def _from_bundle(name: str, data_dir: Optional[str], shape: Sequence[int], calib_n: int, check_n: int,
                 val_fraction: float, seed: int, want_calib: bool) -> ExportImages:
    from ..data import load_data, split_indices, to_tensor

    if name == "npz" and data_dir is None:
        raise UserError("--calib-data npz needs --data-dir pointing at the .npz file or folder")
    bundle = load_data(name, root=data_dir)
    if tuple(bundle.input_shape) != tuple(shape):
        raise UserError(f"dataset {name} has images of shape {tuple(bundle.input_shape)} but the model takes "
                        f"{tuple(shape)} (C, H, W)")
    if not 0.0 < val_fraction < 1.0:
        raise UserError(f"--val-fraction must lie in (0, 1), got {val_fraction}")
    train_idx, val_idx = split_indices(len(bundle.train), val_fraction, seed)
    check_idx = val_idx[:check_n]
    xv, yv = bundle.train.get(check_idx)
    calib = None
    info: Dict[str, Any] = {"dataset": name, "check_split": f"train[val {val_fraction:g}, seed {seed}]",
                            "check_n": int(len(check_idx))}
    if want_calib:
        rng = np.random.default_rng(seed + 104729)
        pick = np.sort(rng.choice(train_idx, size=min(calib_n, len(train_idx)), replace=False))
        calib = to_tensor(bundle.train.get(pick)[0]).numpy()
        info.update({"calib_split": "train (validation slice excluded)", "calib_n": int(len(pick)),
                     "calib_indices_sha": _idx_digest(pick)})
    return ExportImages(calib, to_tensor(xv).numpy(), np.asarray(yv, dtype=np.int64), info)


def _idx_digest(idx: np.ndarray) -> str:
    import hashlib

    return hashlib.sha256(np.asarray(idx, dtype=np.int64).tobytes()).hexdigest()[:16]


def load_export_images(calib_data: Optional[str], dataset: Optional[str], data_dir: Optional[str],
                       shape: Sequence[int], calib_n: int, check_n: int, val_fraction: float = 0.1,
                       seed: int = 0, want_calib: bool = False) -> ExportImages:
    """Resolve ``--calib-data`` (a dataset name or a ``.npy`` file) or the card's dataset.

    Without any data the parity check falls back to seeded uniform images (no accuracy), and INT8
    is refused (:class:`UserError`) because calibration on noise would be meaningless.
    """
    if calib_data and calib_data.endswith(".npy"):
        path = Path(calib_data)
        if not path.is_file():
            raise UserError(f"calibration file not found: {path}")
        try:
            # Memory-mapped: the header's shape is checked against the file size before anything is read,
            # and only the slices used below are ever loaded (a lying header cannot allocate terabytes).
            arr = np.load(str(path), mmap_mode="r", allow_pickle=False)
        except (ValueError, OSError, EOFError) as e:
            raise UserError(f"{path.name} is not a readable .npy array: {str(e).splitlines()[0] if str(e) else type(e).__name__}") from None
        if not isinstance(arr, np.ndarray) or arr.ndim != 4:
            got = arr.shape if isinstance(arr, np.ndarray) else type(arr).__name__
            raise UserError(f"{path.name}: images must be 4-D (N, C, H, W float or N, H, W, C uint8), got {got}")
        chw = (arr.shape[3], arr.shape[1], arr.shape[2]) if arr.dtype == np.uint8 else tuple(arr.shape[1:])
        if tuple(chw) != tuple(shape):
            raise UserError(f"{path.name} holds images of shape {tuple(chw)}; the model takes {tuple(shape)}")
        if len(arr) == 0:
            raise UserError(f"{path.name} holds no images")
        calib = _to_nchw_float(arr[:calib_n], path.name) if want_calib else None
        if dataset:  # parity on the model's own dataset when known, else on the file's images
            imgs = _from_bundle(dataset, data_dir, shape, calib_n, check_n, val_fraction, seed, False)
            imgs.calib = calib
        else:
            imgs = ExportImages(calib, _to_nchw_float(arr[-check_n:], path.name), None,
                                {"check_split": f"file {path.name}"})
        imgs.info.update({"calib_source": f"file {path.name}", "calib_n": int(len(calib)) if calib is not None else 0})
        return imgs
    name = calib_data or dataset
    if name:
        imgs = _from_bundle(name, data_dir, shape, calib_n, check_n, val_fraction, seed, want_calib)
        imgs.info["calib_source"] = f"dataset {name}" if want_calib else None
        return imgs
    if want_calib:
        raise UserError("INT8 quantization needs calibration images: pass --calib-data DATASET|images.npy "
                        "(training images, never the test set)")
    rng = np.random.default_rng(seed)
    per_image = 4 * int(np.prod([int(v) for v in shape]))
    n = max(1, min(check_n, 256, (256 << 20) // max(per_image, 1)))  # at most ~256 MB of noise
    x = rng.random((n, *shape), dtype=np.float32)
    return ExportImages(None, x, None, {"check_split": "uniform random images (no dataset known)"})


__all__ = ["ExportImages", "load_export_images"]
