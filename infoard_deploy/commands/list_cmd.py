"""``infoard-deploy list``: show every registry (students, datasets, methods, attacks, runtimes, profiles)
and the packaged recipes (``infoard-deploy run NAME``)."""
from __future__ import annotations

import importlib
from typing import Dict, List, Optional

import typer
from rich.markup import escape
from rich.table import Table

from ._common import console, emit_json

TEACHER_FORMATS = {
    ".pt/.pth state dict": "weights-only torch.load; state_dict / model / module. / TRADES layouts",
    ".safetensors": "tensors only",
    "TorchScript": "torch.jit.save archive (.pt/.ts)",
    ".onnx": "converted to a differentiable torch module (onnx2torch)",
}

# (section, module, attribute): registries are looked up lazily so `list` shows whatever is registered.
SECTIONS = [
    ("architectures", "infoard_deploy.models", "MODELS"),
    ("datasets", "infoard_deploy.data", "DATASETS"),
    ("methods", "infoard_deploy.methods", "METHODS"),
    ("teacher-methods", "infoard_deploy.train", "TEACHER_METHODS"),
    ("attacks", "infoard_deploy.attacks", "ATTACKS"),
    ("runtimes", "infoard_deploy.runtimes", "RUNTIMES"),
    ("export-profiles", "infoard_deploy.exporting.profiles", "PROFILES"),
]


def _recipes():
    from ..recipe import packaged_recipes

    return packaged_recipes()


def _recipe_about(path) -> str:
    """The first comment line of a packaged recipe (what it runs)."""
    for line in path.read_text().splitlines():
        if line.startswith("#"):
            return line.lstrip("# ").strip()
    return ""


def collect() -> Dict[str, List[Dict[str, str]]]:
    out: Dict[str, List[Dict[str, str]]] = {}
    for section, mod, attr in SECTIONS:
        try:
            reg = getattr(importlib.import_module(mod), attr)
        except (ImportError, AttributeError):
            continue
        out[section] = [{"name": n, "about": str(reg.meta(n).get("about", ""))} for n in reg.names()]
    out["teacher-formats"] = [{"name": k, "about": v} for k, v in TEACHER_FORMATS.items()]
    out["recipes"] = [{"name": name, "about": _recipe_about(path)} for name, path in _recipes().items()]
    if "methods" in out:  # what `distill --opt key=value` accepts per method, with the defaults it replaces
        from ..methods import method_options

        def show(v: object) -> str:
            return f"{v:g}" if isinstance(v, float) else str(v)

        out["method-options"] = [{"name": r["name"], "about": " ".join(f"{k}={show(v)}" for k, v in
                                                                       method_options(r["name"]).items())}
                                 for r in out["methods"]]
    return out


def register(app: typer.Typer) -> None:
    @app.command("list")
    def list_cmd(
        what: Optional[str] = typer.Argument(None, help="one section (e.g. architectures, methods, attacks)"),
        json_out: bool = typer.Option(False, "--json", help="machine-readable output"),
    ) -> None:
        """List what is registered: architectures, teacher formats, datasets, methods, attacks, runtimes, profiles."""
        data = collect()
        if what is not None:
            from ..registry import Registry

            sections = Registry("section")
            for k in data:
                sections.register(k, k)
            key = sections.get(what)
            data = {key: data[key]}
        if json_out:
            emit_json(data)
            return
        for section, rows in data.items():
            t = Table(title=section, title_justify="left", show_header=False, box=None, pad_edge=False)
            t.add_column(style="bold cyan")
            t.add_column()
            for r in rows:
                t.add_row(escape(r["name"]), escape(r["about"]))
            console.print(t)
            console.print()
