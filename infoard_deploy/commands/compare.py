"""``infoard-deploy compare RECIPE...``: a grid of distillation configs x seeds per recipe, evaluated on the same
images, with paired per-image differences and intervals (see :mod:`infoard_deploy.comparison`). Resumable: re-run
the same command to finish an interrupted grid. This module only parses and renders."""
from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer
from rich.markup import escape

from ._common import STATE, console, emit_json, err_console


def register(app: typer.Typer) -> None:
    @app.command("compare")
    def compare_cmd(
        recipes: List[str] = typer.Argument(..., help="packaged recipe names or .toml files with a \\[compare] section"),
        out: Optional[Path] = typer.Option(None, "--out", help="run folder (one recipe only; default runs/<name>)"),
        set_: Optional[List[str]] = typer.Option(None, "--set", help="override a recipe value: a.b=v (repeatable)"),
        force: bool = typer.Option(False, "--force", help="re-run every cell even if done"),
        json_out: bool = typer.Option(False, "--json", help="print the results as JSON"),
        threads: int = typer.Option(0, "--threads", help="CPU threads for torch (0: library default)"),
    ) -> None:
        """Methods x ablations x seeds with the real trainer; paired per-image differences against a reference."""
        from dataclasses import replace

        from ..api.common import set_threads
        from ..comparison import compare
        from ..recipe import resolve_recipe

        if out is not None and len(recipes) > 1:
            from ..errors import UserError

            raise UserError("--out names one run folder; give one recipe with it")
        resolved = [resolve_recipe(r, set_ or []) for r in recipes]  # every recipe checked before any work
        set_threads(threads)
        results = []
        for r in resolved:
            if r.device == "auto" and STATE.device_spec != "auto":
                r = replace(r, device=STATE.device_spec)
            run_dir = out or Path("runs") / r.name
            res = compare(r, run_dir, force=force,
                          log=lambda s: err_console.print(f"[dim]{escape(s)}[/dim]", soft_wrap=True))
            results.append(res.to_dict())
            if not json_out:
                from ..comparison import to_markdown

                console.print(to_markdown(res.to_dict()), markup=False, soft_wrap=True)
                console.print(f"results in {escape(str(run_dir / 'compare'))}")
        if json_out:
            emit_json(results if len(results) > 1 else results[0])
