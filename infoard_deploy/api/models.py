"""Loading any supported model file for any command: ``load_model`` and the checks that it fits a dataset.

Every command that takes a model (``distill``'s teacher, ``train-teacher --resume``, ``evaluate``, ``inspect``,
``export``, ``verify``, ``bench``) loads it here, so architecture inference, normalisation handling and the
warnings about assumptions are the same everywhere. The returned model takes float NCHW inputs in [0, 1]
and normalises inside (:class:`infoard_deploy.models.Normalized`).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

from torch import nn

from ..card import ModelCard
from ..errors import UserError


@dataclass
class ModelSpec:
    """What a user states about a model file that has no card (or overrides of its card).

    ``mean``/``std`` are per-channel statistics applied *inside* the model to [0,1] inputs; ``eps`` is the
    L-inf radius (in [0,1] pixel units) the model was trained for. ``None`` means "not stated".
    """

    arch: Optional[str] = None
    num_classes: Optional[int] = None
    input_shape: Optional[Sequence[int]] = None  # [C, H, W]
    mean: Optional[Sequence[float]] = None
    std: Optional[Sequence[float]] = None
    eps: Optional[float] = None
    dataset: Optional[str] = None

    def __post_init__(self) -> None:
        if (self.mean is None) != (self.std is None):
            raise UserError("give --mean and --std together")
        if self.num_classes is not None and int(self.num_classes) < 2:
            raise UserError(f"--num-classes must be >= 2, got {self.num_classes}")


@dataclass
class LoadedModel:
    """A model ready to run: ``model`` maps (N, C, H, W) float32 in [0,1] to (N, K) logits (eval mode).

    ``normalisation_source`` says where the mean/std applied inside come from: ``card``, ``flag``,
    ``file`` (buffers in the weights), ``architecture`` (fixed by the definition) or ``assumed``
    (nothing said: raw [0,1] inputs assumed, with a warning in ``warnings``).
    """

    model: nn.Module
    card: ModelCard
    path: Path
    format: str = "state-dict"
    architecture_source: str = "card"
    normalisation_source: str = "card"
    warnings: List[str] = field(default_factory=list)

    def normalisation(self) -> Dict[str, Any]:
        return {"mean": list(self.card.mean), "std": list(self.card.std), "source": self.normalisation_source}

    def to_dict(self) -> Dict[str, Any]:
        return {"path": str(self.path), "format": self.format, "architecture": self.card.architecture,
                "architecture_source": self.architecture_source, "normalisation": self.normalisation(),
                "num_classes": self.card.num_classes, "input_shape": list(self.card.input_shape),
                "eps": self.card.eps, "warnings": list(self.warnings)}


def load_model(path: str | Path, spec: Optional[ModelSpec] = None, *, data: Any = None,
               model_dir: Optional[str | Path] = None, download: bool = False, **spec_fields: Any) -> LoadedModel:
    """Load a checkpoint (state dict / ``.safetensors`` / TorchScript / ONNX) with its card or ``spec``.

    ``spec`` (or its fields as keywords: ``arch``, ``num_classes``, ``input_shape``, ``mean``, ``std``,
    ``eps``, ``dataset``) overrides the card beside the file. Without a card and without ``arch`` the
    architecture is inferred from parameter names and shapes. Raises :class:`UserError` for a file that is
    missing, unsafe, corrupt, or matches no registered architecture. ``data`` (a loaded dataset bundle) fills
    in the class count and input shape of a file that has no card and no stated values.

    ``path`` may also be ``robustbench:NAME`` (e.g. ``robustbench:Carmon2019Unlabeled``): architecture, layout and
    normalisation come from RobustBench's model table and the file from ``model_dir`` in RobustBench's layout
    (``DIR/cifar10/Linf/NAME.pt``; default ``$INFOARD_ROBUSTBENCH_DIR`` or ``./models``); ``download`` fetches a
    missing file.
    """
    from .. import checkpoint
    from ..card import load_card

    spec = spec or ModelSpec(**spec_fields)
    if is_robustbench(path) and download:
        from ..models.robustbench import resolve_robustbench

        resolve_robustbench(str(path).split(":", 1)[1], model_dir or "models", download=True)
    if data is not None and not is_robustbench(path) and load_card(path, required=False) is None:
        spec = ModelSpec(**{**spec.__dict__, "num_classes": spec.num_classes or data.num_classes,
                            "input_shape": spec.input_shape or list(data.input_shape)})
    kw = dict(arch=spec.arch, num_classes=spec.num_classes,
              input_shape=list(spec.input_shape) if spec.input_shape else None,
              mean=list(spec.mean) if spec.mean is not None else None,
              std=list(spec.std) if spec.std is not None else None)
    loader = getattr(checkpoint, "load_model_ex", None)
    if loader is not None:
        model, card, info = loader(path, **kw, robustbench_dir=model_dir)
        loaded = LoadedModel(model, card, Path(info.path or path), format=info.format,
                             architecture_source=info.architecture_source,
                             normalisation_source=info.normalisation_source, warnings=list(info.warnings))
    else:  # pragma: no cover - older checkpoint module
        model, card = checkpoint.load_model(path, **kw)
        loaded = LoadedModel(model, card, Path(path),
                             normalisation_source="flag" if spec.mean is not None else "card")
    if spec.eps is not None:
        loaded.card.eps = float(spec.eps)
    if spec.dataset is not None:
        loaded.card.dataset = spec.dataset
    return loaded


def is_robustbench(path: Any) -> bool:
    """``robustbench:NAME`` names a RobustBench model instead of a file."""
    return isinstance(path, str) and path.lower().startswith("robustbench:")


def check_fits(loaded: LoadedModel, bundle, role: str = "model") -> None:
    """The model's class count and input shape match the dataset's; otherwise a one-line UserError."""
    c, name = loaded.card, loaded.path.name
    if c.num_classes != bundle.num_classes:
        raise UserError(f"{role} {name} has {c.num_classes} classes but {bundle.name} has {bundle.num_classes}")
    if list(c.input_shape) != list(bundle.input_shape):
        raise UserError(f"{role} {name} takes {list(c.input_shape)} inputs but {bundle.name} images are "
                        f"{list(bundle.input_shape)} (C, H, W)")


def write_card(path: str | Path, spec: ModelSpec, *, force: bool = False) -> Path:
    """Write ``<stem>.card.json`` for a foreign model file, after checking the file loads with ``spec``.

    The card makes every command (``export``, ``verify``, ``bench``, ``evaluate``) read the file the same way
    without flags. Refuses to replace an existing card unless ``force``.
    """
    from ..card import card_path_for
    from ..utils import require_file

    p = require_file(path, "model file")
    dest = card_path_for(p)
    if dest.exists() and not force:
        raise UserError(f"{dest} exists; pass --force to replace it")
    loaded = load_model(p, spec)
    card = loaded.card
    card.provenance = {**card.provenance, "card_written_for": p.name,
                       "normalisation_source": loaded.normalisation_source}
    if loaded.warnings:
        card.extra = {**card.extra, "warnings": list(loaded.warnings)}
    card.save(dest)
    return dest


def inspect_model(path: str | Path, spec: Optional[ModelSpec] = None, device: str = "cpu") -> Dict[str, Any]:
    """Load ``path`` and report format, card, normalisation (and its source), parameter count, sha256 and a
    forward check: two seeded random images in [0,1] of the card's input shape -> logits' shape."""
    import torch

    from ..card import card_path_for
    from ..utils import parse_device, sha256_file

    loaded = load_model(path, spec)
    model, card, p = loaded.model, loaded.card, loaded.path
    dev = parse_device(device)
    gen = torch.Generator().manual_seed(0)
    x = torch.rand((2, *card.input_shape), generator=gen)
    try:
        model = model.to(dev)
        with torch.no_grad():
            out = model(x.to(dev))
    except Exception as e:  # a graph that cannot run this shape on this device
        raise UserError(f"forward check of {p.name} on {dev} failed: {' '.join(str(e).split())[:300]}") from None
    out = out.float().cpu()
    cp = card_path_for(p)
    return {
        "path": str(p), "format": loaded.format, "sha256": sha256_file(p),
        "card_file": str(cp) if cp.exists() else None, "card": card.to_dict(),
        "architecture_source": loaded.architecture_source, "normalisation": loaded.normalisation(),
        "warnings": list(loaded.warnings),
        "parameters": int(sum(q.numel() for q in model.parameters())),
        "buffers": int(sum(b.numel() for b in model.buffers())),
        "size_mb": round(p.stat().st_size / 2**20, 3),
        "forward": {"device": str(dev), "input_shape": list(x.shape), "output_shape": list(out.shape),
                    "finite": bool(torch.isfinite(out).all()), "predictions": out.argmax(1).tolist()},
    }


__all__ = ["ModelSpec", "LoadedModel", "is_robustbench", "load_model", "check_fits", "write_card", "inspect_model"]
