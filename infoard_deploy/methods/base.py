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

from dataclasses import asdict, dataclass, field
from typing import Any, Dict, List, Optional

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
    protocol: str = "official"  # set by build_method: "official" | "matched" (see protocol.py)

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

    def teardown(self) -> None:
        """Release resources held on the models (e.g. MIM's forward hooks); safe to call twice."""

    def mim_levels(self) -> Dict[str, Any]:
        """What MIM runs after :meth:`setup` (see :meth:`AdversarialDistillation.mim_levels`); here: nothing."""
        return dict(MIM_OFF)

    def describe(self) -> Dict[str, Any]:
        """The protocol and the settings in effect, JSON-serialisable, for results and cards."""
        return {"method": self.name, "protocol": self.protocol, "schedule": asdict(self.schedule)}


# mim_levels() of a method without MIM
MIM_OFF: Dict[str, Any] = {"feature": "off", "attention": 0, "pairs": [], "attention_sizes": [],
                           "requested": {"feature": False, "attention": 0}, "teacher_points": None,
                           "partial": False, "ready": True, "notes": []}


# ---------------------------------------------------------------------------------------------------
# Shared plumbing of the ARD-family methods (ard.py, rslad.py, iad.py, adaad.py, infoard.py).
# ---------------------------------------------------------------------------------------------------

_ATTACK_DEFAULTS: Dict[str, Any] = {
    "steps": 10,  # PGD iterations K
    "step_ratio": 0.25,  # alpha / eps: 2/255 at 8/255 in every ARD repo (per-sample with ASA)
    "eps_scale": 1.0,  # training radius / nominal eps (AdaAD's larger search radius: 2.0)
    # Soft-label correction where the teacher is wrong: "none" (every official baseline) or "swap"
    # (DGAD's error-corrective label swapping, kl.swap_wrong_teacher_logits). Applied to the distillation
    # targets only; ASA's trust signal and IAD's trust weight keep reading the teacher's own logits.
    "teacher_fix": "none",
}
TEACHER_FIXES = ("none", "swap")


