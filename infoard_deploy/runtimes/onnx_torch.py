"""An ONNX graph run op by op in torch: fp16 arithmetic on the CPU, and a differentiable twin for attacks.

ONNX Runtime's CPU provider has no fp16 Conv/Gemm kernels on x86: it inserts Cast nodes and computes
those ops in fp32, so an fp16 graph "verified" there never ran fp16 arithmetic (an activation that
overflows 65504 on a GPU stays finite on ORT CPU). :class:`GraphRuntime` converts the ONNX file with
onnx2torch and runs the resulting module with the graph's own tensor types: every initializer of an
fp16 graph stays float16, so every Conv / Gemm / Add / pooling takes and returns float16 tensors (the
CPU kernels accumulate inside a conv/matmul in fp32 and round the result to fp16, as GPU kernels do),
and an overflow becomes ``inf`` / ``NaN`` exactly as on the deployment GPU.

:func:`graph_module` is the shared converter. It also makes Q/DQ (INT8) graphs convertible:

* a ``DequantizeLinear`` of a constant (the int8 weights) is folded into the float weights the integer
  kernels use, ``(w_q - z) * s`` per channel, so onnx2torch sees an ordinary Conv/Gemm;
* an activation ``QuantizeLinear`` becomes :class:`FakeQuantize` -- ``clamp(round(x / s) + z, qmin, qmax)``
  carried in float with a straight-through estimator (identity gradient through ``round``, zero outside
  the clamp range) -- and ``DequantizeLinear`` becomes ``(q - z) * s``.

Its forward pass reproduces the INT8 arithmetic (the integer accumulations are exact in float32 for
these sizes), and it is differentiable, so white-box attacks can target the quantized function itself
(:func:`differentiable_graph`).

fp16 graphs run *emulated* by default (:func:`emulate_fp16`): torch's native float16 CPU kernels convert
to fp32, compute and round back, about 5x slower than fp32 for small models, which a 500-query Square
attack multiplies. The emulation does the same thing explicitly: one dry run in native fp16 records which
op outputs are float16, then the module runs with fp32 weights (fp16 values, exactly representable) and
every such output rounded to float16 (``x.half().float()``: overflow becomes ``inf`` as on the GPU). Every
op's inputs and outputs are fp16 values, as in fp16 execution; only intermediate sums inside one
Conv/Gemm are fp32, as in GPU fp16 kernels with fp32 accumulation. The rounding casts have identity
gradient, so the same module is the differentiable twin. ``fp16="native"`` runs torch's float16 kernels.

Shapes: inputs float32 (N, C, H, W) in [0,1]; outputs float32 (N, K).
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional, Union

import numpy as np
import torch
from torch import nn

from .base import Runtime

_Q_RANGES = {np.dtype(np.int8): (-128, 127), np.dtype(np.uint8): (0, 255), np.dtype(np.int16): (-32768, 32767),
             np.dtype(np.uint16): (0, 65535)}


def _per_axis(t: torch.Tensor, ndim: int, axis: int) -> torch.Tensor:
    """A scale / zero point broadcastable against an ``ndim`` tensor along ``axis`` (scalar: as is)."""
    if t.dim() == 0 or t.numel() == 1:
        return t.reshape(())
    shape = [1] * ndim
    shape[axis % ndim] = -1
    return t.reshape(shape)


class FakeQuantize(nn.Module):
    """``QuantizeLinear`` in float: ``clamp(round(x / s) + z)`` with a straight-through ``round``."""

    def __init__(self, scale: torch.Tensor, zero_point: torch.Tensor, qmin: int, qmax: int, axis: int = 1):
        super().__init__()
        self.register_buffer("scale", scale.float())
        self.register_buffer("zero_point", zero_point.float())
        self.qmin, self.qmax, self.axis = float(qmin), float(qmax), axis

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = _per_axis(self.scale, x.dim(), self.axis)
        z = _per_axis(self.zero_point, x.dim(), self.axis)
        v = x.float() / s
        v = v + (torch.round(v) - v).detach()  # round half to even, as ONNX; identity gradient
        return torch.clamp(v + z, self.qmin, self.qmax)


class Dequantize(nn.Module):
    """``DequantizeLinear``: ``(q - z) * s`` (``q`` a float holding integers, or an integer tensor)."""

    def __init__(self, scale: torch.Tensor, zero_point: torch.Tensor, axis: int = 1):
        super().__init__()
        self.register_buffer("scale", scale.float())
        self.register_buffer("zero_point", zero_point.float())
        self.axis = axis

    def forward(self, q: torch.Tensor) -> torch.Tensor:
        return (q.float() - _per_axis(self.zero_point, q.dim(), self.axis)) * _per_axis(self.scale, q.dim(), self.axis)


_REGISTERED = False


def _register_qdq_converters() -> None:
    """Teach onnx2torch (which has none) QuantizeLinear / DequantizeLinear, once per process."""
    global _REGISTERED
    if _REGISTERED:
        return
    from onnx2torch.node_converters.registry import _CONVERTER_REGISTRY, OperationDescription, add_converter
    from onnx2torch.utils.common import OnnxMapping, OperationConverterResult

    def _consts(node, graph):
        scale = graph.initializers[node.input_values[1]].to_torch()
        if len(node.input_values) > 2 and node.input_values[2]:
            zp = graph.initializers[node.input_values[2]].to_numpy()
        else:
            zp = np.zeros((), np.uint8)  # absent zero point: 0 of type uint8 (ONNX spec)
        return scale, zp

    def quantize(node, graph):
        scale, zp = _consts(node, graph)
        qmin, qmax = _Q_RANGES.get(zp.dtype, (-128, 127))
        mod = FakeQuantize(scale, torch.from_numpy(zp.astype(np.float32)), qmin, qmax,
                           int(node.attributes.get("axis", 1)))
        return OperationConverterResult(torch_module=mod, onnx_mapping=OnnxMapping(
            inputs=(node.input_values[0],), outputs=node.output_values))

    def dequantize(node, graph):
        scale, zp = _consts(node, graph)
        mod = Dequantize(scale, torch.from_numpy(zp.astype(np.float32)), int(node.attributes.get("axis", 1)))
        return OperationConverterResult(torch_module=mod, onnx_mapping=OnnxMapping(
            inputs=(node.input_values[0],), outputs=node.output_values))

    for op, fn in (("QuantizeLinear", quantize), ("DequantizeLinear", dequantize)):
        for version in (10, 13, 19, 21):
            if OperationDescription("", op, version) not in _CONVERTER_REGISTRY:
                add_converter(operation_type=op, version=version)(fn)
    _REGISTERED = True


def fold_constant_dequantize(model) -> int:
    """Replace every ``DequantizeLinear`` of initializers (quantized weights) by its float result; in place."""
    from onnx import numpy_helper

    g = model.graph
    inits = {i.name: i for i in g.initializer}
    keep, folded = [], 0
    for node in g.node:
        if node.op_type == "DequantizeLinear" and all(t in inits for t in node.input if t):
            q = numpy_helper.to_array(inits[node.input[0]]).astype(np.float32)
            s = numpy_helper.to_array(inits[node.input[1]]).astype(np.float32)
            z = (numpy_helper.to_array(inits[node.input[2]]).astype(np.float32)
                 if len(node.input) > 2 and node.input[2] else np.zeros((), np.float32))
            axis = next((a.i for a in node.attribute if a.name == "axis"), 1)
            if s.size > 1:
                shape = [1] * q.ndim
                shape[axis % q.ndim] = -1
                s, z = s.reshape(shape), z.reshape(shape) if z.size > 1 else z
            g.initializer.append(numpy_helper.from_array(((q - z) * s).astype(np.float32), node.output[0]))
            folded += 1
        else:
            keep.append(node)
    if folded:
        del g.node[:]
        g.node.extend(keep)
    return folded


def graph_module(path: Union[str, Path]) -> nn.Module:
    """The ONNX file as a torch module with the graph's own dtypes (fp16 initializers stay fp16)."""
    from ..models.graph import convert_onnx, read_onnx

    path = Path(path)
    proto = read_onnx(path)
    _register_qdq_converters()
    fold_constant_dequantize(proto)
    return convert_onnx(proto, path.name)


