"""Paired comparison of two distillation configs on the same test images: per-sample AutoAttack differences.

The benchmark's table gives each config's mean over seeds; because every run is evaluated on the *same* test
images, the difference between two configs is better measured per image. For each seed this script reads (or
makes) ``<runs>/<cfg>-s<seed>/eval.json`` with per-sample robustness flags (``distill_bench.py`` writes it; for
older runs it re-evaluates the saved final-epoch ``student.pt`` with the benchmark's own evaluation and checks
that the accuracy matches the recorded row), then reports, for ``--a`` minus ``--b``:

* the mean difference in AutoAttack accuracy over all (seed, image) pairs, in points;
* a 95 % bootstrap interval that resamples test images within each seed (paired, so image difficulty cancels);
* the discordant counts (robust under A only / under B only) per seed.

    python benchmarks/paired_aa.py --runs runs/bench/distill3 --a infoard --b iad --seeds 0,1,2
"""
from __future__ import annotations

import argparse
import json
import sys
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def _eval_saved(run_dir: str, args: dict) -> str:
    """Evaluate ``run_dir/student.pt`` exactly as distill_bench.py does and write ``run_dir/eval.json``."""
    import torch

    torch.set_num_threads(1)
    from distill_bench import evaluate_student

    res = evaluate_student(Path(run_dir) / "student.pt", args)
    (Path(run_dir) / "eval.json").write_text(json.dumps(res.to_dict()))
    return run_dir


def flags(run_dir: Path, key: str = "aa") -> np.ndarray:
    j = json.loads((run_dir / "eval.json").read_text())
    return np.array([c == "1" for c in j["per_sample"]["robust"][key]], dtype=bool)


def paired(a: list, b: list, reps: int = 10000, seed: int = 0) -> dict:
    """``a``, ``b``: per-seed boolean arrays over the same images; see :func:`infoard_deploy.stats.paired_difference`."""
    from infoard_deploy.stats import paired_difference

    return paired_difference(a, b, reps=reps, seed=seed)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", required=True, help="a distill_bench.py --out folder")
    ap.add_argument("--a", required=True, help="config, e.g. infoard")
    ap.add_argument("--b", required=True, help="config, e.g. iad")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--attack", default="aa", help="per-sample key: aa, pgd20, cw, clean")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--json", dest="json_out", help="also write the result here")
    args = ap.parse_args()
    runs = Path(args.runs)
    bench = json.loads((runs / "results.json").read_text())
    ba, rows = bench["args"], bench["rows"]
    seeds = [int(s) for s in args.seeds.split(",")]
    dirs = {(c, s): runs / f"{c}-s{s}" for c in (args.a, args.b) for s in seeds}
    missing = [str(d) for d in dirs.values() if not (d / "eval.json").exists()]
    if missing:
        with ProcessPoolExecutor(max_workers=args.workers) as pool:
            list(pool.map(_eval_saved, missing, [ba] * len(missing)))
    for (c, s), d in dirs.items():  # the re-evaluation must reproduce the recorded benchmark row
        row = next((r for r in rows if r["config"] == c and r["seed"] == s), None)
        got = 100.0 * flags(d, "aa").mean()
        if row is not None and row.get("aa") is not None and abs(got - row["aa"]) > 1e-6:
            raise SystemExit(f"{d}: AutoAttack {got:.2f} differs from the recorded {row['aa']:.2f}")
    res = paired([flags(dirs[(args.a, s)], args.attack) for s in seeds],
                 [flags(dirs[(args.b, s)], args.attack) for s in seeds])
    res = {"runs": str(runs), "a": args.a, "b": args.b, "seeds": seeds, "attack": args.attack,
           "n_per_seed": int(ba["test_n"]), **res}
    print(json.dumps(res))
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(res, indent=2) + "\n")


if __name__ == "__main__":
    main()
