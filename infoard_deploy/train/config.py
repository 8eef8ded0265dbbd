"""Training configuration: one dataclass, defaults taken from the method's :class:`Schedule`.

Every optimisation field left ``None`` is filled from ``method.schedule`` (the official code's SGD
settings), so ``TrainConfig(epochs=2)`` trains any method with its own lr / wd / milestones.
``milestones`` are fractions of the epochs (0.5 -> lr x gamma after half the epochs).
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Dict, List, Optional

import torch

from ..errors import UserError

AMP_MODES = ("auto", "off", "bf16", "fp16")

# Fields that must agree between a run and its resumption (others, like out_dir or val_n, may change).
RESUME_KEYS = ("epochs", "batch_size", "lr", "momentum", "weight_decay", "milestones", "gamma", "seed", "eps",
               "val_fraction", "train_limit", "attack_steps")


@dataclass
class TrainConfig:
    epochs: Optional[int] = None
    batch_size: Optional[int] = None  # global batch: split evenly over DDP ranks
    lr: Optional[float] = None
    momentum: Optional[float] = None
    weight_decay: Optional[float] = None
    milestones: Optional[List[float]] = None  # fractions of epochs
    gamma: Optional[float] = None
    seed: int = 0
    eps: Optional[float] = None  # None -> bundle.default_eps
    attack_steps: Optional[int] = None  # recorded; the method that attacks is built with it
    val_fraction: float = 0.1
    train_limit: Optional[int] = None
    val_n: Optional[int] = 1000  # cap on validation examples (PGD on all of them each epoch)
    val_attack_steps: int = 10  # PGD-10, step eps/4, uniform start
    val_step_frac: float = 0.25
    amp: str = "auto"  # auto | off | bf16 | fp16 (CUDA only; auto = bf16 on CUDA, off on CPU)
    channels_last: bool = False  # CUDA only
    out_dir: str = "runs/train"
    model_name: str = "student"  # final weights -> <out_dir>/<model_name>.pt
    resume: bool = False
    force: bool = False
    save_every: int = 0  # also keep <out>/checkpoints/epoch_NNN.pt every N epochs (0 = never)
    device: str = "auto"
    track_train_acc: bool = True  # one extra no-grad eval forward of [x, x'] per step
    stop_after: Optional[int] = None  # stop after this many epochs *in this call* (tests, preemptible jobs)
    progress: bool = True
    extra: Dict[str, Any] = field(default_factory=dict)  # recorded in provenance

    def resolved(self, schedule, default_eps: Optional[float]) -> "TrainConfig":
        """A copy with ``None`` fields filled from ``schedule`` and the dataset's eps, validated."""
        s = schedule
        c = replace(
            self,
            epochs=self.epochs if self.epochs is not None else s.epochs,
            batch_size=self.batch_size if self.batch_size is not None else s.batch_size,
            lr=self.lr if self.lr is not None else s.lr,
            momentum=self.momentum if self.momentum is not None else s.momentum,
            weight_decay=self.weight_decay if self.weight_decay is not None else s.weight_decay,
            milestones=list(self.milestones if self.milestones is not None else s.milestones),
            gamma=self.gamma if self.gamma is not None else s.gamma,
            eps=self.eps if self.eps is not None else default_eps,
        )
        c.validate()
        return c

    def validate(self) -> None:
        if self.epochs is None or int(self.epochs) < 1:
            raise UserError(f"--epochs must be >= 1, got {self.epochs}")
        if self.batch_size is None or int(self.batch_size) < 1:
            raise UserError(f"--batch-size must be >= 1, got {self.batch_size}")
        if not (self.lr is not None and self.lr > 0 and math.isfinite(self.lr)):
            raise UserError(f"--lr must be a positive number, got {self.lr}")
        if not 0.0 <= float(self.momentum) < 1.0:
            raise UserError(f"momentum must lie in [0, 1), got {self.momentum}")
        if float(self.weight_decay) < 0:
            raise UserError(f"weight decay must be >= 0, got {self.weight_decay}")
        bad = [m for m in self.milestones if not 0.0 < float(m) <= 1.0]
        if bad:
            raise UserError(f"lr milestones are fractions of the epochs in (0, 1], got {bad}")
        if self.eps is None:
            raise UserError("no eps given and the dataset has no default; pass --eps (e.g. 8/255)")
        if not 0.0 < float(self.eps) <= 1.0:
            raise UserError(f"--eps must lie in (0, 1], got {self.eps}")
        if not 0.0 <= float(self.val_fraction) < 1.0:
            raise UserError(f"--val-fraction must lie in [0, 1), got {self.val_fraction}")
        if self.val_n is not None and int(self.val_n) < 1:
            raise UserError(f"validation size must be >= 1, got {self.val_n}")
        if self.amp not in AMP_MODES:
            raise UserError(f"--amp must be one of {', '.join(AMP_MODES)}, got '{self.amp}'")
        if self.resume and self.force:
            raise UserError("--resume and --force contradict each other (continue a run, or start over)")
        if self.stop_after is not None and int(self.stop_after) < 1:
            raise UserError(f"stop_after must be >= 1, got {self.stop_after}")
        if int(self.save_every) < 0:
            raise UserError(f"--save-every must be >= 0, got {self.save_every}")

    def milestone_epochs(self) -> List[int]:
        """Fractions -> epoch counts after which lr is multiplied by gamma (round half up; repeats kept,
        so two milestones that round to the same epoch still decay twice, as MultiStepLR counts them)."""
        return sorted(int(math.floor(float(m) * self.epochs + 0.5)) for m in self.milestones)

    def to_dict(self) -> Dict[str, Any]:
        return asdict(self)

    @property
    def out(self) -> Path:
        return Path(self.out_dir)


def resume_mismatch(saved: Dict[str, Any], now: "TrainConfig") -> List[str]:
    """The settings that differ between a saved run and this one (they would change the result)."""
    diffs = []
    cur = now.to_dict()
    for k in RESUME_KEYS:
        if k in saved and saved[k] != cur.get(k):
            diffs.append(f"{k} {saved[k]} -> {cur.get(k)}")
    return diffs


def amp_dtype(mode: str, dev: torch.device) -> Optional[torch.dtype]:
    """The autocast dtype (None = full fp32). Mixed precision is used on CUDA only."""
    if mode == "off":
        return None
    if dev.type != "cuda":
        if mode == "auto":
            return None
        raise UserError(f"--amp {mode} needs a CUDA device (training runs on {dev}); use --amp off")
    if mode == "fp16":
        return torch.float16
    if mode == "bf16" and not torch.cuda.is_bf16_supported():
        raise UserError("--amp bf16 is not supported on this GPU; use --amp fp16")
    if mode == "auto":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.bfloat16


def config_fields() -> List[str]:
    return [f.name for f in fields(TrainConfig)]
