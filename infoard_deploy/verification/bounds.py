"""Per-artifact gate bounds: the artifact's own card/profile tolerances, else its precision's defaults.

Order of precedence, field by field (every bound in percent / percentage points of n):

1. an explicit :class:`~.gate.GateConfig` value (CLI flag such as ``--max-robust-drop``), for every artifact;
2. the tolerances the export recorded in the artifact's card (``metrics.gate.tolerances``, one table per
   profile that produced the file; the strictest value over those profiles wins);
3. the precision's defaults, :data:`infoard_deploy.exporting.profiles.DEFAULT_TOLERANCES` (an artifact of
   unknown precision gets the loosest, int8's).

Two bounds the export does not gate have verify-only fallbacks (:data:`VERIFY_FALLBACK`): INT8 logits move
by design, so the export gates no logit delta for int8, but verify bounds the relative delta at 0.5 so
an output that is not the same kind of quantity (probabilities, rescaled logits) cannot pass on agreement
alone; and the clean-accuracy drop of fp32 / fp16 (0.5 / 1 point), which the export leaves ungated.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any, Dict, Mapping, Optional

if TYPE_CHECKING:  # pragma: no cover
    from .gate import GateConfig

INT8_MAX_REL = 0.5
VERIFY_FALLBACK: Dict[str, Dict[str, float]] = {"fp32": {"max_acc_drop": 0.005}, "fp16": {"max_acc_drop": 0.01},
                                                "int8": {"max_rel": INT8_MAX_REL}}
_LOWER = ("min_top1", "min_adv_top1")  # larger is stricter
_FIELDS = ("max_abs", "max_rel", "min_top1", "max_acc_drop", "min_adv_top1", "max_robust_drop", "max_robust_gain",
           "max_flip_rate", "max_query_excess")


@dataclass(frozen=True)
class Bounds:
    precision: str
    min_clean_agreement: float          # % top-1 agreement on clean inputs
    min_adv_agreement: float            # % on the worst adversarial input set
    max_logit_rel: Optional[float]      # max |delta logit| / max(1, max |reference logit|)
    max_logit_abs: Optional[float]      # max |delta logit|
    max_clean_drop: float               # points of clean accuracy
    max_robust_drop: float              # points of robust accuracy lost
    max_robust_gain: float              # points of robust accuracy gained
    max_flip_rate: float                # % of n, each direction
    max_query_excess: float             # points: Square-only breaks beyond the reference's
    sources: Dict[str, str] = field(default_factory=dict)  # bound -> where it came from

    def to_dict(self) -> Dict[str, Any]:
        return asdict(self)


def card_tolerances(card_tols: Optional[Mapping[str, Any]]) -> Dict[str, float]:
    """The strictest value per field over a card's ``{profile: {field: value}}`` tolerance tables."""
    out: Dict[str, float] = {}
    if not isinstance(card_tols, Mapping):
        return out
    for table in card_tols.values():
        if not isinstance(table, Mapping):
            continue
        for k, v in table.items():
            if k not in _FIELDS or not isinstance(v, (int, float)) or isinstance(v, bool):
                continue
            v = float(v)
            out[k] = v if k not in out else (max(out[k], v) if k in _LOWER else min(out[k], v))
    return out


def resolve_bounds(precision: str, card_tols: Optional[Mapping[str, Any]], gates: "GateConfig",
                   profile_name: str = "card") -> Bounds:
    """Bounds for one artifact (see the module docstring)."""
    from ..exporting.profiles import DEFAULT_TOLERANCES

    prec = precision if precision in DEFAULT_TOLERANCES else "int8"
    default = DEFAULT_TOLERANCES[prec].to_dict()
    for k, v in VERIFY_FALLBACK[prec].items():
        default.setdefault(k, v)
    card = card_tolerances(card_tols)
    sources: Dict[str, str] = {}

    def pick(key: str) -> Optional[float]:
        if key in card:
            sources[key] = profile_name
            return card[key]
        if key in default:
            sources[key] = f"default:{prec}"
            return default[key]
        return None

    def pct(v: Optional[float]) -> Optional[float]:
        return None if v is None else 100.0 * v

    def flag(name: str, value: Optional[float], fallback: Optional[float]) -> Optional[float]:
        if value is not None:
            sources[name] = "flag"
            return value
        return fallback

    clean_min = pct(pick("min_top1"))
    adv_min = pct(pick("min_adv_top1"))
    rel, abs_ = pick("max_rel"), pick("max_abs")
    if gates.max_logit_delta is not None:  # an explicit absolute bound replaces the relative one
        rel, abs_ = None, gates.max_logit_delta
        sources["max_logit_abs"] = "flag"
    return Bounds(
        precision=precision,
        min_clean_agreement=flag("min_clean_agreement", gates.min_top1_agreement, clean_min),
        min_adv_agreement=flag("min_adv_agreement", gates.min_top1_agreement, adv_min),
        max_logit_rel=rel, max_logit_abs=abs_,
        max_clean_drop=flag("max_clean_drop", gates.max_clean_drop, pct(pick("max_acc_drop"))),
        max_robust_drop=flag("max_robust_drop", gates.max_robust_drop, pct(pick("max_robust_drop"))),
        max_robust_gain=flag("max_robust_gain", gates.max_robust_gain, pct(pick("max_robust_gain"))),
        max_flip_rate=flag("max_flip_rate", gates.max_flip_rate, pct(pick("max_flip_rate"))),
        max_query_excess=flag("max_query_excess", gates.max_query_excess, pct(pick("max_query_excess"))),
        sources=sources)


__all__ = ["Bounds", "resolve_bounds", "card_tolerances", "INT8_MAX_REL", "VERIFY_FALLBACK"]
