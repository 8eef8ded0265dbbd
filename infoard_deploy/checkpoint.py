"""Safe model loading and atomic checkpoint writing.

Loading never executes code from a file: ``.pt/.pth`` go through ``torch.load(weights_only=True)``
(a pickle that needs anything beyond tensors and plain containers is refused), ``.safetensors`` hold
tensors only, TorchScript is loaded with ``torch.jit.load`` (a serialized graph, no pickled Python), and
ONNX graphs are converted to a differentiable torch module with onnx2torch.

Common state-dict layouts are unwrapped: ``{"state_dict": ...}``, ``{"model": ...}``, DataParallel's
``module.`` prefix, ``torch.compile``'s ``_orig_mod.``, and TRADES' plain WRN state dicts.
"""
from __future__ import annotations

import pickle
import zipfile
from pathlib import Path
from typing import Any, Dict, Optional, Sequence, Tuple

import torch
from torch import nn

from .card import ModelCard, card_path_for, load_card
from .errors import UserError
from .models import MODELS, Normalized, build_model
from .utils import atomic_path, require_file

_WRAPPER_KEYS = ("state_dict", "model_state_dict", "model", "net", "student", "ema", "params")
_PREFIXES = ("module.", "_orig_mod.", "model.", "net.")
_NORM_KEYS = ("mean", "std")


def _is_torchscript(path: Path) -> bool:
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as z:
        names = z.namelist()
    # TorchScript archives carry the serialized code; plain torch.save zips do not.
    return any(n.split("/", 1)[-1].startswith("code/") for n in names) or any(n.endswith("constants.pkl") for n in names)


