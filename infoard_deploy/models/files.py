"""Model files by content: which format a file is, reading it without running code, and unwrapping.

The format is decided from the bytes, never from the suffix (ARD writes ``epoch=N.t7``, others ``.tar``,
``.ckpt``, ``.bin``):

* ``state-dict``: a ``torch.save`` zip archive (``PK`` header) without TorchScript code,
* ``state-dict-legacy``: ``torch.save(..., _use_new_zipfile_serialization=False)`` (a pickle, protocol 2,
  starting with torch's magic number) or another Python pickle,
* ``safetensors``: an 8-byte little-endian header length followed by a JSON header,
* ``torchscript``: a zip archive holding ``code/`` and ``constants.pkl``,
* ``onnx``: an ONNX ``ModelProto`` (protobuf; first field ``ir_version``).

Pickles are read with ``torch.load(weights_only=True)``: tensors and plain containers only, so a file that
would build arbitrary Python objects is refused. Checkpoint wrappers are unwrapped (``state_dict``,
``model``, ``net`` (ARD), ``last`` (RobustBench's Andriushchenko2020 / Kireev2021 files), ...) and whole-dict
prefixes stripped (DataParallel ``module.``, ``torch.compile``'s ``_orig_mod.``, ``model.``, ``net.``), with
normalisation buffers lifted out on the way (:mod:`.normalisation`).
"""
from __future__ import annotations

import pickle
import struct
import warnings
import zipfile
from pathlib import Path
from typing import Any, Dict, Optional, Tuple

import torch

from ..errors import UserError
from .normalisation import FileNormalisation, pop_normalisation

FORMATS = ("state-dict", "state-dict-legacy", "safetensors", "torchscript", "onnx")
WRAPPER_KEYS = ("state_dict", "model_state_dict", "model", "net", "student", "ema", "params", "last")
PREFIXES = ("module.", "_orig_mod.", "model.", "net.")
_TORCH_LEGACY = b"\x80\x02\x8a\x0a" + (0x1950A86A20F9469CFC6C).to_bytes(10, "little")
# ModelProto field tags after ir_version (field 1): producer_name 2, producer_version 3, domain 4,
# model_version 5, doc_string 6, graph 7, opset_import 8, metadata_props 14, training_info 20, functions 25
_ONNX_NEXT_TAGS = {0x12, 0x1A, 0x22, 0x28, 0x32, 0x3A, 0x42, 0x72, 0xA2, 0xCA}


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


def is_torchscript_zip(path: Path) -> bool:
    try:
        with zipfile.ZipFile(path) as z:
            names = z.namelist()
    except (zipfile.BadZipFile, OSError):
        return False
    # TorchScript archives carry the serialized code; plain torch.save zips do not.
    return any(n.split("/", 1)[-1].startswith("code/") or n.endswith("constants.pkl") for n in names)


def sniff_format(path: Path) -> Optional[str]:
    """One of :data:`FORMATS` judged from the file's first bytes, or ``None`` (not a model file we know)."""
    with open(path, "rb") as f:
        head = f.read(64)
    size = path.stat().st_size
    if head.startswith(b"PK\x03\x04") or head.startswith(b"PK\x05\x06"):
        return "torchscript" if is_torchscript_zip(path) else "state-dict"
    if head.startswith(_TORCH_LEGACY) or (len(head) > 1 and head[0] == 0x80 and 2 <= head[1] <= 5):
        return "state-dict-legacy"
    if len(head) >= 9:
        (n,) = struct.unpack("<Q", head[:8])
        if 2 <= n <= min(size - 8, 100 << 20) and head[8:9] == b"{":
            return "safetensors"
    if len(head) >= 3 and head[0] == 0x08 and head[1] < 0x80 and head[2] in _ONNX_NEXT_TAGS:
        return "onnx"
    return None


def unrecognised(path: Path) -> UserError:
    what = "is empty" if path.stat().st_size == 0 else "is not a recognised checkpoint format"
    return UserError(f"{path.name} {what} (expected a PyTorch state dict, .safetensors, TorchScript or ONNX file)")


