"""Models that carry their own graph: TorchScript archives and ONNX files (converted with onnx2torch).

Both are returned as ``nn.Module`` taking whatever the graph takes (usually [0,1] pixels when exported by
this toolkit, whose exports include the normalisation); :func:`onnx_input_shape` reads the static
``[C, H, W]`` of an ONNX graph's first input, when it has one. TorchScript loads are silenced (torch 2.x
prints a two-line ``FutureWarning`` on every ``torch.jit.load``).
"""
from __future__ import annotations

import warnings
from pathlib import Path
from typing import List, Optional

import torch
from torch import nn

from ..errors import UserError


def _first_line(e: BaseException) -> str:
    text = " ".join(str(e).split())
    return text[:200] if text else type(e).__name__


def compat_for_onnx2torch(proto):
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


def read_onnx(path: Path):
    """The ONNX proto of ``path`` (one-line UserError when onnx is missing or the file is unreadable)."""
    try:
        import onnx
    except ImportError:
        raise UserError("loading an ONNX model needs onnx and onnx2torch (pip install infoard-deploy)") from None
    try:
        return onnx.load(str(path))
    except Exception as e:
        raise UserError(f"{Path(path).name} is not a readable ONNX model: {_first_line(e)}") from None


def convert_onnx(proto, name: str) -> nn.Module:
    """``proto`` as a frozen torch module in eval mode (onnx2torch, after :func:`compat_for_onnx2torch`), keeping
    the graph's own dtypes; ``name`` is the file name errors mention. Shared by :func:`load_onnx` (fp32 teachers)
    and ``runtimes.onnx_torch`` (artifacts run in their own precision)."""
    try:
        from onnx2torch import convert
    except ImportError:
        raise UserError("loading an ONNX model needs onnx and onnx2torch (pip install infoard-deploy)") from None
    try:
        net = convert(compat_for_onnx2torch(proto))
    except Exception as e:
        raise UserError(f"cannot convert {name} to torch (onnx2torch): {_first_line(e)[:200]}") from None
    for p in net.parameters():
        p.requires_grad_(False)
    return net.eval()


def load_onnx(path: Path) -> nn.Module:
    """An ONNX file as an fp32 torch module (what a teacher or a reference needs)."""
    return convert_onnx(read_onnx(path), Path(path).name).float()


def onnx_input_shape(path: Path) -> Optional[List[int]]:
    """Static ``[C, H, W]`` of the graph's first real input (batch may be symbolic), else None."""
    proto = read_onnx(path)
    inits = {i.name for i in proto.graph.initializer}
    for inp in proto.graph.input:
        if inp.name in inits:
            continue
        dims = inp.type.tensor_type.shape.dim
        if len(dims) != 4:
            return None
        vals = [d.dim_value if d.HasField("dim_value") else 0 for d in dims[1:]]
        return vals if all(v > 0 for v in vals) else None
    return None


def load_torchscript(path: Path) -> nn.Module:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        warnings.simplefilter("ignore", DeprecationWarning)
        try:
            return torch.jit.load(str(path), map_location="cpu")
        except Exception as e:
            raise UserError(f"{path.name} looks like a TorchScript archive but torch.jit.load cannot read it "
                            f"({_first_line(e)})") from None


__all__ = ["compat_for_onnx2torch", "read_onnx", "convert_onnx", "load_onnx", "onnx_input_shape", "load_torchscript"]
