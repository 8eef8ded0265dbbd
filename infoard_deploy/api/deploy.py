"""``export``, ``verify`` and ``bench``: from a checkpoint to deployed artifacts, re-verified and measured."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Union

from ..errors import UserError
from ..utils import parse_eps
from .common import Result, set_threads

# Shorthand precisions for the shipped profiles (the CLI's --fp32/--fp16/--int8 and --trt).
FLAG_PROFILES = {"fp32": "ort-cpu-fp32", "fp16": "ort-cuda-fp16", "int8": "ort-cpu-int8"}
TRT_PROFILES = {"fp16": "trt-fp16", "int8": "trt-int8"}


class ExportResult(Result):
    """``artifacts``: one dict per file (path, card, runtime, precision, parity figures, passed)."""

    @property
    def passed(self) -> bool:
        return bool(self.data["passed"])

    @property
    def artifact_paths(self) -> List[Path]:
        return [Path(a["path"]) for a in self.data["artifacts"]]


class VerifyReport(Result):
    """The verification report (also written to the report folder); ``passed`` is False when a gate failed."""

    @property
    def passed(self) -> bool:
        return bool(self.data["passed"])


class BenchResult(Result):
    """Latency (median / p95 ms), throughput (images/s) and peak memory per model and batch size."""


def resolve_profiles(profiles: Sequence[str] = (), *, precisions: Sequence[str] = (), trt: Optional[str] = None,
                     calib_n: Optional[int] = None, calib_method: Optional[str] = None,
                     opset: Optional[int] = None):
    """Profile names / ``.toml`` paths plus shorthand ``precisions`` (fp32, fp16, int8) and a TensorRT
    precision -> validated :class:`~infoard_deploy.exporting.profiles.Profile` objects (default: ort-cpu-fp32)."""
    from ..exporting.profiles import load_profile

    if trt is not None and trt not in TRT_PROFILES:
        raise UserError(f"--trt-precision must be fp16 or int8, got '{trt}'")
    if calib_n is not None and calib_n < 1:
        raise UserError(f"--calib-n must be >= 1, got {calib_n}")
    bad = [p for p in precisions if p not in FLAG_PROFILES]
    if bad:
        raise UserError(f"unknown precision(s) {', '.join(bad)} (fp32, fp16, int8)")
    wanted = list(profiles) + [FLAG_PROFILES[p] for p in precisions]
    if trt is not None:
        wanted.append(TRT_PROFILES[trt])
    if not wanted:
        wanted = [FLAG_PROFILES["fp32"]]
    seen, out = set(), []
    for w in wanted:
        p = load_profile(w)
        if p.name in seen:
            continue
        seen.add(p.name)
        over: Dict[str, Any] = {"opset": opset}
        if "int8" in p.precisions:
            over.update(calib_n=calib_n, calib_method=calib_method)
        out.append(p.with_overrides(**over))
    return out


def export(model: Union[str, Path], profiles: Sequence[str] = (), *, precisions: Sequence[str] = (),
           trt: Optional[str] = None, out: Optional[Union[str, Path]] = None, calib_data: Optional[str] = None,
           calib_n: Optional[int] = None, calib_method: Optional[str] = None, data_dir: Optional[str] = None,
           check_n: int = 1000, val_fraction: float = 0.1, seed: int = 0, opset: Optional[int] = None,
           force: bool = False, slim: bool = False, device: str = "auto",
           log: Optional[Callable[[str], None]] = None) -> ExportResult:
    """Export the checkpoint ``model`` (with its model card) to each profile's artifacts, parity-checked.

    Example: ``export("student.pt", ["ort-cpu-fp32", "ort-cpu-int8"], calib_data="digits", out="deploy")``.
    Each artifact gets a card with its precision, calibration, parity figures (|Δlogit|, top-1 agreement vs
    the fp32 torch model) and the source checkpoint's sha256. ``passed`` is False when a parity gate failed.
    """
    from ..exporting.pipeline import export_artifacts
    from ..utils import parse_device

    if check_n < 1:
        raise UserError(f"--check-n must be >= 1, got {check_n}")
    profs = resolve_profiles(profiles, precisions=precisions, trt=trt, calib_n=calib_n, calib_method=calib_method,
                             opset=opset)
    model = Path(model)
    out_dir = Path(out) if out is not None else model.parent
    res = export_artifacts(model, profs, out_dir, calib_data=calib_data, data_dir=data_dir, check_n=check_n,
                           val_fraction=val_fraction, seed=seed, force=force,
                           slim=slim or any(p.slim for p in profs), device=parse_device(device),
                           log=log or (lambda s: None))
    return ExportResult(res)


def verify(reference: Union[str, Path], artifacts: Sequence[Union[str, Path]], data: str, *,
           data_dir: Optional[str] = None, eps: Optional[float | str] = None, n: int = 1000,
           attacks: Sequence[str] = ("pgd20", "cw", "apgd-ce", "apgd-t"), square_queries: int = 1000,
           eps_sweep: Sequence[float] = (0.5, 1.0, 1.5), gates: Any = None, out: Union[str, Path] = "verify_report",
           force: bool = False, seed: int = 0, batch_size: int = 256, threads: int = 0, device: str = "auto",
           progress: Optional[Callable[[int, Dict[str, float]], None]] = None, **options: Any) -> VerifyReport:
    """Re-verify adversarial robustness of deployed ``artifacts`` (ONNX / TensorRT) against ``reference``.

    Runs parity on identical inputs, transfer attacks crafted on the reference and a query attack (Square)
    against each artifact at L-inf radius ``eps`` ([0,1] pixel units) on the first ``n`` test examples, then
    the gates (:class:`~infoard_deploy.verification.GateConfig`; its fields, e.g. ``max_robust_drop``, may also be
    given as keywords). Writes the report folder ``out`` and returns it;
    never raises on a failed gate (check ``report.passed``). Extra ``options`` go to
    :func:`~infoard_deploy.verification.run_verification`.
    """
    import dataclasses

    from ..utils import parse_device
    from ..verification import GateConfig, run_verification

    set_threads(threads)
    gate_fields = {f.name for f in dataclasses.fields(GateConfig)}
    gate_over = {k: options.pop(k) for k in list(options) if k in gate_fields}
    if gates is None:
        gates = GateConfig(**gate_over)
    elif gate_over:
        gates = dataclasses.replace(gates, **gate_over)
    rep = run_verification(reference, list(artifacts), data, data_dir=data_dir,
                           eps=parse_eps(eps) if eps is not None else None, n=n, attacks=list(attacks),
                           square_queries=square_queries, eps_sweep=list(eps_sweep),
                           gates=gates, batch_size=batch_size, seed=seed,
                           device=parse_device(device), out=out, force=force, progress=progress,
                           raise_on_gate=False, threads=threads, **options)
    return VerifyReport(rep)


def bench(artifacts: Sequence[Union[str, Path]] = (), reference: Optional[Union[str, Path]] = None, *,
          batch_sizes: Sequence[int] = (1, 64), threads: int = 0, warmup: int = 10, iters: int = 50,
          device: str = "auto", log: Optional[Callable[[str], None]] = None) -> BenchResult:
    """Median / p95 latency (ms), throughput (images/s) and peak RSS (MB) per model and batch size.

    The torch ``reference`` (run eagerly) is measured first; each artifact's ``latency_vs_reference`` is its
    median latency over the reference's at the same batch size. All inputs are validated before timing.
    """
    from ..benchmarking import measure, open_for_bench
    from ..utils import parse_device, require_file

    sizes = [int(b) for b in batch_sizes]
    if not sizes or any(b < 1 for b in sizes):
        raise UserError(f"--batch-sizes needs positive integers like 1,64, got {list(batch_sizes)}")
    if iters < 1:
        raise UserError(f"--iters must be >= 1, got {iters}")
    if warmup < 0:
        raise UserError(f"--warmup must be >= 0, got {warmup}")
    if not artifacts and reference is None:
        raise UserError("nothing to measure: give --artifact FILE (repeatable) and/or --reference student.pt")
    set_threads(threads)
    items = ([("reference", Path(reference))] if reference is not None else []) + \
        [("artifact", Path(a)) for a in artifacts]
    for _, p in items:
        require_file(p, "model file")
    dev = parse_device(device)
    opened = [(role, p, *open_for_bench(p, dev, threads)) for role, p in items]  # every file opens before timing
    rows = []
    for role, path, rt, shape, label in opened:
        if log:
            log(f"measuring {path} ({label}, input {shape})")
        res = measure(rt, shape, sizes, warmup=warmup, iters=iters)
        rows.append({"role": role, "path": str(path), "runtime": label, "input_shape": list(shape), **res})
    ref = rows[0] if rows and rows[0]["role"] == "reference" else None
    for r in rows:
        for b, m in r["latency"].items():
            if ref is not None and r is not ref and b in ref["latency"]:
                m["latency_vs_reference"] = m["median_ms"] / ref["latency"][b]["median_ms"]
    return BenchResult({"batch_sizes": sizes, "threads": threads, "device": str(dev), "results": rows})


__all__ = ["export", "verify", "bench", "resolve_profiles", "ExportResult", "VerifyReport", "BenchResult",
           "FLAG_PROFILES", "TRT_PROFILES"]
