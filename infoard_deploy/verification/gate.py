"""Deployment gates: is the shipped artifact the reference, with its outputs, accuracy and robustness?

All gates are on by default; bounds come per artifact from its card / precision (:mod:`.bounds`), and a
``GateConfig`` value (a CLI flag) replaces them for every artifact. Per artifact, against the torch
reference, on the same n samples (numbers in percent / points of n):

==================  ===========================================================================================
``provenance``      the card's ``source_sha256`` is the reference file's sha256 and the file is the one the export
                    wrote (:mod:`.provenance`); no card: refused, or a prominent warning with ``allow_cardless``
``finite_outputs``  no NaN/inf logits on any input (fp16 overflow, a broken scale)
``output_is_logits`` the artifact does not emit probability vectors where the reference emits logits
``top1_agreement``  top-1 agreement on clean inputs >= the precision's ``min_top1``          (rate rule)
``adv_agreement``   top-1 agreement on the worst adversarial input set >= ``min_adv_top1``   (rate rule)
``max_logit_delta`` max |delta logit| / max(1, max |reference logit|) <= ``max_rel`` (or an absolute bound)
``clean_drop``      clean accuracy: reference - artifact                                     (paired rule)
``robust_drop``     robust accuracy: reference - artifact                                    (paired rule)
``robust_gain``     robust accuracy: artifact - reference; looking clearly *more* robust than the source means
                    the attacks do not reach the artifact (gradient masking) or it is another model; its own
                    bound, wider than the drop's (quantization alone makes a few transfer examples miss)
                    (paired rule)
``flip_rate``       samples robust on the reference, broken on the artifact                  (rate rule)
``reverse_flip_rate`` samples broken on the reference, robust on the artifact: flips in both directions can
                    cancel in the net robust accuracy, so each direction has its own bound   (rate rule)
``query_excess``    samples only Square broke on the artifact minus those it broke on the reference: transfer
                    and own-graph attacks under-estimate this artifact                       (paired rule)
==================  ===========================================================================================

Rate and paired rules are the statistical decision of :mod:`.stats`: fail iff the point estimate exceeds
the minimum effect (``min_effect_ratio`` x the bound, 2/3 by default) *and* the one-sided upper
confidence bound (``confidence``, 95 %) exceeds the bound. A CI job runs ``infoard-deploy verify`` and
fails (exit 1) when any gate fails; ``skip`` names gates to leave out (reported as skipped).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any, Dict, List, Optional, Tuple

from ..errors import UserError
from .bounds import Bounds, resolve_bounds
from .provenance import provenance_message
from .stats import Decision, paired_decision, rate_decision, table, z_one_sided

if TYPE_CHECKING:  # pragma: no cover
    from .robust import ModelResult, VerifyResult

GATES = ("provenance", "finite_outputs", "output_is_logits", "top1_agreement", "adv_agreement", "max_logit_delta",
         "clean_drop", "robust_drop", "robust_gain", "flip_rate", "reverse_flip_rate", "query_excess")


@dataclass(frozen=True)
class GateConfig:
    """Explicit bounds (``None``: per artifact from its card / precision) and the decision settings."""

    max_robust_drop: Optional[float] = None      # points
    max_robust_gain: Optional[float] = None      # points
    max_flip_rate: Optional[float] = None        # % of n, each direction
    min_top1_agreement: Optional[float] = None   # %, clean and every adversarial set
    max_logit_delta: Optional[float] = None      # absolute |delta logit|
    max_clean_drop: Optional[float] = None       # points
    max_query_excess: Optional[float] = None     # points
    min_effect_ratio: float = 2.0 / 3.0          # minimum effect = ratio x bound
    confidence: float = 0.95                     # one-sided confidence of the upper bound
    allow_cardless: bool = False                 # verify artifacts without a card (provenance unknown)
    skip: Tuple[str, ...] = ()                   # gate names left out

    def __post_init__(self) -> None:
        if self.max_robust_drop is not None and not self.max_robust_drop >= 0:
            raise UserError(f"--max-robust-drop must be >= 0 percentage points, got {self.max_robust_drop}")
        if self.max_robust_gain is not None and not self.max_robust_gain >= 0:
            raise UserError(f"--max-robust-gain must be >= 0 percentage points, got {self.max_robust_gain}")
        if self.max_flip_rate is not None and not 0 <= self.max_flip_rate <= 100:
            raise UserError(f"--max-flip-rate must lie in [0, 100] percent, got {self.max_flip_rate}")
        if self.min_top1_agreement is not None and not 0 <= self.min_top1_agreement <= 100:
            raise UserError(f"--min-top1-agreement must lie in [0, 100] percent, got {self.min_top1_agreement}")
        if self.max_logit_delta is not None and not self.max_logit_delta >= 0:
            raise UserError(f"--max-logit-delta must be >= 0, got {self.max_logit_delta}")
        if self.max_clean_drop is not None and not 0 <= self.max_clean_drop <= 100:
            raise UserError(f"--max-clean-drop must lie in [0, 100] points, got {self.max_clean_drop}")
        if self.max_query_excess is not None and not 0 <= self.max_query_excess <= 100:
            raise UserError(f"--max-query-excess must lie in [0, 100] points, got {self.max_query_excess}")
        if not 0 <= self.min_effect_ratio <= 1:
            raise UserError(f"--min-effect-ratio must lie in [0, 1], got {self.min_effect_ratio}")
        if not 0.5 <= self.confidence < 1:
            raise UserError(f"--confidence must lie in [0.5, 1), got {self.confidence}")
        bad = [g for g in self.skip if g not in GATES]
        if bad:
            raise UserError(f"--skip-gate: unknown gate(s) {', '.join(bad)} (gates: {', '.join(GATES)})")

    def to_dict(self) -> Dict[str, Any]:
        d = asdict(self)
        d["skip"] = list(self.skip)
        return d


@dataclass
class GateResult:
    gate: str
    artifact: str
    value: float
    bound: float
    passed: bool
    message: str
    status: str = ""                    # pass | FAIL | warn | skipped
    decision: Optional[Dict[str, Any]] = None
    extra: Dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.status:
            self.status = "pass" if self.passed else "FAIL"

    def to_dict(self) -> Dict[str, Any]:
        return asdict(self)


def bounds_for(a: "ModelResult", cfg: GateConfig) -> Bounds:
    b = a.info.get("bounds")
    if isinstance(b, Bounds):
        return b
    prov = a.info.get("provenance") or {}
    return resolve_bounds(a.precision, prov.get("tolerances"), cfg)


def _stat(gate: str, art: str, d: Decision, what: str, unit: str = "pts", conf: float = 0.95) -> GateResult:
    c = f"{100 * conf:g}%"
    msg = (f"{what} {d.point:+.2f} {unit} ({c} upper bound {d.ucb:.2f}; fails above {d.min_effect:.2f} "
           f"when the bound exceeds {d.bound:g})") if unit == "pts" else \
          (f"{what} {d.point:.2f}% ({c} upper bound {d.ucb:.2f}%; fails above {d.min_effect:.2f}% when the bound "
           f"exceeds {d.bound:g}%)")
    return GateResult(gate, art, d.point, d.bound, not d.failed, msg, decision=d.to_dict())


def artifact_gates(res: "VerifyResult", a: "ModelResult", cfg: GateConfig) -> List[GateResult]:
    """Every gate of one artifact (skipped gates included, marked ``skipped``)."""
    z = z_one_sided(cfg.confidence)
    b = bounds_for(a, cfg)
    r = res.reference
    n = res.n
    ratio = cfg.min_effect_ratio

    def stat(gate: str, d: Decision, what: str, unit: str = "pts") -> GateResult:
        return _stat(gate, a.name, d, what, unit, cfg.confidence)

    out: List[GateResult] = []
    prov = a.info.get("provenance")
    if prov is not None:
        st = prov.get("status")
        ok = st == "match" or (cfg.allow_cardless and st in ("cardless", "unrecorded", "unverifiable"))
        g = GateResult("provenance", a.name, 0.0 if st == "match" else 1.0, 0.0, ok, provenance_message(prov),
                       extra={"status": st})
        if ok and st != "match":
            g.status = "warn"
        out.append(g)
    par = a.parity
    sets = par.sets if par is not None else {}
    nonfinite = sum(s.nonfinite for s in sets.values())
    rows = sum(s.n for s in sets.values())
    out.append(GateResult("finite_outputs", a.name, float(nonfinite), 0.0, nonfinite == 0,
                          f"{nonfinite} of {rows} output rows hold NaN/inf"))
    if par is not None and sets:
        tot, pa, pr = par.totals()
        fa, fr = pa / max(tot, 1), pr / max(tot, 1)
        out.append(GateResult("output_is_logits", a.name, 100 * fa, 50.0, not (fa >= 0.5 and fr < 0.5),
                              f"{100 * fa:.1f}% of the artifact's output rows are probability vectors (in [0,1], "
                              f"summing to 1) vs {100 * fr:.1f}% of the reference's"))
        clean = sets.get("clean")
        if clean is not None and clean.n:
            d = rate_decision(clean.n - clean.agree, clean.n, 100 - b.min_clean_agreement,
                              ratio * (100 - b.min_clean_agreement), z)
            g = stat("top1_agreement", d, "clean top-1 disagreement", unit="%")
            g.message = f"clean top-1 agreement {clean.top1_agreement:.2f}% (needs >= {b.min_clean_agreement:g}%); " \
                        + g.message
            out.append(g)
        worst = par.worst_agreement_excluding("clean")
        if worst is not None:
            name, agree, k, m = worst
            d = rate_decision(k, m, 100 - b.min_adv_agreement, ratio * (100 - b.min_adv_agreement), z)
            g = stat("adv_agreement", d, f"disagreement on the '{name}' inputs", unit="%")
            g.message = f"top-1 agreement {agree:.2f}% on the '{name}' inputs (needs >= {b.min_adv_agreement:g}%); " \
                        + g.message
            out.append(g)
        if b.max_logit_abs is not None:
            name, delta = par.worst_delta()
            out.append(GateResult("max_logit_delta", a.name, delta, b.max_logit_abs, delta <= b.max_logit_abs,
                                  f"max |delta logit| {delta:.4g} on the '{name}' inputs "
                                  f"(allowed {b.max_logit_abs:g})"))
        elif b.max_logit_rel is not None:
            name, rel = par.worst_rel()
            absd = sets[name].max_abs
            out.append(GateResult("max_logit_delta", a.name, rel, b.max_logit_rel, rel <= b.max_logit_rel,
                                  f"max |delta logit| {absd:.4g} = {rel:.3g} of max(1, |reference logit|) on the "
                                  f"'{name}' inputs (allowed {b.max_logit_rel:g})"))
    rc, ac = r.correct_after(0), a.correct_after(0)
    d = paired_decision(*table(rc, ac), b.max_clean_drop, ratio * b.max_clean_drop, z)
    out.append(stat("clean_drop", d, f"clean accuracy {100 * ac.mean():.2f}% vs {100 * rc.mean():.2f}%: drop"))
    ta, tb, tc, td = table(r.robust, a.robust)
    d = paired_decision(ta, tb, tc, td, b.max_robust_drop, ratio * b.max_robust_drop, z)
    out.append(stat("robust_drop", d, f"robust accuracy {a.robust_acc:.2f}% vs {r.robust_acc:.2f}%: drop"))
    d = paired_decision(ta, tc, tb, td, b.max_robust_gain, ratio * b.max_robust_gain, z)
    out.append(stat("robust_gain", d, f"robust accuracy {a.robust_acc:.2f}% vs {r.robust_acc:.2f}%: gain"))
    fb = ratio * b.max_flip_rate
    d = rate_decision(tb, n, b.max_flip_rate, fb, z)
    out.append(stat("flip_rate", d, f"{tb} samples robust on the reference, broken on the artifact:", "%"))
    d = rate_decision(tc, n, b.max_flip_rate, fb, z)
    out.append(stat("reverse_flip_rate", d, f"{tc} samples broken on the reference, robust on the artifact:", "%"))
    if "square" in res.config.stages:
        qa, qb, qc, qd = table(res.square_only(r), res.square_only(a))
        d = paired_decision(qa, qc, qb, qd, b.max_query_excess, ratio * b.max_query_excess, z)
        out.append(stat("query_excess", d,
                        f"Square alone broke {qa + qc} samples on the artifact vs {qa + qb} on the reference: excess"))
    for g in out:
        if g.gate in cfg.skip:
            g.passed, g.status = True, "skipped"
    return out


def evaluate_gates(res: "VerifyResult", cfg: GateConfig = GateConfig()) -> List[GateResult]:
    out: List[GateResult] = []
    for a in res.artifacts:
        out += artifact_gates(res, a, cfg)
    return out


def summary_line(gates: List[GateResult], causes: Optional[Dict[str, str]] = None) -> str:
    """One line for the CLI: which artifact failed which gates (and the likely cause), or that all passed."""
    failed = [g for g in gates if not g.passed]
    warned = sorted({g.artifact for g in gates if g.status == "warn"})
    if not failed:
        arts = sorted({g.artifact for g in gates})
        tail = f" (provenance unknown for {', '.join(warned)})" if warned else ""
        return f"all gates passed for {len(arts)} artifact(s){tail}"
    parts = []
    for art in dict.fromkeys(g.artifact for g in failed):
        names = [g.gate for g in failed if g.artifact == art]
        cause = (causes or {}).get(art)
        first = next(g for g in failed if g.artifact == art)
        parts.append(f"{art}: {', '.join(names)} failed -- " + (cause or first.message))
    return "; ".join(parts)


__all__ = ["GateConfig", "GateResult", "GATES", "evaluate_gates", "artifact_gates", "summary_line", "bounds_for"]
