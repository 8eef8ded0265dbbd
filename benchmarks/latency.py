"""Latency benchmark behind BENCHMARKS.md: torch eager vs ONNX Runtime fp32 vs ONNX Runtime INT8 on CPU.

Models:
  * ``cnn-mnist-small`` (1x28x28, 10 classes), the benchmark student, trained here for ONE epoch on
    Fashion-MNIST with a plain cross-entropy loop (~1 min on 2 cores) so that accuracy and parity mean
    something; exported through the product's own path (``export_onnx``, ``quantize_int8`` calibrated on
    512 TRAINING images, symmetric Q/DQ).
  * ``mobilenetv2`` (3x32x32, 10 classes), randomly initialised (latency and parity only; its accuracy
    would be chance). INT8 calibration on uniform random images, which is fine for timing only.

Timing: :func:`infoard_deploy.benchmarking.measure` (host array in, logits out), batch 1 and 64, ``--threads``
intra-op threads for both torch and ONNX Runtime, measurements interleaved over ``--rounds`` rounds
(median of the per-round medians) so background load drifts hit every runtime alike. Targets:
ORT fp32 <= 0.6x torch eager latency, ORT INT8 <= 0.8x ORT fp32. ``--investigate`` also times session
variants (threads, graph optimisation level, spinning, onnxslim, per-tensor weights, and the
``uint8-asymmetric`` activation option of ``quantize_int8`` -- NOT TensorRT-compatible, ONNX Runtime CPU only).
"ORT int8" is what ``OrtRuntime`` runs: the stored symmetric int8 graph with its activations shifted to
uint8 + 128 in memory (exact, :mod:`infoard_deploy.runtimes.ort_int8`); the variant "as stored" runs the
file unchanged (what ONNX Runtime alone makes of it).

Run:  .venv/bin/python benchmarks/latency.py [--quick] [--investigate] [--out benchmarks/results/latency.json]
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from infoard_deploy.benchmarking import measure  # noqa: E402
from infoard_deploy.exporting.checks import compare_logits  # noqa: E402
from infoard_deploy.exporting.onnx import export_onnx, slim_file  # noqa: E402
from infoard_deploy.exporting.quantize import quantize_int8  # noqa: E402
from infoard_deploy.runtimes import OrtRuntime, TorchRuntime  # noqa: E402
from infoard_deploy.runtimes.base import Runtime  # noqa: E402


class SessionRuntime(Runtime):
    """ONNX Runtime CPU session with explicit session options (for the investigation only)."""

    name = "onnxruntime"

    def __init__(self, path, threads, level="all", spinning=True, precision="fp32", shift=False, config=None):
        super().__init__(path=str(path), precision=precision)
        self.threads, self.level, self.spinning, self.shift = threads, level, spinning, shift
        self.config = dict(config or {})

    def _load(self):
        import onnxruntime as ort

        o = ort.SessionOptions()
        o.intra_op_num_threads = self.threads
        o.graph_optimization_level = {"basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
                                      "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
                                      "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL}[self.level]
        o.add_session_config_entry("session.intra_op.allow_spinning", "1" if self.spinning else "0")
        for k, v in self.config.items():
            o.add_session_config_entry(k, v)
        src = self.path
        if self.shift:
            from infoard_deploy.runtimes.ort_int8 import int8_model_bytes_for_cpu

            src = int8_model_bytes_for_cpu(self.path)[0]
        self.s = ort.InferenceSession(src, o, providers=["CPUExecutionProvider"])
        self.i = self.s.get_inputs()[0].name

    def _run(self, x):
        return self.s.run(None, {self.i: x})[0]


def train_fmnist_student(epochs: int, limit: int | None, data_dir: str | None = None):
    from infoard_deploy.data import BatchLoader, load_data, split_indices
    from infoard_deploy.models import build_model

    b = load_data("fashion-mnist", root=data_dir)
    torch.manual_seed(0)
    m = build_model("cnn-mnist-small", 10, 1, 28, b.mean, b.std)
    tr, _ = split_indices(len(b.train), 0.1, 0, limit=limit)
    opt = torch.optim.Adam(m.parameters(), lr=2e-3)
    t0 = time.time()
    for ep in range(epochs):
        m.train()
        for x, y, _ in BatchLoader(b.train, tr, 128, shuffle=True, seed=ep, augment="none"):
            loss = torch.nn.functional.cross_entropy(m(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
    m.eval()
    return m, b, tr, time.time() - t0


def images(b, idx):
    from infoard_deploy.data import to_tensor

    x, y = b.get(np.asarray(idx))
    return to_tensor(x).numpy(), np.asarray(y)


def timed(runtimes, shape, sizes, iters, rounds):
    """Interleaved rounds; per runtime and batch: median of round medians, median of round p95s."""
    acc = {k: {b: [] for b in sizes} for k in runtimes}
    mem = {}
    for _ in range(rounds):
        for k, rt in runtimes.items():
            r = measure(rt, shape, sizes, warmup=max(5, iters // 10), iters=iters)
            mem[k] = r["memory"]["peak_delta_mb"]
            for b in sizes:
                acc[k][b].append(r["latency"][b])
    out = {}
    for k in runtimes:
        out[k] = {}
        for b in sizes:
            med = float(np.median([m["median_ms"] for m in acc[k][b]]))
            out[k][b] = {"median_ms": med, "p95_ms": float(np.median([m["p95_ms"] for m in acc[k][b]])),
                         "throughput_ips": b * 1e3 / med}
        out[k]["peak_delta_mb"] = mem[k]
    return out


def bench_model(name, model, shape, calib, check_x, check_y, args, work: Path):
    fp32, int8 = work / f"{name}.fp32.onnx", work / f"{name}.int8.onnx"
    export_onnx(model, fp32, shape)
    quantize_int8(fp32, int8, calib, "minmax")
    th = args.threads
    runtimes = {"torch eager": TorchRuntime(model), "ORT fp32": OrtRuntime(str(fp32), threads=th),
                "ORT int8": OrtRuntime(str(int8), threads=th, precision="int8")}
    quality = {}
    with torch.no_grad():
        ref = np.concatenate([model(torch.from_numpy(check_x[i:i + 512])).numpy() for i in range(0, len(check_x), 512)])
    for k in ("ORT fp32", "ORT int8"):
        with runtimes[k] as rt:
            quality[k] = compare_logits(ref, rt.predict(check_x), check_y)
    if check_y is not None:
        quality["torch eager"] = {"accuracy": float(np.mean(ref.argmax(1) == check_y))}
    res = {"timing": timed(runtimes, shape, args.batch_sizes, args.iters, args.rounds), "quality": quality}
    if args.investigate:
        res["investigation"] = investigate(name, model, fp32, shape, calib, args, work)
    return res


def investigate(name, model, fp32, shape, calib, args, work: Path):
    slim = work / f"{name}.slim.onnx"
    slim_file(fp32, slim)
    int8_pt = work / f"{name}.int8-pertensor.onnx"
    quantize_int8(fp32, int8_pt, calib, "minmax", per_channel=False)
    u8 = work / f"{name}.int8-u8asym.onnx"
    quantize_int8(fp32, u8, calib, "minmax", activations="uint8-asymmetric")
    int8 = work / f"{name}.int8.onnx"
    variants = {
        "torch eager 1 thread": ("torch1", None),
        "ORT fp32 1 thread": (fp32, dict(threads=1)),
        "ORT fp32 no spinning": (fp32, dict(threads=args.threads, spinning=False)),
        "ORT fp32 opt=basic": (fp32, dict(threads=args.threads, level="basic")),
        "ORT fp32 onnxslim": (slim, dict(threads=args.threads)),
        "ORT int8 as stored (no uint8 shift)": (int8, dict(threads=args.threads)),
        "ORT int8 as stored, S8S8 fusion forced (session.qdqisint8allowed=1)":
            (int8, dict(threads=args.threads, config={"session.qdqisint8allowed": "1"})),
        "ORT int8 1 thread": (int8, dict(threads=1, shift=True)),
        "ORT int8 opt=extended": (int8, dict(threads=args.threads, level="extended", shift=True)),
        "ORT int8 per-tensor weights": (int8_pt, dict(threads=args.threads, shift=True)),
        "ORT int8 uint8-asymmetric activations (not TRT)": (u8, dict(threads=args.threads)),
    }
    rts = {}
    for k, (p, kw) in variants.items():
        rts[k] = _Torch1(model) if p == "torch1" else SessionRuntime(p, **kw)
    return timed(rts, shape, args.batch_sizes, max(20, args.iters // 2), max(1, args.rounds - 1))


class _Torch1(TorchRuntime):
    def _load(self):
        self._prev = torch.get_num_threads()
        torch.set_num_threads(1)
        super()._load()

    def _unload(self):
        torch.set_num_threads(self._prev)


def table(name, res, sizes):
    t = res["timing"]
    lines = [f"\n### {name}", "", "| runtime | batch | median ms | p95 ms | img/s | vs torch | vs ORT fp32 |",
             "|---|---|---|---|---|---|---|"]
    for k in t:
        for b in sizes:
            m = t[k][b]
            vt = m["median_ms"] / t["torch eager"][b]["median_ms"] if "torch eager" in t else float("nan")
            vf = m["median_ms"] / t["ORT fp32"][b]["median_ms"] if "ORT fp32" in t else float("nan")
            lines.append(f"| {k} | {b} | {m['median_ms']:.3f} | {m['p95_ms']:.3f} | {m['throughput_ips']:.0f} | "
                         f"{vt:.2f}x | {vf:.2f}x |")
    q = res["quality"]
    lines += ["", "| runtime | accuracy | max abs dlogit | mean abs dlogit | top-1 agreement |", "|---|---|---|---|---|"]
    for k, v in q.items():
        acc = f"{v['accuracy']:.4f}" if "accuracy" in v else "-"
        lines.append(f"| {k} | {acc} | {v.get('max_abs', 0):.3g} | {v.get('mean_abs', 0):.3g} | "
                     f"{v.get('top1_agreement', 1.0):.4f} |")
    if "investigation" in res:
        lines += ["", "| variant | batch | median ms | p95 ms |", "|---|---|---|---|"]
        for k, v in res["investigation"].items():
            for b in sizes:
                lines.append(f"| {k} | {b} | {v[b]['median_ms']:.3f} | {v[b]['p95_ms']:.3f} |")
    return "\n".join(lines)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--iters", type=int, default=100)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--batch-sizes", type=lambda s: [int(v) for v in s.split(",")], default=[1, 64])
    ap.add_argument("--quick", action="store_true", help="smoke run: 5k training images, few iterations")
    ap.add_argument("--investigate", action="store_true")
    ap.add_argument("--out", type=Path, default=None, help="write the JSON result here")
    ap.add_argument("--data-dir", default=None, help="folder with the Fashion-MNIST IDX files (default: auto)")
    args = ap.parse_args(argv)
    if args.quick:
        args.iters, args.rounds = min(args.iters, 10), 1
    torch.set_num_threads(args.threads)
    load0 = os.getloadavg()
    result = {"threads": args.threads, "batch_sizes": args.batch_sizes, "cpu_count": os.cpu_count(),
              "torch": torch.__version__, "loadavg_start": load0, "models": {}}
    import onnxruntime

    result["onnxruntime"] = onnxruntime.__version__
    report = []
    with tempfile.TemporaryDirectory(prefix="infoard-latency-") as td:
        work = Path(td)
        m, b, tr, secs = train_fmnist_student(args.epochs, 5000 if args.quick else None, args.data_dir)
        rng = np.random.default_rng(0)
        calib, _ = images(b.train, np.sort(rng.choice(tr, 512, replace=False)))  # TRAINING images
        tx, ty = images(b.test, np.arange(2000 if args.quick else len(b.test)))
        res = bench_model("cnn-mnist-small", m, (1, 28, 28), calib, tx, ty, args, work)
        res["student"] = f"trained {args.epochs} epoch(s) on Fashion-MNIST ({len(tr)} images, {secs:.0f} s); " \
                         f"accuracy on the {len(tx)}-image test set"
        result["models"]["cnn-mnist-small"] = res
        report.append(table("cnn-mnist-small 1x28x28 (Fashion-MNIST, trained 1 epoch)", res, args.batch_sizes))
        torch.manual_seed(0)
        from infoard_deploy.models import build_model

        mb = build_model("mobilenetv2", 10, 3, 32, [0.5] * 3, [0.25] * 3).eval()
        rx = np.random.default_rng(1).random((512 if not args.quick else 64, 3, 32, 32), dtype=np.float32)
        res = bench_model("mobilenetv2", mb, (3, 32, 32), rx[:256], rx[256:] if not args.quick else rx, None, args, work)
        res["student"] = "randomly initialised; parity on uniform random images"
        result["models"]["mobilenetv2"] = res
        report.append(table("mobilenetv2 3x32x32 (random init)", res, args.batch_sizes))
    result["loadavg_end"] = os.getloadavg()
    for name, res in result["models"].items():
        t = res["timing"]
        res["targets"] = {str(bs): {"ort_fp32_vs_torch": t["ORT fp32"][bs]["median_ms"] / t["torch eager"][bs]["median_ms"],
                                    "ort_int8_vs_fp32": t["ORT int8"][bs]["median_ms"] / t["ORT fp32"][bs]["median_ms"]}
                          for bs in args.batch_sizes}
    print(f"load average start {load0}, end {result['loadavg_end']}; threads {args.threads}")
    print("\n".join(report))
    for name, res in result["models"].items():
        for bs, tg in res["targets"].items():
            print(f"{name} batch {bs}: ORT fp32 = {tg['ort_fp32_vs_torch']:.2f}x torch (target <= 0.6), "
                  f"ORT int8 = {tg['ort_int8_vs_fp32']:.2f}x ORT fp32 (target <= 0.8)")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2, default=float) + "\n")
    return result


if __name__ == "__main__":
    main()
