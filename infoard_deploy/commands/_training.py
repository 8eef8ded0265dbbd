"""Plumbing shared by ``train-teacher`` and ``distill``: data loading, --opt parsing, the config, output."""
from __future__ import annotations

import os
import time
from typing import Any, Dict, List, Optional

import typer

from ..errors import UserError
from ._common import STATE, console, emit_json, parse_eps

# Options both training commands take, defined once so `distill` and `train-teacher` cannot drift apart.
DATA_DIR = typer.Option(None, "--data-dir", help="where the dataset files are")
DOWNLOAD = typer.Option(False, "--download", help="download the dataset if missing")
SEED = typer.Option(0, "--seed")
RESUME = typer.Option(False, "--resume", help="continue the run in --out from its state.pt")
FORCE = typer.Option(False, "--force", help="start over, replacing a previous run in --out")
TRAIN_LIMIT = typer.Option(None, "--train-limit", help="train on this many examples only")
VAL_FRACTION = typer.Option(0.1, "--val-fraction", help="validation split carved from TRAIN data")
VAL_N = typer.Option(1000, "--val-n", help="validation examples attacked each epoch")
AMP = typer.Option("auto", "--amp", help="auto | off | bf16 | fp16 (CUDA only; auto = bf16 on CUDA)")
CHANNELS_LAST = typer.Option(False, "--channels-last", help="channels_last memory format (CUDA)")
SAVE_EVERY = typer.Option(0, "--save-every", help="also keep checkpoints/epoch_N.pt every N epochs")
JSON_OUT = typer.Option(False, "--json", help="machine-readable result on stdout")


def is_main_process() -> bool:
    """Under torchrun only rank 0 prints."""
    return os.environ.get("RANK", "0") == "0"


def load_bundle(name: str, data_dir: Optional[str], download: bool):
    from ..data import load_data

    return load_data(name, root=data_dir, download=download)


def parse_opts(items: Optional[List[str]]) -> Dict[str, Any]:
    """``["tau=30", "alpha=8/255"]`` -> ``{"tau": "30", "alpha": "8/255"}``: values stay strings, because
    ``build_method`` converts each to its option's type (and rejects a bad one with the option's name)."""
    out: Dict[str, Any] = {}
    for item in items or []:
        key, sep, val = str(item).partition("=")
        key = key.strip().replace("-", "_")
        if not sep or not key or not key.isidentifier():
            raise UserError(f"--opt needs key=value (e.g. --opt tau=30), got '{item}'")
        out[key] = val.strip()
    return out


def make_config(*, out: str, model_name: str, eps: Optional[str], epochs, batch_size, lr, weight_decay, seed: int,
                resume: bool, force: bool, train_limit, val_fraction: float, val_n, amp: str, channels_last: bool,
                save_every: int, attack_steps=None, extra: Optional[Dict[str, Any]] = None):
    from ..train import TrainConfig

    return TrainConfig(
        epochs=epochs, batch_size=batch_size, lr=lr, weight_decay=weight_decay, seed=seed,
        eps=parse_eps(eps) if eps is not None else None, attack_steps=attack_steps, val_fraction=val_fraction,
        train_limit=train_limit, val_n=val_n, amp=amp.strip().lower(), channels_last=channels_last, out_dir=out,
        model_name=model_name, resume=resume, force=force, save_every=save_every, device=STATE.device_spec,
        extra=dict(extra or {}),
    )


def report(result, *, kind: str, t0: float, json_out: bool, info: Dict[str, Any]) -> None:
    """Print (rank 0 only) the result of a training command, as text or JSON."""
    if not is_main_process():
        return
    m = result.metrics or {}
    data = {
        "kind": kind,
        "model": str(result.final_model_path) if result.final_model_path else None,
        "card": str(result.final_model_path.with_name(result.final_model_path.stem + ".card.json"))
        if result.final_model_path else None,
        "out_dir": str(result.out_dir),
        **info,
        "epochs_done": len(result.history),
        "completed": result.completed,
        "val_clean": m.get("val_clean"),
        "val_robust": m.get("val_robust"),
        "final_loss": m.get("loss"),
        "seconds": round(time.perf_counter() - t0, 2),
        "history": result.history,
    }
    if json_out:
        emit_json(data)
        return

    def pct(v):
        return "-" if v is None else f"{100 * v:.2f}%"

    if result.final_model_path:
        console.print(f"[green]saved[/green] {result.final_model_path} (+ model card)")
    else:
        console.print(f"stopped after epoch {len(result.history)}; continue with --resume")
    console.print(f"final validation: clean {pct(m.get('val_clean'))}, robust {pct(m.get('val_robust'))} "
                  f"(PGD-10, eps {info.get('eps'):.4g}) in {data['seconds']:.1f}s; "
                  f"metrics in {result.out_dir}/metrics.csv", soft_wrap=True)
