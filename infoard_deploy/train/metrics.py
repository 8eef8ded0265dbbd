"""Per-epoch metrics files and the validation pass (clean + PGD robust accuracy).

``metrics.jsonl`` (one JSON object per epoch) and ``metrics.csv`` (same rows; columns = union of keys,
core columns first) are rewritten atomically from the full history after every epoch, so they always
agree with ``state.pt`` -- also after a ``kill -9`` and ``--resume``.

Validation follows the usual robust-training protocol on a split carved from the *training* data
(never the test set): accuracy on clean inputs and under L-inf PGD (Madry et al. 2018) with ``steps``
steps of size ``step_frac * eps`` from a uniform random start, model in eval mode.
"""
from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import numpy as np
import torch
from torch import nn

from ..attacks.pgd import pgd_ce
from ..data import BatchLoader
from ..utils import _json_default, write_text_atomic
from .dist import DistInfo, all_sum

CORE_COLUMNS = ["epoch", "lr", "loss", "train_acc", "train_adv_acc", "val_clean", "val_robust", "epoch_time_s",
                "val_time_s", "images_per_s"]


def write_metrics(out: Path, history: List[Dict[str, Any]]) -> None:
    lines = "".join(json.dumps(row, default=_json_default) + "\n" for row in history)
    write_text_atomic(out / "metrics.jsonl", lines)
    cols = list(CORE_COLUMNS)
    for row in history:
        cols += [k for k in row if k not in cols]
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=cols, restval="", lineterminator="\n")
    w.writeheader()
    for row in history:
        w.writerow({k: ("" if v is None else v) for k, v in row.items()})
    write_text_atomic(out / "metrics.csv", buf.getvalue())


def read_metrics(out: Path) -> List[Dict[str, Any]]:
    p = Path(out) / "metrics.jsonl"
    return [json.loads(line) for line in p.read_text().splitlines() if line.strip()] if p.exists() else []


class RunningStats:
    """Sums of loss / correct counts over an epoch (per rank; summed over ranks at the end)."""

    def __init__(self) -> None:
        self.loss_sum = 0.0
        self.n = 0
        self.correct = 0
        self.correct_adv = 0
        self.counted = 0
        self.logs: Dict[str, float] = {}
        self.steps = 0

    def add(self, loss: float, n: int, logs: Dict[str, float], correct: Optional[Tuple[int, int]]) -> None:
        self.loss_sum += loss * n
        self.n += n
        self.steps += 1
        if correct is not None:
            self.correct += correct[0]
            self.correct_adv += correct[1]
            self.counted += n
        for k, v in logs.items():
            try:
                self.logs[k] = self.logs.get(k, 0.0) + float(v)
            except (TypeError, ValueError):
                continue

    def running(self) -> str:
        s = f"loss {self.loss_sum / max(self.n, 1):.4f}"
        if self.counted:
            s += f" acc {100 * self.correct / self.counted:.1f}% adv {100 * self.correct_adv / self.counted:.1f}%"
        return s

    def reduce(self, info: DistInfo, dev: torch.device) -> Dict[str, Any]:
        loss_sum, n, c, ca, cnt = all_sum([self.loss_sum, self.n, self.correct, self.correct_adv, self.counted],
                                          info, dev)
        out: Dict[str, Any] = {"loss": loss_sum / max(n, 1),
                               "train_acc": c / cnt if cnt else None, "train_adv_acc": ca / cnt if cnt else None}
        # method step logs: mean over this rank's steps (rank 0 writes them)
        out.update({f"avg_{k}": v / max(self.steps, 1) for k, v in sorted(self.logs.items())})
        out["_n"] = int(n)
        return out


@torch.no_grad()
def count_correct(model: nn.Module, x: torch.Tensor, x_adv: torch.Tensor, y: torch.Tensor) -> Tuple[int, int]:
    """Clean / adversarial correct counts with ``model`` in eval mode (no BN statistics change)."""
    was = model.training
    model.eval()
    logits = model(torch.cat([x, x_adv.to(x.dtype)]))
    model.train(was)
    pred = logits.argmax(1)
    b = x.shape[0]
    return int((pred[:b] == y).sum()), int((pred[b:] == y).sum())


def validate(model: nn.Module, data, indices: np.ndarray, eps: float, steps: int, step_frac: float,
             batch_size: int, dev: torch.device, info: DistInfo, seed: int, epoch: int,
             autocast=None) -> Dict[str, Optional[float]]:
    """Clean and PGD accuracy on ``indices`` of ``data`` (sharded over ranks, counts summed)."""
    if len(indices) == 0:
        return {"val_clean": None, "val_robust": None}
    shard = np.asarray(indices)[info.rank::info.world_size]
    was = model.training
    model.eval()
    gen = torch.Generator(device=dev)
    gen.manual_seed(int(seed) * 1_000_003 + 97 * int(epoch) + info.rank)  # own stream: training RNG untouched
    clean = robust = 0
    loader = BatchLoader(data, shard, batch_size=batch_size, shuffle=False)
    for x, y, _ in loader:
        x, y = x.to(dev, non_blocking=True), y.to(dev, non_blocking=True)
        with _ctx(autocast):
            with torch.no_grad():
                clean += int((model(x).argmax(1) == y).sum())
            x_adv = pgd_ce(model, x, y, eps, eps * step_frac, steps, init="uniform", generator=gen)
            with torch.no_grad():
                robust += int((model(x_adv).argmax(1) == y).sum())
    model.train(was)
    clean, robust, n = all_sum([clean, robust, len(shard)], info, dev)
    return {"val_clean": clean / n, "val_robust": robust / n}


def _ctx(autocast):
    import contextlib

    return autocast() if autocast is not None else contextlib.nullcontext()
