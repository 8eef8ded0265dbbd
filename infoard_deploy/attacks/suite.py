"""The evaluation attack suite over torchattacks 3.5.1; fills :data:`infoard_deploy.attacks.ATTACKS`.

Names and settings (L-inf, inputs in [0,1], eps in pixel units of [0,1]):

* ``clean``   -- no attack (x_adv = x).
* ``fgsm``    -- FGSM (Goodfellow et al. 2015), one step of size eps, no random start.
* ``pgd20``   -- PGD (Madry et al. 2018): 20 steps, step eps/4 (2/255 at 8/255), uniform random start.
* ``cw``      -- CW-inf: PGD on the CW margin loss, 30 steps, step eps/4, kappa 50 (IAD/FAT ``basic_eval``).
* ``apgd-ce``, ``apgd-t``, ``fab-t``, ``square``: the AutoAttack components with exactly the settings of
  fra31/auto-attack ``AutoAttack(norm='Linf', version='standard')`` (its constructor, then
  ``set_version('standard')``; Croce & Hein 2020, arXiv 2003.01690):

  ==========  ==================================================================================
  apgd-ce     APGD, loss CE, n_iter 100, n_restarts 1, eot_iter 1, rho 0.75
  apgd-t      APGD-T, targeted DLR, n_target_classes 9, n_iter 100, n_restarts 1, eot_iter 1, rho 0.75
  fab-t       FAB-T, n_target_classes 9, n_iter 100, n_restarts 1, alpha_max 0.1, eta 1.05, beta 0.9
  square      Square, loss margin, n_queries 5000, p_init 0.8, n_restarts 1, resc_schedule False
  ==========  ==================================================================================

  torchattacks' own defaults differ (APGD/APGD-T/FAB 10 steps, Square ``resc_schedule=True``, which makes a
  lone Square about a point stronger than the reference's), so every value is passed explicitly. The
  standalone names use the same settings as inside ``aa``, so a standalone ``square`` is the reference's
  Square. With fewer than 10 classes the targeted attacks use K-1 target classes.
* ``aa``      -- AutoAttack standard as the per-sample cascade APGD-CE -> APGD-T -> FAB-T -> Square
  (see :mod:`.cascade`); its ``version`` is ``standard`` only while every component keeps those settings,
  ``custom`` once any is overridden.

Every built attack reports, in :meth:`EvalAttack.describe`, its tunable settings and the constructor
arguments read back from the built torchattacks object (``constructor``), so a result JSON states what ran.

torchattacks quirks handled here: it reads the device from ``next(model.parameters())`` (a parameter-free
model fails) and toggles ``model.train()/eval()`` around each call, so the model is wrapped in
:class:`AttackTarget` (a parameter anchor, float32 logits, eval mode); its APGD/FAB/Square re-seed the
*global* torch RNG, so every call runs inside ``torch.random.fork_rng`` with a per-call seed, which keeps
results deterministic and leaves the caller's RNG untouched.
"""
from __future__ import annotations

import contextlib
import inspect
from dataclasses import dataclass
from typing import Any, Callable, Dict, Iterator, Optional, Tuple

import torch
from torch import nn

from ..errors import UserError
from ..utils import parse_fraction
from . import ATTACKS
from .cw import CWInf

AA_COMPONENTS = ("apgd-ce", "apgd-t", "fab-t", "square")


class AttackTarget(nn.Module):
    """The module torchattacks sees: ``model`` in eval mode returning float32 logits (B, K).

    The zero-size ``anchor`` parameter is registered first so ``next(parameters())`` always names the
    model's device, even for a parameter-free model (e.g. an ONNX runtime wrapper).
    """

    def __init__(self, model: nn.Module, device: torch.device):
        super().__init__()
        self.anchor = nn.Parameter(torch.zeros(0, device=device), requires_grad=False)
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x).float()


def model_device(model: nn.Module) -> torch.device:
    for t in list(model.parameters()) + list(model.buffers()):
        return t.device
    return torch.device("cpu")


def as_target(model: nn.Module) -> AttackTarget:
    if isinstance(model, AttackTarget):
        return model
    t = AttackTarget(model, model_device(model))
    t.eval()
    return t


