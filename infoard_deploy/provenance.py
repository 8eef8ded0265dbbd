"""Provenance of a robustness number: which code, which examples, which randomness, which preprocessing.

A robust accuracy can be reproduced (or disputed) from its JSON alone only if the JSON records

* ``software`` -- :func:`software_versions`: python, torch, torchvision, torchattacks, onnx, onnxruntime,
  onnx2torch, numpy and infoard_deploy versions (``null`` when not installed), plus the git commit of the
  checkout when there is one. Attack implementations change between releases (torchattacks' Square
  schedule, APGD's step-size rule), so the same settings do not give the same number across versions.
* ``data`` -- :class:`DataFingerprint`: a SHA-256 of the exact float32 inputs and int64 labels attacked, in
  order, and their count. It proves two runs saw the same examples whatever loader, subset or transform
  produced them; it does not depend on the batch size.
* ``seed_scheme`` -- :func:`seed_scheme`: how each (batch, attack) call's seed derives from the user's seed
  (:func:`batch_seed`); since seeds depend on the batch index, the batch size is part of it.
* ``normalisation`` -- :func:`normalisation_record`: the mean/std the model applied and where they came
  from (``card``, ``flag``, ``file``, ``architecture`` or ``assumed``); ``assumed`` also adds a warning,
  because a model evaluated with the wrong statistics reports a meaningless number.
* ``runtime`` -- :func:`runtime_record`: device, GPU name, TF32 and deterministic-algorithm flags, threads.

Nothing heavy is imported at module import time: versions come from package metadata.
"""
from __future__ import annotations

import functools
import hashlib
import json
import platform
import subprocess
import sys
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

PACKAGES = ("torch", "torchvision", "torchattacks", "onnx", "onnxruntime", "onnx2torch", "numpy", "infoard_deploy")
_DISTS = {"infoard_deploy": ("infoard-deploy",), "onnxruntime": ("onnxruntime", "onnxruntime-gpu")}
NORMALISATION_SOURCES = ("card", "flag", "file", "architecture", "assumed")
DATA_HASH_SCHEME = ("sha256(b'infoard-deploy.data/1' + sha256(x as float32 little-endian C-order bytes of all "
                    "examples in order) + sha256(y as int64 little-endian) + json([n, per-example shape]))")


def _version(pkg: str) -> Optional[str]:
    from importlib import metadata  # lazy: ~60 ms to import

    mod = sys.modules.get(pkg)  # an imported module knows its own version best (editable installs)
    if mod is not None and isinstance(getattr(mod, "__version__", None), str):
        return str(mod.__version__)
    for dist in _DISTS.get(pkg, (pkg,)):
        try:
            return metadata.version(dist)
        except metadata.PackageNotFoundError:
            continue
    return None


def _git_commit() -> Optional[Dict[str, Any]]:
    """``{"commit", "dirty"}`` of the checkout this package runs from, or None (installed wheel, no git)."""
    root = Path(__file__).resolve().parent.parent
    if not (root / ".git").exists():
        return None
    try:
        run = functools.partial(subprocess.run, cwd=root, capture_output=True, text=True, timeout=5, check=True)
        commit = run(["git", "rev-parse", "HEAD"]).stdout.strip()
        dirty = bool(run(["git", "status", "--porcelain", "--untracked-files=no"]).stdout.strip())
    except (OSError, subprocess.SubprocessError):
        return None
    return {"commit": commit, "dirty": dirty}




def software_versions() -> Dict[str, Any]:
    """Versions of every package that shapes a number; missing packages are ``None``.

    Also ``platform``, ``infoard_deploy_git`` (commit and whether tracked files differ from it, or None) and,
    when torch is already imported, ``torch_cuda``/``cudnn`` (the kernels behind GPU numbers).
    """
    out: Dict[str, Any] = {"python": platform.python_version(), **{p: _version(p) for p in PACKAGES},
                           "platform": platform.platform(), "infoard_deploy_git": _git_commit()}
    torch = sys.modules.get("torch")
    if torch is not None:
        out["torch_cuda"] = getattr(torch.version, "cuda", None)
        cudnn = getattr(torch.backends, "cudnn", None)
        out["cudnn"] = cudnn.version() if cudnn is not None and cudnn.is_available() else None
    return out


def _as_numpy(a: Any, dtype: str):
    import numpy as np

    if hasattr(a, "detach"):  # torch tensor: to host memory first
        a = a.detach().cpu().numpy()
    return np.ascontiguousarray(np.asarray(a), dtype=dtype)


