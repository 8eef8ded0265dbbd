"""Which registered architecture a state dict belongs to, from parameter names and shapes only.

For each registered architecture whose head (``meta["head"] + ".weight"``, a (K, D) matrix) and stem
(``meta["stem"] + ".weight"``, an (O, C, k, k) kernel) are present *by name*, the class count K and input
channel count C are read from those shapes, the architecture is built on the meta device (no memory, no
init) and its ``{name: shape}`` map compared with the file's. Key order never matters (safetensors sorts
keys; DataParallel / TRADES / RobustBench files keep module order), nor does the file's suffix.

An exact match is unique in practice (e.g. ``wrn-34-10`` vs ``wrn-34-10-nosub`` differ by ``sub_block1.*``);
when nothing matches, :func:`closest_architecture` names the registered architecture with the fewest
missing / unexpected / mis-shaped keys so the error can say what the file is probably close to.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from functools import lru_cache
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

import torch

Shapes = Dict[str, Tuple[int, ...]]


@dataclass
class Comparison:
    """How a state dict differs from an architecture's own state dict (missing keys in the architecture's
    order, unexpected ones in the file's)."""

    architecture: str
    missing: List[str] = field(default_factory=list)
    unexpected: List[str] = field(default_factory=list)
    mismatched: List[str] = field(default_factory=list)  # "name (file shape) vs (arch shape)"

    @property
    def exact(self) -> bool:
        return not (self.missing or self.unexpected or self.mismatched)

    @property
    def distance(self) -> int:
        return len(self.missing) + len(self.unexpected) + len(self.mismatched)

    def summary(self) -> str:
        """``'wrn-34-10' (2 missing, 0 unexpected, 1 mis-shaped keys: sub_block1.layer.0.bn1.weight, ...)``."""
        keys = (self.missing + self.unexpected + self.mismatched)[:3]
        return (f"'{self.architecture}' ({len(self.missing)} missing, {len(self.unexpected)} unexpected, "
                f"{len(self.mismatched)} mis-shaped keys" + (f": {', '.join(keys)}" if keys else "") +
                (", ..." if self.distance > 3 else "") + ")")


@dataclass
class InferResult:
    """``architecture``: the single registered architecture matching exactly (else ``None``).

    ``matches`` lists every exact match (two or more: ambiguous); ``num_classes`` / ``in_channels`` are read
    from the matched head / stem; ``closest`` describes the nearest miss when nothing matched.
    """

    architecture: Optional[str]
    num_classes: Optional[int] = None
    in_channels: Optional[int] = None
    matches: List[str] = field(default_factory=list)
    closest: Optional[Comparison] = None

    def why_not(self) -> str:
        """One clause for an error message: why no single architecture was chosen."""
        if len(self.matches) > 1:
            return f"its weights match several registered architectures ({', '.join(self.matches)})"
        if self.closest is not None:
            return f"its weights match no registered architecture (closest: {self.closest.summary()})"
        return "its weights match no registered architecture (no known head/stem layer names)"


def _registry():
    from . import MODELS  # late import: this module is imported by the package itself

    return MODELS


@lru_cache(maxsize=256)
def _signature(arch: str, num_classes: int, in_channels: int) -> Tuple[Tuple[str, Tuple[int, ...]], ...]:
    with torch.device("meta"):
        net = _registry().get(arch)(num_classes=num_classes, in_channels=in_channels)
    return tuple((k, tuple(v.shape)) for k, v in net.state_dict().items())


def signature(arch: str, num_classes: int, in_channels: int) -> Optional[Shapes]:
    """``{parameter/buffer name: shape}`` of ``arch`` built for K classes and C input channels (or None)."""
    try:
        return dict(_signature(arch, int(num_classes), int(in_channels)))
    except Exception:  # an architecture that cannot take these counts
        return None


def head_and_stem(arch: str, sd: Mapping[str, torch.Tensor]) -> Optional[Tuple[int, int]]:
    """``(num_classes, in_channels)`` read from ``arch``'s head and stem weights in ``sd``, by name."""
    meta = _registry().meta(arch)
    head, stem = sd.get(f"{meta['head']}.weight"), sd.get(f"{meta['stem']}.weight")
    if not isinstance(head, torch.Tensor) or not isinstance(stem, torch.Tensor) or head.dim() != 2 or stem.dim() != 4:
        return None
    return int(head.shape[0]), int(stem.shape[1])


def compare(arch: str, sd: Mapping[str, torch.Tensor], num_classes: Optional[int] = None,
            in_channels: Optional[int] = None) -> Comparison:
    """Compare ``sd`` with ``arch``; class / channel counts default to those read from ``sd`` (else 10 / 3)."""
    found = head_and_stem(arch, sd)
    k = num_classes or (found[0] if found else 10)
    c = in_channels or (found[1] if found else 3)
    own = signature(arch, k, c) or {}
    want = {key: tuple(v.shape) for key, v in sd.items()}
    return Comparison(
        arch,
        missing=[key for key in own if key not in want],
        unexpected=[key for key in want if key not in own],
        mismatched=[f"{key} {want[key]} vs {own[key]}" for key in own if key in want and want[key] != own[key]],
    )


def infer_architecture(sd: Mapping[str, torch.Tensor], candidates: Optional[Sequence[str]] = None) -> InferResult:
    """The registered architecture whose names and shapes equal ``sd``'s (already unwrapped / prefix-free).

    ``candidates`` restricts the search (default: every registered architecture).
    """
    names = list(candidates) if candidates is not None else _registry().names()
    want = {k: tuple(v.shape) for k, v in sd.items()}
    matches, counts = [], None
    for name in names:
        found = head_and_stem(name, sd)
        if found is None:
            continue
        if signature(name, *found) == want:
            matches.append(name)
            counts = found
    if len(matches) == 1:
        return InferResult(matches[0], counts[0], counts[1], matches)
    return InferResult(None, matches=matches, closest=None if matches else closest_architecture(sd, names))


def closest_architecture(sd: Mapping[str, torch.Tensor], candidates: Optional[Sequence[str]] = None
                         ) -> Optional[Comparison]:
    """The registered architecture with the fewest missing + unexpected + mis-shaped keys (ties: by name)."""
    names = list(candidates) if candidates is not None else _registry().names()
    best = None
    for name in names:
        cmp = compare(name, sd)
        if best is None or cmp.distance < best.distance:
            best = cmp
    return best


__all__ = ["Comparison", "InferResult", "infer_architecture", "closest_architecture", "compare", "signature",
           "head_and_stem"]
