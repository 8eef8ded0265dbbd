"""``infoard-deploy export``: ONNX fp32/fp16/INT8 Q/DQ and TensorRT engines, each parity-gated.

Examples::

    infoard-deploy export --model student.pt --profile ort-cpu-fp32 --profile ort-cpu-int8 --calib-data fashion-mnist
    infoard-deploy export --model student.pt --trt              # fp16 TensorRT engine (trt-fp16 profile)
    infoard-deploy export --model student.pt --int8 --calib-data digits --out deploy/ --json

Exit codes: 0 all artifacts within tolerance; 1 a parity gate failed (figures printed); 2 bad input.
"""
from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer
from rich.markup import escape
from rich.table import Table

from ..errors import GateFailure, UserError
from ._common import STATE, console, emit_json, err_console

def _table(result) -> Table:
    t = Table(title=f"export of {Path(result['model']).name}", title_justify="left")
    for col in ("artifact", "runtime", "max|d|", "mean|d|", "top-1", "acc", "ref acc", "gate"):
        t.add_column(col, justify="left" if col in ("artifact", "runtime", "gate") else "right",
                     no_wrap=col == "artifact")
    for a in result["artifacts"]:
        p = a["parity"]
        acc = (f"{p['accuracy']:.4f}", f"{p['reference_accuracy']:.4f}") if "accuracy" in p else ("-", "-")
        t.add_row(escape(Path(a["path"]).name), a["runtime"], f"{p['max_abs']:.3g}", f"{p['mean_abs']:.2g}",
                  f"{p['top1_agreement']:.4f}", *acc, "[green]ok[/green]" if a["passed"] else "[red]FAILED[/red]")
    return t


def register(app: typer.Typer) -> None:
    @app.command("export")
    def export_cmd(
        model: Path = typer.Option(..., "--model", help="student checkpoint (.pt/.safetensors) or ONNX file, with its .card.json"),
        profile: List[str] = typer.Option([], "--profile", help="target profile name or .toml path (repeatable); see `list export-profiles`"),
        fp32: bool = typer.Option(False, "--fp32", help="ONNX fp32 for ONNX Runtime CPU (profile ort-cpu-fp32)"),
        fp16: bool = typer.Option(False, "--fp16", help="ONNX fp16 with float32 I/O (profile ort-cuda-fp16)"),
        int8: bool = typer.Option(False, "--int8", help="ONNX INT8 symmetric Q/DQ (profile ort-cpu-int8); needs --calib-data"),
        trt: bool = typer.Option(False, "--trt", help="TensorRT engine (profile trt-fp16, or trt-int8 with --trt-precision int8)"),
        trt_precision: str = typer.Option("fp16", "--trt-precision", help="precision of the --trt engine: fp16 | int8"),
        calib_data: Optional[str] = typer.Option(None, "--calib-data", help="dataset name (training split is used) or images.npy; default: the card's dataset"),
        calib_n: Optional[int] = typer.Option(None, "--calib-n", help="number of calibration images (profile default 512)"),
        calib_method: Optional[str] = typer.Option(None, "--calib-method", help="minmax | entropy | percentile"),
        data_dir: Optional[str] = typer.Option(None, "--data-dir", help="dataset root / file"),
        check_n: int = typer.Option(1000, "--check-n", help="validation images for the parity check"),
        val_fraction: float = typer.Option(0.1, "--val-fraction", help="validation slice of TRAIN used for parity"),
        seed: int = typer.Option(0, "--seed", help="seed of the validation / calibration split"),
        opset: Optional[int] = typer.Option(None, "--opset", help="ONNX opset (profile default 18)"),
        out: Optional[Path] = typer.Option(None, "--out", help="output folder (default: beside --model)"),
        force: bool = typer.Option(False, "--force", help="overwrite existing artifacts"),
        slim: bool = typer.Option(False, "--slim", help="simplify the fp32 graph with onnxslim first"),
        json_out: bool = typer.Option(False, "--json", help="machine-readable result"),
    ) -> None:
        """Export a model to ONNX fp32/fp16/INT8 and TensorRT, checking parity vs the fp32 torch model."""
        from ..api import export

        if trt_precision not in ("fp16", "int8"):
            raise UserError(f"--trt-precision must be fp16 or int8, got '{trt_precision}'")
        precisions = [k for k, on in (("fp32", fp32), ("fp16", fp16), ("int8", int8)) if on]
        log = (lambda s: None) if json_out else (lambda s: err_console.print(escape(s), soft_wrap=True))
        result = export(model, profile, precisions=precisions, trt=trt_precision if trt else None, out=out,
                        calib_data=calib_data, calib_n=calib_n, calib_method=calib_method, data_dir=data_dir,
                        check_n=check_n, val_fraction=val_fraction, seed=seed, opset=opset, force=force, slim=slim,
                        device=STATE.device_spec, log=log).to_dict()
        if json_out:
            emit_json(result)
        else:
            console.print(_table(result))
            for a in result["artifacts"]:
                console.print(f"  {escape(a['path'])}  (card {escape(Path(a['card']).name)})", soft_wrap=True)
        if not result["passed"]:
            raise GateFailure("; ".join(result["failures"]))
