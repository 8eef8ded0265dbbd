"""Small shared helpers: fraction parsing, device selection, seeding, threads, output folders, atomic writes."""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import random
import tempfile
from fractions import Fraction
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch

from .errors import UserError


def parse_fraction(value: str | float | int, name: str = "value") -> float:
    """Parse ``8/255``, ``0.031`` or ``3`` into a float; a clear error otherwise."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    text = str(value).strip()
    try:
        if "/" in text:
            num, den = text.split("/", 1)
            return float(Fraction(num.strip()) / Fraction(den.strip()))
        return float(text)
    except (ValueError, ZeroDivisionError):
        raise UserError(f"{name} must be a number or a fraction like 8/255, got '{value}'") from None


def parse_eps(value: str | float, name: str = "--eps") -> float:
    """An L-inf radius in pixel units of [0,1]: must lie in (0, 1]."""
    eps = parse_fraction(value, name)
    if not (0.0 < eps <= 1.0) or not np.isfinite(eps):
        raise UserError(f"{name} must lie in (0, 1] (pixels are in [0,1]); got {value}")
    return eps


def parse_device(spec: str | None = "auto") -> torch.device:
    """``auto`` -> first CUDA device if present else CPU; ``cpu``; ``cuda`` or ``cuda:i``."""
    spec = (spec or "auto").strip().lower()
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if spec == "cpu":
        return torch.device("cpu")
    if spec == "cuda" or spec.startswith("cuda:"):
        if not torch.cuda.is_available():
            raise UserError(f"--device {spec} requested but no CUDA device is available")
        if ":" in spec:
            try:
                idx = int(spec.split(":", 1)[1])
            except ValueError:
                raise UserError(f"bad device '{spec}'; use auto, cpu, cuda or cuda:N") from None
            if idx >= torch.cuda.device_count():
                raise UserError(f"--device {spec}: only {torch.cuda.device_count()} CUDA device(s)")
        return torch.device(spec)
    raise UserError(f"bad device '{spec}'; use auto, cpu, cuda or cuda:N")


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, suffix: str = "") -> Iterator[Path]:
    """Yield a temporary path in the target's folder; on success rename it over ``path``.

    ``os.replace`` is atomic on POSIX, so readers see the old file or the new one, never half of one.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix or ".tmp", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        # mkstemp creates 0600 files; give the result the usual permissions (0666 less the umask)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp_path, 0o666 & ~umask)
        os.replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def write_json_atomic(path: str | os.PathLike, obj: Any) -> None:
    write_text_atomic(path, json.dumps(obj, indent=2, sort_keys=False, default=_json_default) + "\n")


def _json_default(o: Any) -> Any:
    if isinstance(o, (np.integer,)):
        return int(o)
    if isinstance(o, (np.floating,)):
        return float(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    if isinstance(o, torch.Tensor):
        return o.tolist()
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while True:
            b = f.read(chunk)
            if not b:
                break
            h.update(b)
    return h.hexdigest()


def require_file(path: str | os.PathLike, what: str = "file") -> Path:
    p = Path(path)
    if not p.exists():
        raise UserError(f"{what} not found: {p}")
    if p.is_dir():
        raise UserError(f"{what} is a directory, expected a file: {p}")
    return p


def check_out_dir(path: str | os.PathLike, flag: str = "--out") -> Path:
    """Check, before any work starts, that ``path`` can be (or already is) a writable folder; returns it.

    Refused with one line: ``path`` is an existing file; an ancestor is a file; the nearest existing
    ancestor is not writable, or cannot hold a new folder (``/proc``, a read-only mount). Nothing is
    created: a probe folder is made and removed again, because ``os.access`` says yes to root even on
    read-only or virtual file systems.
    """
    p = Path(path).expanduser()
    if str(path).strip() == "":
        raise UserError(f"{flag} must name a folder, got an empty path")
    if p.exists() and not p.is_dir():
        raise UserError(f"{flag} {p} is an existing file, expected a folder")
    _check_creatable(p, f"{flag} {p}:")
    return p


def check_out_file(path: str | os.PathLike, flag: str = "--out") -> Path:
    """Like :func:`check_out_dir` for an output *file* (a JSON report): refused when ``path`` is a folder
    or its folder cannot be created / written. Whether an existing file may be replaced (``--force``) is
    the caller's decision. Returns the path."""
    p = Path(path).expanduser()
    if str(path).strip() == "" or p.name in ("", ".", ".."):
        raise UserError(f"{flag} must name a file, got '{path}'")
    if p.is_dir():
        raise UserError(f"{flag} {p} is a folder, expected a file name")
    _check_creatable(p.parent, f"{flag} {p}:")
    return p


def _check_creatable(p: Path, head: str) -> None:
    """The nearest existing ancestor of ``p`` is a writable folder in which entries can really be made."""
    anc = p
    while not anc.exists():
        if anc.parent == anc:
            break
        anc = anc.parent
    if not anc.is_dir():
        raise UserError(f"{head} {anc} is a file, so the folder cannot be created")
    if not os.access(anc, os.W_OK | os.X_OK):
        raise UserError(f"{head} {anc} is not writable")
    try:
        probe = tempfile.mkdtemp(prefix=".infoard-probe-", dir=anc)
        os.rmdir(probe)
    except OSError as e:
        why = e.strerror or type(e).__name__
        raise UserError(f"{head} cannot create files in {anc} ({why})") from None


# Threads for ONNX Runtime sessions created by this package (0: ONNX Runtime's default).
_ORT_THREADS = 0


def set_threads(n: int, flag: str = "--threads") -> None:
    """``n`` > 0: torch intra-op threads and ONNX Runtime intra-op threads (see :func:`ort_threads`); 0 keeps
    the library defaults; negative is refused. On a busy 2-core machine one thread can be far faster than two."""
    global _ORT_THREADS
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)):
        raise UserError(f"{flag} must be an integer >= 0 (0: the library default), got {n!r}")
    n = int(n)
    if n < 0:
        raise UserError(f"{flag} must be >= 0 (0: the library default), got {n}")
    if n == 0:
        return
    torch.set_num_threads(n)
    _ORT_THREADS = n


def ort_threads() -> int:
    """The intra-op thread count set by :func:`set_threads` for ONNX Runtime sessions (0: ORT default)."""
    return _ORT_THREADS
