"""``infoard-deploy inspect MODEL``: load any supported model file, show its card, size and a forward check.

Formats: ``.pt/.pth`` state dicts (weights-only), ``.safetensors``, TorchScript and ``.onnx`` (via
onnx2torch), exactly as :func:`infoard_deploy.load_model` reads them (:func:`infoard_deploy.api.inspect_model`). Flags override or
stand in for the model card beside the file. The forward check feeds two seeded random images in
[0,1] of the card's input shape on the chosen ``--device`` and reports the logits' shape.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, List, Optional

import typer
from rich.markup import escape
from rich.table import Table

from ..errors import UserError
from ._common import STATE, console, emit_json, floats, ints


def parse_input_shape(text: Optional[str]) -> Optional[List[int]]:
    """``"3,32,32"`` (or ``3x32x32``) -> ``[3, 32, 32]``; anything else is a one-line UserError."""
    if text is None:
        return None
    shape = ints(text, "--input-shape")
    if shape is None or len(shape) != 3 or any(v <= 0 for v in shape):
        raise UserError(f"--input-shape must be C,H,W with three positive integers (e.g. 3,32,32), got '{text}'")
    return shape


def _print(rep: Dict[str, Any]) -> None:
    card = rep["card"]
    t = Table(title=f"{rep['path']}", title_justify="left", show_header=False, box=None, pad_edge=False)
    t.add_column(style="bold cyan")
    t.add_column()
    rows = [
        ("format", rep["format"]),
        ("architecture", card["architecture"]),
        ("classes", f"{card['num_classes']}" + (f" ({', '.join(card['classes'][:10])}"
                                                  + (", ..." if len(card["classes"]) > 10 else "") + ")"
                                                  if card.get("classes") else "")),
        ("input", "x".join(str(v) for v in card["input_shape"]) + " (C,H,W), float in [0,1]"),
        ("mean / std", f"{card['mean']} / {card['std']} (inside the model; from {rep['normalisation']['source']})"),
        ("eps", str(card.get("eps"))),
        ("dataset", str(card.get("dataset"))),
        ("precision", card.get("precision", "")),
        ("parameters", f"{rep['parameters']:,}"),
        ("file", f"{rep['size_mb']} MB, sha256 {rep['sha256'][:16]}..."),
        ("card file", str(rep["card_file"] or "none (from flags)")),
        ("forward", f"{rep['forward']['input_shape']} -> {rep['forward']['output_shape']} on {rep['forward']['device']}"
                    + ("" if rep["forward"]["finite"] else " [NON-FINITE LOGITS]")),
    ]
    for k, v in card.get("metrics", {}).items():
        rows.append((f"metric {k}", str(v)))
    for k, v in rows:
        t.add_row(escape(k), escape(str(v)))
    console.print(t)
    for w in rep.get("warnings", []):
        console.print(f"[yellow]warning:[/yellow] {escape(w)}", soft_wrap=True)


def register(app: typer.Typer) -> None:
    register_card(app)

    @app.command("inspect")
    def inspect_cmd(
        model: Path = typer.Argument(..., help="model file: .pt/.pth/.safetensors/TorchScript/.onnx"),
        arch: Optional[str] = typer.Option(None, "--arch", help="architecture (see `list architectures`)"),
        num_classes: Optional[int] = typer.Option(None, "--num-classes", help="number of classes"),
        input_shape: Optional[str] = typer.Option(None, "--input-shape", help="C,H,W e.g. 3,32,32"),
        mean: Optional[str] = typer.Option(None, "--mean", help="per-channel mean, e.g. 0.4914,0.4822,0.4465"),
        std: Optional[str] = typer.Option(None, "--std", help="per-channel std"),
        json_out: bool = typer.Option(False, "--json", help="machine-readable output"),
    ) -> None:
        """Show a model's card, parameter count and a forward check (any supported format)."""
        from ..api import ModelSpec, inspect_model

        spec = ModelSpec(arch=arch, num_classes=num_classes, input_shape=parse_input_shape(input_shape),
                         mean=floats(mean, "--mean"), std=floats(std, "--std"))
        rep = inspect_model(model, spec, device=STATE.device_spec)
        if json_out:
            emit_json(rep)
        else:
            _print(rep)


def register_card(app: typer.Typer) -> None:
    @app.command("card")
    def card_cmd(
        model: Path = typer.Argument(..., help="a model file without a card (.pt/.safetensors/TorchScript/.onnx)"),
        arch: Optional[str] = typer.Option(None, "--arch", help="architecture (default: inferred from the weights)"),
        num_classes: Optional[int] = typer.Option(None, "--num-classes", help="number of classes"),
        input_shape: Optional[str] = typer.Option(None, "--input-shape", help="C,H,W e.g. 3,32,32"),
        mean: Optional[str] = typer.Option(None, "--mean", help="per-channel mean the model expects (inside it)"),
        std: Optional[str] = typer.Option(None, "--std", help="per-channel std"),
        eps: Optional[str] = typer.Option(None, "--eps", help="L-inf radius the model was trained for, e.g. 8/255"),
        dataset: Optional[str] = typer.Option(None, "--dataset", help="dataset name (see `list datasets`)"),
        force: bool = typer.Option(False, "--force", help="replace an existing card"),
    ) -> None:
        """Write MODEL.card.json for a foreign model file, so export / verify / bench / evaluate read it as stated."""
        from ..api import ModelSpec, write_card
        from ..utils import parse_eps

        if dataset is not None:
            from ..data import DATASETS

            DATASETS.get(dataset)
        spec = ModelSpec(arch=arch, num_classes=num_classes, input_shape=parse_input_shape(input_shape),
                         mean=floats(mean, "--mean"), std=floats(std, "--std"),
                         eps=parse_eps(eps) if eps is not None else None, dataset=dataset)
        dest = write_card(model, spec, force=force)
        console.print(f"[green]wrote[/green] {escape(str(dest))}")
