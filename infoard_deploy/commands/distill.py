"""``infoard-deploy distill``: distil a robust compact student from a robust teacher.

Example: ``infoard-deploy distill --teacher wrn34.pt --student mobilenetv2`` (CIFAR-10, InfoARD, eps and
epochs from the dataset / method). The teacher is loaded safely (weights-only / safetensors /
TorchScript / ONNX) with its model card, or ``--teacher-arch`` (+ ``--teacher-mean/--teacher-std``; a
card-less state dict defaults to mean 0 / std 1, the TRADES / RobustBench convention of raw [0,1] inputs).
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Dict, List, Optional

import typer

from ._common import console, floats
from ._training import (AMP, CHANNELS_LAST, DATA_DIR, DOWNLOAD, FORCE, JSON_OUT, RESUME, SAVE_EVERY, SEED,
                        TRAIN_LIMIT, VAL_FRACTION, VAL_N, is_main_process, load_bundle, make_config, parse_opts, report)


def load_teacher(path: str, bundle, arch: Optional[str], mean: Optional[List[float]], std: Optional[List[float]]):
    """Load the teacher and check it fits the data: class count, input shape, and a forward pass."""
    import torch

    from ..card import load_card
    from ..checkpoint import load_model
    from ..errors import UserError
    from ..utils import require_file

    p = require_file(path, "teacher")
    card = load_card(p, required=False)
    c, h, w = bundle.input_shape
    if (mean is None) != (std is None):
        raise UserError("give --teacher-mean and --teacher-std together")
    if mean is not None and len(mean) != c:
        raise UserError(f"--teacher-mean has {len(mean)} values but {bundle.name} images have {c} channels")
    if card is None and mean is None:
        mean, std = [0.0] * c, [1.0] * c  # raw [0,1] inputs (TRADES / RobustBench checkpoints)
    if card is None and arch is None and p.suffix.lower() in (".pt", ".pth", ".safetensors", ".bin", ".ckpt"):
        arch = infer_architecture(p)  # TorchScript / ONNX carry their own graph: None is fine for them
    try:
        model, tcard = load_model(p, arch=arch, num_classes=None if card else bundle.num_classes,
                                  input_shape=None if card else [c, h, w], mean=mean, std=std)
    except UserError as e:
        if "pass --arch" in str(e):
            raise UserError(f"teacher {p.name} has no model card and its weights match no single registered "
                            f"architecture; pass --teacher-arch (e.g. wrn-34-10 for TRADES weights)") from None
        raise
    if tcard.num_classes != bundle.num_classes:
        raise UserError(f"teacher {p.name} has {tcard.num_classes} classes but {bundle.name} has {bundle.num_classes}")
    if list(tcard.input_shape) != [c, h, w]:
        raise UserError(f"teacher {p.name} takes {list(tcard.input_shape)} inputs but {bundle.name} images are "
                        f"{[c, h, w]} (C, H, W)")
    from ..data import to_tensor

    x = to_tensor(bundle.train.get(list(range(min(2, len(bundle.train)))))[0])
    try:
        with torch.no_grad():
            logits = model(x)
    except Exception as e:  # a graph model that rejects the data's shape
        raise UserError(f"teacher {p.name} cannot run on {bundle.name} images {tuple(x.shape[1:])}: "
                        f"{str(e).splitlines()[0] if str(e) else type(e).__name__}") from None
    if logits.dim() != 2 or logits.shape[1] != bundle.num_classes:
        raise UserError(f"teacher {p.name} returns {tuple(logits.shape)}, expected (N, {bundle.num_classes})")
    return model, tcard


def infer_architecture(path: Path) -> Optional[str]:
    """The registered architecture whose state-dict keys and shapes match the file's exactly, if unique.

    Lets a card-less checkpoint such as TRADES' ``model_cifar_wrn.pt`` load without ``--teacher-arch``.
    Candidates are built on the meta device (no memory, no init cost); a TorchScript archive or a
    file without a plain state dict gives None.
    """
    import torch

    from ..checkpoint import _is_torchscript, _load_raw, extract_state_dict
    from ..errors import UserError
    from ..models import MODELS

    if _is_torchscript(path):
        return None
    try:
        sd = extract_state_dict(_load_raw(path), source=path.name)
    except UserError:
        return None
    head = next((v for k, v in sd.items() if k.endswith(("linear.weight", "fc.weight")) and v.dim() == 2), None)
    stem = next((v for k, v in sd.items() if v.dim() == 4), None)
    if head is None or stem is None:
        return None
    want = {k: tuple(v.shape) for k, v in sd.items()}
    found = []
    for name in MODELS.names():
        try:
            with torch.device("meta"):
                net = MODELS.get(name)(num_classes=int(head.shape[0]), in_channels=int(stem.shape[1]))
        except Exception:  # an architecture that cannot take these class / channel counts
            continue
        have = {k: tuple(v.shape) for k, v in net.state_dict().items()}
        if have == want:
            found.append(name)
    return found[0] if len(found) == 1 else None


def teacher_accuracy(model, bundle, cfg, n: int = 500) -> Optional[float]:
    """Clean accuracy of the teacher on (part of) the validation split: a cheap normalisation check."""
    import torch

    from ..data import BatchLoader, split_indices
    from ..utils import parse_device

    _, val = split_indices(len(bundle.train), cfg.val_fraction, cfg.seed, cfg.train_limit)
    if len(val) == 0:
        return None
    dev = parse_device(cfg.device)
    model.to(dev).eval()
    correct = 0
    val = val[:n]
    with torch.no_grad():
        for x, y, _ in BatchLoader(bundle.train, val, batch_size=250):
            correct += int((model(x.to(dev)).argmax(1).cpu() == y).sum())
    return correct / len(val)


def build_distill_method(name: str, asa: Optional[bool], mim: Optional[bool], opts: Dict[str, Any]):
    from ..errors import UserError

    try:
        from ..methods import build_method
    except ImportError:
        raise UserError("distillation methods are not available in this installation "
                        "(infoard_deploy.methods)") from None
    try:
        return build_method(name, asa=asa, mim=mim, **opts)
    except TypeError as e:
        raise UserError(f"bad option for method '{name}': {e}") from None
    except ValueError as e:
        raise UserError(f"method '{name}': {e}") from None


def register(app: typer.Typer) -> None:
    @app.command("distill")
    def distill(
        ctx: typer.Context,
        teacher: str = typer.Option(..., "--teacher", help="robust teacher: .pt/.pth/.safetensors/TorchScript/.onnx"),
        student: str = typer.Option("mobilenetv2", "--student", help="student architecture (see `list architectures`)"),
        method: str = typer.Option("infoard", "--method", help="ard | rslad | iad | adaad | infoard"),
        asa: Optional[bool] = typer.Option(None, "--asa/--no-asa",
                                           help="attack-strength adaptation (default: method's)"),
        mim: Optional[bool] = typer.Option(None, "--mim/--no-mim",
                                           help="mutual-information maximisation (default: method's)"),
        opt: Optional[List[str]] = typer.Option(None, "--opt", help="method hyper-parameter key=value (repeatable)"),
        teacher_arch: Optional[str] = typer.Option(None, "--teacher-arch",
                                                   help="teacher architecture if it has no card (else inferred)"),
        teacher_mean: Optional[str] = typer.Option(None, "--teacher-mean",
                                                   help="teacher input mean, e.g. 0.49,0.48,0.45"),
        teacher_std: Optional[str] = typer.Option(None, "--teacher-std", help="teacher input std"),
        data: str = typer.Option("cifar10", "--data", help="dataset (see `infoard-deploy list datasets`)"),
        data_dir: Optional[str] = DATA_DIR,
        download: bool = DOWNLOAD,
        eps: Optional[str] = typer.Option(None, "--eps", help="L-inf radius, e.g. 8/255 (default: the dataset's)"),
        epochs: Optional[int] = typer.Option(None, "--epochs", help="default: the method's schedule"),
        batch_size: Optional[int] = typer.Option(None, "--batch-size", help="global batch (default: method's, 128)"),
        lr: Optional[float] = typer.Option(None, "--lr", help="SGD learning rate (default: method's)"),
        weight_decay: Optional[float] = typer.Option(None, "--weight-decay", help="default: method's"),
        seed: int = SEED,
        out: Optional[str] = typer.Option(None, "--out", help="run folder (default runs/distill-DATA-STUDENT-METHOD)"),
        resume: bool = RESUME,
        force: bool = FORCE,
        train_limit: Optional[int] = TRAIN_LIMIT,
        val_fraction: float = VAL_FRACTION,
        val_n: Optional[int] = VAL_N,
        amp: str = AMP,
        channels_last: bool = CHANNELS_LAST,
        save_every: int = SAVE_EVERY,
        json_out: bool = JSON_OUT,
    ) -> None:
        """Distil a robust student from a robust teacher (InfoARD, ARD, RSLAD, IAD, AdaAD)."""
        from ..models import MODELS, build_model
        from ..train import teacher_provenance, train
        from ..utils import seed_everything

        t0 = time.perf_counter()
        MODELS.get(student)  # unknown names fail before any loading
        m = build_distill_method(method, asa, mim, parse_opts(opt))
        bundle = load_bundle(data, data_dir, download)
        tmodel, tcard = load_teacher(teacher, bundle, teacher_arch, floats(teacher_mean, "--teacher-mean"),
                                     floats(teacher_std, "--teacher-std"))
        name = getattr(m, "name", method)
        out_dir = out or f"runs/distill-{bundle.name}-{student}-{name}"
        cfg = make_config(out=out_dir, model_name="student", eps=eps, epochs=epochs, batch_size=batch_size, lr=lr,
                          weight_decay=weight_decay, seed=seed, resume=resume, force=force, train_limit=train_limit,
                          val_fraction=val_fraction, val_n=val_n, amp=amp, channels_last=channels_last,
                          save_every=save_every,
                          extra={"command": "infoard-deploy distill", "args": dict(ctx.params),
                                 "asa": getattr(m, "asa", None) is not None if asa is None else asa,
                                 "mim": getattr(m, "mim", None) is not None if mim is None else mim})
        cfg = cfg.resolved(m.schedule, bundle.default_eps)
        t_acc = teacher_accuracy(tmodel, bundle, cfg)
        prov = {**teacher_provenance(Path(teacher), tcard.architecture), "teacher_val_clean": t_acc}
        if is_main_process() and not json_out:
            console.print(f"distill: {name} {tcard.architecture} -> {student} on {bundle.name} eps {cfg.eps:.4g}, "
                          f"{cfg.epochs} epochs, batch {cfg.batch_size}, lr {cfg.lr:g} -> {out_dir}", soft_wrap=True)
            if t_acc is not None:
                console.print(f"teacher clean accuracy on {min(500, len(bundle.train))} validation images: "
                              f"{100 * t_acc:.1f}%", soft_wrap=True)
        if t_acc is not None and t_acc < 1.5 / bundle.num_classes and is_main_process():
            from ._common import err_console

            err_console.print(f"warning: the teacher is near chance on {bundle.name} ({100 * t_acc:.1f}%); check "
                              f"--teacher-mean/--teacher-std and the dataset", style="yellow", soft_wrap=True)
        seed_everything(seed)
        c, h, _ = bundle.input_shape
        model = build_model(student, bundle.num_classes, c, h, bundle.mean, bundle.std)
        result = train(model, m, bundle, cfg, teacher=tmodel, teacher_arch=tcard.architecture,
                       card_base={"architecture": student, "provenance": prov})
        report(result, kind="student", t0=t0, json_out=json_out,
               info={"method": name, "architecture": student, "teacher": str(teacher),
                     "teacher_architecture": tcard.architecture, "teacher_val_clean": t_acc,
                     "dataset": bundle.name, "eps": cfg.eps, "epochs": cfg.epochs})