def read_weights(path: Path, fmt: str) -> Any:
    """The file's content without running code: a (nested) dict of tensors for the state-dict formats."""
    if fmt == "safetensors":
        from safetensors.torch import load_file

        try:
            return load_file(str(path), device="cpu")
        except Exception as e:  # safetensors raises its own error types
            raise UserError(f"{path.name} is not a valid safetensors file: {_first_line(e)}") from None
    if fmt not in ("state-dict", "state-dict-legacy"):
        raise UserError(f"{path.name} is a {fmt} model, not a state dict")
    try:
        # through a handle: given a path, torch.load itself decides by suffix (".safetensors")
        with open(path, "rb") as f, warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Detected pickle protocol")  # we report what matters
            return torch.load(f, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        text = str(e)
        if "Unsupported global" in text:  # the pickle names a Python callable: loading it would run code
            raise UserError(
                f"refused to load {path.name}: it is a pickle that would run code or build Python objects "
                f"(weights-only loading); save a state_dict or use .safetensors instead") from None
        detail = text.split("WeightsUnpickler error:", 1)[-1] if "WeightsUnpickler error:" in text else text
        detail = " ".join(detail.split("Check the documentation")[0].split()) or type(e).__name__
        raise UserError(f"{path.name} is corrupt or not a PyTorch checkpoint ({detail[:200]})") from None
    except (RuntimeError, EOFError, OSError, ValueError, zipfile.BadZipFile, struct.error) as e:
        raise UserError(f"{path.name} is corrupt or not a PyTorch checkpoint ({_first_line(e)})") from None


def _tensor_dict(obj: Any) -> bool:
    return isinstance(obj, dict) and bool(obj) and all(isinstance(v, torch.Tensor) for v in obj.values())


def extract_weights(obj: Any, source: str = "checkpoint"
                    ) -> Tuple[Dict[str, torch.Tensor], Optional[FileNormalisation]]:
    """``(state dict, normalisation buffers or None)`` from the usual checkpoint layouts.

    Wrappers are unwrapped first (``{"net": sd, "epoch": ..., "optimizer": ...}``), then, repeatedly,
    top-level normalisation buffers are lifted out and a prefix shared by *all* remaining keys stripped,
    so ``{"mean", "std", "net.mu", "net.sigma", "net.conv1.weight", ...}`` yields both normalisations
    composed and ``conv1.weight``.
    """
    for _ in range(4):
        if _tensor_dict(obj):
            break
        if not isinstance(obj, dict):
            raise UserError(f"{source} is not a state dict (got {type(obj).__name__})")
        inner = next((obj[k] for k in WRAPPER_KEYS if k in obj and isinstance(obj[k], dict) and obj[k]), None)
        if inner is None:
            tensors = {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}
            if tensors:
                obj = tensors
                break
            raise UserError(f"{source} holds no weights (keys: {', '.join(map(str, list(obj)[:8]))})")
        obj = inner
    if not _tensor_dict(obj):
        raise UserError(f"{source} holds no weights")
    sd = {str(k): v for k, v in obj.items()}
    norm: Optional[FileNormalisation] = None
    changed = True
    while changed:
        changed = False
        sd, found = pop_normalisation(sd, source)
        if found is not None:
            norm = found if norm is None else norm.then(found)
        for p in PREFIXES:
            if sd and all(k.startswith(p) for k in sd):
                sd = {k[len(p):]: v for k, v in sd.items()}
                changed = True
    return fill_num_batches_tracked(sd), norm


def fill_num_batches_tracked(sd: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """Add ``<bn>.num_batches_tracked = 0`` where a BatchNorm's statistics lack it.

    Files written before PyTorch 0.4.1 (early TRADES / RobustBench checkpoints) have no such buffer; torch
    fills it in only when the state dict still carries its version metadata, which unwrapping drops. It
    only counts training steps and never changes an eval-mode output.
    """
    out = dict(sd)
    for k in sd:
        if k.endswith("running_mean"):
            nbt = k[: -len("running_mean")] + "num_batches_tracked"
            if nbt not in out and (k[: -len("running_mean")] + "running_var") in sd:
                out[nbt] = torch.tensor(0, dtype=torch.long)
    return out


__all__ = ["FORMATS", "WRAPPER_KEYS", "PREFIXES", "sniff_format", "read_weights", "extract_weights",
           "is_torchscript_zip", "unrecognised", "fill_num_batches_tracked"]