class DataFingerprint:
    """Streaming content hash of the evaluated examples: ``update(x, y)`` per batch, in order.

    ``x`` (B, ...) is hashed as float32 and ``y`` (B,) as int64 (little-endian, C order) in two running
    SHA-256 streams, so the result depends on the examples and their order, not on the batch boundaries.
    ``idx`` (B,), optional: the examples' indices in their dataset (e.g. a BatchLoader's third element),
    summarised separately so the subset can be rebuilt. :meth:`to_json` -> ``{"n", "sha256", "shape",
    "scheme"}`` plus ``indices: {"first", "last", "contiguous", "sha256"}`` when indices were given.
    """

    def __init__(self) -> None:
        self._x, self._y, self._i = hashlib.sha256(), hashlib.sha256(), hashlib.sha256()
        self.count = 0
        self.shape: Optional[List[int]] = None
        self._idx: Optional[Dict[str, Any]] = None

    def _update_indices(self, idx: Any) -> None:
        if self._idx is not None and self._idx.get("unusable"):
            return
        try:
            ia = _as_numpy(idx, "<i8").reshape(-1)
        except (TypeError, ValueError):  # not integer indices (e.g. file names): say so, hash nothing
            self._idx = {"unusable": True}
            return
        if ia.size == 0:
            return
        r = self._idx or {"first": int(ia[0]), "last": int(ia[0]) - 1, "contiguous": True}
        r["contiguous"] = bool(r["contiguous"] and int(ia[0]) == r["last"] + 1
                               and (ia.size < 2 or bool((ia[1:] - ia[:-1] == 1).all())))
        r["last"] = int(ia[-1])
        self._i.update(memoryview(ia).cast("B"))
        self._idx = r

    def update(self, x: Any, y: Any, idx: Any = None) -> "DataFingerprint":
        if idx is not None:
            self._update_indices(idx)
        xa, ya = _as_numpy(x, "<f4"), _as_numpy(y, "<i8").reshape(-1)
        if xa.ndim < 1 or xa.shape[0] != ya.shape[0]:
            raise ValueError(f"x {xa.shape} and y {ya.shape} must have the same number of examples")
        if xa.shape[0] == 0:
            return self
        shape = list(xa.shape[1:])
        if self.shape is not None and shape != self.shape:
            raise ValueError(f"example shape changed from {self.shape} to {shape}")
        self.shape = shape
        self._x.update(memoryview(xa).cast("B"))
        self._y.update(memoryview(ya).cast("B"))
        self.count += int(xa.shape[0])
        return self

    def hexdigest(self) -> str:
        h = hashlib.sha256(b"infoard-deploy.data/1")
        h.update(self._x.digest())
        h.update(self._y.digest())
        h.update(json.dumps([self.count, self.shape]).encode())
        return h.hexdigest()

    def to_json(self) -> Dict[str, Any]:
        out = {"n": self.count, "sha256": self.hexdigest(), "shape": self.shape, "scheme": DATA_HASH_SCHEME}
        if self._idx is not None and not self._idx.get("unusable"):
            out["indices"] = {**self._idx, "sha256": self._i.hexdigest()}  # of the int64 indices, in order
        return out

    @classmethod
    def of(cls, x: Any, y: Any) -> "DataFingerprint":
        """Fingerprint of one (x, y) pair of arrays: equal to the streamed one over the same examples."""
        return cls().update(x, y)


def batch_seed(seed: int, batch: int, attack: int) -> int:
    """Seed of attack number ``attack`` (1-based, in the order run; ``clean`` is 0) on batch ``batch`` (0-based)."""
    return (int(seed) * 1_000_003 + int(batch) * 7_919 + int(attack) * 104_729) % (2**31)


def seed_scheme(kind: str = "evaluate", *, seed: Optional[int] = None, attacks: Optional[Sequence[str]] = None,
                batch_size: Optional[int] = None, batches: Optional[int] = None) -> Dict[str, Any]:
    """How per-call seeds derive from the user's ``seed``; ``kind`` is ``evaluate`` or ``verify``.

    ``evaluate`` (:func:`infoard_deploy.evaluation.evaluate_model`): :func:`batch_seed`; every AA component
    shares its cascade's seed. ``verify`` (:func:`infoard_deploy.verification.robust.verify_robustness`): every
    attack call of batch ``b`` (transfer attacks, eps sweep, each model's Square) uses ``seed + b``.
    Either way each call runs inside ``torch.random.fork_rng`` after ``torch.manual_seed(s)``, with
    torchattacks' APGD/FAB/Square ``.seed`` set to ``s`` too. ``attacks`` (in run order) adds the index
    each attack gets; ``batch_size``/``batches`` record the partition the batch index refers to.
    """
    if kind == "evaluate":
        out: Dict[str, Any] = {
            "kind": "evaluate",
            "formula": "s = (seed * 1000003 + batch * 7919 + attack * 104729) mod 2**31",
            "batch": "0-based index of the batch in the evaluated stream",
            "attack": "index of the attack in attack_order (clean = 0, not seeded)",
            "aa": "every AA component (apgd-ce, apgd-t, fab-t, square) gets the cascade's s",
        }
    elif kind == "verify":
        out = {"kind": "verify", "formula": "s = seed + batch", "batch": "0-based index of the batch",
               "attack": "every attack call of a batch shares s (transfer attacks, eps sweep, each model's Square)",
               "global": "torch.manual_seed(seed) once, inside torch.random.fork_rng"}
    else:
        raise ValueError(f"seed_scheme kind must be 'evaluate' or 'verify', got '{kind}'")
    out["applied"] = ("each attack call runs in torch.random.fork_rng after torch.manual_seed(s); "
                      "torchattacks' APGD/FAB/Square .seed = s")
    if seed is not None:
        out["seed"] = int(seed)
    if attacks is not None:
        out["attack_order"] = list(attacks)
    if batch_size is not None:
        out["batch_size"] = int(batch_size)
    if batches is not None:
        out["batches"] = int(batches)
    return out


