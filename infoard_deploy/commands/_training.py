"""Plumbing shared by ``train-teacher`` and ``distill``: their common options, --opt parsing, output."""
from __future__ import annotations

import os
from typing import Any, Dict, List, Optional

import typer

from ..errors import UserError
from ._common import console, emit_json, err_console

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


THREADS = typer.Option(0, "--threads", help="CPU threads for torch (0: library default); 1 is fastest for small "
                                          "models on a busy machine")


def is_main_process() -> bool:
    """Under torchrun only rank 0 prints."""
    return os.environ.get("RANK", "0") == "0"


def log_line(json_out: bool):
    """Progress lines for the API's ``log`` callback, on stderr: warnings (yellow) always, the rest not with
    --json (stdout holds only the JSON either way)."""
    from rich.markup import escape

    def log(msg: str) -> None:
        warn = msg.startswith(("warning", "note"))
        if not is_main_process() or (json_out and not warn):
            return
        style = "yellow" if warn else None
        err_console.print(escape(msg), style=style, soft_wrap=True)

    return log


def render(result, json_out: bool) -> None:
    """Print (rank 0 only) the result of a training command, as text or JSON."""
    if not is_main_process():
        return
    data = result.to_dict()
    if json_out:
        emit_json(data)
        return

    def pct(v):
        return "-" if v is None else f"{100 * v:.2f}%"

    if data["model"]:
        console.print(f"[green]saved[/green] {data['model']} (+ model card)")
    else:
        console.print(f"stopped after epoch {data['epochs_done']}; continue with --resume")
    console.print(f"final validation: clean {pct(data.get('val_clean'))}, robust {pct(data.get('val_robust'))} "
                  f"(PGD-10, eps {data.get('eps'):.4g}) in {data['seconds']:.1f}s; "
                  f"metrics in {data['out_dir']}/metrics.csv", soft_wrap=True)


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
