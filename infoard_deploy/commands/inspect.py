"""``infoard-deploy inspect MODEL``: load any supported model file, show its card, size and a forward check.

Formats: ``.pt/.pth`` state dicts (weights-only), ``.safetensors``, TorchScript and ``.onnx`` (via
onnx2torch), exactly as :func:`infoard_deploy.checkpoint.load_model` reads them. Flags override or
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
from ._common import console, device, emit_json, floats, ints


def parse_input_shape(text: Optional[str]) -> Optional[List[int]]:
    """``"3,32,32"`` (or ``3x32x32``) -> ``[3, 32, 32]``; anything else is a one-line UserError."""
    if text is None:
        return None
    shape = ints(text, "--input-shape")
    if shape is None or len(shape) != 3 or any(v <= 0 for v in shape):
        raise UserError(f"--input-shape must be C,H,W with three positive integers (e.g. 3,32,32), got '{text}'")
    return shape


def model_format(path: Path) -> str:
    from ..checkpoint import _is_torchscript

    suffix = path.suffix.lower()
    if suffix == ".onnx":
        return "onnx"
    if suffix == ".safetensors":
        return "safetensors"
    return "torchscript" if _is_torchscript(path) else "state-dict"


def inspect_model(path: Path, arch: Optional[str] = None, num_classes: Optional[int] = None,
                  input_shape: Optional[List[int]] = None, mean: Optional[List[float]] = None,
                  std: Optional[List[float]] = None, dev=None) -> Dict[str, Any]:
    """Load ``path`` and return a JSON-able report: format, card, parameter count, forward check."""
    import torch

    from ..card import card_path_for
    from ..checkpoint import load_model
    from ..utils import sha256_file

    if num_classes is not None and num_classes < 2:
        raise UserError(f"--num-classes must be >= 2, got {num_classes}")
    model, card = load_model(path, arch=arch, num_classes=num_classes, input_shape=input_shape, mean=mean, std=std)
    dev = dev or torch.device("cpu")
    params = sum(p.numel() for p in model.parameters())
    buffers = sum(b.numel() for b in model.buffers())
    gen = torch.Generator().manual_seed(0)
    x = torch.rand((2, *card.input_shape), generator=gen)
    try:
        model = model.to(dev)
        with torch.no_grad():
            out = model(x.to(dev))
    except Exception as e:  # a graph that cannot run this shape on this device
        raise UserError(f"forward check of {path.name} on {dev} failed: {' '.join(str(e).split())[:300]}") from None
    out = out.float().cpu()
    cp = card_path_for(path)
    return {
        "path": str(path),
        "format": model_format(path),
        "sha256": sha256_file(path),
        "card_file": str(cp) if cp.exists() else None,
        "card": card.to_dict(),
        "parameters": int(params),
        "buffers": int(buffers),
        "size_mb": round(path.stat().st_size / 2**20, 3),
        "forward": {
            "device": str(dev),
            "input_shape": list(x.shape),
            "output_shape": list(out.shape),
            "finite": bool(torch.isfinite(out).all()),
            "predictions": out.argmax(1).tolist(),
        },
    }


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
        ("mean / std", f"{card['mean']} / {card['std']} (inside the model)"),
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


def register(app: typer.Typer) -> None:
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
        rep = inspect_model(model, arch=arch, num_classes=num_classes, input_shape=parse_input_shape(input_shape),
                            mean=floats(mean, "--mean"), std=floats(std, "--std"), dev=device())
        if json_out:
            emit_json(rep)
        else:
            _print(rep)
