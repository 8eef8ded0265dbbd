"""A minimal, self-contained training loop to compare the distillation methods quickly.

Used by the methods benchmark (Fashion-MNIST, eps 0.1, teacher ``cnn-mnist``, student ``cnn-mnist-small``)
independently of the full trainer (``infoard_deploy.train``), so method numbers do not depend on trainer
features (AMP, DDP, validation). It does what the official ARD-family scripts do: SGD with the method's
``schedule`` (lr, momentum, weight decay, milestones as fractions of the epochs), one ``method(...)``
call per batch, ``method.sync()`` after each step, ``method.end_epoch`` after each epoch, and reports
the **final-epoch** model on held-out test data: clean accuracy, PGD-20 (CE, uniform start, step eps/8)
and CW-inf-20 (margin loss, same budget), with the model in eval mode.

The teacher is trained here with PGD-AT (Madry et al. 2018: CE on PGD-10, uniform start, step eps/4).

Usage (see ``--help``)::

    python benchmarks/_quick_loop.py --epochs 10 --runs ard rslad "infoard" "rslad+asa" "rslad+mim" \
        --set "infoard:asa_eps_max=1.25"
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import numpy as np
import torch
import torch.nn.functional as F

from infoard_deploy.attacks.pgd import pgd, pgd_ce
from infoard_deploy.data import BatchLoader, load_data, split_indices
from infoard_deploy.methods import StepContext, build_method
from infoard_deploy.models import build_model
from infoard_deploy.utils import seed_everything


def _sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def make_model(arch: str, bundle, dev: torch.device):
    c, h, _ = bundle.input_shape
    return build_model(arch, bundle.num_classes, c, h, bundle.mean, bundle.std).to(dev)


def sgd(params, lr: float, momentum: float, wd: float, epochs: int, milestones, gamma: float):
    opt = torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=wd)
    ms = sorted({max(1, int(round(m * epochs))) for m in milestones})
    return opt, torch.optim.lr_scheduler.MultiStepLR(opt, milestones=ms, gamma=gamma)


def train_teacher(bundle, arch: str, train_idx: np.ndarray, epochs: int, eps: float, dev: torch.device, seed: int,
                  batch: int = 128, lr: float = 0.05, steps: int = 10) -> torch.nn.Module:
    """PGD-AT teacher (CE on PGD-K, step 2.5 eps / K, uniform start, train-mode BN as in Madry et al.)."""
    seed_everything(seed)
    model = make_model(arch, bundle, dev)
    opt, sched = sgd(model.parameters(), lr, 0.9, 5e-4, epochs, [0.5, 0.75], 0.1)
    loader = BatchLoader(bundle.train, train_idx, batch, shuffle=True, augment=bundle.augment, seed=seed)
    gen = torch.Generator(device=dev).manual_seed(seed)
    for ep in range(epochs):
        loader.set_epoch(ep)
        model.train()
        t0 = time.perf_counter()
        for x, y, _ in loader:
            x, y = x.to(dev), y.to(dev)
            x_adv = pgd_ce(model, x, y, eps, 2.5 * eps / steps, steps, init="uniform", generator=gen)
            loss = F.cross_entropy(model(x_adv), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        sched.step()
        _sync(dev)
        print(f"  teacher epoch {ep + 1}/{epochs} loss {loss.item():.3f} {time.perf_counter() - t0:.1f}s", flush=True)
    return model.eval()


def distill(name: str, teacher, bundle, arch: str, teacher_arch: str, train_idx: np.ndarray, epochs: int, eps: float,
            dev: torch.device, seed: int, asa: Optional[bool] = None, mim: Optional[bool] = None,
            opts: Optional[Dict[str, str]] = None, batch: int = 128, max_steps: Optional[int] = None):
    """Train a student with method ``name``; returns (student, per-epoch seconds, last epoch's mean logs)."""
    seed_everything(seed)
    student = make_model(arch, bundle, dev)
    method = build_method(name, asa=asa, mim=mim, **(opts or {}))
    method.setup(student, teacher, num_train=len(bundle.train), num_classes=bundle.num_classes, eps=eps,
                 student_arch=arch, teacher_arch=teacher_arch, input_shape=list(bundle.input_shape))
    method.to(dev)
    sch = method.schedule
    extra = [p for p in method.parameters() if p.requires_grad]
    opt, sched = sgd([{"params": list(student.parameters())}] + ([{"params": extra}] if extra else []),
                     sch.lr, sch.momentum, sch.weight_decay, epochs, sch.milestones, sch.gamma)
    loader = BatchLoader(bundle.train, train_idx, batch, shuffle=True, augment=bundle.augment, seed=seed)
    gen = torch.Generator(device=dev).manual_seed(seed + 1)
    times: List[float] = []
    last_logs: Dict[str, float] = {}
    for ep in range(epochs):
        loader.set_epoch(ep)
        sums: Dict[str, float] = {}
        n = 0
        _sync(dev)
        t0 = time.perf_counter()
        for step, (x, y, idx) in enumerate(loader):
            if max_steps is not None and step >= max_steps:
                break
            x, y, idx = x.to(dev, non_blocking=True), y.to(dev, non_blocking=True), idx.to(dev, non_blocking=True)
            student.train()
            ctx = StepContext(epoch=ep, epochs=epochs, eps=eps, num_classes=bundle.num_classes, step=step,
                              generator=gen)
            out = method(student, teacher, x, y, idx, ctx)
            opt.zero_grad(set_to_none=True)
            out.loss.backward()
            opt.step()
            method.sync()
            for k, v in out.logs.items():
                sums[k] = sums.get(k, 0.0) + v
            n += 1
        _sync(dev)
        times.append(time.perf_counter() - t0)
        sched.step()
        last_logs = {k: v / max(n, 1) for k, v in sums.items()}
        last_logs.update(method.end_epoch(ep))
    method.teardown()
    return student.eval(), times, last_logs


def _margin(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """CW margin, maximised by the attack: best wrong logit minus the true logit."""
    true = logits.gather(1, y.view(-1, 1)).squeeze(1)
    other = logits.masked_fill(F.one_hot(y, logits.shape[1]).bool(), -1e4).amax(1)
    return other - true


def evaluate(model, bundle, eps: float, dev: torch.device, n: Optional[int] = None, batch: int = 500,
             seed: int = 0) -> Dict[str, float]:
    """Clean, PGD-20 (CE) and CW-inf-20 accuracy (%) of ``model`` on the first ``n`` test images."""
    model.eval()
    idx = np.arange(len(bundle.test) if n is None else min(n, len(bundle.test)))
    gen = torch.Generator(device=dev).manual_seed(seed)
    hits = {"clean": 0, "pgd20": 0, "cw20": 0}
    for x, y, _ in BatchLoader(bundle.test, idx, batch):
        x, y = x.to(dev), y.to(dev)
        with torch.no_grad():
            hits["clean"] += int((model(x).argmax(1) == y).sum())
        x1 = pgd(lambda z: F.cross_entropy(model(z), y, reduction="none"), x, eps, eps / 8, 20, generator=gen)
        x2 = pgd(lambda z: _margin(model(z), y), x, eps, eps / 8, 20, generator=gen)
        with torch.no_grad():
            hits["pgd20"] += int((model(x1).argmax(1) == y).sum())
            hits["cw20"] += int((model(x2).argmax(1) == y).sum())
    return {k: 100.0 * v / len(idx) for k, v in hits.items()}


def parse_run(spec: str) -> Tuple[str, Optional[bool], Optional[bool]]:
    """``rslad``, ``rslad+asa``, ``rslad+asa+mim``, ``infoard-asa`` (InfoARD without ASA); ``@label``
    suffixes name variants whose options come from ``--set spec:key=value``."""
    parts = spec.split("@", 1)[0].replace("-", " -").replace("+", " +").split()
    name, asa, mim = parts[0], None, None
    for p in parts[1:]:
        on = p[0] == "+"
        if p[1:] == "asa":
            asa = on
        elif p[1:] == "mim":
            mim = on
        else:
            raise SystemExit(f"bad run spec '{spec}'")
    return name, asa, mim


def time_steps(specs, teacher, bundle, a, dev, train_idx) -> Dict[str, float]:
    """Median seconds per training step of each run spec, measured alone, after 5 warm-up steps."""
    out = {}
    for spec in specs:
        name, asa, mim = parse_run(spec)
        _, times, _ = distill(name, teacher, bundle, a.student_arch, a.teacher_arch, train_idx, 2, a.eps, dev, 0, asa,
                              mim, a.overrides.get(spec), max_steps=a.time_steps)
        out[spec] = times[1] / a.time_steps  # epoch 2: warm caches / cudnn autotuning excluded
        print(f"time {spec:20s} {1000 * out[spec]:.2f} ms/step", flush=True)
    return out


def run_parallel(a, argv, teacher_path: str) -> List[dict]:
    """Run every (spec, seed) as its own process (1 CPU thread each), at most ``a.parallel`` at a time.

    Tiny CNNs leave a big GPU idle (launch-bound), so independent runs side by side finish sooner.
    """
    import subprocess
    import sys
    import tempfile

    jobs = [(spec, seed) for spec in a.runs for seed in a.seeds]
    tmp = Path(tempfile.mkdtemp(prefix="quick_loop_"))
    base = [sys.executable, __file__, "--teacher", teacher_path, "--threads", "1", "--parallel", "0", "--child"]
    skip = {"--runs", "--seeds", "--out", "--teacher", "--parallel", "--threads", "--time", "--child"}
    keep, skipping = [], False
    for tok in argv:  # forward every option except the ones set per job (and their values)
        if tok.startswith("--"):
            skipping = tok.split("=", 1)[0] in skip
        if not skipping:
            keep.append(tok)
    running, rows = [], []
    for k, (spec, seed) in enumerate(jobs):
        while len(running) >= a.parallel:
            running = [r for r in running if r[0].poll() is None]
            time.sleep(0.5)
        out = tmp / f"{k}.json"
        cmd = base + keep + ["--runs", spec, "--seeds", str(seed), "--out", str(out)]
        running.append((subprocess.Popen(cmd), out))
    for proc, _ in running:
        proc.wait()
    for k in range(len(jobs)):
        f = tmp / f"{k}.json"
        if f.exists():
            rows += json.loads(f.read_text())["runs"]
        else:
            print(f"run {jobs[k]} failed", flush=True)
    return rows


def main(argv=None) -> None:
    import sys

    argv = list(sys.argv[1:] if argv is None else argv)
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data-dir", default=None)
    ap.add_argument("--dataset", default="fashion-mnist")
    ap.add_argument("--teacher-arch", default="cnn-mnist")
    ap.add_argument("--student-arch", default="cnn-mnist-small")
    ap.add_argument("--eps", type=float, default=0.1)
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--teacher-epochs", type=int, default=10)
    ap.add_argument("--teacher-steps", type=int, default=10, help="PGD steps of the teacher's adversarial training")
    ap.add_argument("--train-limit", type=int, default=None)
    ap.add_argument("--test-n", type=int, default=None)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    ap.add_argument("--max-steps", type=int, default=None, help="cap steps per epoch")
    ap.add_argument("--runs", nargs="*", default=["ard", "rslad", "iad", "adaad", "infoard"])
    ap.add_argument("--set", action="append", default=[], help="RUN:key=value[,key=value] option overrides")
    ap.add_argument("--teacher", default=None, help="load / save the teacher state dict here")
    ap.add_argument("--out", default=None, help="write results JSON here")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--parallel", type=int, default=0, help="run specs as N concurrent processes")
    ap.add_argument("--time", nargs="*", default=[], help="specs to time alone (ms/step) before training")
    ap.add_argument("--time-steps", type=int, default=50)
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    dev = torch.device("cuda" if (a.device == "auto" and torch.cuda.is_available()) else
                       ("cpu" if a.device == "auto" else a.device))
    if dev.type == "cuda":
        torch.backends.cudnn.benchmark = True
    bundle = load_data(a.dataset, root=a.data_dir)
    train_idx, _ = split_indices(len(bundle.train), 0.0, 0, a.train_limit)
    overrides: Dict[str, Dict[str, str]] = {}
    for s in a.set:
        run, _, kvs = s.partition(":")
        overrides[run] = dict(kv.split("=", 1) for kv in kvs.split(","))
    a.overrides = overrides

    teacher = make_model(a.teacher_arch, bundle, dev)
    if a.teacher and Path(a.teacher).exists():
        teacher.load_state_dict(torch.load(a.teacher, map_location=dev, weights_only=True))
        teacher.eval()
    else:
        t0 = time.perf_counter()
        teacher = train_teacher(bundle, a.teacher_arch, train_idx, a.teacher_epochs, a.eps, dev, seed=1234,
                                steps=a.teacher_steps)
        print(f"teacher trained in {time.perf_counter() - t0:.0f}s", flush=True)
        if a.teacher:
            torch.save(teacher.state_dict(), a.teacher)
    results = {"args": vars(a), "runs": []}
    if not a.child:
        results["teacher"] = evaluate(teacher, bundle, a.eps, dev, a.test_n)
        print("teacher", json.dumps(results["teacher"]), flush=True)
    if a.time:
        timed = time_steps(a.time, teacher, bundle, a, dev, train_idx)
        results["ms_per_step"] = {k: 1000 * v for k, v in timed.items()}
    if a.parallel > 0:
        if not a.teacher:
            raise SystemExit("--parallel needs --teacher PATH (the runs share the teacher through it)")
        results["runs"] = run_parallel(a, argv, a.teacher)
        for row in results["runs"]:
            print(f"{row['run']:28s} seed {row['seed']} clean {row['clean']:.2f} pgd20 {row['pgd20']:.2f} "
                  f"cw20 {row['cw20']:.2f} epoch {row['epoch_s']:.2f}s", flush=True)
    else:
        for spec in a.runs:
            name, asa, mim = parse_run(spec)
            for seed in a.seeds:
                student, times, logs = distill(name, teacher, bundle, a.student_arch, a.teacher_arch, train_idx,
                                               a.epochs, a.eps, dev, seed, asa, mim, overrides.get(spec),
                                               max_steps=a.max_steps)
                ev = evaluate(student, bundle, a.eps, dev, a.test_n)
                row = {"run": spec, "seed": seed, **ev, "epoch_s": float(np.median(times)),
                       "logs": {k: round(v, 4) for k, v in logs.items()}}
                results["runs"].append(row)
                print(f"{spec:28s} seed {seed} clean {ev['clean']:.2f} pgd20 {ev['pgd20']:.2f} cw20 {ev['cw20']:.2f} "
                      f"epoch {row['epoch_s']:.2f}s  {json.dumps(row['logs'])}", flush=True)
    if a.out:
        Path(a.out).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
