"""Catch rate and false-alarm rate of ``infoard-deploy verify`` at its default gates.

Builds a demo-like student (cnn-small, PGD-AT on the embedded digits data, eps 0.1), exports it the ways a
user may legitimately ship it (fp32, opset 17, --slim, fp16, INT8, INT8 recalibrated, INT8 uint8-asymmetric)
and builds the fault catalogue of :mod:`infoard_deploy.verification.faults` around it (12 faults). Then, for each
``n`` and verify seed of the plan, verifies everything against the reference with the *default* gates and
attacks (``pgd20,cw,apgd-ce,apgd-t`` transfer, own-graph PGD, Square ``--square-queries``):

* one run with the faithful exports and the faults that share the main reference;
* one run for ``fp16_overflow`` against its own reference (the rescaled checkpoint it was exported from);
* ``cardless`` is verified once: it must be refused before any attack (exit 2).

A fault counts as caught in a run when the run did not pass it (a failed gate, or a refusal); a faithful
export raises a false alarm when any of its gates fails. Prints a Markdown table (and ``--json``).

    OMP_NUM_THREADS=1 python benchmarks/verify_faults.py --plan 150x5,300x2 --square-queries 500
"""
from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def parse_plan(text: str):
    out = []
    for part in text.split(","):
        n, k = part.lower().split("x")
        out += [(int(n), s) for s in range(int(k))]
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--plan", default="150x5,300x2", help="NxK: n samples with verify seeds 0..K-1, comma-separated")
    ap.add_argument("--square-queries", type=int, default=500)
    ap.add_argument("--epochs", type=int, default=8, help="PGD-AT epochs of the reference (and retrained faults)")
    ap.add_argument("--train-seed", type=int, default=0)
    ap.add_argument("--out", default=None, help="work folder (default: a temporary one)")
    ap.add_argument("--json", default=None, help="write the raw results here")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)

    from infoard_deploy.data import load_data
    from infoard_deploy.errors import UserError
    from infoard_deploy.verification import run_verification
    from infoard_deploy.verification.faults import (FAITHFUL, FAULTS, build_faults, faithful_exports, save_reference,
                                              train_cnn_small)

    work = Path(args.out) if args.out else Path(tempfile.mkdtemp(prefix="verify-faults-"))
    t0 = time.perf_counter()
    bundle = load_data("digits")
    ref = save_reference(train_cnn_small(bundle, args.epochs, 0.1, args.train_seed), work / "student.pt", bundle, 0.1)
    faithful = faithful_exports(ref, work / "faithful", FAITHFUL)
    faults = {f.name: f for f in build_faults(work / "faults", ref, faithful, bundle, eps=0.1, seed=args.train_seed,
                                              epochs=args.epochs, names=FAULTS)}
    build_s = time.perf_counter() - t0
    print(f"built reference, {len(faithful)} faithful exports, {len(faults)} faults in {build_s:.0f} s", flush=True)

    label_of = {str(p): k for k, p in faithful.items()}
    label_of.update({str(f.path): k for k, f in faults.items()})
    main_arts = [str(p) for p in faithful.values()] + [str(f.path) for f in faults.values()
                                                       if f.reference == ref and not f.refused_expected]
    runs = []  # one row per (n, seed, artifact)
    timings = []
    for n, seed in parse_plan(args.plan):
        groups = [(ref, main_arts)] + [(f.reference, [str(f.path)]) for f in faults.values()
                                       if f.reference != ref and not f.refused_expected]
        for reference, arts in groups:
            t = time.perf_counter()
            rep = run_verification(reference, arts, "digits", n=n, square_queries=args.square_queries, seed=seed,
                                   out=work / f"rep_n{n}_s{seed}_{Path(reference).stem}", force=True,
                                   raise_on_gate=False, threads=1)
            timings.append({"n": n, "seed": seed, "reference": Path(reference).name, "artifacts": len(arts),
                            "seconds": time.perf_counter() - t})
            for a in rep["artifacts"]:
                failed = [g["gate"] for g in rep["gates"] if g["artifact"] == a["name"] and not g["passed"]]
                par = a.get("parity", {})
                worst_adv = min((s["top1_agreement"] for k, s in par.items() if k != "clean"), default=100.0)
                ref_m = rep["reference"]
                runs.append({"n": n, "seed": seed, "label": label_of[a["path"]], "passed": a["passed"],
                             "failed": failed, "cause": a.get("cause", ""),
                             "robust_change": a["robust_acc"] - ref_m["robust_acc"],
                             "clean_change": a["clean_acc"] - ref_m["clean_acc"],
                             "r2b": a["flips"]["robust_to_broken"]["rate"],
                             "b2r": a["flips"]["broken_to_robust"]["rate"],
                             "worst_adv_agree": worst_adv, "arithmetic": a.get("arithmetic", "")})
            print(f"n={n} seed={seed} ref={Path(reference).name}: {len(arts)} artifacts in "
                  f"{timings[-1]['seconds']:.0f} s", flush=True)
    for name, f in faults.items():
        if f.refused_expected:
            try:
                run_verification(f.reference, [str(f.path)], "digits", n=20, attacks=(), square_queries=0,
                                 eps_sweep=(), out=work / f"rep_{name}", force=True, raise_on_gate=False, threads=1)
                runs.append({"n": 0, "seed": 0, "label": name, "passed": True, "failed": [], "cause": "not refused"})
            except UserError as e:
                runs.append({"n": 0, "seed": 0, "label": name, "passed": False, "failed": ["refused (exit 2)"],
                             "cause": str(e)})
    total_s = time.perf_counter() - t0
    print(render(runs, faithful, faults, args, timings, build_s, total_s))
    if args.json:
        Path(args.json).write_text(json.dumps({"runs": runs, "timings": timings, "build_s": build_s,
                                               "total_s": total_s}, indent=1))
    return 0


