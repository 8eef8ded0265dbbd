"""Deployment gates: did the shipped artifact keep the reference's robustness and outputs?

Per artifact, against the torch reference (all numbers in percent / percentage points of n):

* ``robust_drop``: reference robust accuracy - artifact robust accuracy <= ``max_robust_drop`` (always on).
* ``flip_rate``: samples robust on torch but broken on the artifact <= ``max_flip_rate`` (optional).
* ``top1_agreement``: the lowest top-1 agreement over the clean and every adversarial input set
  >= ``min_top1_agreement`` (optional).
* ``max_logit_delta``: the largest |logit difference| over all input sets <= ``max_logit_delta`` (optional).
* ``finite_outputs``: no NaN/inf logits (always on: such an artifact is broken whatever its accuracy).

A CI job runs ``infoard-deploy verify`` and fails (exit 1) when any gate fails.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any, Dict, List, Optional

from ..errors import UserError

if TYPE_CHECKING:  # pragma: no cover
    from .robust import VerifyResult


@dataclass(frozen=True)
class GateConfig:
    max_robust_drop: float = 2.0
    max_flip_rate: Optional[float] = None
    min_top1_agreement: Optional[float] = None
    max_logit_delta: Optional[float] = None

    def __post_init__(self) -> None:
        if not self.max_robust_drop >= 0:
            raise UserError(f"--max-robust-drop must be >= 0 percentage points, got {self.max_robust_drop}")
        if self.max_flip_rate is not None and not 0 <= self.max_flip_rate <= 100:
            raise UserError(f"--max-flip-rate must lie in [0, 100] percent, got {self.max_flip_rate}")
        if self.min_top1_agreement is not None and not 0 <= self.min_top1_agreement <= 100:
            raise UserError(f"--min-top1-agreement must lie in [0, 100] percent, got {self.min_top1_agreement}")
        if self.max_logit_delta is not None and not self.max_logit_delta >= 0:
            raise UserError(f"--max-logit-delta must be >= 0, got {self.max_logit_delta}")


@dataclass
class GateResult:
    gate: str
    artifact: str
    value: float
    bound: float
    passed: bool
    message: str

    def to_dict(self) -> Dict[str, Any]:
        return asdict(self)


def evaluate_gates(res: "VerifyResult", cfg: GateConfig) -> List[GateResult]:
    out: List[GateResult] = []
    ref_acc = res.reference.robust_acc
    for a in res.artifacts:
        drop = ref_acc - a.robust_acc
        out.append(GateResult("robust_drop", a.name, drop, cfg.max_robust_drop, drop <= cfg.max_robust_drop + 1e-9,
                              f"robust accuracy {a.robust_acc:.2f}% vs torch {ref_acc:.2f}% "
                              f"(drop {drop:+.2f} pts, allowed {cfg.max_robust_drop:g})"))
        nonfinite = sum(s.nonfinite for s in a.parity.sets.values()) if a.parity else 0
        out.append(GateResult("finite_outputs", a.name, float(nonfinite), 0.0, nonfinite == 0,
                              f"{nonfinite} rows with NaN/inf logits"))
        if cfg.max_flip_rate is not None:
            f = res.flips(a)["robust_to_broken"]
            out.append(GateResult("flip_rate", a.name, f["rate"], cfg.max_flip_rate,
                                  f["rate"] <= cfg.max_flip_rate + 1e-9,
                                  f"{f['count']} samples robust on torch but broken on the artifact "
                                  f"({f['rate']:.2f}%, allowed {cfg.max_flip_rate:g}%)"))
        if cfg.min_top1_agreement is not None and a.parity is not None:
            name, agree = a.parity.worst_agreement()
            out.append(GateResult("top1_agreement", a.name, agree, cfg.min_top1_agreement,
                                  agree >= cfg.min_top1_agreement - 1e-9,
                                  f"top-1 agreement {agree:.2f}% on the '{name}' inputs "
                                  f"(needs >= {cfg.min_top1_agreement:g}%)"))
        if cfg.max_logit_delta is not None and a.parity is not None:
            name, delta = a.parity.worst_delta()
            out.append(GateResult("max_logit_delta", a.name, delta, cfg.max_logit_delta,
                                  delta <= cfg.max_logit_delta,
                                  f"max |delta logit| {delta:.4g} on the '{name}' inputs "
                                  f"(allowed {cfg.max_logit_delta:g})"))
    return out


def summary_line(gates: List[GateResult]) -> str:
    """One line for the CLI: which artifact failed which gate, or that all passed."""
    failed = [g for g in gates if not g.passed]
    if not failed:
        arts = sorted({g.artifact for g in gates})
        return f"all gates passed for {len(arts)} artifact(s)"
    return "; ".join(f"{g.artifact}: {g.gate} ({g.message})" for g in failed)


__all__ = ["GateConfig", "GateResult", "evaluate_gates", "summary_line"]
