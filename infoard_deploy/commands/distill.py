"""``infoard-deploy distill``: distil a robust compact student from a robust teacher.

Example: ``infoard-deploy distill --teacher wrn34.pt --student mobilenetv2`` (CIFAR-10, InfoARD, eps and
epochs from the dataset / method). The teacher is loaded safely (weights-only / safetensors /
TorchScript / ONNX) with its model card, or with its architecture inferred from its weights; a teacher
whose normalisation nothing states is assumed to take raw [0,1] inputs, with a warning in the output
and the student's card. The work is :func:`infoard_deploy.distill`; this module only parses and renders.
"""
from __future__ import annotations

from typing import List, Optional

import typer

from ._common import STATE, floats
from ._training import (AMP, CHANNELS_LAST, DATA_DIR, FORCE, JSON_OUT, RESUME, SAVE_EVERY, SEED, THREADS,
                        TRAIN_LIMIT, VAL_FRACTION, VAL_N, log_line, parse_opts, render)


def register(app: typer.Typer) -> None:
    @app.command("distill")
    def distill(
        teacher: str = typer.Option(..., "--teacher", help="robust teacher: .pt/.pth/.safetensors/TorchScript/.onnx "
                                    "file, or robustbench:NAME (e.g. robustbench:Carmon2019Unlabeled)"),
        student: str = typer.Option("mobilenetv2", "--student", help="student architecture (see `list architectures`)"),
        method: str = typer.Option("infoard", "--method", help="ard | rslad | iad | adaad | infoard"),
        asa: Optional[bool] = typer.Option(None, "--asa/--no-asa",
                                           help="attack-strength adaptation (default: method's)"),
        mim: Optional[bool] = typer.Option(None, "--mim/--no-mim",
                                           help="mutual-information maximisation (default: method's)"),
        opt: Optional[List[str]] = typer.Option(None, "--opt", help="method hyper-parameter key=value (repeatable)"),
        protocol: str = typer.Option("official", "--protocol",
                                     help="official: the method's published settings | matched: every method gets "
                                          "the same KL reduction, schedule and attack budget"),
        teacher_arch: Optional[str] = typer.Option(None, "--teacher-arch",
                                                   help="teacher architecture if it has no card (else inferred)"),
        model_dir: Optional[str] = typer.Option(None, "--model-dir", help="RobustBench model folder "
                                                "(DIR/cifar10/Linf/NAME.pt; default $INFOARD_ROBUSTBENCH_DIR or ./models)"),
        teacher_mean: Optional[str] = typer.Option(None, "--teacher-mean",
                                                   help="teacher input mean, e.g. 0.49,0.48,0.45"),
        teacher_std: Optional[str] = typer.Option(None, "--teacher-std", help="teacher input std"),
        data: str = typer.Option("cifar10", "--data", help="dataset (see `infoard-deploy list datasets`)"),
        data_dir: Optional[str] = DATA_DIR,
        download: bool = typer.Option(False, "--download", help="download the dataset (and a robustbench: teacher) "
                                      "if missing"),
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
        threads: int = THREADS,
        json_out: bool = JSON_OUT,
    ) -> None:
        """Distil a robust student from a robust teacher (InfoARD, ARD, RSLAD, IAD, AdaAD)."""
        from ..api import DistillConfig, distill as api_distill

        cfg = DistillConfig(teacher=teacher, student=student, method=method, asa=asa, mim=mim, opts=parse_opts(opt),
                            protocol=protocol,
                            teacher_arch=teacher_arch, model_dir=model_dir, teacher_mean=floats(teacher_mean, "--teacher-mean"),
                            teacher_std=floats(teacher_std, "--teacher-std"), data=data, data_dir=data_dir,
                            download=download, eps=eps, epochs=epochs, batch_size=batch_size, lr=lr,
                            weight_decay=weight_decay, seed=seed, out=out, resume=resume, force=force,
                            train_limit=train_limit, val_fraction=val_fraction, val_n=val_n, amp=amp,
                            channels_last=channels_last, save_every=save_every, device=STATE.device_spec,
                            threads=threads)
        render(api_distill(cfg, log=log_line(json_out)), json_out)
