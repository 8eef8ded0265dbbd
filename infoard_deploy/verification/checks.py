"""Named sanity checks of a verification run (AutoAttack-style "flags"), reported but not gating.

Pre-flight (on the first batch, per model; :func:`preflight_probe`):

* ``logits_not_probabilities``: outputs that are already softmax probabilities weaken CE/margin attacks
  (AutoAttack's ``check_range_output``).
* ``deterministic_outputs``: the same input twice must give the same logits (AutoAttack's
  ``check_randomized``); a randomised model makes every robust accuracy an over-estimate.

After the run (:func:`run_checks`):

* ``gradient_masking_suspected`` (reference): Square, a gradient-free attack, breaks samples that every
  white-box attack missed at a notable rate -> gradients are uninformative (Athalye et al., ICML 2018,
  "Obfuscated gradients give a false sense of security"; AutoAttack's black-box-beats-white-box flag).
* ``query_beats_transfer`` (per artifact): Square on the artifact breaks samples that all transfer and
  own-graph attacks missed -> they under-estimate the artifact's weakness; trust the query result. (The
  ``query_excess`` *gate* bounds the same count beyond the reference's; this check only reports it.)
* ``own_graph_gradients`` (per model): the input gradient of its own graph is exactly zero on most samples
  (``Round``, an input quantiser, a lookup): white-box attacks cannot work on it, only transfer and Square do.
* ``eps_sweep_monotone`` (per model): robust accuracy must not rise with eps (a rise signals masking).
* ``nonfinite_outputs`` (per artifact): NaN/inf logits (fp16 overflow, broken quantisation scales).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any, Dict, List, Optional

import torch
from torch import nn

if TYPE_CHECKING:  # pragma: no cover
    from .robust import VerifyResult


@dataclass
class PreflightProbe:
    probabilities: bool       # every row in [0,1] and summing to 1
    max_repeat_delta: float   # max |f(x) - f(x)| over two identical calls


def preflight_probe(model: nn.Module, x: torch.Tensor) -> PreflightProbe:
    """Two forward passes on the same inputs ``x`` (B, C, H, W)."""
    with torch.no_grad():
        a = model(x).float()
        b = model(x).float()
    probs = bool(((a >= 0) & (a <= 1)).all() and torch.allclose(a.sum(1), torch.ones(len(a), device=a.device), atol=1e-3))
    delta = float((a - b).abs().max()) if a.numel() else 0.0
    return PreflightProbe(probabilities=probs, max_repeat_delta=delta if delta == delta else float("inf"))


@dataclass
class Check:
    name: str
    target: str          # the model it concerns
    status: str          # ok | warn | skipped
    message: str
    value: Optional[float] = None

    @property
    def fired(self) -> bool:
        return self.status == "warn"

    def to_dict(self) -> Dict[str, Any]:
        return asdict(self)


def run_checks(res: "VerifyResult", masking_threshold: float = 1.0, sweep_tolerance: float = 1.0) -> List[Check]:
    """All named checks; ``masking_threshold`` and ``sweep_tolerance`` are in percent of n."""
    out: List[Check] = []
    models = [res.reference, *res.artifacts]
    for m in models:
        p = m.probe
        if p is None:
            continue
        if m.role == "artifact" and p.probabilities and not (res.reference.probe and res.reference.probe.probabilities):
            why = ("outputs are probability vectors while the reference emits logits: a softmax was appended or the "
                   "wrong output exported (see the output_is_logits gate)")
        else:
            why = "outputs look like softmax probabilities: CE/margin attacks on them are weakened; export logits"
        out.append(Check("logits_not_probabilities", m.name, "warn" if p.probabilities else "ok",
                         why if p.probabilities else "outputs are logits"))
        det = p.max_repeat_delta <= 1e-5
        out.append(Check("deterministic_outputs", m.name, "ok" if det else "warn",
                         "identical inputs give identical outputs" if det else
                         f"outputs change between identical calls (max |delta| {p.max_repeat_delta:.3g}): "
                         "a randomised model over-states robustness", p.max_repeat_delta))

    sq = res.config.square_queries > 0
    ref = res.reference
    extra = res.query_extra(ref)
    if not sq:
        out.append(Check("gradient_masking_suspected", ref.name, "skipped", "no query attack (--square-queries 0)"))
    else:
        fired = extra["rate"] >= masking_threshold and extra["count"] > 0
        out.append(Check(
            "gradient_masking_suspected", ref.name, "warn" if fired else "ok",
            (f"Square broke {extra['count']} samples ({extra['rate']:.1f}% of n) that every white-box attack missed: "
             "gradients are uninformative (masked/obfuscated); white-box robust accuracy is not trustworthy")
            if fired else f"Square broke {extra['count']} samples the white-box attacks missed "
                          f"(below {masking_threshold:g}% of n)", extra["rate"]))
    for a in res.artifacts:
        ex = res.query_extra(a)
        if not sq:
            out.append(Check("query_beats_transfer", a.name, "skipped", "no query attack (--square-queries 0)"))
        else:
            fired = ex["rate"] >= masking_threshold and ex["count"] > 0
            out.append(Check(
                "query_beats_transfer", a.name, "warn" if fired else "ok",
                (f"Square on the artifact broke {ex['count']} samples ({ex['rate']:.1f}% of n) that every transfer "
                 "attack missed: transfer from torch under-estimates this artifact's weakness")
                if fired else f"Square on the artifact broke {ex['count']} samples beyond the transfer attacks",
                ex["rate"]))
        nf = sum(s.nonfinite for s in a.parity.sets.values()) if a.parity else 0
        out.append(Check("nonfinite_outputs", a.name, "warn" if nf else "ok",
                         f"{nf} outputs with NaN/inf logits" if nf else "all logits finite", float(nf)))

    for m in models:
        frac = res.zero_grad_fraction(m)
        if frac is None:
            continue
        fired = frac >= 0.5
        out.append(Check("own_graph_gradients", m.name, "warn" if fired else "ok",
                         (f"its own graph has zero input gradient on {100 * frac:.0f}% of the samples attacked: a "
                          "non-differentiable op (Round, input quantiser) masks gradients; white-box attacks cannot "
                          "reach it") if fired else f"input gradients non-zero on {100 * (1 - frac):.0f}% of samples",
                         100 * frac))

    mults = sorted(res.config.eps_sweep)
    for m in models:
        if len(mults) < 2 or not m.sweep_correct:
            continue
        accs = [100.0 * m.sweep_correct[k] / max(res.n, 1) for k in mults]
        rises = [(mults[i], mults[i + 1], accs[i + 1] - accs[i]) for i in range(len(accs) - 1)
                 if accs[i + 1] - accs[i] > sweep_tolerance]
        out.append(Check(
            "eps_sweep_monotone", m.name, "warn" if rises else "ok",
            ("robust accuracy rises with eps (" + ", ".join(f"{lo:g}x->{hi:g}x: +{d:.1f} pts" for lo, hi, d in rises)
             + "): a sign of gradient masking") if rises else "robust accuracy falls with eps",
            max((d for _, _, d in rises), default=0.0)))
    return out


__all__ = ["Check", "PreflightProbe", "preflight_probe", "run_checks"]
