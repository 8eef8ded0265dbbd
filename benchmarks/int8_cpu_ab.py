"""A/B of the INT8 graph forms on ONNX Runtime CPU: what each exact rewrite of :mod:`infoard_deploy.runtimes.ort_int8`
buys, against fp32 and against the uint8-asymmetric (not TensorRT-compatible) quantisation.

Forms, all from the product's own export path (``export_onnx``, ``quantize_int8``, minmax, per-channel weights):
``fp32``; ``stored`` = the symmetric int8 file as ONNX Runtime alone runs it; ``shift`` = activations as
uint8 + 128; ``shift+relu`` = plus the ReLU lookup tables (what ``OrtRuntime`` runs); ``u8asym`` = the
``ort-cpu-int8-u8`` profile's graph. Random weights (timing does not depend on them). Per call latency on a
host float32 batch, median of ``--rounds`` interleaved rounds (each the median of its calls), so load
drifts hit every form alike. Logits of ``shift`` and ``shift+relu`` are checked bit-identical to ``stored``.

    python benchmarks/int8_cpu_ab.py --out benchmarks/results/int8-cpu-ab.json
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

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

MODELS = {"cnn-mnist-small": (1, 28, 28), "mobilenetv2": (3, 32, 32)}


def build_forms(name, shape, work: Path):
    import onnx
    import torch

    from infoard_deploy.exporting.onnx import export_onnx
    from infoard_deploy.exporting.quantize import quantize_int8
    from infoard_deploy.models import build_model
    from infoard_deploy.runtimes.ort_int8 import relu_islands_to_lookup, shift_int8_activations_to_uint8

    torch.manual_seed(0)
    model = build_model(name, 10, shape[0], shape[1], [0.5] * shape[0], [0.25] * shape[0]).eval()
    fp32, int8, u8 = work / f"{name}.onnx", work / f"{name}.int8.onnx", work / f"{name}.u8.onnx"
    export_onnx(model, fp32, shape)
    calib = np.random.default_rng(0).random((128, *shape), dtype=np.float32)
    quantize_int8(fp32, int8, calib, "minmax")
    quantize_int8(fp32, u8, calib, "minmax", activations="uint8-asymmetric")
    shifted, _ = shift_int8_activations_to_uint8(onnx.load(str(int8)))
    relu, _ = relu_islands_to_lookup(onnx.load_from_string(shifted.SerializeToString()))
    return {"fp32": str(fp32), "stored": str(int8), "shift": shifted.SerializeToString(),
            "shift+relu": relu.SerializeToString(), "u8asym": str(u8)}


def session(src, threads):
    import onnxruntime as ort

    o = ort.SessionOptions()
    o.intra_op_num_threads = threads
    o.log_severity_level = 3
    o.add_session_config_entry("session.intra_op.allow_spinning", "0")  # as OrtRuntime does
    return ort.InferenceSession(src, o, providers=["CPUExecutionProvider"])


def time_forms(forms, shape, threads, batches, rounds):
    sess = {k: session(v, threads) for k, v in forms.items()}
    x0 = np.random.default_rng(1).random((64, *shape), dtype=np.float32)
    outs = {k: s.run(None, {s.get_inputs()[0].name: x0})[0] for k, s in sess.items()}
    exact = {k: bool(np.array_equal(outs[k], outs["stored"])) for k in ("shift", "shift+relu")}
    res = {}
    for b in batches:
        x = np.random.default_rng(2).random((b, *shape), dtype=np.float32)
        acc = {k: [] for k in sess}
        calls = 100 if b == 1 else 20
        for _ in range(rounds):
            for k, s in sess.items():
                name = s.get_inputs()[0].name
                for _ in range(3):
                    s.run(None, {name: x})
                ts = []
                for _ in range(calls):
                    t = time.perf_counter()
                    s.run(None, {name: x})
                    ts.append(time.perf_counter() - t)
                acc[k].append(float(np.median(ts)) * 1e3)
        res[b] = {k: float(np.median(v)) for k, v in acc.items()}
    return res, exact


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", default="2,1")
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args(argv)
    import onnxruntime

    result = {"onnxruntime": onnxruntime.__version__, "cpu_count": os.cpu_count(), "loadavg_start": os.getloadavg(),
              "rounds": args.rounds, "rows": []}
    lines = ["| model | threads | batch | fp32 ms | stored | shift | shift+relu (OrtRuntime) | u8asym (not TRT) |",
             "|---|---|---|---|---|---|---|---|"]
    with tempfile.TemporaryDirectory(prefix="infoard-int8ab-") as td:
        for name, shape in MODELS.items():
            forms = build_forms(name, shape, Path(td))
            for th in (int(t) for t in args.threads.split(",")):
                res, exact = time_forms(forms, shape, th, (1, 64), args.rounds)
                for b, r in res.items():
                    row = {"model": name, "threads": th, "batch": b, "ms": r, "exact_vs_stored": exact,
                           "vs_fp32": {k: v / r["fp32"] for k, v in r.items()}}
                    result["rows"].append(row)
                    cell = {k: f"{v:.3f} ({v / r['fp32']:.2f}x)" for k, v in r.items()}
                    lines.append(f"| {name} | {th} | {b} | {r['fp32']:.3f} | {cell['stored']} | {cell['shift']} | "
                                 f"**{cell['shift+relu']}** | {cell['u8asym']} |")
                    print(lines[-1], flush=True)
    result["loadavg_end"] = os.getloadavg()
    table = "\n".join(lines)
    print(table)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2) + "\n")
        args.out.with_suffix(".md").write_text(
            f"`python benchmarks/int8_cpu_ab.py --out {args.out}` (onnxruntime {result['onnxruntime']}, "
            f"{result['cpu_count']} cores, load average {result['loadavg_start'][0]:.2f} at start)\n\n{table}\n")


if __name__ == "__main__":
    main()
