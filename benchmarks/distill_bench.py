"""Distillation benchmark: every method and the ASA / MIM ablations, same teacher, student, epochs, seeds.

For each config (``ard``, ``rslad``, ``iad``, ``adaad``, ``infoard``, and ``<base>+asa`` / ``<base>+mim`` ablations)
and each seed it trains the student through the public API (``infoard_deploy.distill``: the real trainer,
per-epoch validation on a split carved from the training data), then evaluates the **final-epoch** student on
the same held-out test examples with the same attacks for every method (``infoard_deploy.evaluate``: clean, PGD-20,
CW-inf-30, AutoAttack cascade APGD-CE / APGD-T / FAB-T / Square). Runs go to a process pool with one torch thread
per worker (tiny models run fastest that way on 2 cores). Writes ``<out>/results.json`` and ``<out>/results.md``
(mean +- std over seeds, epoch time relative to ARD).

    python benchmarks/distill_bench.py --teacher runs/bench/teacher-fmnist/teacher.pt --out runs/bench/distill
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from infoard_deploy.comparison import parse_config as _parse  # noqa: E402


def parse_config(cfg: str):
    """``rslad+asa`` / ``infoard-asa-mim`` as in ``infoard-deploy compare``; an ``@tag`` suffix names a variant
    whose options come from ``--set tag:key=value``."""
    return _parse(cfg.split("@")[0])


CONFIGS = ["ard", "rslad", "iad", "adaad", "infoard", "ard+asa", "ard+mim", "rslad+asa", "rslad+mim"]


def run_one(cfg: str, seed: int, a: dict) -> dict:
    import torch

    torch.set_num_threads(1)
    import infoard_deploy as ia
    from infoard_deploy.train import read_metrics

    base, asa, mim = parse_config(cfg)
    tag = cfg.partition("@")[2]
    out = Path(a["out"]) / f"{cfg}-s{seed}"
    t0 = time.perf_counter()
    res = ia.distill(teacher=a["teacher"], student=a["student"], method=base, asa=asa, mim=mim,
                     opts=a["variant_opts"].get(tag, {}), data=a["data"], eps=a["eps"], epochs=a["epochs"],
                     batch_size=a["batch_size"], lr=a["lr"], seed=seed, train_limit=a["train_limit"], val_fraction=0.1,
                     val_n=a["val_n"], out=str(out), force=True, device="cpu", threads=1, progress=False,
                     track_train_acc=False)
    train_s = time.perf_counter() - t0
    metrics = read_metrics(out)
    epoch_times = [float(m["epoch_time_s"]) for m in metrics if "epoch_time_s" in m]
    row = {"config": cfg, "seed": seed, "train_s": round(train_s, 1),
           "epoch_s": round(statistics.median(epoch_times), 2) if epoch_times else None,
           "val_clean_last": metrics[-1].get("val_clean"), "val_robust_last": metrics[-1].get("val_robust")}
    if a["val_only"]:  # screening variants: the validation split only, the test set stays untouched
        return row
    ev = evaluate_student(res.model_path, a)
    (out / "eval.json").write_text(json.dumps(ev.to_dict()))  # per-sample flags: paired_aa.py
    j = ev.to_dict()
    return {**row, "clean": j["clean_acc"], "pgd20": j["robust_acc"]["pgd20"], "cw": j["robust_acc"]["cw"],
            "aa": j.get("AA"), "eval_s": round(ev.result.seconds, 1)}


def evaluate_student(student_path, a: dict):
    """The benchmark's evaluation, identical for every run: the first ``test_n`` test images, seed 0, clean,
    PGD-20, CW-inf-30 and the AutoAttack cascade with ``square_queries`` Square queries."""
    import infoard_deploy as ia

    return ia.evaluate(student_path, data=a["data"], eps=a["eps"], attacks=["clean", "pgd20", "cw", "aa"],
                       n=a["test_n"], seed=0, batch_size=250, device="cpu", square_queries=a["square_queries"])


def summarise(rows: list, configs: list) -> str:
    def ms(vals):
        vals = [v for v in vals if v is not None]
        if not vals:
            return "-"
        return f"{statistics.mean(vals):.2f} ± {statistics.stdev(vals):.2f}" if len(vals) > 1 else f"{vals[0]:.2f}"

    ard_epoch = [r["epoch_s"] for r in rows if r["config"] == "ard" and r["epoch_s"]]
    ard_t = statistics.mean(ard_epoch) if ard_epoch else None
    lines = ["| config | seeds | clean | PGD-20 | CW-inf | AutoAttack | val clean | val robust (PGD) | epoch s "
             "| x ARD epoch |", "|---|---|---|---|---|---|---|---|---|---|"]
    for cfg in configs:
        rs = [r for r in rows if r["config"] == cfg]
        if not rs:
            continue
        et = [r["epoch_s"] for r in rs if r["epoch_s"]]
        ratio = f"{statistics.mean(et) / ard_t:.2f}" if et and ard_t else "-"
        col = {k: ms([r.get(k) for r in rs]) for k in ("clean", "pgd20", "cw", "aa")}
        val = {k: ms([100 * r[k] if r.get(k) is not None else None for r in rs])
               for k in ("val_clean_last", "val_robust_last")}
        lines.append(f"| {cfg} | {len(rs)} | {col['clean']} | {col['pgd20']} | {col['cw']} | {col['aa']} | "
                     f"{val['val_clean_last']} | {val['val_robust_last']} | "
                     + (f"{statistics.mean(et):.1f} | {ratio} |" if et else "- | - |"))
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--teacher", required=True)
    ap.add_argument("--student", default="cnn-mnist-small")
    ap.add_argument("--data", default="fashion-mnist")
    ap.add_argument("--eps", type=float, default=0.1)
    ap.add_argument("--epochs", type=int, default=5)
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--lr", type=float, default=None)
    ap.add_argument("--train-limit", type=int, default=10000)
    ap.add_argument("--val-n", type=int, default=200)
    ap.add_argument("--test-n", type=int, default=500)
    ap.add_argument("--square-queries", type=int, default=5000)
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--configs", default=",".join(CONFIGS))
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--out", default="runs/bench/distill")
    ap.add_argument("--set", action="append", default=[], metavar="TAG:KEY=VALUE",
                    help="method option for the configs named CONFIG@TAG (repeatable)")
    ap.add_argument("--val-only", action="store_true",
                    help="train and report validation accuracy only (for choosing variants without the test set)")
    ap.add_argument("--summarise", action="store_true", help="only rebuild results.md from results.json")
    a = vars(ap.parse_args())
    a["variant_opts"] = {}
    for item in a["set"]:
        tag, _, kv = item.partition(":")
        key, _, val = kv.partition("=")
        a["variant_opts"].setdefault(tag, {})[key.strip()] = val.strip()
    if a["summarise"]:
        data = json.loads((Path(a["out"]) / "results.json").read_text())
        table = summarise(data["rows"], data["args"]["configs"].split(","))
        (Path(a["out"]) / "results.md").write_text(f"Arguments: `{json.dumps(data['args'])}`\n\n{len(data['rows'])} runs "
                                                   f"completed.\n\n" + table)
        print(table)
        return
    configs = a["configs"].split(",")
    seeds = [int(s) for s in a["seeds"].split(",")]
    Path(a["out"]).mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    rows = []
    # seed-major, with the five methods before the ablations in every seed, so that a run cut short for time
    # still holds whole seeds of the main comparison (the summary says how many seeds each row has); within
    # each group the slowest first (AdaAD's attack runs the teacher every step), which keeps the two workers
    # evenly loaded at the end
    slow_first = {"adaad": 0, "iad": 1, "infoard": 2}
    order = sorted(configs, key=lambda c: (c != parse_config(c)[0], slow_first.get(c, 9)))
    jobs = [(c, s) for s in seeds for c in order]
    with ProcessPoolExecutor(max_workers=a["workers"]) as pool:
        futs = {pool.submit(run_one, c, s, a): (c, s) for c, s in jobs}
        for f in as_completed(futs):
            r = f.result()
            rows.append(r)
            print(json.dumps(r), flush=True)
            (Path(a["out"]) / "results.json").write_text(json.dumps({"args": a, "rows": rows}, indent=2))
    total = time.perf_counter() - t0
    table = summarise(rows, configs)
    (Path(a["out"]) / "results.json").write_text(json.dumps({"args": a, "rows": rows, "total_s": total}, indent=2))
    (Path(a["out"]) / "results.md").write_text(
        f"Command: `python benchmarks/distill_bench.py {' '.join(sys.argv[1:])}`\n\nTotal wall time {total / 60:.1f} min "
        f"({a['workers']} workers x 1 thread, {os.cpu_count()} cores).\n\n" + table)
    print(table)
    print(f"total {total / 60:.1f} min")


if __name__ == "__main__":
    main()
