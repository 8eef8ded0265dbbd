"""``infoard-deploy run RECIPE``: the whole pipeline from one typed recipe (see :mod:`infoard_deploy.pipeline`).

RECIPE is a packaged recipe name (``demo``; ``infoard-deploy list recipes`` shows them all) or a TOML path.
The work is :func:`infoard_deploy.run`; this module only parses and renders.
"""
from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer
from rich.markup import escape

from ._common import STATE, console, emit_json, err_console


def register(app: typer.Typer) -> None:
    @app.command("run")
    def run_cmd(
        recipe: str = typer.Argument(..., help="packaged recipe name (see `list recipes`) or a recipe .toml"),
        out: Optional[Path] = typer.Option(None, "--out", help="run folder (default runs/<recipe name>)"),
        set_: Optional[List[str]] = typer.Option(None, "--set", help="override a recipe value: a.b=v (repeatable)"),
        force: bool = typer.Option(False, "--force", help="re-run every stage, replacing files in the run folder"),
        dry_run: bool = typer.Option(False, "--dry-run", help="print the resolved recipe and stage commands only"),
        json_out: bool = typer.Option(False, "--json", help="print the run summary as JSON"),
    ) -> None:
        """Teacher (load or train) -> distill -> evaluate -> export -> verify -> report, resumable."""
        from dataclasses import replace

        from ..pipeline import Pipeline
        from ..recipe import dump_recipe, resolve_recipe

        r = resolve_recipe(recipe, set_ or [])
        if r.device == "auto" and STATE.device_spec != "auto":
            r = replace(r, device=STATE.device_spec)  # the global --device applies to every stage
        from ..utils import check_out_dir

        run_dir = check_out_dir(out or Path("runs") / r.name, "--out")

        def log(msg: str) -> None:
            if msg.startswith("== "):
                stage, _, cmd = msg[3:].partition(": ")
                err_console.rule(f"[bold]{escape(stage)}[/bold]")
                err_console.print(f"[dim]{escape(cmd)}[/dim]", soft_wrap=True)
            else:
                err_console.print(f"[dim]{escape(msg)}[/dim]", soft_wrap=True)

        pipe = Pipeline(r, run_dir, force=force, log=log)
        if dry_run:
            console.print(dump_recipe(r), markup=False)
            for stage in r.stages:
                call = pipe.call(stage)
                if call:
                    console.print(f"{stage}: {call.command}", markup=False, soft_wrap=True)
            return
        summary = pipe.run().to_dict()
        if json_out:
            emit_json(summary)
        else:
            console.print(f"[green]run finished[/green] in {summary['total_seconds']:.0f} s: "
                          f"report at {escape(str(run_dir / 'report' / 'report.md'))}")
