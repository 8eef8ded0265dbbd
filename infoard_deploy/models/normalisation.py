"""Where a model's input normalisation comes from, when no model card says it.

Every model here takes [0,1] pixels and normalises inside (:class:`~.normalized.Normalized`). A foreign
checkpoint may carry that normalisation itself or imply it:

* buffers in the weights (``"file"``): this project's ``Normalized`` saved with ``torch.save(model.state_dict())``
  (``mean``/``std``, shape (1, C, 1, 1), beside ``net.*``); RobustBench models that normalise inside
  (``mu``/``sigma``, shape (1, C, 1, 1): Wong2020Fast, Rice2020Overfitting, Rony2019Decoupling,
  Augustin2020Adversarial, Kireev2021Effectiveness, Chen2020Efficient, ... saved with ``model.state_dict()``);
  DM WideResNets saved by code whose ``mean``/``std`` are persistent buffers (shape (C, 1, 1)).
* the architecture's definition (``"architecture"``): DM WideResNets normalise with their training set's
  statistics (:data:`CIFAR10_MEAN` ... as in ``dm_wide_resnet.py``) that the original checkpoints do *not*
  hold; Hendrycks2019Using feeds ``2x - 1`` (mean 0.5 / std 0.5, :data:`CONVENTIONS`).

Nested wrappers compose: ``Normalized(mean m1, std s1)`` around a net with ``mu``/``sigma`` (m2, s2) computes
``((x - m1)/s1 - m2)/s2 = (x - (m1 + m2 s1)) / (s1 s2)``, so one mean/std pair replaces both.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

import torch

from ..errors import UserError

# DM / RobustBench constants (dm_wide_resnet.py), also the CIFAR statistics most robust models use.
CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2471, 0.2435, 0.2616)
CIFAR100_MEAN = (0.5071, 0.4865, 0.4409)
CIFAR100_STD = (0.2673, 0.2564, 0.2762)

#: named fixed conventions: (mean, std) per channel for 3-channel inputs
CONVENTIONS: Dict[str, Tuple[Tuple[float, ...], Tuple[float, ...]]] = {
    "raw": ((0.0, 0.0, 0.0), (1.0, 1.0, 1.0)),  # TRADES / ARD / RSLAD / most RobustBench entries
    "2x-1": ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5)),  # Hendrycks2019Using: x -> 2x - 1
    "cifar10": (CIFAR10_MEAN, CIFAR10_STD),
    "cifar100": (CIFAR100_MEAN, CIFAR100_STD),
}

#: buffer-name pairs a state dict may carry at its top level, outermost convention first
BUFFER_PAIRS = (("mean", "std"), ("mu", "sigma"))

SOURCES = ("card", "flag", "file", "architecture", "assumed")


@dataclass
class FileNormalisation:
    """Mean/std read from buffers in the weights; ``keys`` names the buffers (for messages)."""

    mean: List[float]
    std: List[float]
    keys: List[str]

    def then(self, inner: "FileNormalisation") -> "FileNormalisation":
        """This normalisation applied first, then ``inner`` (a wrapper around a net that normalises)."""
        if len(inner.mean) != len(self.mean):
            return self
        mean = [m1 + m2 * s1 for m1, m2, s1 in zip(self.mean, inner.mean, self.std)]
        std = [s1 * s2 for s1, s2 in zip(self.std, inner.std)]
        return FileNormalisation(mean, std, self.keys + inner.keys)


def _vector(t: torch.Tensor, name: str, source: str) -> Optional[List[float]]:
    """(C,), (C,1,1) or (1,C,1,1) -> list of C floats; other shapes are not normalisation buffers."""
    if not isinstance(t, torch.Tensor) or not t.is_floating_point() or t.numel() == 0 or t.numel() > 64:
        return None
    if sum(d != 1 for d in t.shape) > 1:
        return None
    vals = [float(v) for v in t.detach().float().flatten().tolist()]
    if not all(math.isfinite(v) for v in vals):
        raise UserError(f"{source}: normalisation buffer '{name}' holds non-finite values {vals}")
    return vals


def pop_normalisation(sd: Dict[str, torch.Tensor], source: str = "checkpoint"
                      ) -> Tuple[Dict[str, torch.Tensor], Optional[FileNormalisation]]:
    """Remove top-level ``mean``/``std`` or ``mu``/``sigma`` from ``sd``; return ``(rest, normalisation)``.

    A pair counts only when both are present with matching per-channel shapes; a lone ``mean`` is left in
    place (it would then show up as an unexpected key, which is the honest outcome).
    """
    for m_key, s_key in BUFFER_PAIRS:
        if m_key in sd and s_key in sd:
            mean, std = _vector(sd[m_key], m_key, source), _vector(sd[s_key], s_key, source)
            if mean is None or std is None or len(mean) != len(std):
                continue
            if any(s <= 0 for s in std):
                raise UserError(f"{source}: normalisation buffer '{s_key}' must be positive, got {std}")
            rest = {k: v for k, v in sd.items() if k not in (m_key, s_key)}
            return rest, FileNormalisation(mean, std, [m_key, s_key])
    return sd, None


def same(a: Sequence[float], b: Sequence[float], tol: float = 1e-4) -> bool:
    return len(a) == len(b) and all(abs(x - y) <= tol for x, y in zip(a, b))


def architecture_normalisation(kind: Optional[str], num_classes: int, in_channels: int,
                               dataset_mean: Optional[Sequence[float]] = None,
                               dataset_std: Optional[Sequence[float]] = None
                               ) -> Optional[Tuple[List[float], List[float], str, Optional[str]]]:
    """Normalisation fixed by an architecture's definition: ``(mean, std, detail, warning or None)``.

    ``kind`` is the registry's ``normalisation`` metadata: ``None`` (the definition does not normalise:
    nothing known), a :data:`CONVENTIONS` name (fixed), or ``"dataset"`` (DM WideResNets: the training set's
    statistics). For ``"dataset"`` the caller's dataset statistics win when given; otherwise the DM
    constants for CIFAR-10 (10 classes) or CIFAR-100 (100 classes) are used.
    """
    if kind is None:
        return None
    if kind in CONVENTIONS:
        m, s = CONVENTIONS[kind]
        if in_channels != len(m):
            return None
        return list(m), list(s), f"fixed by the architecture ({kind})", None
    if kind != "dataset":
        raise ValueError(f"unknown normalisation kind {kind!r}")
    if dataset_mean is not None and dataset_std is not None and len(dataset_mean) == in_channels:
        return (list(map(float, dataset_mean)), list(map(float, dataset_std)),
                "the DM definition normalises with the training set's statistics: the dataset's", None)
    if in_channels != 3:
        return None
    if num_classes == 100:
        return (list(CIFAR100_MEAN), list(CIFAR100_STD), "DM definition, CIFAR-100 statistics (100 classes)",
                "took the DM WideResNet's CIFAR-100 statistics for a 100-class model (RobustBench's convention; "
                "RSLAD's CIFAR-100 teachers use CIFAR-10 statistics): pass --mean/--std if it was trained otherwise")
    note = None if num_classes == 10 else (
        f"took the DM WideResNet's CIFAR-10 statistics for a {num_classes}-class model: pass --mean/--std "
        f"if it was trained with other statistics")
    return list(CIFAR10_MEAN), list(CIFAR10_STD), "DM definition, CIFAR-10 statistics", note


def assumed_warning(name: str, in_channels: int, dataset_mean: Optional[Sequence[float]] = None,
                    dataset_std: Optional[Sequence[float]] = None) -> str:
    """The one-line warning for the raw-[0,1] assumption (never the dataset's statistics silently)."""
    hint = ""
    if dataset_mean is not None and dataset_std is not None:
        hint = (f" (e.g. the dataset's --mean {','.join(f'{v:g}' for v in dataset_mean)} "
                f"--std {','.join(f'{v:g}' for v in dataset_std)})")
    return (f"{name}: assumed mean 0 / std 1 (raw [0,1] inputs): it has no model card, no --mean/--std and no "
            f"normalisation buffers; pass --mean/--std if the model was trained with other statistics{hint}")


def raw(in_channels: int) -> Tuple[List[float], List[float]]:
    return [0.0] * in_channels, [1.0] * in_channels


__all__ = ["CIFAR10_MEAN", "CIFAR10_STD", "CIFAR100_MEAN", "CIFAR100_STD", "CONVENTIONS", "BUFFER_PAIRS",
           "SOURCES", "FileNormalisation", "pop_normalisation", "architecture_normalisation", "assumed_warning",
           "same", "raw"]