class AdversarialDistillation(DistillMethod):
    """Base of methods that craft x' with PGD and distil; ASA and MIM plug in as optional components.

    Subclasses set ``defaults`` (their hyper-parameters, from the official code) and implement
    :meth:`forward` with the helpers below, so that ASA replaces the fixed radius inside *their own*
    inner maximisation (:meth:`radius`, :meth:`attack`) and MIM adds its terms to *their own* loss
    (:meth:`teacher_logits` / :meth:`student_adv` capture the features, :meth:`finish` adds the terms).
    """

    defaults: Dict[str, Any] = {}
    default_asa: bool = False
    default_mim: bool = False

    def __init__(self, asa: Optional[nn.Module] = None, mim: Optional[nn.Module] = None, **opts: Any):
        super().__init__()
        unknown = set(opts) - set(self.option_defaults())
        if unknown:
            raise ValueError(f"{self.name}: unknown options {sorted(unknown)}")
        self.hp: Dict[str, Any] = {**self.option_defaults(), **opts}
        if int(self.hp["steps"]) < 0 or not float(self.hp["step_ratio"]) > 0 or not float(self.hp["eps_scale"]) > 0:
            raise ValueError("steps must be >= 0, step_ratio and eps_scale > 0")
        if self.hp["teacher_fix"] not in TEACHER_FIXES:
            raise ValueError(f"teacher_fix must be one of {', '.join(TEACHER_FIXES)}, got '{self.hp['teacher_fix']}'")
        self.asa = asa
        self.mim = mim
        self._reset_step()

    @classmethod
    def option_defaults(cls) -> Dict[str, Any]:
        return {**_ATTACK_DEFAULTS, **cls.defaults}

    @classmethod
    def create(cls, asa: Optional[nn.Module], mim: Optional[nn.Module], **opts: Any) -> "AdversarialDistillation":
        return cls(asa=asa, mim=mim, **opts)

    # -- lifecycle ---------------------------------------------------------------------------------
    def setup(self, student: nn.Module, teacher: Optional[nn.Module], *, num_train: int, num_classes: int,
              eps: float, student_arch: Optional[str] = None, teacher_arch: Optional[str] = None,
              input_shape=None) -> None:
        if self.needs_teacher and teacher is None:
            raise ValueError(f"method '{self.name}' needs a teacher")
        if teacher is not None:  # frozen: eval mode (BN statistics fixed) and no parameter gradients
            teacher.eval()
            for p in teacher.parameters():
                p.requires_grad_(False)
        dev = next(student.parameters()).device
        if self.asa is not None:
            self.asa.setup(num_train, eps * float(self.hp["eps_scale"]), dev)
        if self.mim is not None:
            self.mim.setup(student, teacher, student_arch, teacher_arch, input_shape, num_classes)

    def end_epoch(self, epoch: int) -> Dict[str, float]:
        return self.asa.epoch_stats() if self.asa is not None else {}

    def sync(self) -> None:
        if self.asa is not None:
            self.asa.sync()

    def teardown(self) -> None:
        if self.mim is not None:
            self.mim.remove_hooks()

    # -- reporting ---------------------------------------------------------------------------------
    def mim_levels(self) -> Dict[str, Any]:
        """What MIM actually runs (meaningful after :meth:`setup`), for the card and the result.

        ``feature``: ``"penultimate"`` (InfoNCE on penultimate features), ``"logits"`` (the teacher exposes
        none: its logits stand in; only with ``mim_partial``) or ``"off"``; ``attention``: number of
        student/teacher stage pairs aligned; ``pairs``: ``[[student stage, teacher point], ...]`` (graph
        teachers: the graph node); ``attention_sizes``: map side per pair; ``requested``: what the options
        asked for; ``teacher_points``: where the teacher's points come from, ``registered`` (named layers) |
        ``fx-graph`` (a GraphModule: ONNX via onnx2torch) | ``torchscript`` (converted twin) | ``fx-traced``
        (unregistered eager model) | ``none``; ``partial``: True when a requested level does not run as asked
        (feature level on logits, attention off; only possible with ``mim_partial``; fewer pairs than
        ``mim_levels`` because a model has fewer stages is not partial); ``ready``: setup ran; ``notes``:
        the reasons. Without MIM: :data:`MIM_OFF`.
        """
        return self.mim.report() if self.mim is not None else dict(MIM_OFF)

    def describe(self) -> Dict[str, Any]:
        """Protocol and effective settings (JSON-serialisable), so results can report what was compared.

        ``method`` / ``base``: the name and the objective it runs; ``protocol``: ``official`` | ``matched``;
        ``kl_reduction``; ``attack``: inner maximisation budget and form (``steps``, ``step_ratio`` = step /
        eps, ``eps_scale`` = training radius / eps, ``init``, ``bn_eval``); ``schedule``: the optimiser
        defaults the trainer takes (:class:`Schedule`); ``options``: every hyper-parameter in effect;
        ``overrides``: options given explicitly at construction; ``asa`` / ``mim``: their settings or None.
        """
        hp = self.hp
        asa = None if self.asa is None else {k: getattr(self.asa, k) for k in
                                            ("rule", "eps_min", "eps_max", "eps_init", "step", "momentum", "warmup",
                                                      "conf")}
        mim = None if self.mim is None else {
            "feat": self.mim.w_feat, "att": self.mim.w_att, "levels": self.mim.levels, "tau": self.mim.tau,
            "dim": self.mim.dim, "att_mode": self.mim.att_mode, "teacher_input": self.mim.teacher_input,
            "head": self.mim.head_kind, "partial": self.mim.partial}
        return {"method": self.name, "base": getattr(self, "base_name", self.name), "protocol": self.protocol,
                "kl_reduction": hp.get("kl_reduction"),
                "attack": {k: hp[k] for k in ("steps", "step_ratio", "eps_scale", "init", "bn_eval") if k in hp},
                "schedule": asdict(self.schedule), "options": dict(hp),
                "overrides": sorted(getattr(self, "overrides", ())), "asa": asa, "mim": mim}

    # -- per-step helpers --------------------------------------------------------------------------
    def _reset_step(self) -> None:
        self._t_views: Dict[str, torch.Tensor] = {}
        self._t_feats: Optional[Dict[str, torch.Tensor]] = None
        self._s_feats: Optional[Dict[str, torch.Tensor]] = None
        self._eps_used: Any = None

    def radius(self, idx: torch.Tensor, ctx: StepContext, x: torch.Tensor, teacher: Optional[nn.Module] = None,
               y: Optional[torch.Tensor] = None):
        """``(eps, alpha)``: floats, or (B,) tensors when ASA supplies per-sample radii. ASA's ``teacher`` rule
        reads the teacher's clean logits (computed here, once, if the method has not yet)."""
        if self.asa is not None:
            t_clean = None
            if getattr(self.asa, "rule", "visit") != "visit":
                if teacher is None or y is None:
                    raise RuntimeError(f"{self.name}: ASA's teacher rule needs the teacher and labels in radius()")
                t_clean = self._t_views.get("clean")
                if t_clean is None:
                    t_clean = self.teacher_logits(teacher, x, "clean")
            eps = self.asa.radius(idx, ctx.epoch, ctx.epochs, t_clean, y).to(device=x.device, dtype=torch.float32)
        else:
            eps = float(ctx.eps) * float(self.hp["eps_scale"])
        self._eps_used = eps
        return eps, eps * float(self.hp["step_ratio"])

    def attack(self, student: nn.Module, loss_fn, x: torch.Tensor, eps, alpha, ctx: StepContext, *,
               bn_eval: bool, init: str) -> torch.Tensor:
        """PGD maximising ``loss_fn(x').sum()`` with the student's BN in eval (``bn_eval``) or train mode."""
        from ..attacks.pgd import pgd

        was_training = student.training
        student.train(not bn_eval)
        try:
            return pgd(loss_fn, x, eps, alpha, int(self.hp["steps"]), init=init, init_std=0.001,
                       generator=ctx.generator)
        finally:
            student.train(was_training)

    def teacher_logits(self, teacher: nn.Module, x: torch.Tensor, view: str,
                       y: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Teacher logits (no grad) on ``view`` = ``clean`` (x) or ``adv`` (x'), capturing MIM features
        when this is the view MIM aligns to; cached for :meth:`finish` and ASA. Pass the labels ``y`` when
        the logits become a distillation target: with ``teacher_fix=swap`` the returned copy is corrected
        where the teacher is wrong, while the cache keeps the teacher's own logits (its trust signals)."""
        if teacher.training:  # a frozen teacher is always evaluated with fixed BN statistics
            teacher.eval()
        tap = self.mim.t_tap if (self.mim is not None and self.mim.teacher_input == view) else None
        with torch.no_grad():
            if tap is not None:  # through the tap's runner: a hookable twin for TorchScript / traced teachers
                with tap.capture() as feats:
                    out = tap.run(teacher, x)
                self._t_feats = dict(feats)
            else:
                out = teacher(x)
                if self.mim is not None and self.mim.teacher_input == view:
                    self._t_feats = {}
        self._t_views[view] = out
        if y is not None and self.hp["teacher_fix"] == "swap":
            from .kl import swap_wrong_teacher_logits

            return swap_wrong_teacher_logits(out, y)
        return out

    def student_adv(self, student: nn.Module, x_adv: torch.Tensor) -> torch.Tensor:
        """Student logits on x' (with graph), capturing MIM features from this pass only."""
        if self.mim is None or self.mim.s_tap is None:
            return student(x_adv)
        with self.mim.s_tap.capture() as feats:
            out = student(x_adv)
        self._s_feats = dict(feats)
        return out

    def finish(self, loss: torch.Tensor, logs: Dict[str, torch.Tensor], teacher: nn.Module, x: torch.Tensor,
               x_adv: torch.Tensor, y: torch.Tensor, idx: torch.Tensor, ctx: StepContext,
               s_adv: torch.Tensor, s_nat: Optional[torch.Tensor] = None) -> StepOutput:
        """Add MIM terms, update ASA's memory, and turn the logs into floats with one device sync."""
        logs = dict(logs)
        logs["loss_base"] = loss.detach()
        if self.mim is not None:
            view = self.mim.teacher_input
            if view not in self._t_views:  # the base method did not evaluate the teacher there: one extra pass
                self.teacher_logits(teacher, x_adv if view == "adv" else x, view)
            mim_loss, mim_logs = self.mim.loss(self._s_feats or {}, self._t_feats or {}, self._t_views[view])
            loss = loss + mim_loss
            logs.update(mim_logs)
        if self.asa is not None:
            self.asa.update(idx, y, s_adv.detach(), [self._t_views.get("clean"), self._t_views.get("adv")],
                            ctx.epoch, ctx.epochs)
            logs["asa_eps"] = self._eps_used.mean() / float(ctx.eps)
        logs["acc_adv"] = (s_adv.detach().argmax(1) == y).float().mean()
        if s_nat is not None:
            logs["acc_nat"] = (s_nat.detach().argmax(1) == y).float().mean()
        self._reset_step()
        keys = list(logs)
        vals = torch.stack([torch.as_tensor(logs[k], dtype=torch.float32, device=loss.device).reshape(())
                            for k in keys]).tolist()
        return StepOutput(loss=loss, x_adv=x_adv, logs=dict(zip(keys, vals)))
