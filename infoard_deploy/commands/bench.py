"""``infoard-deploy bench``: latency (median / p95), throughput and peak memory per artifact and batch size.

Example::

    infoard-deploy bench --artifact student.fp32.onnx --artifact student.int8.onnx --reference student.pt \\
        --batch-sizes 1,64 --threads 2

The reference (a torch checkpoint, run eagerly) is measured first; each artifact's speed-up is its
median latency relative to the reference at the same batch size. See :mod:`infoard_deploy.benchmarking` for
exactly what is timed and what the memory figure counts.
"""
from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer
from rich.markup import escape
from rich.table import Table

from ._common import STATE, console, emit_json, err_console, ints


def register(app: typer.Typer) -> None:
    @app.command("bench")
    def bench_cmd(
        artifact: List[Path] = typer.Option([], "--artifact", help="ONNX file or TensorRT engine (repeatable)"),
        reference: Optional[Path] = typer.Option(None, "--reference", help="torch checkpoint (with card) run eagerly as the baseline"),
        batch_sizes: str = typer.Option("1,64", "--batch-sizes", help="comma-separated batch sizes"),
        threads: int = typer.Option(0, "--threads", help="CPU threads for torch and ONNX Runtime (0: library default)"),
        warmup: int = typer.Option(10, "--warmup", help="untimed calls per batch size"),
        iters: int = typer.Option(50, "--iters", help="timed calls per batch size"),
        json_out: bool = typer.Option(False, "--json", help="machine-readable result"),
    ) -> None:
        """Measure latency, throughput and peak memory of deployed artifacts (and a torch reference)."""
        from ..api import bench

        sizes = ints(batch_sizes, "--batch-sizes") or []
        log = None if json_out else (lambda s: err_console.print(escape(s), soft_wrap=True))
        result = bench([str(a) for a in artifact], str(reference) if reference is not None else None,
                       batch_sizes=sizes, threads=threads, warmup=warmup, iters=iters, device=STATE.device_spec,
                       log=log).to_dict()
        if json_out:
            emit_json(result)
            return
        rows = result["results"]
        t = Table(title="latency", title_justify="left")
        for col in ("artifact", "runtime", "batch", "median ms", "p95 ms", "img/s", "vs ref", "peak RSS MB"):
            t.add_column(col, justify="left" if col in ("artifact", "runtime") else "right",
                         no_wrap=col == "artifact")
        for r in rows:
            mem = r["memory"].get("peak_rss_mb")
            for b, m in r["latency"].items():
                vs = m.get("latency_vs_reference")
                t.add_row(escape(Path(r["path"]).name), r["runtime"], str(b), f"{m['median_ms']:.3f}",
                          f"{m['p95_ms']:.3f}", f"{m['throughput_ips']:.0f}", f"{vs:.2f}x" if vs else "-",
                          f"{mem:.0f}" if mem is not None else "-")
        console.print(t)
