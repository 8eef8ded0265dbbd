"""InfoARD = a base ARD-family objective + ASA (per-sample attack strength) + MIM (feature / attention MI).

Cai et al., "InfoARD: Enhancing Adversarial Robustness Distillation with Attack-Strength Adaptation and
Mutual-Information Maximization", IEEE TIP 2025, DOI 10.1109/TIP.2025.3637689. Only the abstract is
public, so the composition is ours (docs/infoard-design.md): multi-granularity distillation =

* logit level: the base method's own objective, RSLAD's robust soft labels by default
  (``5/6 KL(p_T(x)||p_S(x')) + 1/6 KL(p_T(x)||p_S(x))``, teacher on clean x; ``base=`` ard | iad | adaad
  switch it, "seamlessly integrated into existing AD frameworks" as the abstract says);
* feature level: InfoNCE bound on I(z_S(x'); z_T) over projected penultimate features (:mod:`.mim`);
* attention level: attention-map alignment at up to 3 stage pairs (:mod:`.mim`);
* the base method's inner maximisation runs at ASA's per-sample radius (:mod:`.asa`).

Each part is one switch: ``build_method("infoard", asa=False)`` / ``mim=False`` / ``mim_feat=0`` /
``mim_att=0``. With the RSLAD base and ``mim_teacher_input=clean`` the teacher runs once per step on x
(as in RSLAD), so InfoARD costs an RSLAD step plus the heads.
"""
from __future__ import annotations

from typing import Any, Dict, Optional

from torch import nn

from .adaad import AdaAD
from .ard import ARD
from .base import AdversarialDistillation
from .iad import IAD
from .rslad import RSLAD

BASES = {"rslad": RSLAD, "ard": ARD, "iad": IAD, "adaad": AdaAD}

# InfoARD's own defaults on top of the base's (``asa_*`` / ``mim_*`` keys included). On the AdaAD base the
# teacher already runs on x' every step, so MIM aligns to those features at no extra cost.
OVERRIDES: Dict[str, Dict[str, Any]] = {"rslad": {}, "ard": {}, "iad": {}, "adaad": {"mim_teacher_input": "adv"}}


class InfoARD:
    """Factory: ``InfoARD.create(asa_module, mim_module, base="rslad", **opts)`` -> a configured base method."""

    name = "infoard"
    default_asa = True
    default_mim = True
    default_base = "rslad"

    @classmethod
    def option_defaults(cls, base: Optional[str] = None) -> Dict[str, Any]:
        base = base or cls.default_base
        return {"base": cls.default_base, **BASES[base].option_defaults(), **OVERRIDES[base]}

    @classmethod
    def create(cls, asa: Optional[nn.Module], mim: Optional[nn.Module], base: Optional[str] = None,
               **opts: Any) -> AdversarialDistillation:
        base = base or cls.default_base
        if base not in BASES:
            raise ValueError(f"unknown InfoARD base '{base}' (choose from {', '.join(BASES)})")
        own = {k: v for k, v in OVERRIDES[base].items() if not k.startswith(("asa_", "mim_"))}
        method = BASES[base](asa=asa, mim=mim, **{**own, **opts})
        method.name = cls.name  # the run is an InfoARD run whichever base it composes
        method.base_name = base
        return method


__all__ = ["InfoARD", "BASES", "OVERRIDES"]
