"""Comparison protocols: what a method's defaults are when it is built for a benchmark grid.

* ``official`` -- each method's published settings, from its official code (docs/reference-ard-methods.md):
  ARD / RSLAD / AdaAD average their KL over B*C elements (``nn.KLDivLoss()`` default, i.e. per-sample KL / C),
  IAD uses the per-sample KL, and schedules differ (RSLAD 300 epochs, the others 200; AdaAD wd 5e-4).
  This is the default and reproduces the published objectives exactly (the golden tests).
* ``matched`` -- one setting for everything except the objective, so a short-run grid compares methods
  rather than loss scales: the element mean's 1/C leaves ARD / RSLAD badly under-trained in short runs
  (RSLAD's README multiplies its CIFAR-100 loss by 10 for this reason). Every method gets

  - the per-sample KL (``kl_reduction="batchmean"``),
  - InfoARD's schedule (its default base, RSLAD: SGD lr 0.1, momentum 0.9, wd 2e-4, batch 128, 300 epochs,
    lr x0.1 at 215/260/285 of 300) -- the trainer reads ``method.schedule``, so ``--epochs`` and friends
    still override it for every method alike,
  - InfoARD's inner-attack budget (``steps``, ``step_ratio`` = step / eps, ``eps_scale`` = radius / eps),
  - InfoARD's ASA / MIM settings for that base when ASA / MIM are plugged in (so ``rslad`` + MIM under
    ``matched`` is InfoARD-on-RSLAD without ASA, term for term).

  What stays per method is the objective: attack loss, teacher view, random start and BN mode during the
  attack (part of how each method forms x'), temperatures and weights. Under ``matched`` an explicit
  ``kl_reduction`` is refused (it would undo the protocol); attack-budget options may still be given (a grid
  passes the same ones to every method, e.g. fewer steps for a CPU smoke run) and ``describe()`` lists them
  under ``overrides``.
"""
from __future__ import annotations

from dataclasses import replace
from typing import Any, Dict, Optional

from .base import Schedule

PROTOCOLS = ("official", "matched")
MATCHED_KL = "batchmean"
ATTACK_BUDGET = ("steps", "step_ratio", "eps_scale")


def matched_settings() -> Dict[str, Any]:
    """The option values every method shares under ``matched``: the KL reduction and the attack budget."""
    from .infoard import InfoARD

    ref = InfoARD.option_defaults()
    return {"kl_reduction": MATCHED_KL, **{k: ref[k] for k in ATTACK_BUDGET}}


def matched_schedule() -> Schedule:
    """InfoARD's schedule (that of its default base), a fresh copy for one method."""
    from .infoard import BASES, InfoARD

    s = BASES[InfoARD.default_base].schedule
    return replace(s, milestones=list(s.milestones))


def protocol_defaults(name: str, base: Optional[str], protocol: str) -> Dict[str, Any]:
    """Option defaults that ``protocol`` puts over method ``name``'s official ones (InfoARD: of ``base``)."""
    if protocol == "official":
        return {}
    from .infoard import InfoARD, OVERRIDES

    objective_base = (base or InfoARD.default_base) if name == InfoARD.name else name
    plug_ins = {k: v for k, v in OVERRIDES.get(objective_base, {}).items() if k.startswith(("asa_", "mim_"))}
    return {**plug_ins, **matched_settings()}


__all__ = ["PROTOCOLS", "MATCHED_KL", "ATTACK_BUDGET", "matched_settings", "matched_schedule", "protocol_defaults"]