def _floats(v: Optional[Sequence[float]], what: str) -> Optional[List[float]]:
    if v is None:
        return None
    try:
        return [float(t) for t in v]
    except (TypeError, ValueError):
        raise ValueError(f"normalisation {what} must be a sequence of numbers, got {v!r}") from None


def normalisation_record(mean: Optional[Sequence[float]], std: Optional[Sequence[float]], source: Optional[str],
                         warnings: Optional[List[str]] = None) -> Dict[str, Any]:
    """``{"mean", "std", "source"}`` for a result JSON; ``source`` one of :data:`NORMALISATION_SOURCES`.

    ``card``: the model card; ``flag``: --mean/--std; ``file``: buffers stored in the weights file;
    ``architecture``: fixed by the architecture's definition; ``assumed``: nothing said, so statistics were
    assumed -- which also appends a warning to ``warnings`` (when given), as does ``source=None`` (unknown).
    """
    if source is not None and source not in NORMALISATION_SOURCES:
        raise ValueError(f"normalisation source must be one of {', '.join(NORMALISATION_SOURCES)}, got '{source}'")
    rec = {"mean": _floats(mean, "mean"), "std": _floats(std, "std"), "source": source}
    if warnings is not None:
        if source == "assumed":
            warnings.append(f"normalisation assumed (mean {rec['mean']}, std {rec['std']}): nothing stated the "
                            "statistics the model was trained with; if they differ, these numbers are wrong")
        elif source is None:
            warnings.append("normalisation source not recorded by the caller: the numbers cannot be tied to the "
                            "statistics the model was trained with")
    return rec


def model_normalisation(model: Any) -> Optional[Tuple[List[float], List[float]]]:
    """``(mean, std)`` of the first :class:`~infoard_deploy.models.normalized.Normalized`-style layer in
    ``model`` (a module with ``mean``/``std`` tensors and a wrapped ``net``), or None (e.g. an ONNX wrapper)."""
    for m in model.modules() if hasattr(model, "modules") else ():
        mean, std = getattr(m, "mean", None), getattr(m, "std", None)
        if hasattr(m, "net") and hasattr(mean, "flatten") and hasattr(std, "flatten"):
            return [float(v) for v in mean.flatten()], [float(v) for v in std.flatten()]
    return None


def resolve_normalisation(model: Any, given: Optional[Dict[str, Any]], warnings: List[str]) -> Dict[str, Any]:
    """The ``normalisation`` record of an evaluation: the caller's ``{"mean", "std", "source"}`` (any part
    may be missing), mean/std filled in from the model's own layer, and a warning appended to ``warnings``
    when the source is assumed/unknown or the stated statistics differ from what the model applies."""
    own = model_normalisation(model)
    given = dict(given or {})
    unknown = set(given) - {"mean", "std", "source"}
    if unknown:
        raise ValueError(f"normalisation takes mean, std and source; got {', '.join(sorted(unknown))}")
    rec = normalisation_record(given.get("mean", own[0] if own else None), given.get("std", own[1] if own else None),
                               given.get("source"), warnings)
    if own and rec["mean"] is not None and rec["std"] is not None:
        same = all(len(a) == len(b) and all(abs(u - v) <= 1e-6 for u, v in zip(a, b))
                   for a, b in ((rec["mean"], own[0]), (rec["std"], own[1])))
        if not same:
            warnings.append(f"normalisation stated as mean {rec['mean']}, std {rec['std']} but the model's own "
                            f"layer applies mean {own[0]}, std {own[1]}")
    return rec


def runtime_record(device: Any) -> Dict[str, Any]:
    """Settings of this process that change attack numbers: device (and GPU name), TF32, deterministic
    algorithms, intra-op threads. Imports torch (call it from code that already uses torch)."""
    import torch

    dev = torch.device(device)
    out: Dict[str, Any] = {"device": str(dev), "device_name": None, "threads": torch.get_num_threads(),
                           "deterministic_algorithms": torch.are_deterministic_algorithms_enabled(),
                           "tf32_matmul": bool(torch.backends.cuda.matmul.allow_tf32),
                           "tf32_cudnn": bool(torch.backends.cudnn.allow_tf32)}
    if dev.type == "cuda" and torch.cuda.is_available():
        out["device_name"] = torch.cuda.get_device_name(dev)
    return out


__all__ = ["DATA_HASH_SCHEME", "DataFingerprint", "NORMALISATION_SOURCES", "PACKAGES", "batch_seed",
           "model_normalisation", "normalisation_record", "resolve_normalisation", "runtime_record", "seed_scheme",
           "software_versions"]
