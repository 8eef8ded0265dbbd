"""``infoard-deploy run RECIPE.toml``: the whole pipeline from one typed recipe (see ``pipeline.py``)."""
from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from ._common import console, emit_json


def register(app: typer.Typer) -> None:
    @app.command("run")
    def run_cmd(
        recipe: Path = typer.Argument(..., help="recipe TOML (see recipes/)"),
        out: Optional[Path] = typer.Option(None, "--out", help="run folder (default runs/<recipe name>)"),
        set_: Optional[List[str]] = typer.Option(None, "--set", help="override a recipe value: a.b=v (repeatable)"),
        force: bool = typer.Option(False, "--force", help="re-run every stage even if done"),
        dry_run: bool = typer.Option(False, "--dry-run", help="print the resolved recipe and stage commands only"),
        json_out: bool = typer.Option(False, "--json", help="print the run summary as JSON"),
    ) -> None:
        """Teacher (load or train) -> distill -> evaluate -> export -> verify -> report, resumable."""
        from ..pipeline import Pipeline
        from ..recipe import dump_recipe, load_recipe

        r = load_recipe(recipe, set_ or [])
        run_dir = out or Path("runs") / r.name
        pipe = Pipeline(r, run_dir, force=force)
        if dry_run:
            console.print(dump_recipe(r), markup=False)
            for stage in r.stages:
                argv = pipe.argv(stage)
                if argv:
                    console.print(f"{stage}: infoard-deploy " + " ".join(argv), markup=False)
            return
        summary = pipe.run()
        if json_out:
            emit_json(summary)
        else:
            console.print(f"[green]run finished[/green] in {summary['total_seconds']:.0f} s: "
                          f"report at {run_dir / 'report' / 'report.md'}")
