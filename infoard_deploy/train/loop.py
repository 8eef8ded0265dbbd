"""The method-agnostic trainer: SGD + MultiStepLR, AMP / channels_last on CUDA, DDP, resumable state.

Per batch the trainer calls ``out = method(student, teacher, x, y, idx, ctx)``, back-propagates
``out.loss`` and steps; it knows nothing about how a method attacks or what it distils. The teacher is
frozen (eval mode, ``requires_grad=False``); the optimiser covers the student and the method's own
parameters (e.g. MIM projection heads). Inputs are float (B, C, H, W) in [0,1]; ``idx`` are dataset
indices into ``bundle.train`` (per-sample memories such as ASA's are keyed by them).
"""
from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional

import torch
from torch import nn

from ..card import ModelCard, provenance
from ..checkpoint import save_model
from ..data import BatchLoader, split_indices
from ..errors import UserError
from ..methods.base import DistillMethod, StepContext
from ..runlock import run_lock
from ..utils import check_out_dir, parse_device, sha256_file
from . import dist as D
from .config import TrainConfig, amp_dtype, resume_mismatch
from .metrics import RunningStats, count_correct, validate, write_metrics
from .progress import EpochProgress
from .runstate import (STATE_FILE, check_identity, load_run_state, prepare_out_dir, save_run_state, seed_epoch,
                       set_rng_state)


class TrainingDiverged(UserError):
    """The loss became NaN or infinite; training stops (exit code 2 from the CLI)."""


@dataclass
class TrainResult:
    final_model_path: Optional[Path]  # None on ranks other than 0, or when stopped early (stop_after)
    metrics: Dict[str, Any]  # the last epoch's row (val_clean / val_robust ...)
    history: List[Dict[str, Any]] = field(default_factory=list)
    out_dir: Optional[Path] = None
    completed: bool = True
    epochs_run: int = 0  # epochs trained in this call


def freeze_teacher(teacher: Optional[nn.Module]) -> Optional[nn.Module]:
    """Eval mode and no parameter gradients: the teacher is never updated."""
    if teacher is None:
        return None
    teacher.eval()
    for p in teacher.parameters():
        p.requires_grad_(False)
    return teacher


def _method_params(method: nn.Module, student: nn.Module, teacher: Optional[nn.Module]) -> List[nn.Parameter]:
    """The method's own trainable parameters, never the student's (already listed) or the teacher's."""
    skip = {id(p) for p in student.parameters()}
    if teacher is not None:
        skip |= {id(p) for p in teacher.parameters()}
    seen, out = set(), []
    for p in method.parameters():
        if p.requires_grad and id(p) not in skip and id(p) not in seen:
            seen.add(id(p))
            out.append(p)
    return out


def train(student: nn.Module, method: DistillMethod, bundle, cfg: TrainConfig, teacher: Optional[nn.Module] = None,
          card_base: Optional[Dict[str, Any]] = None, teacher_arch: Optional[str] = None) -> TrainResult:
    """Train ``student`` with ``method`` on ``bundle.train``; returns the final model path and metrics.

    ``card_base``: at least ``{"architecture": "<registry name>"}``; may add ``provenance`` (merged
    into the card's) and ``extra``. ``teacher_arch`` is passed to ``method.setup``. Files go to
    ``cfg.out_dir``: ``state.pt``, ``metrics.jsonl``, ``metrics.csv``, ``<model_name>.pt`` + card.
    """
    card_base = dict(card_base or {})
    arch = card_base.get("architecture")
    if not arch:
        raise ValueError("card_base must name the student's 'architecture'")
    if method.needs_teacher and teacher is None:
        raise UserError(f"method '{method.name}' distils from a teacher; pass --teacher")
    cfg = cfg.resolved(method.schedule, bundle.default_eps)
    check_out_dir(cfg.out, "--out")  # a file, /proc/..., a read-only parent: refused before any work
    base_dev = parse_device(cfg.device)
    info = D.init_distributed(base_dev)
    try:
        dev = D.rank_device(base_dev, info)
        with _folder_lock(cfg.out, f"training ({method.name})", info, dev):
            return _train(student, method, bundle, cfg, teacher, card_base, arch, teacher_arch, info, dev)
    finally:
        teardown = getattr(method, "teardown", None)  # e.g. MIM removes its feature hooks from the models
        if callable(teardown):
            teardown()
        D.cleanup(info)


@contextlib.contextmanager
def _folder_lock(out: Path, what: str, info: D.DistInfo, dev: torch.device):
    """Hold ``out``'s run lock for the whole run (rank 0 takes it; every rank fails alike if it is taken).

    Taken before :func:`prepare_out_dir`, whose ``--force`` deletes the previous run's files: two runs
    started together on one folder would otherwise both pass its checks and overwrite each other.
    """
    with contextlib.ExitStack() as stack:
        err: Optional[UserError] = None
        if info.is_main:
            try:
                stack.enter_context(run_lock(out, what))
            except UserError as e:
                err = e
        if D.any_flag(err is not None, info, dev):
            raise err or UserError(f"{out} is in use by another infoard-deploy process; wait for it or use "
                                   f"another --out")
        yield