def _load_raw(path: Path) -> Any:
    suffix = path.suffix.lower()
    if suffix == ".safetensors":
        try:
            from safetensors.torch import load_file
        except ImportError:  # pragma: no cover - safetensors is a core dependency
            raise UserError("reading .safetensors needs the 'safetensors' package") from None
        try:
            return load_file(str(path), device="cpu")
        except Exception as e:  # safetensors raises its own error types
            raise UserError(f"{path.name} is not a valid safetensors file: {str(e).splitlines()[0]}") from None
    try:
        return torch.load(str(path), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else ""
        if "Weights only load failed" in str(e) or "Unsupported global" in str(e):
            raise UserError(
                f"refused to load {path.name}: it is a pickle that would run code or build Python objects "
                f"(weights-only loading); save a state_dict or use .safetensors instead"
            ) from None
        raise UserError(f"{path.name} is corrupt or not a PyTorch checkpoint ({first})") from None
    except (RuntimeError, EOFError, OSError, ValueError, zipfile.BadZipFile) as e:
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise UserError(f"{path.name} is corrupt or not a PyTorch checkpoint ({msg})") from None


def extract_state_dict(obj: Any, source: str = "checkpoint") -> Dict[str, torch.Tensor]:
    """Find the tensor dict inside the usual checkpoint layouts and strip wrapper prefixes."""
    for _ in range(4):
        if isinstance(obj, dict) and obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
            break
        if isinstance(obj, dict):
            inner = next((obj[k] for k in _WRAPPER_KEYS if k in obj and isinstance(obj[k], dict)), None)
            if inner is None:
                tensors = {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}
                if tensors:
                    obj = tensors
                    break
                raise UserError(f"{source} holds no weights (keys: {', '.join(list(obj)[:8])})")
            obj = inner
        else:
            raise UserError(f"{source} is not a state dict (got {type(obj).__name__})")
    sd = dict(obj)
    changed = True
    while changed:
        changed = False
        # a saved Normalized wrapper holds mean/std beside net.*: drop them first so "net." strips
        sd = {k: v for k, v in sd.items() if k not in _NORM_KEYS}
        for p in _PREFIXES:
            if sd and all(k.startswith(p) for k in sd):
                sd = {k[len(p):]: v for k, v in sd.items()}
                changed = True
    # our own Normalized wrapper stores mean/std as buffers; they live in the card instead
    return {k: v for k, v in sd.items() if k not in _NORM_KEYS}


def load_state_into(net: nn.Module, sd: Dict[str, torch.Tensor], arch: str, source: str) -> None:
    """Strict load with an error that names the missing / unexpected / mis-shaped keys."""
    own = net.state_dict()
    missing = [k for k in own if k not in sd]
    unexpected = [k for k in sd if k not in own]
    shape = [f"{k} {tuple(sd[k].shape)} vs {tuple(own[k].shape)}" for k in own if k in sd and sd[k].shape != own[k].shape]
    if missing or unexpected:
        def _fmt(keys):
            return ", ".join(keys[:4]) + (f" (+{len(keys) - 4} more)" if len(keys) > 4 else "")
        raise UserError(
            f"{source} does not match architecture '{arch}': "
            + (f"missing keys {_fmt(missing)}" if missing else "")
            + ("; " if missing and unexpected else "")
            + (f"unexpected keys {_fmt(unexpected)}" if unexpected else "")
        )
    if shape:
        raise UserError(f"{source} does not match architecture '{arch}': shape mismatch {'; '.join(shape[:3])}")
    net.load_state_dict(sd, strict=True)


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


def load_model(
    path: str | Path,
    *,
    arch: Optional[str] = None,
    num_classes: Optional[int] = None,
    input_shape: Optional[Sequence[int]] = None,
    mean: Optional[Sequence[float]] = None,
    std: Optional[Sequence[float]] = None,
    card: Optional[ModelCard] = None,
) -> Tuple[nn.Module, ModelCard]:
    """Load a model that takes [0,1] inputs; returns ``(model in eval mode, card)``.

    ``arch``/``num_classes``/``input_shape``/``mean``/``std`` override the card beside the file.
    State dicts need an architecture; TorchScript and ONNX models carry their own graph, and are
    wrapped in :class:`Normalized` with the given mean/std (identity when the graph already
    normalises).
    """
    path = require_file(path, "model file")
    overrides = {"architecture": arch, "num_classes": num_classes,
                 "input_shape": list(input_shape) if input_shape else None,
                 "mean": list(mean) if mean is not None else None, "std": list(std) if std is not None else None}
    suffix = path.suffix.lower()
    if suffix == ".onnx" or (suffix in (".pt", ".pth", ".ts", ".jit") and _is_torchscript(path)):
        net = _load_graph_model(path)
        c = resolve_card(path, card, {**overrides, "architecture": overrides["architecture"] or
                                      ("onnx" if suffix == ".onnx" else "torchscript")})
        if c is None:
            raise UserError(f"{path.name}: give --num-classes, --input-shape, --mean and --std (or a model card)")
        model = Normalized(net, c.mean, c.std)
        model.eval()
        _check_output(model, c, path)
        return model, c
    if suffix not in (".pt", ".pth", ".safetensors", ".bin", ".ckpt"):
        raise UserError(f"unsupported model format '{suffix}' for {path.name} (use .pt/.pth/.safetensors/TorchScript/.onnx)")
    sd = extract_state_dict(_load_raw(path), source=path.name)
    c = resolve_card(path, card, overrides)
    if c is None:
        c = _guess_card(sd, overrides, path)
    if c.architecture not in MODELS:
        raise UserError(MODELS.unknown_message(c.architecture))
    head_w = next((v for k, v in sd.items() if k.endswith(("linear.weight", "fc.weight")) and v.dim() == 2), None)
    if head_w is not None and head_w.shape[0] != c.num_classes:
        raise UserError(f"{path.name} has {head_w.shape[0]} output classes but {c.num_classes} were expected")
    stem_w = next((v for k, v in sd.items() if k == "conv1.weight" or k.endswith("stage1.0.weight")), None)
    if stem_w is not None and stem_w.dim() == 4 and stem_w.shape[1] != c.input_shape[0]:
        raise UserError(f"{path.name} takes {stem_w.shape[1]} input channels but {c.input_shape[0]} were expected")
    model = build_model(c.architecture, c.num_classes, c.input_shape[0], c.input_shape[1], c.mean, c.std)
    load_state_into(model.net, sd, c.architecture, path.name)
    model.eval()
    return model, c


def _guess_card(sd: Dict[str, torch.Tensor], over: Dict[str, Any], path: Path) -> ModelCard:
    """Without a card: need at least --arch; classes and channels are read from the weights."""
    if not over.get("architecture"):
        raise UserError(f"{path.name} has no model card; pass --arch (one of: {', '.join(MODELS.names())})")
    head_w = next((v for k, v in sd.items() if k.endswith(("linear.weight", "fc.weight")) and v.dim() == 2), None)
    stem_w = next((v for k, v in sd.items() if k == "conv1.weight" or k.endswith("stage1.0.weight")), None)
    k = over.get("num_classes") or (int(head_w.shape[0]) if head_w is not None else None)
    c = int(stem_w.shape[1]) if stem_w is not None and stem_w.dim() == 4 else 3
    shape = over.get("input_shape") or [c, 32, 32]
    mean = over.get("mean") or [0.0] * shape[0]
    std = over.get("std") or [1.0] * shape[0]
    if k is None:
        raise UserError(f"{path.name}: cannot tell the class count; pass --num-classes")
    return ModelCard.from_dict({"architecture": over["architecture"], "num_classes": k, "input_shape": shape,
                                "mean": mean, "std": std}, source=f"flags for {path.name}")


def _compat_for_onnx2torch(proto):
    """Make graphs from current exporters digestible for onnx2torch 1.5, which stops at opset 17.

    torch's dynamo exporter writes opset 18 (``ReduceMean`` with axes as an input, ``Reshape`` with
    ``allowzero=1``); the ONNX version converter rewrites those ops to their opset-17 forms. ``allowzero``
    only matters for a literal 0 in the target shape, which flatten-style reshapes never contain.
    """
    import onnx
    from onnx import version_converter

    opset = next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), 17)
    if opset > 17:
        try:
            proto = version_converter.convert_version(proto, 17)
        except Exception:  # leave it; onnx2torch's own error names the operator it lacks
            return proto
    consts = {i.name: onnx.numpy_helper.to_array(i) for i in proto.graph.initializer}
    for node in proto.graph.node:
        if node.op_type == "Reshape":
            shape = consts.get(node.input[1]) if len(node.input) > 1 else None
            if shape is not None and 0 not in shape.tolist():
                keep = [a for a in node.attribute if a.name != "allowzero"]
                del node.attribute[:]
                node.attribute.extend(keep)
    return proto


