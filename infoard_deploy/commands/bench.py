"""``infoard-deploy bench``: latency (median / p95), throughput and peak memory per artifact and batch size.

Example::

    infoard-deploy bench --artifact student.fp32.onnx --artifact student.int8.onnx --reference student.pt \\
        --batch-sizes 1,64 --threads 2

The reference (a torch checkpoint, run eagerly) is measured first; each artifact's speed-up is its
median latency relative to the reference at the same batch size. See :mod:`infoard_deploy.bench` for
exactly what is timed and what the memory figure counts.
"""
from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer
from rich.markup import escape
from rich.table import Table

from ..errors import UserError
from ._common import console, device, emit_json, err_console, ints


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
        import torch

        from ..bench import measure, open_for_bench

        sizes = ints(batch_sizes, "--batch-sizes") or []
        if not sizes or any(b < 1 for b in sizes):
            raise UserError(f"--batch-sizes needs positive integers like 1,64, got '{batch_sizes}'")
        if threads < 0:
            raise UserError(f"--threads must be >= 0, got {threads}")
        if not artifact and reference is None:
            raise UserError("nothing to measure: give --artifact FILE (repeatable) and/or --reference student.pt")
        if threads:
            torch.set_num_threads(threads)
        dev = device()
        items = ([("reference", reference)] if reference is not None else []) + [("artifact", a) for a in artifact]
        rows = []
        for role, path in items:
            rt, shape, label = open_for_bench(path, dev, threads)
            if not json_out:
                err_console.print(f"measuring {escape(str(path))} ({label}, input {shape})")
            res = measure(rt, shape, sizes, warmup=warmup, iters=iters)
            rows.append({"role": role, "path": str(path), "runtime": label, "input_shape": list(shape), **res})
        ref = rows[0] if rows and rows[0]["role"] == "reference" else None
        for r in rows:
            for b, m in r["latency"].items():
                if ref is not None and r is not ref and b in ref["latency"]:
                    m["latency_vs_reference"] = m["median_ms"] / ref["latency"][b]["median_ms"]
        result = {"batch_sizes": sizes, "threads": threads, "device": str(dev), "results": rows}
        if json_out:
            emit_json(result)
            return
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
