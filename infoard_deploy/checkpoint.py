"""Safe model loading (any supported file, by content) and byte-reproducible checkpoint writing.

Loading never executes code from a file: pickles go through ``torch.load(weights_only=True)``, safetensors
hold tensors only, TorchScript is a serialized graph, ONNX graphs are converted with onnx2torch. The format
is read from the bytes (:mod:`.models.files`), never from the suffix. For state dicts the architecture comes
from the card, the ``arch`` flag, RobustBench's table, or is inferred from parameter names and shapes
(:mod:`.models.infer`); the input normalisation from the flag, the card, buffers in the file, the
architecture's definition, or, when nothing is known, an explicit raw-[0,1] assumption with a warning
(:mod:`.models.normalisation`). :func:`load_model_ex` reports all of that in a :class:`LoadInfo`.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch
from torch import nn

from .card import ModelCard, card_path_for, load_card
from .errors import UserError
from .models import MODELS, Normalized, build_model
from .models import normalisation as norm
from .models.files import extract_weights, read_weights, sniff_format, unrecognised
from .models.graph import load_onnx, load_torchscript, onnx_input_shape
from .models.infer import compare, infer_architecture
from .models.robustbench import RobustBenchEntry, entry_for_path, lookup
from .utils import atomic_path, require_file

ROBUSTBENCH_DIR_ENV = "INFOARD_ROBUSTBENCH_DIR"  # default model_dir for "robustbench:NAME" (else ./models)


@dataclass
class LoadInfo:
    """How :func:`load_model_ex` read a file.

    ``format``: ``state-dict`` | ``state-dict-legacy`` | ``safetensors`` | ``torchscript`` | ``onnx``;
    ``architecture_source``: ``card`` | ``flag`` | ``inferred`` (from names and shapes) | ``robustbench``
    (its model table) | ``graph`` (TorchScript / ONNX carry their own); ``normalisation_source``: ``card`` |
    ``flag`` | ``file`` (buffers in the weights) | ``architecture`` (fixed by the definition: DM WideResNets,
    RobustBench classes) | ``assumed`` (nothing known: mean 0 / std 1, with a warning).
    """

    format: str
    architecture: str
    architecture_source: str
    normalisation_source: str
    mean: List[float]
    std: List[float]
    normalisation_detail: str = ""
    warnings: List[str] = field(default_factory=list)
    path: Optional[Path] = None


def _is_torchscript(path: Path) -> bool:
    """Kept for callers that check before loading; the format is judged by content."""
    p = Path(path)
    return p.is_file() and sniff_format(p) == "torchscript"


def _load_raw(path: Path) -> Any:
    """The weights-only content of a state-dict file in any of the state-dict formats."""
    path = Path(path)
    fmt = sniff_format(path)
    if fmt is None:
        raise unrecognised(path)
    return read_weights(path, fmt)


def extract_state_dict(obj: Any, source: str = "checkpoint") -> Dict[str, torch.Tensor]:
    """The tensor dict inside the usual checkpoint layouts, wrapper prefixes and normalisation buffers removed."""
    return extract_weights(obj, source)[0]


def load_state_into(net: nn.Module, sd: Dict[str, torch.Tensor], arch: str, source: str) -> None:
    """Strict load with an error that names the missing / unexpected / mis-shaped keys, and the registered
    architecture the weights do match, if any."""
    own = net.state_dict()
    missing = [k for k in own if k not in sd]
    unexpected = [k for k in sd if k not in own]
    shape = [f"{k} {tuple(sd[k].shape)} vs {tuple(own[k].shape)}"
             for k in own if k in sd and sd[k].shape != own[k].shape]
    if missing or unexpected or shape:
        raise UserError(f"{source} does not match architecture '{arch}': "
                        f"{_mismatch_text(missing, unexpected, shape)}{_match_hint(sd, arch)}")
    net.load_state_dict(sd, strict=True)


def _mismatch_text(missing: List[str], unexpected: List[str], shape: List[str]) -> str:
    def _fmt(keys):
        return ", ".join(keys[:4]) + (f" (+{len(keys) - 4} more)" if len(keys) > 4 else "")
    parts = [f"missing keys {_fmt(missing)}" if missing else "",
             f"unexpected keys {_fmt(unexpected)}" if unexpected else ""]
    if shape and not (missing or unexpected):
        parts.append(f"shape mismatch {'; '.join(shape[:3])}")
    return "; ".join(p for p in parts if p)


def _match_hint(sd: Dict[str, torch.Tensor], arch: str) -> str:
    found = infer_architecture(sd)
    if found.architecture and found.architecture != arch:
        return f"; the weights match '{found.architecture}' (pass --arch {found.architecture} or fix the card)"
    return ""


def resolve_card(path: Path, card: Optional[ModelCard], overrides: Dict[str, Any]) -> Optional[ModelCard]:
    """Card beside the file (or given), with non-None flag values overriding its fields."""
    base = card or load_card(path, required=False)
    over = {k: v for k, v in overrides.items() if v is not None}
    if base is None:
        need = ("architecture", "num_classes", "input_shape", "mean", "std")
        if not all(k in over for k in need):
            return None
        return ModelCard.from_dict(over, source=f"flags for {path.name}")
    d = base.to_dict()
    d.update(over)
    return ModelCard.from_dict(d, source=f"model card of {path.name}")


def load_model(path: str | Path, *, arch: Optional[str] = None, num_classes: Optional[int] = None,
               input_shape: Optional[Sequence[int]] = None, mean: Optional[Sequence[float]] = None,
               std: Optional[Sequence[float]] = None, card: Optional[ModelCard] = None,
               dataset_mean: Optional[Sequence[float]] = None, dataset_std: Optional[Sequence[float]] = None,
               robustbench_dir: Optional[str | os.PathLike] = None) -> Tuple[nn.Module, ModelCard]:
    """Load a model that takes [0,1] inputs; returns ``(model in eval mode, card)``. See :func:`load_model_ex`."""
    model, c, _ = load_model_ex(path, arch=arch, num_classes=num_classes, input_shape=input_shape, mean=mean,
                                std=std, card=card, dataset_mean=dataset_mean, dataset_std=dataset_std,
                                robustbench_dir=robustbench_dir)
    return model, c


def load_model_ex(path: str | Path, *, arch: Optional[str] = None, num_classes: Optional[int] = None,
                  input_shape: Optional[Sequence[int]] = None, mean: Optional[Sequence[float]] = None,
                  std: Optional[Sequence[float]] = None, card: Optional[ModelCard] = None,
                  dataset_mean: Optional[Sequence[float]] = None, dataset_std: Optional[Sequence[float]] = None,
                  robustbench_dir: Optional[str | os.PathLike] = None) -> Tuple[nn.Module, ModelCard, LoadInfo]:
    """Load any supported model file; returns ``(model in eval mode, card, LoadInfo)``.

    ``path`` is a file (state dict in any torch serialisation, ``.safetensors``, TorchScript, ONNX; the
    suffix does not matter) or ``robustbench:[DATASET/[THREAT/]]NAME`` (looked up in ``robustbench_dir``,
    ``$INFOARD_ROBUSTBENCH_DIR`` or ``./models`` in RobustBench's layout). ``arch`` / ``num_classes`` /
    ``input_shape`` / ``mean`` / ``std`` override the card beside the file. ``dataset_mean`` / ``dataset_std``
    are the statistics of the data the caller will feed: used only where the architecture's definition
    normalises with its training set's statistics (DM WideResNets), and named in the warning when the
    normalisation has to be assumed. The model maps float (N, C, H, W) in [0,1] to logits (N, K).
    """
    if (mean is None) != (std is None):
        raise UserError("give --mean and --std together")
    rb: Optional[RobustBenchEntry] = None
    if isinstance(path, str) and path.lower().startswith("robustbench:"):
        rb = lookup(path)
        path = rb.path(robustbench_dir or os.environ.get(ROBUSTBENCH_DIR_ENV) or "models")
        if not path.is_file():
            raise UserError(f"RobustBench model {rb.name} is not downloaded: put its checkpoint at {path} "
                            f"(Google Drive file {rb.gdrive_id}, {rb.url})")
    path = require_file(path, "model file")
    fmt = sniff_format(path)
    if fmt is None:
        raise unrecognised(path)
    base = card or load_card(path, required=False)
    by_path = False
    if rb is None and base is None and arch is None and mean is None:
        rb = entry_for_path(path)  # a file kept in RobustBench's own layout: its table knows the normalisation
        by_path = rb is not None
    flags = {"architecture": arch, "num_classes": num_classes,
             "input_shape": list(input_shape) if input_shape else None,
             "mean": [float(v) for v in mean] if mean is not None else None,
             "std": [float(v) for v in std] if std is not None else None}
    if fmt in ("torchscript", "onnx"):
        model, c, info = _load_graph(path, fmt, base, flags, dataset_mean, dataset_std)
    else:
        model, c, info = _load_state_dict(path, fmt, base, flags, rb, by_path, dataset_mean, dataset_std)
        rb = rb if info.architecture_source == "robustbench" else None
    info.path = path
    c.provenance = {**c.provenance}
    c.provenance.setdefault("normalisation_source", info.normalisation_source)
    c.provenance.setdefault("architecture_source", info.architecture_source)
    if rb is not None:
        c.provenance.setdefault("robustbench", f"{rb.dataset}/{rb.threat_model}/{rb.name}")
    if info.warnings:
        c.extra = {**c.extra, "warnings": list(info.warnings)}
    model.eval()
    return model, c, info


def _normalisation(name: str, base: Optional[ModelCard], flags: Dict[str, Any],
                   found: Optional[norm.FileNormalisation], arch_norm, in_channels: int, dataset_mean,
                   dataset_std) -> Tuple[List[float], List[float], str, str, List[str]]:
    """``(mean, std, source, detail, warnings)``: flag > card > buffers in the file > architecture > assumed."""
    warns: List[str] = []
    if flags["mean"] is not None or base is not None:
        src = "flag" if flags["mean"] is not None else "card"
        mean, std = (flags["mean"], flags["std"]) if src == "flag" else (list(base.mean), list(base.std))
        if found is not None and not (norm.same(mean, found.mean) and norm.same(std, found.std)):
            warns.append(f"{name} carries normalisation buffers ({'/'.join(found.keys)}: mean {found.mean}, std "
                         f"{found.std}) but the {src} says mean {mean}, std {std}; using the {src}'s")
        return mean, std, src, f"from the {src}", warns
    if found is not None:
        return found.mean, found.std, "file", f"buffers {'/'.join(found.keys)} in the weights", warns
    if arch_norm is not None:
        mean, std, detail, warning = arch_norm
        return mean, std, "architecture", detail, warns + ([f"{name}: {warning}"] if warning else [])
    mean, std = norm.raw(in_channels)
    return mean, std, "assumed", "nothing known", [norm.assumed_warning(name, in_channels, dataset_mean, dataset_std)]


def _load_state_dict(path: Path, fmt: str, base: Optional[ModelCard], flags: Dict[str, Any],
                     rb: Optional[RobustBenchEntry], rb_by_path: bool, dataset_mean, dataset_std):
    sd, found = extract_weights(read_weights(path, fmt), source=path.name)
    name = path.name
    if rb is not None and rb_by_path and not compare(rb.arch, sd).exact:
        rb = None  # only named like a RobustBench file: fall back to inference
    if flags["architecture"] is not None:
        arch, arch_src = flags["architecture"], "flag"
    elif base is not None:
        arch, arch_src = base.architecture, "card"
    elif rb is not None:
        arch, arch_src = rb.arch, "robustbench"
    else:
        res = infer_architecture(sd)
        if res.architecture is None:
            raise UserError(f"{name} has no model card and {res.why_not()}; pass --arch to name one")
        arch, arch_src = res.architecture, "inferred"
    if arch not in MODELS:
        raise UserError(MODELS.unknown_message(arch))
    arch = arch.strip().lower()
    meta = MODELS.meta(arch)
    head_w, stem_w = sd.get(f"{meta['head']}.weight"), sd.get(f"{meta['stem']}.weight")
    k_file = int(head_w.shape[0]) if isinstance(head_w, torch.Tensor) and head_w.dim() == 2 else None
    c_file = int(stem_w.shape[1]) if isinstance(stem_w, torch.Tensor) and stem_w.dim() == 4 else None
    k = flags["num_classes"] or (base.num_classes if base else None) or k_file
    shape = flags["input_shape"] or (list(base.input_shape) if base else None)
    c = shape[0] if shape else (c_file or 3)
    if k is None:
        raise UserError(f"{name}: cannot tell the class count ({meta['head']}.weight is missing); pass --num-classes")
    if k_file is not None and k_file != k:
        raise UserError(f"{name} has {k_file} output classes but {k} were expected")
    if c_file is not None and c_file != c:
        raise UserError(f"{name} takes {c_file} input channels but {c} were expected")
    cmp = compare(arch, sd, k, c)
    if not cmp.exact:  # judged on the meta device: a wrong guess never allocates a 267M-parameter model
        raise UserError(f"{name} does not match architecture '{arch}': "
                        f"{_mismatch_text(cmp.missing, cmp.unexpected, cmp.mismatched)}{_match_hint(sd, arch)}")
    arch_norm = _rb_norm(rb) if rb is not None else norm.architecture_normalisation(
        meta.get("normalisation"), k, c, dataset_mean, dataset_std)
    mean, std, nsrc, detail, warns = _normalisation(name, base, flags, found, arch_norm, c, dataset_mean, dataset_std)
    shape = shape or [c, meta.get("input_size", 32), meta.get("input_size", 32)]
    fields = {"architecture": arch, "num_classes": k, "input_shape": shape, "mean": mean, "std": std}
    if base is not None:
        card = ModelCard.from_dict({**base.to_dict(), **fields}, source=f"model card of {name}")
    else:
        card = ModelCard.from_dict({**fields, **({"dataset": rb.dataset} if rb else {})}, source=f"weights of {name}")
    model = build_model(arch, k, c, shape[1], mean, std)
    load_state_into(model.net, sd, arch, name)
    return model, card, LoadInfo(fmt, arch, arch_src, nsrc, list(mean), list(std), detail, warns)


def _rb_norm(rb: RobustBenchEntry):
    """RobustBench's class normalises (``mu``/``sigma``, ``2x-1``, DM constants) or not (``raw``)."""
    return rb.mean, rb.std, f"RobustBench {rb.name} ({rb.normalisation})", None


def _load_graph(path: Path, fmt: str, base: Optional[ModelCard], flags: Dict[str, Any], dataset_mean, dataset_std):
    """TorchScript / ONNX: the graph is the architecture; normalisation from flag or card, else assumed raw."""
    # eval before any forward pass: onnx2torch returns a module in training mode, whose BatchNorms would
    # overwrite their running statistics on the probe batch
    net = (load_torchscript(path) if fmt == "torchscript" else load_onnx(path)).eval()
    name = path.name
    shape = flags["input_shape"] or (list(base.input_shape) if base else None)
    if shape is None and fmt == "onnx":
        shape = onnx_input_shape(path)
    if shape is None:
        raise UserError(f"{name} is a {fmt} model without a model card; pass --input-shape C,H,W")
    mean, std, nsrc, detail, warns = _normalisation(name, base, flags, None, None, shape[0], dataset_mean, dataset_std)
    k = flags["num_classes"] or (base.num_classes if base else None) or _probe_classes(net, shape, name)
    fields = {"architecture": flags["architecture"] or (base.architecture if base else None) or fmt,
              "num_classes": k, "input_shape": shape, "mean": mean, "std": std}
    if base is not None:
        card = ModelCard.from_dict({**base.to_dict(), **fields}, source=f"model card of {name}")
    else:
        card = ModelCard.from_dict(fields, source=f"graph of {name}")
    model = Normalized(net, card.mean, card.std).eval()
    _check_output(model, card, path)
    return model, card, LoadInfo(fmt, card.architecture, "graph", nsrc, list(mean), list(std), detail, warns)


def _probe_classes(net: nn.Module, shape: Sequence[int], name: str) -> int:
    try:
        with torch.no_grad():
            out = net(torch.zeros(2, *shape))
    except Exception as e:
        raise UserError(f"{name} does not accept inputs of shape {(2, *shape)}: "
                        f"{' '.join(str(e).split())[:200] or type(e).__name__}") from None
    if not isinstance(out, torch.Tensor) or out.dim() != 2:
        raise UserError(f"{name} returns {getattr(out, 'shape', type(out).__name__)}, expected logits (N, K)")
    return int(out.shape[1])


def _check_output(model: nn.Module, card: ModelCard, path: Path) -> None:
    x = torch.rand(2, *card.input_shape)
    try:
        with torch.no_grad():
            out = model(x)
    except Exception as e:
        raise UserError(f"{path.name} does not accept inputs of shape {tuple(x.shape)}: "
                        f"{' '.join(str(e).split())[:200] or type(e).__name__}") from None
    if not isinstance(out, torch.Tensor) or out.dim() != 2 or out.shape[1] != card.num_classes:
        shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise UserError(f"{path.name} returns {shape}, expected logits of shape (N, {card.num_classes})")


def _torch_save_atomic(obj: Any, path: str | Path) -> None:
    """``torch.save`` through an open file handle, so the archive's root folder is always ``archive``.

    Given a path, torch names the zip root after the file, and writing to a random temp name (for the atomic
    rename) made every save of the same weights differ; through a handle, identical content gives identical
    bytes. The temp file is renamed over ``path`` only after a complete write.
    """
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            torch.save(obj, f)


def save_model(model: nn.Module, path: str | Path, card: ModelCard) -> Path:
    """Write the raw network weights (``.pt`` state dict or ``.safetensors``) and the card, atomically.

    The weight file's bytes depend only on the weights (same weights -> same sha256).
    """
    path = Path(path)
    net = model.net if isinstance(model, Normalized) else model
    sd = {k: v.detach().cpu().contiguous() for k, v in net.state_dict().items()}
    if path.suffix.lower() == ".safetensors":
        from safetensors.torch import save_file

        with atomic_path(path) as tmp:
            save_file(sd, str(tmp))
    else:
        _torch_save_atomic(sd, path)
    card.save(card_path_for(path))
    return path


def save_state(obj: Dict[str, Any], path: str | Path) -> None:
    """Atomically save a training-state dict (tensors, numbers, strings, nested dicts/lists only)."""
    _torch_save_atomic(obj, path)


def load_state(path: str | Path) -> Dict[str, Any]:
    """Weights-only load of a training-state file written by :func:`save_state`."""
    p = require_file(path, "state file")
    obj = _load_raw(p)
    if not isinstance(obj, dict):
        raise UserError(f"{p.name} is not a training-state file")
    return obj


__all__ = ["LoadInfo", "load_model", "load_model_ex", "save_model", "save_state", "load_state",
           "extract_state_dict", "load_state_into", "resolve_card"]
