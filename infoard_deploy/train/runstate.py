"""Run folders, resumable training state and reproducible per-epoch seeding.

``<out>/state.pt`` (written atomically after every epoch, rank 0 only) holds everything needed to
continue a run killed at any moment: model / method / optimiser / scheduler / GradScaler states, the
next epoch, RNG states and the metrics so far. Randomness is re-seeded from ``(seed, epoch, rank)`` at
the start of every epoch, so a resumed run replays the remaining epochs exactly (bit-identical on CPU).
"""
from __future__ import annotations

import random
import shutil
from pathlib import Path
from typing import Any, Dict, List, Optional

import numpy as np
import torch

from ..checkpoint import load_state, save_state
from ..errors import UserError
from ..utils import check_out_dir

STATE_FILE = "state.pt"
METRIC_FILES = ("metrics.jsonl", "metrics.csv")
STATE_VERSION = 1


def run_files(out: Path, model_name: str) -> List[Path]:
    """Files whose presence means ``out`` already holds a run."""
    names = [STATE_FILE, *METRIC_FILES, f"{model_name}.pt", f"{model_name}.card.json"]
    return [out / n for n in names if (out / n).exists()]


def prepare_out_dir(out: Path, model_name: str, resume: bool, force: bool, mutate: bool = True) -> Optional[Path]:
    """Check the run folder; returns the state file to resume from (or None for a fresh run).

    A fresh run refuses a folder holding a previous run unless ``force`` (then that run's files, and
    only those, are removed so the two runs never mix). ``resume`` needs an existing state file.
    ``mutate=False`` (DDP ranks other than 0) only checks. The caller holds ``out``'s run lock
    (:func:`infoard_deploy.runlock.run_lock`; :func:`.loop.train` does), so no other process changes the
    folder between these checks and the run.
    """
    out = check_out_dir(out, "--out")
    state = out / STATE_FILE
    if resume:
        if not state.exists():
            raise UserError(f"--resume: no {STATE_FILE} in {out} (nothing to resume; drop --resume to start a run)")
        return state
    existing = run_files(out, model_name)
    if existing and not force:
        raise UserError(f"{out} already holds a run ({existing[0].name}); pass --resume to continue it "
                        f"or --force to start over")
    if not mutate:
        return None
    if force:
        for p in existing:
            p.unlink()
        ck = out / "checkpoints"
        if ck.is_dir():
            shutil.rmtree(ck)
    out.mkdir(parents=True, exist_ok=True)
    return None


def epoch_seed(seed: int, epoch: int, rank: int = 0) -> int:
    """A distinct, reproducible 63-bit seed per (run seed, epoch, rank)."""
    ss = np.random.SeedSequence([int(seed) % (2**32), int(epoch), int(rank), 0x1AFD])
    return int(ss.generate_state(2, dtype=np.uint32).astype(np.uint64).dot([1, 2**31]) % (2**63))


def seed_epoch(seed: int, epoch: int, rank: int, dev: torch.device) -> torch.Generator:
    """Re-seed python / numpy / torch (CPU and CUDA) and return the step generator for attacks."""
    s = epoch_seed(seed, epoch, rank)
    random.seed(s)
    np.random.seed(s % (2**32))
    torch.manual_seed(s)
    gen = torch.Generator(device=dev)
    gen.manual_seed(s)
    return gen


def rng_state() -> Dict[str, Any]:
    st: Dict[str, Any] = {"torch": torch.get_rng_state(), "numpy": _np_state(), "python": repr(random.getstate())}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        st["cuda"] = torch.cuda.get_rng_state_all()
    return st


def _np_state() -> Dict[str, Any]:
    name, keys, pos, has_gauss, cached = np.random.get_state()
    return {"name": name, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
            "has_gauss": int(has_gauss), "cached": float(cached)}


def set_rng_state(st: Dict[str, Any]) -> None:
    """Restore RNG states saved by :func:`rng_state` (python's is kept only as a record)."""
    if "torch" in st:
        torch.set_rng_state(st["torch"])
    n = st.get("numpy")
    if n:
        np.random.set_state((n["name"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached"]))
    if "cuda" in st and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(st["cuda"])


def save_run_state(path: Path, *, model: torch.nn.Module, method: torch.nn.Module, optimizer, scheduler, scaler,
                   next_epoch: int, config: Dict[str, Any], history: List[Dict[str, Any]],
                   identity: Dict[str, Any]) -> None:
    save_state({
        "version": STATE_VERSION,
        "model": _cpu(model.state_dict()),
        "method": _cpu(method.state_dict()),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "scaler": scaler.state_dict() if scaler is not None else {},
        "next_epoch": int(next_epoch),
        "config": _plain(config),
        "identity": _plain(identity),
        "history": _plain(history),
        "rng": rng_state(),
    }, path)


def load_run_state(path: Path) -> Dict[str, Any]:
    st = load_state(path)
    for k in ("model", "method", "optimizer", "scheduler", "next_epoch", "config"):
        if k not in st:
            raise UserError(f"{path} is not a training state written by infoard-deploy (missing '{k}')")
    return st


def check_identity(saved: Dict[str, Any], now: Dict[str, Any], path: Path) -> None:
    """Refuse to resume a run with another method / architecture / dataset / teacher."""
    diffs = [f"{k} '{saved.get(k)}' -> '{now.get(k)}'" for k in now if k in saved and saved.get(k) != now.get(k)]
    if diffs:
        raise UserError(f"cannot resume {path}: it was started with different settings ({'; '.join(diffs)}); "
                        f"use another --out or --force to start over")


def _cpu(sd: Dict[str, Any]) -> Dict[str, Any]:
    return {k: (v.detach().cpu() if isinstance(v, torch.Tensor) else v) for k, v in sd.items()}


def _plain(obj: Any) -> Any:
    """Keep only types a weights-only load accepts (dicts, lists, str, numbers, None, tensors)."""
    if isinstance(obj, dict):
        return {str(k): _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    if isinstance(obj, (str, int, float, bool, torch.Tensor)) or obj is None:
        return obj
    if isinstance(obj, (np.integer, np.floating)):
        return obj.item()
    return str(obj)
