"""Model card: the JSON that travels beside every checkpoint and exported artifact.

It carries what is needed to rebuild and use the model correctly: the architecture and its
arguments, the normalisation applied *inside* the model (so inputs are always [0,1]), the input
shape, class names, the threat model (eps) the model was trained for, provenance, and metrics.
"""
from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional

from . import __version__
from .errors import UserError
from .utils import write_json_atomic


@dataclass
class ModelCard:
    architecture: str
    num_classes: int
    input_shape: List[int]  # [C, H, W]
    mean: List[float]
    std: List[float]
    classes: List[str] = field(default_factory=list)
    eps: Optional[float] = None
    dataset: Optional[str] = None
    kind: str = "checkpoint"  # checkpoint | onnx | engine
    precision: str = "fp32"
    provenance: Dict[str, Any] = field(default_factory=dict)
    metrics: Dict[str, Any] = field(default_factory=dict)
    extra: Dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        c = int(self.input_shape[0]) if self.input_shape else 0
        if len(self.input_shape) != 3:
            raise UserError(f"model card input_shape must be [C, H, W], got {self.input_shape}")
        if len(self.mean) != c or len(self.std) != c:
            raise UserError(
                f"model card normalisation has {len(self.mean)} mean / {len(self.std)} std values "
                f"for {c} input channels"
            )
        if any(s <= 0 for s in self.std):
            raise UserError("model card std values must be positive")

    def to_dict(self) -> Dict[str, Any]:
        d = asdict(self)
        d["infoard_deploy_version"] = __version__
        return d

    @classmethod
    def from_dict(cls, d: Dict[str, Any], source: str = "model card") -> "ModelCard":
        missing = [k for k in ("architecture", "num_classes", "input_shape", "mean", "std") if k not in d]
        if missing:
            raise UserError(f"{source} is missing {', '.join(missing)} (needed to rebuild and normalise the model)")
        known = {f for f in cls.__dataclass_fields__}
        kwargs = {k: v for k, v in d.items() if k in known}
        try:
            return cls(**kwargs)
        except TypeError as e:
            raise UserError(f"{source} is malformed: {e}") from None

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        write_json_atomic(path, self.to_dict())
        return path


def card_path_for(artifact: str | Path) -> Path:
    """``student.pt`` -> ``student.card.json`` (also for .onnx and .engine files)."""
    p = Path(artifact)
    return p.with_name(p.stem + ".card.json")


def load_card(artifact_or_card: str | Path, required: bool = True) -> Optional[ModelCard]:
    p = Path(artifact_or_card)
    cp = p if p.name.endswith(".card.json") else card_path_for(p)
    if not cp.exists():
        if required:
            raise UserError(f"no model card beside {p} (expected {cp.name}); pass the normalisation and shape by flags")
        return None
    try:
        data = json.loads(cp.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise UserError(f"model card {cp} is not valid JSON: {e}") from None
    if not isinstance(data, dict):
        raise UserError(f"model card {cp} must be a JSON object")
    return ModelCard.from_dict(data, source=f"model card {cp.name}")


def provenance(**fields: Any) -> Dict[str, Any]:
    out = {"tool": "infoard-deploy", "version": __version__, "created": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    out.update({k: v for k, v in fields.items() if v is not None})
    return out
