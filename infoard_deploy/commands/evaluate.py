"""``infoard-deploy evaluate``: clean / FGSM / PGD-20 / CW-inf / AutoAttack robust accuracy of a checkpoint.

The command calls :func:`infoard_deploy.evaluate` (which loads the model and data) and renders the result (a rich table, or ``--json``; ``--out`` writes the JSON report).
An error-level sanity check (``adv_in_bounds``) makes it exit 1 after the report is written.
"""
from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer
from rich.markup import escape
from rich.table import Table

from ..errors import GateFailure, UserError
from ._common import STATE, console, emit_json, err_console, floats
from ._training import log_line

DEFAULT_ATTACKS = "clean,fgsm,pgd20,cw,aa"
_STYLE = {"ok": ("green", "ok"), "warn": ("yellow", "WARN"), "error": ("red", "ERROR"), "skipped": ("dim", "skip")}


def render(res, title: str) -> None:
    t = Table(title=title, title_justify="left")
    for col, just in (("attack", "left"), ("robust acc", "right"), ("attacked", "right"), ("seconds", "right"),
                      ("examples/s", "right")):
        t.add_column(col, justify=just)
    for name, a in res.attacks.items():
        rate = f"{a.attacked / a.seconds:.1f}" if a.seconds > 0 and a.attacked else "-"
        t.add_row(escape(name), f"{100 * a.robust_acc:.2f}%", str(a.attacked), f"{a.seconds:.2f}", rate)
        if name == "aa":
            for c in res.aa_components:
                t.add_row(f"[dim]  aa > {escape(c['attack'])}[/dim]", f"[dim]{100 * c['robust_acc_after']:.2f}%[/dim]",
                          f"[dim]{c['attacked']}[/dim]", f"[dim]{c['seconds']:.2f}[/dim]", "")
    if len(res.attacks) > 2:
        t.add_row("[bold]worst case[/bold]", f"[bold]{100 * res.worst_case_acc:.2f}%[/bold]", "", "", "")
    console.print(t)
    for name, c in res.checks.items():
        style, tag = _STYLE.get(c.status, ("", c.status))
        console.print(f"[{style}]{tag:>5}[/{style}] {escape(name)}: {escape(c.message)}")


def register(app: typer.Typer) -> None:
    @app.command("evaluate")
    def evaluate_cmd(
        model: str = typer.Option(..., "--model", help="checkpoint (.pt/.safetensors/TorchScript/.onnx; card beside it "
                                  "or flags) or robustbench:NAME"),
        model_dir: Optional[str] = typer.Option(None, "--model-dir", help="RobustBench model folder for robustbench:NAME"),
        data: Optional[str] = typer.Option(None, "--data", help="dataset name (default: the model card's)"),
        data_dir: Optional[str] = typer.Option(None, "--data-dir", help="dataset folder"),
        download: bool = typer.Option(False, "--download", help="download the dataset if missing"),
        eps: Optional[str] = typer.Option(None, "--eps", help="L-inf radius, e.g. 8/255 (default: card, then dataset)"),
        attacks: str = typer.Option(DEFAULT_ATTACKS, "--attacks", help="comma-separated; see `infoard-deploy list attacks`"),
        n: Optional[int] = typer.Option(None, "--n", help="evaluate the first N examples of the split (default: all)"),
        split: str = typer.Option("test", "--split", help="test | val (val is carved from the training data)"),
        val_fraction: float = typer.Option(0.1, "--val-fraction", help="validation share of the training data (--split val)"),
        batch_size: int = typer.Option(128, "--batch-size", help="examples per batch (bounds memory)"),
        seed: int = typer.Option(0, "--seed", help="seed for attack random starts (results are deterministic)"),
        square_queries: Optional[int] = typer.Option(None, "--square-queries", help="Square queries (AA standard: 5000)"),
        attack_opt: Optional[List[str]] = typer.Option(None, "--attack-opt", help="ATTACK.SETTING=VALUE, e.g. pgd20.steps=50 (repeatable)"),
        arch: Optional[str] = typer.Option(None, "--arch", help="architecture (overrides the card; else inferred)"),
        num_classes: Optional[int] = typer.Option(None, "--num-classes", help="class count (default: card, data)"),
        mean: Optional[str] = typer.Option(None, "--mean", help="per-channel mean, e.g. 0.4914,0.4822,0.4465"),
        std: Optional[str] = typer.Option(None, "--std", help="per-channel std"),
        out: Optional[Path] = typer.Option(None, "--out", help="write the JSON report here"),
        force: bool = typer.Option(False, "--force", help="overwrite --out if it exists"),
        no_progress: bool = typer.Option(False, "--no-progress", help="hide the progress bar"),
        threads: int = typer.Option(0, "--threads", help="CPU threads for torch (0: library default)"),
        json_out: bool = typer.Option(False, "--json", help="print the JSON report to stdout"),
    ) -> None:
        """Robust accuracy under clean, FGSM, PGD-20, CW-inf and AutoAttack, with gradient-masking checks."""
        from ..api import EvaluateConfig, ModelSpec, evaluate
        from ..utils import check_out_file, write_json_atomic

        if out is not None:
            check_out_file(out, "--out")
            if out.exists() and not force:
                raise UserError(f"{out} exists; pass --force to overwrite it")
        spec = ModelSpec(arch=arch, num_classes=num_classes, mean=floats(mean, "--mean"), std=floats(std, "--std"))
        cfg = EvaluateConfig(data=data, data_dir=data_dir, download=download, eps=eps,
                             attacks=[a for a in attacks.split(",") if a.strip()], n=n, split=split,
                             val_fraction=val_fraction, batch_size=batch_size, seed=seed,
                             square_queries=square_queries, attack_opts=list(attack_opt or []), spec=spec,
                             model_dir=model_dir,
                             device=STATE.device_spec, threads=threads)
        result = evaluate(model, cfg, progress=False if no_progress else err_console,
                          log=log_line(json_out))
        res, report = result.result, result.to_dict()
        if out is not None:
            write_json_atomic(out, report)
        eps_val = res.eps
        if json_out:
            emit_json(report)
        else:
            render(res, f"{Path(result['model']).name} on {res.dataset}/{split}: n={res.n_examples}, eps={eps_val:.4g} "
                        f"({eps_val * 255:.3g}/255)")
            if out is not None:
                console.print(f"report written to {escape(str(out))}")
        if res.errors:
            raise GateFailure(f"evaluation check(s) failed: {', '.join(res.errors)} "
                              f"({res.checks[res.errors[0]].message})")
