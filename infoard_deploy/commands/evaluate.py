"""``infoard-deploy evaluate``: clean / FGSM / PGD-20 / CW-inf / AutoAttack robust accuracy of a checkpoint.

The command loads the model and data, calls :func:`infoard_deploy.evaluate.evaluate_model` and renders the
result (a rich table, or ``--json``; ``--out`` writes the JSON report). An error-level sanity check
(``adv_in_bounds``) makes it exit 1 after the report is written.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, List, Optional

import typer
from rich.markup import escape
from rich.table import Table

from ..errors import GateFailure, UserError
from ._common import console, device, emit_json, err_console, floats, parse_eps

DEFAULT_ATTACKS = "clean,fgsm,pgd20,cw,aa"
_STYLE = {"ok": ("green", "ok"), "warn": ("yellow", "WARN"), "error": ("red", "ERROR"), "skipped": ("dim", "skip")}


def parse_attack_opts(opts: Optional[List[str]], square_queries: Optional[int]) -> Dict[str, Dict[str, Any]]:
    """``["square.n_queries=1000", "aa.fab-t.steps=50"]`` -> ``{"square": {"n_queries": "1000"}, "aa": {...}}``."""
    from ..attacks import ATTACKS

    out: Dict[str, Dict[str, Any]] = {}
    for item in opts or []:
        key, sep, value = item.partition("=")
        parts = [p.strip().lower() for p in key.split(".")]
        if not sep or len(parts) not in (2, 3) or not all(parts) or (len(parts) == 3 and parts[0] != "aa"):
            raise UserError(f"--attack-opt needs ATTACK.SETTING=VALUE (or aa.COMPONENT.SETTING=VALUE), got '{item}'")
        parts[:-1] = [p.replace("_", "-") for p in parts[:-1]]  # attack names use '-', settings use '_'
        ATTACKS.get(parts[0])
        if len(parts) == 2:
            out.setdefault(parts[0], {})[parts[1]] = value.strip()
        else:
            ATTACKS.get(parts[1])
            out.setdefault("aa", {}).setdefault(parts[1], {})[parts[2]] = value.strip()
    if square_queries is not None:
        if square_queries < 1:
            raise UserError(f"--square-queries must be positive, got {square_queries}")
        out.setdefault("square", {})["n_queries"] = square_queries
    return out


def _indices(bundle, split: str, n: Optional[int], seed: int, val_fraction: float):
    import numpy as np

    from ..data import split_indices

    if split == "test":
        data, idx = bundle.test, np.arange(len(bundle.test))
    elif split == "val":
        data, idx = bundle.train, split_indices(len(bundle.train), val_fraction, seed)[1]
        if len(idx) == 0:
            raise UserError("--split val: the validation split is empty; raise --val-fraction")
    else:
        raise UserError(f"--split must be test or val, got '{split}'")
    if n is not None:
        if n <= 0:
            raise UserError(f"--n must be positive, got {n}")
        if n > len(idx):
            err_console.print(f"note: {bundle.name}/{split} has {len(idx)} examples; evaluating all of them "
                              f"(--n {n} asked for more)", style="yellow", markup=False, soft_wrap=True)
        idx = idx[:n]
    return data, idx


def _load(model_path: Path, bundle, arch, mean, std):
    from ..card import load_card
    from ..checkpoint import load_model

    card = load_card(model_path, required=False)
    kw: Dict[str, Any] = {"arch": arch, "mean": floats(mean, "--mean"), "std": floats(std, "--std")}
    assumed = card is None and kw["mean"] is None and kw["std"] is None
    if card is None:
        kw.update(num_classes=bundle.num_classes, input_shape=list(bundle.input_shape))
        if assumed:
            kw["mean"], kw["std"] = list(bundle.mean), list(bundle.std)
    model, card = load_model(model_path, **kw)
    if assumed:
        err_console.print(f"note: {model_path.name} has no model card; assuming {bundle.name}'s normalisation "
                          "(pass --mean/--std if it was trained with other statistics)", style="yellow",
                          markup=False, soft_wrap=True)
    if list(card.input_shape) != list(bundle.input_shape):
        raise UserError(f"{model_path.name} takes inputs {list(card.input_shape)} but {bundle.name} images are "
                        f"{list(bundle.input_shape)}")
    if card.num_classes != bundle.num_classes:
        raise UserError(f"{model_path.name} has {card.num_classes} classes but {bundle.name} has {bundle.num_classes}")
    return model, card


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
        model: Path = typer.Option(..., "--model", help="checkpoint (.pt/.safetensors/TorchScript/.onnx) with its card"),
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
        arch: Optional[str] = typer.Option(None, "--arch", help="architecture (overrides the card)"),
        mean: Optional[str] = typer.Option(None, "--mean", help="per-channel mean, e.g. 0.4914,0.4822,0.4465"),
        std: Optional[str] = typer.Option(None, "--std", help="per-channel std"),
        out: Optional[Path] = typer.Option(None, "--out", help="write the JSON report here"),
        force: bool = typer.Option(False, "--force", help="overwrite --out if it exists"),
        no_progress: bool = typer.Option(False, "--no-progress", help="hide the progress bar"),
        json_out: bool = typer.Option(False, "--json", help="print the JSON report to stdout"),
    ) -> None:
        """Robust accuracy under clean, FGSM, PGD-20, CW-inf and AutoAttack, with gradient-masking checks."""
        from ..card import load_card
        from ..data import BatchLoader, load_data
        from ..evaluate import evaluate_model, resolve_attacks
        from ..utils import require_file, seed_everything, sha256_file, write_json_atomic

        if out is not None:
            if out.is_dir():
                raise UserError(f"--out {out} is a directory; give a file name such as report.json")
            if out.exists() and not force:
                raise UserError(f"{out} exists; pass --force to overwrite it")
        if batch_size <= 0:
            raise UserError(f"--batch-size must be positive, got {batch_size}")
        names = resolve_attacks(attacks)
        overrides = parse_attack_opts(attack_opt, square_queries)
        eps_val = parse_eps(eps) if eps is not None else None
        require_file(model, "model file")
        card0 = load_card(model, required=False)
        data_name = data or (card0.dataset if card0 else None)
        if not data_name:
            raise UserError(f"give --data (the model card of {model.name} names no dataset)")
        bundle = load_data(data_name, root=data_dir, download=download)
        net, card = _load(model, bundle, arch, mean, std)
        if eps_val is None:
            eps_val = card.eps or bundle.default_eps
            if eps_val is None:
                raise UserError("give --eps (neither the model card nor the dataset defines one)")
            eps_val = parse_eps(eps_val)
        imageset, idx = _indices(bundle, split, n, seed, val_fraction)
        seed_everything(seed)
        res = evaluate_model(net, BatchLoader(imageset, idx, batch_size=batch_size), eps_val, names, n=len(idx),
                             num_classes=card.num_classes, seed=seed, device=device(),
                             progress=False if no_progress else err_console, overrides=overrides,
                             architecture=card.architecture, dataset=bundle.name, split=split)
        res.extra.update({"model": str(model), "model_sha256": sha256_file(model), "trained_eps": card.eps,
                          "batch_size": batch_size})
        report = res.to_json()
        if out is not None:
            write_json_atomic(out, report)
        if json_out:
            emit_json(report)
        else:
            render(res, f"{model.name} on {bundle.name}/{split}: n={res.n_examples}, eps={eps_val:.4g} "
                        f"({eps_val * 255:.3g}/255)")
            if out is not None:
                console.print(f"report written to {escape(str(out))}")
        if res.errors:
            raise GateFailure(f"evaluation check(s) failed: {', '.join(res.errors)} "
                              f"({res.checks[res.errors[0]].message})")