def render(runs, faithful, faults, args, timings, build_s, total_s) -> str:
    by = defaultdict(list)
    for r in runs:
        by[r["label"]].append(r)
    lines = [f"Command: `OMP_NUM_THREADS=1 python benchmarks/verify_faults.py --plan {args.plan} "
             f"--square-queries {args.square_queries}`", "",
             f"Machine: {platform.machine()} CPU, {torch.get_num_threads()} torch thread, no GPU; "
             f"torch {torch.__version__}; build {build_s:.0f} s, total {total_s / 60:.1f} min", "",
             "### Faults (caught = the run did not pass the artifact)", "",
             "| fault | caught / runs | gates that failed (union over runs) | likely cause (first run) |",
             "|---|---|---|---|"]
    caught_all = total = 0
    for name in faults:
        rs = by[name]
        caught = sum(not r["passed"] for r in rs)
        caught_all += caught
        total += len(rs)
        gates = sorted({g for r in rs for g in r["failed"]})
        cause = (rs[0]["cause"] if rs else "").replace("|", "/")[:160]
        lines.append(f"| {name} | {caught} / {len(rs)} | {', '.join(gates)} | {cause} |")
    lines += ["", f"Catch rate: {caught_all} / {total} fault runs.", "",
              "### Faithful exports (false alarm = any gate failed)", "",
              "| export | false alarms / runs | max robust change (pts) | max clean change (pts) "
              "| max flips r->b / b->r (%) | min worst adversarial agreement (%) | arithmetic |", "|---|---|---|---|---|---|---|"]
    fa = tot = 0
    for label in faithful:
        rs = by[label]
        alarms = sum(not r["passed"] for r in rs)
        fa += alarms
        tot += len(rs)
        lines.append(f"| {label} | {alarms} / {len(rs)} | {max(abs(r['robust_change']) for r in rs):.2f} | "
                     f"{max(abs(r['clean_change']) for r in rs):.2f} | {max(r['r2b'] for r in rs):.2f} / "
                     f"{max(r['b2r'] for r in rs):.2f} | {min(r['worst_adv_agree'] for r in rs):.2f} | "
                     f"{rs[0]['arithmetic'].replace('|', '/')[:70]} |")
    lines += ["", f"False-alarm rate: {fa} / {tot} faithful runs.", "", "Run times:", ""]
    lines += [f"- n={t['n']} seed={t['seed']} reference {t['reference']} ({t['artifacts']} artifacts): "
              f"{t['seconds']:.0f} s" for t in timings]
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
