"""``infoard-deploy data NAME``: what a data source holds, as training will see it.

Reports the split sizes including the seeded validation split carved from the *training* data
(:func:`infoard_deploy.data.split_indices`, the same call training makes), the classes, the input
shape, measured pixel statistics, the normalisation models will carry, and the augmentation.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, Optional

import numpy as np
import typer
from rich.markup import escape
from rich.table import Table

from ..errors import UserError
from ._common import console, emit_json


def describe(name: str, data_dir: Optional[Path] = None, download: bool = False, val_fraction: float = 0.1,
             seed: int = 0, stats_samples: int = 5000) -> Dict[str, Any]:
    """Load ``name`` and return a JSON-able summary (see module docstring)."""
    from ..data import load_data, split_indices
    from ..data.stats import pixel_stats

    if stats_samples <= 0:
        raise UserError(f"--stats-samples must be positive, got {stats_samples}")
    b = load_data(name, root=data_dir, download=download)
    tr_idx, val_idx = split_indices(len(b.train), val_fraction, seed)
    stats = pixel_stats(b.train, max_samples=stats_samples, seed=seed)
    sample, _ = b.train.get(np.arange(1))

    def counts(s) -> Optional[list]:
        y = getattr(s, "y", None)  # every bundled source keeps labels in memory
        return None if y is None else np.bincount(np.asarray(y), minlength=b.num_classes).tolist()

    return {
        "name": b.name,
        "source": b.info.get("source"),
        "splits": {"train": int(len(tr_idx)), "val": int(len(val_idx)), "test": int(len(b.test)),
                   "train_total": int(len(b.train)), "val_fraction": val_fraction, "seed": seed},
        "num_classes": b.num_classes,
        "classes": list(b.classes),
        "input_shape": list(b.input_shape),
        "stored_dtype": str(np.asarray(sample).dtype),
        "pixel_stats": stats,
        "normalisation": {"mean": [float(v) for v in b.mean], "std": [float(v) for v in b.std]},
        "augment": b.augment,
        "default_eps": b.default_eps,
        "label_counts": {"train": counts(b.train), "test": counts(b.test)},
    }


def _print(rep: Dict[str, Any]) -> None:
    s = rep["splits"]
    fmt = lambda v: "[" + ", ".join(f"{x:.4f}" for x in v) + "]"  # noqa: E731
    classes = ", ".join(rep["classes"][:10]) + (", ..." if len(rep["classes"]) > 10 else "")
    t = Table(title=f"dataset {rep['name']}", title_justify="left", show_header=False, box=None, pad_edge=False)
    t.add_column(style="bold cyan")
    t.add_column()
    rows = [
        ("source", str(rep["source"])),
        ("splits", f"train {s['train']:,} + val {s['val']:,} (seed {s['seed']}, {s['val_fraction']:g} of "
                   f"{s['train_total']:,} training images) | test {s['test']:,}"),
        ("classes", f"{rep['num_classes']}: {classes}"),
        ("input", "x".join(str(v) for v in rep["input_shape"]) + f" (C,H,W), stored as {rep['stored_dtype']}, "
                  "fed as float in [0,1]"),
        ("pixels", f"mean {fmt(rep['pixel_stats']['mean'])} std {fmt(rep['pixel_stats']['std'])} "
                   f"min {fmt(rep['pixel_stats']['min'])} max {fmt(rep['pixel_stats']['max'])} "
                   f"({rep['pixel_stats']['images']:,} train images)"),
        ("normalisation", f"mean {fmt(rep['normalisation']['mean'])} std {fmt(rep['normalisation']['std'])} "
                          "(inside the model)"),
        ("augmentation", rep["augment"]),
        ("default eps", "none" if rep["default_eps"] is None else f"{rep['default_eps']:.5g}"),
    ]
    for k, v in rows:
        t.add_row(escape(k), escape(v))
    console.print(t)


def register(app: typer.Typer) -> None:
    @app.command("data")
    def data_cmd(
        name: str = typer.Argument(..., help="dataset (see `list datasets`)"),
        data_dir: Optional[Path] = typer.Option(None, "--data-dir", help="where the files are (or go, with --download)"),
        download: bool = typer.Option(False, "--download", help="fetch the official files and check their SHA-256"),
        val_fraction: float = typer.Option(0.1, "--val-fraction", help="validation share carved from the training data"),
        seed: int = typer.Option(0, "--seed", help="seed of the validation split and the statistics sample"),
        stats_samples: int = typer.Option(5000, "--stats-samples", help="training images used for pixel statistics"),
        json_out: bool = typer.Option(False, "--json", help="machine-readable output"),
    ) -> None:
        """Describe a dataset: split sizes (incl. seeded validation), classes, shape, pixel stats, augmentation."""
        rep = describe(name, data_dir, download, val_fraction, seed, stats_samples)
        if json_out:
            emit_json(rep)
        else:
            _print(rep)