def _load_graph_model(path: Path) -> nn.Module:
    if path.suffix.lower() == ".onnx":
        try:
            import onnx
            from onnx2torch import convert
        except ImportError:
            raise UserError("loading an ONNX teacher needs onnx and onnx2torch (pip install infoard-deploy)") from None
        try:
            proto = onnx.load(str(path))
        except Exception as e:
            raise UserError(f"{path.name} is not a readable ONNX model: {str(e).splitlines()[0]}") from None
        proto = _compat_for_onnx2torch(proto)
        try:
            net = convert(proto)
        except Exception as e:
            raise UserError(f"cannot convert {path.name} to torch (onnx2torch): {str(e).splitlines()[0]}") from None
        for p in net.parameters():
            p.requires_grad_(False)
        return net.float()
    try:
        return torch.jit.load(str(path), map_location="cpu")
    except Exception as e:
        raise UserError(f"{path.name} is not a loadable TorchScript model: {str(e).splitlines()[0]}") from None


def _check_output(model: nn.Module, card: ModelCard, path: Path) -> None:
    x = torch.rand(2, *card.input_shape)
    try:
        with torch.no_grad():
            out = model(x)
    except Exception as e:
        raise UserError(f"{path.name} does not accept inputs of shape {tuple(x.shape)}: {str(e).splitlines()[0]}") from None
    if not isinstance(out, torch.Tensor) or out.dim() != 2 or out.shape[1] != card.num_classes:
        shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise UserError(f"{path.name} returns {shape}, expected logits of shape (N, {card.num_classes})")


def save_model(model: nn.Module, path: str | Path, card: ModelCard) -> Path:
    """Write the raw network weights (``.pt`` state dict or ``.safetensors``) and the card, atomically."""
    path = Path(path)
    net = model.net if isinstance(model, Normalized) else model
    sd = {k: v.detach().cpu().contiguous() for k, v in net.state_dict().items()}
    with atomic_path(path) as tmp:
        if path.suffix.lower() == ".safetensors":
            from safetensors.torch import save_file

            save_file(sd, str(tmp))
        else:
            torch.save(sd, str(tmp))
    card.save(card_path_for(path))
    return path


def save_state(obj: Dict[str, Any], path: str | Path) -> None:
    """Atomically save a training-state dict (tensors, numbers, strings, nested dicts/lists only)."""
    with atomic_path(path) as tmp:
        torch.save(obj, str(tmp))


def load_state(path: str | Path) -> Dict[str, Any]:
    """Weights-only load of a training-state file written by :func:`save_state`."""
    p = require_file(path, "state file")
    obj = _load_raw(p)
    if not isinstance(obj, dict):
        raise UserError(f"{p.name} is not a training-state file")
    return obj