def _train(student, method, bundle, cfg: TrainConfig, teacher, card_base, arch, teacher_arch, info: D.DistInfo,
           dev: torch.device) -> TrainResult:
    out = cfg.out
    if cfg.batch_size % info.world_size:
        raise UserError(f"--batch-size {cfg.batch_size} is the global batch; it must divide evenly over "
                        f"{info.world_size} processes")
    amp = amp_dtype(cfg.amp, dev)
    if cfg.channels_last and dev.type != "cuda":
        raise UserError(f"--channels-last is for CUDA devices (training runs on {dev})")
    # Every rank checks the folder (so all fail alike); only rank 0 changes it.
    state_path = prepare_out_dir(out, cfg.model_name, cfg.resume, cfg.force, mutate=info.is_main)
    D.barrier(info)

    train_idx, val_idx = split_indices(len(bundle.train), cfg.val_fraction, cfg.seed, cfg.train_limit)
    if len(train_idx) == 0:
        raise UserError("no training examples left after carving the validation split; lower --val-fraction")
    if cfg.val_n is not None:
        val_idx = val_idx[: int(cfg.val_n)]
    memory = torch.channels_last if cfg.channels_last else torch.contiguous_format

    # Identical initial weights on every rank: the caller seeded before building the student; DDP also
    # broadcasts rank 0's parameters. Seed again so the method's heads start identical too.
    seed_epoch(cfg.seed, 1 << 30, 0, dev)
    student.to(dev, memory_format=memory)
    teacher = freeze_teacher(teacher)
    if teacher is not None:
        teacher.to(dev, memory_format=memory)
    method.setup(student, teacher, num_train=len(bundle.train), num_classes=bundle.num_classes, eps=cfg.eps,
                 student_arch=arch, teacher_arch=teacher_arch, input_shape=list(bundle.input_shape))
    method.to(dev)
    extra_params = _method_params(method, student, teacher)
    D.broadcast_params(extra_params, info)
    opt = torch.optim.SGD([{"params": list(student.parameters())}] +
                          ([{"params": extra_params}] if extra_params else []),
                          lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.MultiStepLR(opt, milestones=cfg.milestone_epochs(), gamma=cfg.gamma)
    scaler = torch.amp.GradScaler("cuda") if amp == torch.float16 else None

    # What a resumed run must share with the saved one (the world size may change: batches are global).
    identity = {"method": method.name, "architecture": arch, "dataset": bundle.name,
                "teacher_architecture": teacher_arch,
                "teacher_sha256": card_base.get("provenance", {}).get("teacher_sha256")}
    history: List[Dict[str, Any]] = []
    start_epoch = 0
    if state_path is not None:
        st = load_run_state(state_path)
        check_identity(st.get("identity", {}), identity, state_path)
        diffs = resume_mismatch(st["config"], cfg)
        if diffs:
            raise UserError(f"cannot resume {state_path}: settings changed ({'; '.join(diffs)}); "
                            f"resume with the original settings or start over with --force")
        student.load_state_dict(st["model"])
        method.load_state_dict(st["method"])
        opt.load_state_dict(st["optimizer"])
        sched.load_state_dict(st["scheduler"])
        if scaler is not None and st.get("scaler"):
            scaler.load_state_dict(st["scaler"])
        set_rng_state(st.get("rng", {}))
        start_epoch, history = int(st["next_epoch"]), list(st.get("history", []))

    model = D.wrap_ddp(student, info, dev)
    autocast = (lambda: torch.autocast("cuda", dtype=amp)) if amp is not None else None
    per_rank = cfg.batch_size // info.world_size
    loader = BatchLoader(bundle.train, train_idx, batch_size=per_rank, shuffle=True, augment=bundle.augment,
                         seed=cfg.seed, rank=info.rank, world_size=info.world_size)
    progress = EpochProgress(enabled=cfg.progress and info.is_main)
    last_epoch = cfg.epochs if cfg.stop_after is None else min(cfg.epochs, start_epoch + int(cfg.stop_after))
    ran = 0
    for epoch in range(start_epoch, last_epoch):
        gen = seed_epoch(cfg.seed, epoch, info.rank, dev)  # the same stream whether resumed or not
        loader.set_epoch(epoch)
        model.train()
        stats = RunningStats()
        lr = opt.param_groups[0]["lr"]
        t0 = time.perf_counter()
        with progress.epoch(epoch, cfg.epochs, len(loader)) as bar:
            for step, (x, y, idx) in enumerate(loader):
                x = x.to(dev, non_blocking=True).contiguous(memory_format=memory)
                y, idx = y.to(dev, non_blocking=True), idx.to(dev, non_blocking=True)
                ctx = StepContext(epoch=epoch, epochs=cfg.epochs, eps=cfg.eps, num_classes=bundle.num_classes,
                                  step=step, generator=gen)
                model.train()
                if teacher is not None:
                    teacher.eval()
                with (autocast() if autocast is not None else contextlib.nullcontext()):
                    res = method(model, teacher, x, y, idx, ctx)
                loss = res.loss
                if D.any_flag(not bool(torch.isfinite(loss.detach()).all()), info, dev):
                    raise TrainingDiverged(
                        f"training diverged: the loss became {float(loss.detach())} at epoch {epoch + 1} step "
                        f"{step + 1}; lower --lr" + (" or use --amp off" if amp is not None else ""))
                opt.zero_grad(set_to_none=True)
                if scaler is not None:
                    scaler.scale(loss).backward()
                else:
                    loss.backward()
                D.average_grads(extra_params, info)
                if scaler is not None:
                    scaler.step(opt)
                    scaler.update()
                else:
                    opt.step()
                if hasattr(method, "sync"):
                    method.sync()
                correct = None
                if cfg.track_train_acc:
                    with (autocast() if autocast is not None else contextlib.nullcontext()):
                        correct = count_correct(student, x, res.x_adv, y)
                stats.add(float(loss.detach()), int(x.shape[0]), res.logs, correct)
                bar.advance(stats.running())
        train_time = time.perf_counter() - t0
        row: Dict[str, Any] = {"epoch": epoch + 1, "lr": lr}
        reduced = stats.reduce(info, dev)
        n_images = reduced.pop("_n")
        row.update(reduced)
        D.broadcast_params(student.buffers(), info)  # rank 0's BN statistics everywhere, then validate
        t1 = time.perf_counter()
        row.update(validate(student, bundle.train, val_idx, cfg.eps, cfg.val_attack_steps, cfg.val_step_frac,
                            max(per_rank, 256), dev, info, cfg.seed, epoch, autocast))
        row["epoch_time_s"] = round(train_time, 3)
        row["val_time_s"] = round(time.perf_counter() - t1, 3)
        row["images_per_s"] = round(n_images / max(train_time, 1e-9), 1)
        row.update({k: v for k, v in (method.end_epoch(epoch) or {}).items()})
        sched.step()
        history.append(row)
        ran += 1
        if info.is_main:
            save_run_state(out / STATE_FILE, model=student, method=method, optimizer=opt, scheduler=sched,
                           scaler=scaler, next_epoch=epoch + 1, config=cfg.to_dict(), history=history,
                           identity={**identity, "world_size": info.world_size})
            write_metrics(out, history)
            if cfg.save_every and (epoch + 1) % cfg.save_every == 0:
                save_model(student, out / "checkpoints" / f"epoch_{epoch + 1:03d}.pt",
                           _card(bundle, cfg, card_base, row, method, epoch + 1))
            progress.summary(row)
        D.barrier(info)

    final = history[-1] if history else {}
    completed = len(history) >= cfg.epochs
    path = None
    if completed and info.is_main:
        path = out / f"{cfg.model_name}.pt"
        save_model(student, path, _card(bundle, cfg, card_base, final, method, cfg.epochs))
    D.barrier(info)
    return TrainResult(final_model_path=path, metrics=final, history=history, out_dir=out, completed=completed,
                       epochs_run=ran)


def _card(bundle, cfg: TrainConfig, base: Dict[str, Any], row: Dict[str, Any], method, epochs: int) -> ModelCard:
    prov = provenance(method=method.name, dataset=bundle.name, seed=cfg.seed, epochs=epochs,
                      batch_size=cfg.batch_size, lr=cfg.lr, weight_decay=cfg.weight_decay, eps=cfg.eps,
                      attack_steps=cfg.attack_steps, train_limit=cfg.train_limit, val_fraction=cfg.val_fraction)
    prov.update(base.get("provenance", {}))
    prov.update(cfg.extra)
    metrics = {"val_clean": row.get("val_clean"), "val_robust": row.get("val_robust"),
               "val_attack": f"PGD-{cfg.val_attack_steps} step {cfg.val_step_frac:g}*eps, uniform start",
               "val_split": f"{cfg.val_fraction:g} of the training data (seeded), never the test set",
               "final_train_loss": row.get("loss")}
    return ModelCard(architecture=base["architecture"], num_classes=bundle.num_classes,
                     input_shape=list(bundle.input_shape), mean=list(bundle.mean), std=list(bundle.std),
                     classes=list(bundle.classes), eps=cfg.eps, dataset=bundle.name, kind="checkpoint",
                     precision="fp32", provenance=prov, metrics=metrics, extra=dict(base.get("extra", {})))


def teacher_provenance(path: Optional[str | Path], arch: Optional[str]) -> Dict[str, Any]:
    """Provenance fields for a teacher file: path, sha256 and architecture."""
    if path is None:
        return {}
    p = Path(path)
    return {"teacher": str(p), "teacher_sha256": sha256_file(p) if p.exists() else None,
            "teacher_architecture": arch}


__all__ = ["TrainConfig", "TrainResult", "TrainingDiverged", "train", "freeze_teacher", "teacher_provenance"]
