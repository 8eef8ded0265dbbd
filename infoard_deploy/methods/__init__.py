"""Distillation methods: faithful ARD / RSLAD / IAD-I / AdaAD baselines and InfoARD (MIM, ASA opt-in).

:data:`METHODS` maps a name to a method class (see :mod:`.base` for the interface the trainer uses);
:func:`build_method` is the one way to construct one from strings (CLI, recipes):

    build_method("rslad")                               # faithful baseline
    build_method("rslad", asa=True, mim=True)           # ASA / MIM plugged into RSLAD
    build_method("infoard", mim=False, asa_eps_max=1.25)  # an ablation and an override

    build_method("ard", protocol="matched")             # same KL reduction / schedule / attack as InfoARD

``asa`` / ``mim``: ``None`` = the method's default (off for baselines; InfoARD: MIM on, ASA off since it measured
no gain, BENCHMARKS.md). Options are the
method's hyper-parameters (``method_options(name)``) plus the ``asa_*`` and ``mim_*`` keys; strings are
converted to the default's type ("8/255" works for floats); unknown keys raise UserError listing the valid ones.
``protocol``: ``official`` (published settings) or ``matched`` (see :mod:`.protocol`); the method records it
and its effective settings in ``method.describe()``, and after setup what MIM runs in ``method.mim_levels()``.
"""
from __future__ import annotations

from typing import Any, Dict, Optional

from ..errors import UserError
from ..registry import Registry
from ..utils import parse_fraction
from .adaad import AdaAD
from .ard import ARD
from .asa import ASA, ASA_DEFAULTS, ASA_RULES
from .base import AdversarialDistillation, DistillMethod, Schedule, StepContext, StepOutput, TEACHER_FIXES
from .iad import IAD
from .infoard import InfoARD
from .mim import MIM, MIM_DEFAULTS
from .protocol import PROTOCOLS, matched_schedule, matched_settings, protocol_defaults
from .rslad import RSLAD

METHODS: Registry[Any] = Registry("method")
METHODS.register("ard", ARD, about="ARD (Goldblum et al. AAAI 2020): CE attack, tau^2 KL(T(x)||S(x')), tau 30")
METHODS.register("rslad", RSLAD, about="RSLAD (Zi et al. ICCV 2021): robust soft labels, 5/6 KL adv + 1/6 KL nat")
METHODS.register("iad", IAD, about="IAD-I (Zhu et al. ICLR 2022): ARD + teacher-trust-weighted introspection")
METHODS.register("adaad", AdaAD, about="AdaAD (Huang et al. CVPR 2023): teacher-in-the-loop attack, KL(T(x')||S(x'))")
METHODS.register("infoard", InfoARD,
                 about="InfoARD (Cai et al. TIP 2025, our design): RSLAD base + MIM (InfoNCE + attention); ASA with --asa")

_CHOICES = {"init": ("uniform", "normal", "zero"), "kl_reduction": ("mean", "batchmean", "sum"),
            "mim_att_mode": ("mse", "nce"), "mim_teacher_input": ("clean", "adv"), "mim_head": ("linear", "mlp"),
            "base": ("rslad", "ard", "iad", "adaad"), "teacher_fix": TEACHER_FIXES, "asa_rule": ASA_RULES}


def _protocol(protocol: Any) -> str:
    p = str(protocol).strip().lower()
    if p not in PROTOCOLS:
        raise UserError(f"protocol must be one of {', '.join(PROTOCOLS)}, got '{protocol}'")
    return p


def method_options(name: str, base: Optional[str] = None, protocol: str = "official") -> Dict[str, Any]:
    """Every option key of method ``name`` with its default (method, then ``asa_*``, then ``mim_*``) under
    ``protocol``."""
    cls = METHODS.get(name)
    own = cls.option_defaults(base) if cls is InfoARD else cls.option_defaults()
    # a method may override ASA / MIM defaults (InfoARD's are chosen by measurement)
    out = {**own, **{k: own.get(k, v) for k, v in ASA_DEFAULTS.items()},
           **{k: own.get(k, v) for k, v in MIM_DEFAULTS.items()}}
    return {**out, **protocol_defaults(name, base, _protocol(protocol))}


def _coerce(key: str, value: Any, default: Any) -> Any:
    try:
        if isinstance(default, bool):
            if isinstance(value, str):
                v = value.strip().lower()
                if v not in ("1", "0", "true", "false", "yes", "no", "on", "off"):
                    raise ValueError
                return v in ("1", "true", "yes", "on")
            return bool(value)
        if isinstance(default, int):
            f = parse_fraction(value, key)
            if f != int(f):
                raise ValueError
            return int(f)
        if isinstance(default, float):
            return float(parse_fraction(value, key))
        v = str(value).strip().lower()
        if key in _CHOICES and v not in _CHOICES[key]:
            raise UserError(f"option '{key}' must be one of {', '.join(_CHOICES[key])}, got '{value}'")
        return v
    except (ValueError, TypeError, UserError) as e:
        if isinstance(e, UserError) and key in _CHOICES:
            raise
        kind = type(default).__name__
        raise UserError(f"option '{key}' expects {'an' if kind == 'int' else 'a'} {kind}, got '{value}'") from None


def build_method(name: str, asa: Optional[bool] = None, mim: Optional[bool] = None, protocol: str = "official",
                 **opts: Any) -> DistillMethod:
    """Construct method ``name`` with ASA / MIM switched on or off and hyper-parameters overridden, under
    comparison ``protocol`` (``official`` | ``matched``)."""
    cls = METHODS.get(name)
    protocol = _protocol(protocol)
    given = {str(k).replace("-", "_").lower(): v for k, v in opts.items() if v is not None}
    base = None
    if "base" in given and cls is InfoARD:
        base = _coerce("base", given["base"], "rslad")
        given["base"] = base
    if protocol == "matched" and "kl_reduction" in given:
        raise UserError(f"protocol 'matched' gives every method kl_reduction={matched_settings()['kl_reduction']}; "
                        f"use protocol 'official' to set kl_reduction")
    valid = method_options(name, base, protocol)
    unknown = sorted(set(given) - set(valid))
    if unknown:
        raise UserError(f"method '{name}' has no option {', '.join(repr(u) for u in unknown)}; "
                        f"valid options: {', '.join(sorted(valid))}")
    values = {k: _coerce(k, v, valid[k]) for k, v in given.items()}
    use_asa = cls.default_asa if asa is None else bool(asa)
    use_mim = cls.default_mim if mim is None else bool(mim)
    merged = {**valid, **values}
    own = {k: v for k, v in merged.items() if k not in ASA_DEFAULTS and k not in MIM_DEFAULTS}
    try:
        asa_mod = ASA.from_options(merged) if use_asa else None
        mim_mod = MIM.from_options(merged) if use_mim else None
        method = cls.create(asa_mod, mim_mod, **own)
    except ValueError as e:
        raise UserError(f"method '{name}': {e}") from None
    method.protocol = protocol
    method.overrides = tuple(sorted(values))  # options given explicitly, reported by describe()
    if protocol == "matched":
        method.schedule = matched_schedule()  # the trainer's defaults: InfoARD's for every method
    return method


__all__ = ["METHODS", "PROTOCOLS", "build_method", "method_options", "matched_settings", "DistillMethod",
           "AdversarialDistillation", "Schedule", "StepContext", "StepOutput", "ASA", "MIM", "ARD", "RSLAD", "IAD",
           "AdaAD", "InfoARD"]
