"""``infoard-deploy train-teacher``: adversarially train a robust teacher (PGD-AT or TRADES).

Example: ``infoard-deploy train-teacher --data fashion-mnist --arch cnn-mnist --method trades --eps 0.1``
writes ``<out>/teacher.pt`` + ``teacher.card.json``, ``state.pt`` (resumable) and ``metrics.{jsonl,csv}``.
Under ``torchrun --nproc_per_node N -m infoard_deploy train-teacher ...`` it trains with DDP.
The work is :func:`infoard_deploy.train_teacher`; this module only parses and renders.
"""
from __future__ import annotations

from typing import Optional

import typer

from ._common import STATE
from ._training import (AMP, CHANNELS_LAST, DATA_DIR, DOWNLOAD, FORCE, JSON_OUT, RESUME, SAVE_EVERY, SEED, THREADS,
                        TRAIN_LIMIT, VAL_FRACTION, VAL_N, log_line, render)


def register(app: typer.Typer) -> None:
    @app.command("train-teacher")
    def train_teacher(
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
        threads: int = THREADS,
        json_out: bool = JSON_OUT,
    ) -> None:
        """Adversarially train a robust teacher with PGD-AT (Madry 2018) or TRADES (Zhang 2019)."""
        from ..api import TeacherConfig, train_teacher as api_train_teacher

        cfg = TeacherConfig(data=data, data_dir=data_dir, download=download, arch=arch, method=method, eps=eps,
                            epochs=epochs, batch_size=batch_size, lr=lr, weight_decay=weight_decay,
                            attack_steps=attack_steps, step_frac=step_frac, beta=beta, seed=seed, out=out,
                            resume=resume, force=force, train_limit=train_limit, val_fraction=val_fraction,
                            val_n=val_n, amp=amp, channels_last=channels_last, save_every=save_every,
                            device=STATE.device_spec, threads=threads)
        render(api_train_teacher(cfg, log=log_line(json_out)), json_out)
