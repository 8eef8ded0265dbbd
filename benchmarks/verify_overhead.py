"""Overhead of running a query attack through the runtime wrapper vs raw ``session.run``.

``infoard-deploy verify`` attacks an ONNX Runtime session with Square through
:class:`infoard_deploy.verification.RuntimeModule` (an ``nn.Module`` whose ``forward`` calls
``runtime.predict``: torch -> numpy, chunking, numpy -> torch). This script measures what that costs:

1. run Square (suite settings, seeded) through the wrapper once and record every batch it queried;
2. replay exactly those batches (a) with raw ``session.run`` on numpy arrays prepared beforehand and
   (b) through the wrapper on torch tensors, call by call in alternating order, ``--repeats`` times,
   and sum each call's minimum (the least-disturbed measurement on a shared machine);
3. overhead = (wrapper - raw) / raw. Target: <= 10 %. Also printed: Square's whole wall time and the
   share of it spent inside ``session.run`` (the rest is the attack's own torch bookkeeping, which is
   the same for any model and not wrapper overhead).

Models are untrained (timing only), exported with :func:`infoard_deploy.exporting.onnx.export_onnx`.

Usage::

    python benchmarks/verify_overhead.py                      # cnn-small and cnn-mnist-small, table
    python benchmarks/verify_overhead.py --configs "mobilenetv2 3x32x32"
    python benchmarks/verify_overhead.py --n 128 --queries 200 --repeats 7 --json
"""
from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path
from typing import Dict, List

import numpy as np
import torch

from infoard_deploy.attacks.suite import make_attack
from infoard_deploy.exporting.onnx import export_onnx
from infoard_deploy.models import build_model
from infoard_deploy.runtimes.onnxrt import OrtRuntime
from infoard_deploy.verification import RuntimeModule

CONFIGS = {  # name -> (arch, input shape (C, H, W))
    "cnn-small 1x8x8": ("cnn-small", (1, 8, 8)),
    "cnn-mnist-small 1x28x28": ("cnn-mnist-small", (1, 28, 28)),
    "mobilenetv2 3x32x32": ("mobilenetv2", (3, 32, 32)),
}


class Recorder(RuntimeModule):
    """The wrapper, also keeping a copy of every batch it was asked to predict."""

    def __init__(self, rt):
        super().__init__(rt)
        self.seen: List[torch.Tensor] = []

    def forward(self, x):
        self.seen.append(x.detach().clone())
        return super().forward(x)


def bench(name: str, arch: str, shape, n: int, queries: int, repeats: int, threads: int, tmp: Path) -> Dict:
    torch.manual_seed(0)
    model = build_model(arch, 10, shape[0], shape[1], [0.5] * shape[0], [0.25] * shape[0]).eval()
    path = export_onnx(model, tmp / f"{arch}.onnx", shape)
    x = torch.rand(n, *shape, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        y = model(x).argmax(1)  # attack the model's own predictions: every sample starts "robust"
    with OrtRuntime(str(path), threads=threads, max_batch=max(n, 256)) as rt:
        rec = Recorder(rt)
        sq = make_attack("square", rec, 8 / 255, num_classes=10, seed=0, n_queries=queries)
        t0 = time.perf_counter()
        sq(x, y)
        square_s = time.perf_counter() - t0
        batches = rec.seen
        arrays = [b.numpy() for b in batches]  # prepared beforehand: raw timing excludes conversions
        sess, iname, oname = rt.session, rt._in, rt._out
        wrap = RuntimeModule(rt)
        for a in arrays[:5]:  # warm-up
            sess.run([oname], {iname: a})
        # Per call, alternating which goes first, keeping each call's minimum over the repeats: on a
        # shared machine load comes and goes, and a whole-loop minimum still mixes in other jobs' noise.
        raw_t = np.full((repeats, len(arrays)), np.inf)
        wrap_t = np.full((repeats, len(arrays)), np.inf)
        clock = time.perf_counter_ns
        with torch.no_grad():
            for r in range(repeats):
                for i, (a, b) in enumerate(zip(arrays, batches)):
                    for first in ((0, 1) if (r + i) % 2 == 0 else (1, 0)):
                        t0 = clock()
                        if first == 0:
                            sess.run([oname], {iname: a})
                            raw_t[r, i] = clock() - t0
                        else:
                            wrap(b)
                            wrap_t[r, i] = clock() - t0
    raw, wrapped = raw_t.min(0).sum() / 1e9, wrap_t.min(0).sum() / 1e9
    return {"config": name, "calls": len(batches), "mean_batch": float(np.mean([len(b) for b in batches])),
            "raw_ms": 1e3 * raw, "wrapper_ms": 1e3 * wrapped, "overhead_pct": 100.0 * (wrapped - raw) / raw,
            "per_call_us": 1e6 * (wrapped - raw) / max(len(batches), 1), "square_s": square_s,
            "session_share_pct": 100.0 * raw / square_s}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=64, help="samples attacked")
    ap.add_argument("--queries", type=int, default=100, help="Square query budget")
    ap.add_argument("--repeats", type=int, default=5, help="replays of the recorded queries (minimum kept)")
    ap.add_argument("--threads", type=int, default=1, help="torch and ONNX Runtime CPU threads")
    ap.add_argument("--configs", nargs="*", default=list(CONFIGS)[:2],
                    help=f"subset of {list(CONFIGS)} (default: the first two; mobilenetv2 is slow on 2 cores)")
    ap.add_argument("--json", action="store_true", help="print JSON instead of a table")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    head = f"{'config':<26}{'calls':>6}{'batch':>7}{'raw ms':>10}{'wrap ms':>10}{'overhead':>10}{'us/call':>9}" \
           f"{'Square s':>10}{'run share':>10}"
    if not args.json:
        print(head)
        print("-" * len(head), flush=True)
    rows = []
    with tempfile.TemporaryDirectory() as td:
        for name in args.configs:
            arch, shape = CONFIGS[name]
            r = bench(name, arch, shape, args.n, args.queries, args.repeats, args.threads, Path(td))
            rows.append(r)
            if not args.json:  # one row at a time: a slow config still leaves the earlier rows
                print(f"{r['config']:<26}{r['calls']:>6}{r['mean_batch']:>7.1f}{r['raw_ms']:>10.1f}"
                      f"{r['wrapper_ms']:>10.1f}{r['overhead_pct']:>9.1f}%{r['per_call_us']:>9.1f}"
                      f"{r['square_s']:>10.2f}{r['session_share_pct']:>9.1f}%", flush=True)
    if args.json:
        print(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
