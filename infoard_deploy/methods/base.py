"""The distillation-method interface: a method is a loss object that owns its inner maximisation.

The trainer is method-agnostic: per batch it calls ``method(student, teacher, x, y, idx, ctx)`` and
back-propagates ``out.loss``. Each method decides how adversarial examples are made (attack loss,
teacher on x or x', BN mode during the attack) and how the outer loss is formed. Components such as
ASA (per-sample attack strength) and MIM (mutual-information feature / attention objectives) are
composed into any base method (see ``asa.py``, ``mim.py``).

A method is an ``nn.Module`` so that auxiliary parameters (MIM projection heads) are optimised with the
student, and per-sample state (ASA's strength memory, as buffers) is saved in checkpoints by
``state_dict()``; heads are dropped at export because only the student is exported.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, List, Optional

import torch
from torch import nn


@dataclass
class Schedule:
    """Optimiser defaults from each method's official code (SGD, piecewise-constant lr)."""

    epochs: int = 200
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 2e-4
    milestones: List[float] = field(default_factory=lambda: [0.5, 0.75])  # fractions of the epochs
    gamma: float = 0.1
    batch_size: int = 128


@dataclass
class StepContext:
    """What a method may need to know besides the batch."""

    epoch: int  # 0-based
    epochs: int
    eps: float  # the evaluation / nominal L-inf radius
    num_classes: int
    step: int = 0
    generator: Optional[torch.Generator] = None


@dataclass
class StepOutput:
    loss: torch.Tensor  # scalar, differentiable w.r.t. the student (and the method's own heads)
    x_adv: torch.Tensor  # (B, C, H, W) adversarial examples used for training, in [0,1]
    logs: Dict[str, float] = field(default_factory=dict)


class DistillMethod(nn.Module):
    """Base class. Subclasses implement :meth:`forward`; :meth:`setup` is called once before training."""

    name: str = "base"
    needs_teacher: bool = True
    schedule: Schedule = Schedule()

    def setup(self, student: nn.Module, teacher: Optional[nn.Module], *, num_train: int, num_classes: int,
              eps: float, student_arch: Optional[str] = None, teacher_arch: Optional[str] = None,
              input_shape=None) -> None:
        """Create hooks, heads and per-sample memories. ``num_train`` = size of the index space of ``idx``."""

    def forward(self, student: nn.Module, teacher: Optional[nn.Module], x: torch.Tensor, y: torch.Tensor,
                idx: torch.Tensor, ctx: StepContext) -> StepOutput:  # pragma: no cover - abstract
        raise NotImplementedError

    def end_epoch(self, epoch: int) -> Dict[str, float]:
        """Hook after each epoch (e.g. ASA statistics); returns values to log."""
        return {}

    def sync(self) -> None:
        """Make per-sample state consistent across DDP ranks (called by the trainer after each step)."""