def _input_info(path: Union[str, Path]):
    import onnx

    m = onnx.load(str(path), load_external_data=False)
    t = m.graph.input[0].type.tensor_type
    dims = [d.dim_value if d.HasField("dim_value") else None for d in t.shape.dim]
    return (torch.float16 if t.elem_type == onnx.TensorProto.FLOAT16 else torch.float32), dims[1:]


class _RoundFp16(nn.Module):
    """Round a float32 tensor to the nearest float16 value, keep it float32 (identity gradient)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.half().float()


def emulate_fp16(net: nn.Module, in_dtype: torch.dtype, chw) -> Optional[nn.Module]:
    """``net`` (fp16 initializers) as fp32 computation with every fp16 op output rounded to fp16; see the
    module docstring. Returns None when the graph computes nothing in fp16 (an fp32 graph)."""
    from onnx2torch.node_converters.cast import OnnxCast

    seen = {}
    hooks = []
    for name, mod in net.named_modules():
        if name and not list(mod.children()):
            hooks.append(mod.register_forward_hook(
                lambda m, i, o, name=name: seen.__setitem__(name, o.dtype if isinstance(o, torch.Tensor) else None)))
    try:
        with torch.no_grad():
            net(torch.rand(2, *[c or 8 for c in chw]).to(in_dtype))
    finally:
        for h in hooks:
            h.remove()
    if torch.float16 not in seen.values():
        return None
    net = net.float()
    for name, mod in net.named_modules():
        if isinstance(mod, OnnxCast) and mod.torch_dtype == torch.float16:
            mod.torch_dtype = torch.float32
        if seen.get(name) == torch.float16:
            mod.register_forward_hook(lambda m, i, o: o.half().float())
    return net


class GraphModule(nn.Module):
    """``forward(x float32) -> float32 logits`` around a converted graph (input cast to the graph's type).

    ``round_input``: the graph takes float16 but runs emulated in fp32: round the input to fp16 values."""

    def __init__(self, net: nn.Module, in_dtype: torch.dtype, round_input: bool = False, emulated: bool = False):
        super().__init__()
        self.net, self.in_dtype, self.round_input, self.emulated = net, in_dtype, round_input, emulated

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.half().float() if self.round_input else x.to(self.in_dtype)
        out = self.net(x)
        if isinstance(out, (tuple, list)):
            out = out[0]
        return out.float()


def differentiable_graph(path: Union[str, Path], fp16: str = "emulate") -> nn.Module:
    """The artifact's own function, differentiable (see the module docstring); float32 in and out.

    ``fp16``: ``"emulate"`` (fp32 kernels, every fp16 op output rounded) or ``"native"`` (torch float16)."""
    if fp16 not in ("emulate", "native"):
        raise ValueError(f"fp16 must be 'emulate' or 'native', got {fp16!r}")
    net = graph_module(path)
    in_dtype, chw = _input_info(path)
    if fp16 == "emulate":
        emu = emulate_fp16(net, in_dtype, chw)
        if emu is not None:
            return GraphModule(emu, torch.float32, round_input=in_dtype == torch.float16, emulated=True).eval()
    return GraphModule(net, in_dtype).eval()


class GraphRuntime(Runtime):
    """Run an ONNX graph op by op in torch on the CPU in the graph's own precision (fp16 stays fp16)."""

    name = "torch-graph"

    def __init__(self, path: str, precision: str = "fp16", max_batch: int = 256,
                 device: Optional[Union[str, torch.device]] = None, fp16: str = "emulate"):
        super().__init__(path=path, precision=precision, max_batch=max_batch)
        self.device = torch.device(device) if device is not None else torch.device("cpu")
        self.module: Optional[nn.Module] = None
        self.fp16 = fp16

    def _load(self) -> None:
        self.module = differentiable_graph(self.path, self.fp16).to(self.device)
        dtypes = {p.dtype for p in list(self.module.parameters()) + list(self.module.buffers())
                  if p.is_floating_point()}
        self.emulated = bool(getattr(self.module, "emulated", False))
        self.compute_dtype = torch.float16 if (torch.float16 in dtypes or self.emulated) else torch.float32


    def _unload(self) -> None:
        self.module = None

    @torch.no_grad()
    def _run(self, x: np.ndarray) -> np.ndarray:
        return self.module(torch.from_numpy(x).to(self.device)).float().cpu().numpy()

    @torch.no_grad()
    def predict_tensor(self, x: torch.Tensor) -> torch.Tensor:
        if not self._open:
            self.open()
        outs = [self.module(x[i:i + self.max_batch].to(self.device, torch.float32))
                for i in range(0, len(x), self.max_batch)]
        return torch.cat(outs).float().to(x.device)

    @property
    def arithmetic(self) -> str:
        kind = "fp16" if getattr(self, "compute_dtype", None) == torch.float16 else "fp32"
        how = ("; fp32 kernels, every fp16 op output rounded to fp16" if getattr(self, "emulated", False)
               else "; native float16 kernels" if kind == "fp16" else "")
        return f"{kind} (torch {self.device.type.upper()}, onnx2torch graph{how})"

    def describe(self) -> str:
        return f"{self.name}[{self.device.type}]:{self.precision}" + (f" ({self.path})" if self.path else "")


__all__ = ["GraphRuntime", "FakeQuantize", "Dequantize", "graph_module", "differentiable_graph",
           "fold_constant_dequantize", "emulate_fp16"]
