"""GPU training throughput: WRN-34-10 teacher -> MobileNetV2 student at CIFAR size (3x32x32, 10 classes),
through the real trainer (``infoard_deploy.train.train``), plain fp32 versus AMP (bf16 / fp16) + channels_last,
for ARD and InfoARD. Throughput does not depend on image content, so the data are random uint8 images of CIFAR
shape (no download); weights are randomly initialised. Reports images/s of the second epoch (the first includes
cuDNN autotuning), the final loss (finite under AMP) and peak GPU memory.

    python benchmarks/gpu_throughput.py --out results.json [--n 5120] [--batch-size 128]
On a CPU-only machine it runs a tiny smoke version (to check the script itself).
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
for extra in ("gpu_deps",):  # pure-python deps carried to a bare GPU machine (rich, pygments, ...)
    p = Path(__file__).resolve().parents[1] / extra
    if p.exists():
        sys.path.insert(0, str(p))

import importlib.util  # noqa: E402
import types  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402

if importlib.util.find_spec("scipy") is None:
    # A bare GPU box may lack scipy, which torchattacks imports at package level. Training never calls
    # torchattacks (evaluation does), so a stand-in for its base class is enough for this benchmark only.
    _ta = types.ModuleType("torchattacks")
    _ta_attack = types.ModuleType("torchattacks.attack")
    _ta_attack.Attack = type("Attack", (), {})
    _ta.attack = _ta_attack
    sys.modules.update({"torchattacks": _ta, "torchattacks.attack": _ta_attack})

from infoard_deploy.data.base import ArraySet, DataBundle  # noqa: E402
from infoard_deploy.methods import build_method  # noqa: E402
from infoard_deploy.models import build_model  # noqa: E402
from infoard_deploy.train import TrainConfig, read_metrics, train  # noqa: E402

CIFAR_MEAN, CIFAR_STD = [0.4914, 0.4822, 0.4465], [0.2471, 0.2435, 0.2616]


def bundle(n: int, size: int) -> DataBundle:
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, size=(n, size, size, 3), dtype=np.uint8)
    y = rng.integers(0, 10, size=n).astype(np.int64)
    s = ArraySet(x, y, "synthetic-cifar-shape")
    return DataBundle("synthetic", s, s, [str(i) for i in range(10)], (3, size, size), CIFAR_MEAN, CIFAR_STD,
                      augment="crop_flip:4", default_eps=8 / 255)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="gpu_throughput.json")
    ap.add_argument("--n", type=int, default=5120)
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--teacher", default="wrn-34-10")
    ap.add_argument("--student", default="mobilenetv2")
    ap.add_argument("--methods", default="ard,infoard")
    ap.add_argument("--modes", default="fp32,bf16-cl,fp16-cl")
    args = ap.parse_args()
    cuda = torch.cuda.is_available()
    if not cuda:  # smoke mode: tiny models and data so the script can be checked on a CPU
        args.n, args.batch_size, args.teacher, args.student, size = 64, 32, "wrn-16-4", "cnn-small", 8
        args.modes = "fp32"
    else:
        size = 32
        torch.backends.cudnn.benchmark = True
    data = bundle(args.n, size)
    dev = "cuda" if cuda else "cpu"
    rows = []
    for method_name in args.methods.split(","):
        for mode in args.modes.split(","):
            amp = {"fp32": "off", "bf16-cl": "bf16", "fp16-cl": "fp16"}[mode]
            torch.manual_seed(0)
            in_ch = 3
            teacher = build_model(args.teacher, 10, in_ch, size, CIFAR_MEAN, CIFAR_STD).to(dev).eval()
            student = build_model(args.student, 10, in_ch, size, CIFAR_MEAN, CIFAR_STD)
            method = build_method(method_name)
            if cuda:
                torch.cuda.reset_peak_memory_stats()
            with tempfile.TemporaryDirectory() as tmp:
                cfg = TrainConfig(epochs=2, batch_size=args.batch_size, val_fraction=0.02, val_n=64,
                                  amp=amp, channels_last=mode.endswith("-cl"), out_dir=tmp, device=dev, seed=0,
                                  track_train_acc=False, progress=False)
                t0 = time.perf_counter()
                train(student, method, data, cfg, teacher=teacher,
                      card_base={"architecture": args.student}, teacher_arch=args.teacher)
                wall = time.perf_counter() - t0
                metrics = read_metrics(Path(tmp))
            last = metrics[-1]
            row = {"method": method_name, "mode": mode, "images_per_s": last.get("images_per_s"),
                   "loss": last.get("loss"), "loss_finite": bool(math.isfinite(float(last.get("loss", float("nan"))))),
                   "epoch_time_s": last.get("epoch_time_s"), "wall_s": round(wall, 1),
                   "peak_mem_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2) if cuda else None}
            rows.append(row)
            print(json.dumps(row), flush=True)
    info = {"device": torch.cuda.get_device_name(0) if cuda else "cpu", "torch": torch.__version__,
            "teacher": args.teacher, "student": args.student, "n": args.n, "batch_size": args.batch_size,
            "input": [3, size, size], "rows": rows}
    Path(args.out).write_text(json.dumps(info, indent=2))


if __name__ == "__main__":
    main()
