"""Model card: the JSON that travels beside every checkpoint and exported artifact.

It carries what is needed to rebuild and use the model correctly: the architecture and its
arguments, the normalisation applied *inside* the model (so inputs are always [0,1]), the input
shape, class names, the threat model (eps) the model was trained for, provenance, and metrics.

Cards are untrusted input: every field is type- and range-checked when a card is built or loaded
(:func:`validate_fields`), with one-line :class:`UserError` messages naming the file and the field.
"""
from __future__ import annotations

import json
import math
import numbers
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional

from . import __version__
from .errors import UserError
from .utils import write_json_atomic


# Bounds on what a card may claim. A card is untrusted input: without them ``input_shape`` [3, 1e6, 1e6]
# makes the first forward pass allocate terabytes, and a NaN mean silently yields chance accuracy.
MAX_CLASSES = 100_000
MAX_CHANNELS = 64
MAX_SIDE = 4096
MAX_INPUT_ELEMENTS = 3 * 4096 * 4096  # one 4K RGB image: 200 MB as float32
MAX_CARD_BYTES = 16 << 20
_REQUIRED = ("architecture", "num_classes", "input_shape", "mean", "std")


def _int(v: Any, what: str, source: str) -> int:
    if isinstance(v, bool) or not isinstance(v, numbers.Integral):
        raise UserError(f"{source}: {what} must be an integer, got {v!r}")
    return int(v)


def _float(v: Any, what: str, source: str) -> float:
    if isinstance(v, bool) or not isinstance(v, numbers.Real):
        raise UserError(f"{source}: {what} must be a number, got {v!r}")
    f = float(v)
    if not math.isfinite(f):
        raise UserError(f"{source}: {what} must be a finite number, got {v!r}")
    return f


def _list(v: Any, what: str, source: str) -> list:
    if isinstance(v, (str, bytes, dict)) or not hasattr(v, "__len__") or not hasattr(v, "__iter__"):
        raise UserError(f"{source}: {what} must be a list, got {v!r}")
    return list(v)


def validate_fields(d: Dict[str, Any], source: str = "model card") -> Dict[str, Any]:
    """Check and normalise the card fields present in ``d``; returns them as plain Python values.

    Raises a one-line :class:`UserError` naming ``source`` (the card file) and the field.
    """
    out: Dict[str, Any] = {}
    if "architecture" in d:
        a = d["architecture"]
        if not isinstance(a, str) or not a.strip():
            raise UserError(f"{source}: architecture must be a non-empty string, got {a!r}")
        out["architecture"] = a
    if "num_classes" in d:
        k = _int(d["num_classes"], "num_classes", source)
        if not 2 <= k <= MAX_CLASSES:
            raise UserError(f"{source}: num_classes must lie in 2..{MAX_CLASSES}, got {k}")
        out["num_classes"] = k
    c = None
    if "input_shape" in d:
        shape = _list(d["input_shape"], "input_shape", source)
        if len(shape) != 3:
            raise UserError(f"{source}: input_shape must be [C, H, W], got {d['input_shape']!r}")
        c, h, w = (_int(v, f"input_shape {n}", source) for v, n in zip(shape, "CHW"))
        if not 1 <= c <= MAX_CHANNELS:
            raise UserError(f"{source}: input_shape C must lie in 1..{MAX_CHANNELS}, got {c}")
        if not (1 <= h <= MAX_SIDE and 1 <= w <= MAX_SIDE):
            raise UserError(f"{source}: input_shape H and W must lie in 1..{MAX_SIDE}, got {h}x{w}")
        if c * h * w > MAX_INPUT_ELEMENTS:
            raise UserError(f"{source}: input_shape {[c, h, w]} is too large ({c * h * w} values per image; "
                            f"at most {MAX_INPUT_ELEMENTS})")
        out["input_shape"] = [c, h, w]
    for key in ("mean", "std"):
        if key not in d:
            continue
        vals = [_float(v, f"{key} value", source) for v in _list(d[key], key, source)]
        if c is not None and len(vals) != c:
            raise UserError(f"{source}: {key} has {len(vals)} values for {c} input channels")
        if key == "std" and any(not 1e-6 <= v <= 1e6 for v in vals):
            raise UserError(f"{source}: std values must be positive (1e-6..1e6), got {vals}")
        if key == "mean" and any(abs(v) > 1e6 for v in vals):
            raise UserError(f"{source}: mean values must lie in -1e6..1e6 (pixels are in [0,1]), got {vals}")
        out[key] = vals
    if "classes" in d:
        names = _list(d["classes"] if d["classes"] is not None else [], "classes", source)
        if len(names) > MAX_CLASSES:
            raise UserError(f"{source}: classes lists {len(names)} names (at most {MAX_CLASSES})")
        if any(not isinstance(n, (str, numbers.Integral)) or isinstance(n, bool) for n in names):
            raise UserError(f"{source}: classes must be a list of names (strings)")
        k = out.get("num_classes")
        if names and k is not None and len(names) != k:
            raise UserError(f"{source}: classes lists {len(names)} names but num_classes is {k}")
        out["classes"] = [str(n) for n in names]
    if d.get("eps") is not None:
        e = _float(d["eps"], "eps", source)
        if not 0.0 <= e <= 1.0:
            raise UserError(f"{source}: eps must lie in [0, 1] (pixels are in [0,1]), got {e}")
        out["eps"] = e
    for key in ("dataset", "kind", "precision"):
        v = d.get(key)
        if v is not None and not isinstance(v, str):
            raise UserError(f"{source}: {key} must be a string, got {v!r}")
    for key in ("provenance", "metrics", "extra"):
        v = d.get(key)
        if v is not None and not isinstance(v, dict):
            raise UserError(f"{source}: {key} must be a JSON object, got {type(v).__name__}")
        if v is None and key in d:
            out[key] = {}
    return out


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
        # Normalise in place (plain ints / floats / lists), so every consumer and the JSON see clean values.
        for k, v in validate_fields(self.__dict__, "model card").items():
            setattr(self, k, v)

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
        kwargs.update(validate_fields(kwargs, source))  # field errors name the file, not just "model card"
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
    if not cp.is_file():
        raise UserError(f"model card {cp} is not a file")
    try:
        if cp.stat().st_size > MAX_CARD_BYTES:
            raise UserError(f"model card {cp} is {cp.stat().st_size} bytes; a card is small JSON (at most "
                            f"{MAX_CARD_BYTES >> 20} MB)")
        data = json.loads(cp.read_text())
    except OSError as e:
        raise UserError(f"cannot read model card {cp}: {e.strerror or e}") from None
    except RecursionError:
        raise UserError(f"model card {cp} is nested too deeply to be a model card") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise UserError(f"model card {cp} is not valid JSON: {e}") from None
    if not isinstance(data, dict):
        raise UserError(f"model card {cp} must be a JSON object")
    return ModelCard.from_dict(data, source=f"model card {cp.name}")


def provenance(**fields: Any) -> Dict[str, Any]:
    out = {"tool": "infoard-deploy", "version": __version__, "created": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    out.update({k: v for k, v in fields.items() if v is not None})
    return out
