"""``infoard-deploy train-teacher``: adversarially train a robust teacher (PGD-AT or TRADES).

Example: ``infoard-deploy train-teacher --data fashion-mnist --arch cnn-mnist --method trades --eps 0.1``
writes ``<out>/teacher.pt`` + ``teacher.card.json``, ``state.pt`` (resumable) and ``metrics.{jsonl,csv}``.
Under ``torchrun --nproc_per_node N -m infoard_deploy train-teacher ...`` it trains with DDP.
"""
from __future__ import annotations

import time
from typing import Optional

import typer

from ._training import (AMP, CHANNELS_LAST, DATA_DIR, DOWNLOAD, FORCE, JSON_OUT, RESUME, SAVE_EVERY, SEED,
                        TRAIN_LIMIT, VAL_FRACTION, VAL_N, is_main_process, load_bundle, make_config, report)


def register(app: typer.Typer) -> None:
    @app.command("train-teacher")
    def train_teacher(
        ctx: typer.Context,
        data: str = typer.Option("cifar10", "--data", help="dataset (see `infoard-deploy list datasets`)"),
        data_dir: Optional[str] = DATA_DIR,
        download: bool = DOWNLOAD,
        arch: str = typer.Option("wrn-34-10", "--arch", help="teacher architecture (see `list architectures`)"),
        method: str = typer.Option("trades", "--method", help="pgd-at | trades"),
        eps: Optional[str] = typer.Option(None, "--eps", help="L-inf radius in [0,1] pixels, e.g. 8/255 "
                                          "(default: the dataset's, 8/255 for CIFAR, 0.1 for Fashion-MNIST)"),
        epochs: Optional[int] = typer.Option(None, "--epochs", help="default: the method's schedule (100)"),
        batch_size: Optional[int] = typer.Option(None, "--batch-size", help="global batch (default 128)"),
        lr: Optional[float] = typer.Option(None, "--lr", help="SGD learning rate (default 0.1)"),
        weight_decay: Optional[float] = typer.Option(None, "--weight-decay",
                                                     help="default: TRADES 2e-4, PGD-AT 5e-4"),
        attack_steps: Optional[int] = typer.Option(None, "--attack-steps", help="training PGD steps (default 10)"),
        step_frac: Optional[float] = typer.Option(None, "--step-frac", help="PGD step as a fraction of eps (0.25)"),
        beta: Optional[float] = typer.Option(None, "--beta", help="TRADES robustness weight (default 6)"),
        seed: int = SEED,
        out: Optional[str] = typer.Option(None, "--out", help="run folder (default runs/teacher-DATA-ARCH-METHOD)"),
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
        """Adversarially train a robust teacher with PGD-AT (Madry 2018) or TRADES (Zhang 2019)."""
        from ..models import build_model
        from ..train import build_teacher_method, train
        from ..utils import seed_everything

        t0 = time.perf_counter()
        m = build_teacher_method(method, steps=attack_steps, step_frac=step_frac,
                                 **({"beta": beta} if beta is not None else {}))
        bundle = load_bundle(data, data_dir, download)
        name = m.name
        out_dir = out or f"runs/teacher-{bundle.name}-{arch}-{name}"
        cfg = make_config(out=out_dir, model_name="teacher", eps=eps, epochs=epochs, batch_size=batch_size, lr=lr,
                          weight_decay=weight_decay, seed=seed, resume=resume, force=force, train_limit=train_limit,
                          val_fraction=val_fraction, val_n=val_n, amp=amp, channels_last=channels_last,
                          save_every=save_every, attack_steps=m.steps,
                          extra={"command": "infoard-deploy train-teacher", "args": dict(ctx.params),
                                 "step_frac": m.step_frac, **({"beta": m.beta} if hasattr(m, "beta") else {})})
        cfg = cfg.resolved(m.schedule, bundle.default_eps)
        seed_everything(seed)
        c, h, _ = bundle.input_shape
        model = build_model(arch, bundle.num_classes, c, h, bundle.mean, bundle.std)
        if is_main_process() and not json_out:
            from ._common import console

            console.print(f"train-teacher: {name} {arch} on {bundle.name} eps {cfg.eps:.4g}, {cfg.epochs} epochs, "
                          f"batch {cfg.batch_size}, lr {cfg.lr:g} -> {out_dir}", soft_wrap=True)
        result = train(model, m, bundle, cfg, card_base={"architecture": arch})
        report(result, kind="teacher", t0=t0, json_out=json_out,
               info={"method": name, "architecture": arch, "dataset": bundle.name, "eps": cfg.eps,
                     "epochs": cfg.epochs})