@contextlib.contextmanager
def seeded(seed: int, device: torch.device) -> Iterator[None]:
    """Run with the global torch RNG seeded to ``seed`` and restore the caller's RNG state afterwards."""
    devices = [device.index if device.index is not None else torch.cuda.current_device()] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(int(seed) % (2**63))
        yield


def project_into_ball(x: torch.Tensor, x_adv: torch.Tensor, eps: float) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Measure how far ``x_adv`` leaves the threat model and return it projected back into it.

    Returns ``(x_valid, linf_excess, range_excess)``: ``x_valid`` in ``[x-eps, x+eps] ∩ [0,1]`` (NaNs replaced
    by ``x``) so only legitimate points are ever judged; ``linf_excess`` (B,) = ``||x_adv-x||_inf - eps``
    and ``range_excess`` (B,) = how far outside [0,1] (<= 0 / 0 when inside; ``inf`` for NaN rows).
    """
    x_adv = x_adv.detach().to(x.dtype)
    bad = torch.isnan(x_adv).flatten(1).any(1)
    safe = torch.where(torch.isnan(x_adv), x, x_adv)
    linf = (safe - x).abs().flatten(1).amax(1) - eps
    rng = torch.maximum(safe - 1.0, -safe).flatten(1).amax(1).clamp(min=0.0)
    inf = torch.full_like(linf, float("inf"))
    linf, rng = torch.where(bad, inf, linf), torch.where(bad, inf, rng)
    valid = torch.min(torch.max(safe, x - eps), x + eps).clamp(0.0, 1.0)
    return valid, linf, rng


# constructor argument -> the attribute torchattacks stores it under (when the names differ)
_ATTR = {"rho": "thr_decr", "resc_schedule": "rescale_schedule"}
_NOT_SETTINGS = {"self", "model", "seed", "verbose"}  # the seed is per call: see provenance.seed_scheme


def _plain(v: Any) -> Any:
    if isinstance(v, torch.Tensor) and v.numel() == 1:
        return v.item()
    return v if isinstance(v, (bool, int, float, str, type(None))) else repr(v)


def constructor_args(attack: Any) -> Dict[str, Any]:
    """The constructor arguments of a built attack, read back from the object (what will actually run).

    Every named ``__init__`` parameter except ``model``/``seed``/``verbose`` is read from the attribute
    torchattacks stores it in (``rho`` -> ``thr_decr``, ``resc_schedule`` -> ``rescale_schedule``,
    ``n_classes`` -> ``n_target_classes + 1``); parameters not kept on the object are left out.
    """
    out: Dict[str, Any] = {}
    try:
        params = inspect.signature(type(attack).__init__).parameters
    except (TypeError, ValueError):
        return out
    for p, prm in params.items():
        if p in _NOT_SETTINGS or prm.kind in (prm.VAR_POSITIONAL, prm.VAR_KEYWORD):
            continue
        if p == "n_classes" and hasattr(attack, "n_target_classes"):
            out[p] = int(attack.n_target_classes) + 1
        elif hasattr(attack, _ATTR.get(p, p)):
            out[p] = _plain(getattr(attack, _ATTR.get(p, p)))
    return out


class EvalAttack:
    """A seeded attack: ``attack(x, y) -> x_adv`` (B, C, H, W) in [0,1], ``||x_adv - x||_inf <= eps``.

    ``settings`` holds the tunable parameters; :meth:`describe` adds the class and every constructor
    argument read back from the built object (for the report); ``white_box``: whether it needs gradients.
    """

    def __init__(self, name: str, attack: Any, eps: float, seed: int, settings: Dict[str, Any], white_box: bool):
        self.name, self.attack, self.eps, self.seed = name, attack, float(eps), int(seed)
        self.settings, self.white_box = settings, white_box

    def reseed(self, seed: int) -> None:
        self.seed = int(seed)

    def __call__(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if self.attack is None:
            return x.detach().clone()
        with seeded(self.seed, x.device):
            if hasattr(self.attack, "seed"):  # APGD/FAB/Square re-seed from this attribute
                self.attack.seed = self.seed
            return self.attack(x, y).detach()

    def describe(self) -> Dict[str, Any]:
        out: Dict[str, Any] = {"eps": self.eps, **self.settings}
        if self.attack is not None:
            cls = type(self.attack)
            out["constructor"] = {"class": f"{cls.__module__}.{cls.__qualname__}",
                                  "args": constructor_args(self.attack)}
        return out


@dataclass
class AttackSpec:
    """A registry entry: ``defaults(eps, num_classes) -> settings`` and ``build(target, eps, settings)``."""

    defaults: Callable[[float, int], Dict[str, Any]]
    build: Optional[Callable[[AttackTarget, float, Dict[str, Any]], Any]]
    white_box: bool


def _coerce(attack: str, key: str, value: Any, default: Any) -> Any:
    """Cast an override (often a CLI string) to the type of the default and check its range."""
    where = f"attack setting {attack}.{key}"
    try:
        if isinstance(default, bool):
            if isinstance(value, str):
                if value.strip().lower() not in ("1", "0", "true", "false", "yes", "no"):
                    raise ValueError
                value = value.strip().lower() in ("1", "true", "yes")
            out: Any = bool(value)
        elif isinstance(default, int):
            if isinstance(value, float) and not value.is_integer():
                raise ValueError
            out = int(value)
            if out < 1:
                raise UserError(f"{where} must be a positive integer, got {value}")
        else:
            out = parse_fraction(value, where) if isinstance(value, str) else float(value)
            if not (out >= 0.0) or out == float("inf"):
                raise UserError(f"{where} must be a finite number >= 0, got {value}")
    except (TypeError, ValueError):
        raise UserError(f"{where} must be {type(default).__name__}, got '{value}'") from None
    return out


def _settings(name: str, spec: AttackSpec, eps: float, num_classes: int, overrides: Dict[str, Any]) -> Dict[str, Any]:
    s = spec.defaults(eps, num_classes)
    for k, v in overrides.items():
        if k not in s:
            known = ", ".join(sorted(s)) or "none"
            raise UserError(f"attack '{name}' has no setting '{k}' (settings: {known})")
        s[k] = _coerce(name, k, v, s[k])
    if "n_target_classes" in s and not 1 <= s["n_target_classes"] <= num_classes - 1:
        raise UserError(f"{name}: n_target_classes must lie in [1, {num_classes - 1}] for {num_classes} classes")
    return s


def make_attack(name: str, model: nn.Module, eps: float, *, num_classes: int, seed: int = 0, **overrides: Any):
    """Build evaluation attack ``name`` against ``model`` (takes [0,1] inputs, returns logits (B, K)).

    ``overrides`` replace default settings (e.g. ``steps=10`` for ``pgd20``, ``n_queries=200`` for ``square``);
    for ``aa`` pass component settings as dicts: ``square={"n_queries": 200}`` (``apgd_ce`` = ``apgd-ce``).
    Returns a callable ``(x, y) -> x_adv``; for ``aa`` an :class:`~.cascade.AutoAttackCascade` whose
    ``run(x, y)`` also returns per-sample results.
    """
    key = str(name).strip().lower().replace("_", "-")
    spec: AttackSpec = ATTACKS.get(key)
    if not 0.0 < float(eps) <= 1.0:
        raise UserError(f"eps must lie in (0, 1], got {eps}")
    if num_classes < 2:
        raise UserError(f"num_classes must be >= 2, got {num_classes}")
    target = as_target(model)
    if key == "aa":
        from .cascade import AutoAttackCascade

        comp_over: Dict[str, Dict[str, Any]] = {}
        for k, v in overrides.items():
            comp = k.replace("_", "-")
            if comp not in AA_COMPONENTS or not isinstance(v, dict):
                raise UserError(f"attack 'aa' takes component settings as dicts ({', '.join(AA_COMPONENTS)}), got '{k}'")
            comp_over[comp] = v
        comps = [make_attack(c, target, eps, num_classes=num_classes, seed=seed, **comp_over.get(c, {}))
                 for c in AA_COMPONENTS]
        standard = all(c.settings == ATTACKS.get(c.name).defaults(float(eps), num_classes) for c in comps)
        return AutoAttackCascade(target, comps, eps, seed, version="standard" if standard else "custom")
    settings = _settings(key, spec, float(eps), num_classes, overrides)
    atk = spec.build(target, float(eps), settings) if spec.build is not None else None
    if atk is not None:
        atk.set_model_training_mode(model_training=False)  # BN and dropout in eval mode during the attack
    return EvalAttack(key, atk, float(eps), seed, settings, spec.white_box)


def _targets(k: int) -> int:
    return max(1, min(9, k - 1))  # AutoAttack standard: 9 target classes (fewer when K < 10)


def _build_apgdt(t, e, s):
    import torchattacks

    if s["n_target_classes"] + 1 < 4:  # the targeted DLR loss reads the 4th-largest logit
        raise UserError("apgd-t needs at least 4 classes (its targeted DLR loss uses the 4 largest logits)")
    return torchattacks.APGDT(t, norm="Linf", eps=e, steps=s["steps"], n_restarts=s["n_restarts"],
                              n_classes=s["n_target_classes"] + 1, eot_iter=1, rho=s["rho"])


def _register() -> None:
    import torchattacks

    specs = {
        "clean": (AttackSpec(lambda e, k: {}, None, False), "no attack: clean accuracy"),
        "fgsm": (AttackSpec(lambda e, k: {}, lambda t, e, s: torchattacks.FGSM(t, eps=e), True),
                 "FGSM, one step of size eps (Goodfellow et al. 2015)"),
        "pgd20": (AttackSpec(lambda e, k: {"steps": 20, "alpha": e / 4, "random_start": True},
                             lambda t, e, s: torchattacks.PGD(t, eps=e, alpha=s["alpha"], steps=s["steps"],
                                                              random_start=s["random_start"]), True),
                  "PGD-20, step eps/4, uniform random start (Madry et al. 2018)"),
        "cw": (AttackSpec(lambda e, k: {"steps": 30, "alpha": e / 4, "kappa": 50.0, "random_start": True},
                          lambda t, e, s: CWInf(t, eps=e, alpha=s["alpha"], steps=s["steps"], kappa=s["kappa"],
                                                random_start=s["random_start"]), True),
               "CW-inf: PGD-30 on the CW margin loss, step eps/4, kappa 50 (IAD/FAT eval)"),
        "apgd-ce": (AttackSpec(lambda e, k: {"steps": 100, "n_restarts": 1, "rho": 0.75},
                               lambda t, e, s: torchattacks.APGD(t, norm="Linf", eps=e, steps=s["steps"],
                                                                 n_restarts=s["n_restarts"], loss="ce", eot_iter=1,
                                                                 rho=s["rho"]), True),
                    "APGD-CE, 100 iterations, 1 restart, rho 0.75 (AutoAttack standard component)"),
        "apgd-t": (AttackSpec(lambda e, k: {"steps": 100, "n_restarts": 1, "rho": 0.75, "n_target_classes": _targets(k)},
                              _build_apgdt, True),
                   "APGD-T, targeted DLR, 9 target classes, 100 iterations, 1 restart (AutoAttack standard component)"),
        "fab-t": (AttackSpec(lambda e, k: {"steps": 100, "n_restarts": 1, "n_target_classes": _targets(k)},
                             lambda t, e, s: torchattacks.FAB(t, norm="Linf", eps=e, steps=s["steps"],
                                                              n_restarts=s["n_restarts"], alpha_max=0.1, eta=1.05,
                                                              beta=0.9, multi_targeted=True,
                                                              n_classes=s["n_target_classes"] + 1), True),
                  "FAB-T, 9 target classes, 100 iterations, 1 restart (AutoAttack standard component)"),
        "square": (AttackSpec(lambda e, k: {"n_queries": 5000, "n_restarts": 1, "p_init": 0.8,
                                            "resc_schedule": False},
                              lambda t, e, s: torchattacks.Square(t, norm="Linf", eps=e, n_queries=s["n_queries"],
                                                                  n_restarts=s["n_restarts"], p_init=s["p_init"],
                                                                  loss="margin", resc_schedule=s["resc_schedule"]),
                              False),
                   "Square, black-box: 5000 queries, p_init 0.8, 1 restart, resc_schedule off -- the AutoAttack "
                   "standard settings, alone as inside aa"),
        "aa": (AttackSpec(lambda e, k: {}, None, False),  # mixed: white-box components, then black-box Square
               "AutoAttack standard: per-sample cascade APGD-CE -> APGD-T -> FAB-T -> Square"),
    }
    for name, (spec, about) in specs.items():
        if name not in ATTACKS:
            ATTACKS.register(name, spec, about=about, white_box=spec.white_box)


_register()

__all__ = ["AA_COMPONENTS", "AttackSpec", "AttackTarget", "EvalAttack", "as_target", "constructor_args", "make_attack",
           "model_device", "project_into_ball", "seeded"]
