"""Run a TensorRT-style symmetric INT8 Q/DQ graph at full speed on ONNX Runtime's x86 CPU kernels.

The exported INT8 graph uses signed int8 activations with zero point 0 (symmetric), the only activation
scheme TensorRT's explicit-quantization path accepts (docs/reference-deployment.md). ONNX Runtime on x86
runs int8 x int8 (S8S8) QLinearConv much slower than uint8 x int8 (U8S8), so its QDQ fusion leaves every
group it cannot turn into U8S8 as ``DequantizeLinear -> float Conv -> QuantizeLinear`` (measured on
MobileNetV2: 36 of 57 convolutions fused, no residual Add fused; the INT8 graph ran 1.2-2.7x *slower* than
fp32, benchmarks/results/latency-xeon-2cores.md). Asking ORT to fuse S8S8 anyway
(``session.qdqisint8allowed=1``) fuses everything but is 3-5x slower still on this CPU.

Two rewrites fix that, both exact. First, an int8 activation tensor with scale ``s`` and zero point
``z`` is the uint8 tensor with the same scale and zero point ``z + 128``, because

    clamp(round(x / s) + z, -128, 127) + 128 == clamp(round(x / s) + z + 128, 0, 255)

and ``DequantizeLinear`` subtracts the zero point again. So every activation ``QuantizeLinear`` and the
``DequantizeLinear`` nodes reading it are moved to uint8 (weights stay int8: U8S8 is the fast kernel).
Second, symmetric activations cannot absorb a ReLU into the zero point (that needs zero point = type
minimum), so every ``DequantizeLinear -> Relu -> QuantizeLinear`` stays a float island between the fused
convolutions, about half of MobileNetV2's INT8 time. Each island becomes one ``com.microsoft.QLinearLeakyRelu``
with ``alpha = 0``: ONNX Runtime builds its 256-entry lookup table by running exactly that dequantize -> max(0, .)
-> quantize on every possible input value, so this too is exact.

Logits are bit-identical to the unchanged graph on ORT (tests/test_export.py checks it), the artifact on
disk stays the TensorRT graph, and the precision ORT verifies is the one the engine runs.
"""
from __future__ import annotations

from collections import defaultdict
from typing import Dict, List, Tuple

import numpy as np


def shift_int8_activations_to_uint8(model) -> Tuple[object, int]:
    """Rewrite ``model`` (an ``onnx.ModelProto``, changed in place) as above; returns ``(model, n)``.

    ``n`` is the number of activation ``QuantizeLinear`` nodes moved to uint8 (0: nothing to do, e.g. an
    fp32/fp16 graph or one already in uint8). A Q node is left alone unless every consumer of its output is
    a ``DequantizeLinear`` and its zero point is an int8 initializer, so the rewrite never changes what
    a graph output or a non-DQ consumer sees.
    """
    from onnx import TensorProto, numpy_helper

    g = model.graph
    inits = {i.name: i for i in g.initializer}
    consumers: Dict[str, List] = defaultdict(list)
    for node in g.node:
        for t in node.input:
            consumers[t].append(node)
    graph_outputs = {o.name for o in g.output}
    shifted: Dict[str, str] = {}  # int8 zero-point initializer -> its uint8 twin (zero points may be shared)

    def uint8_zero_point(name: str) -> str:
        if name not in shifted:
            z = numpy_helper.to_array(inits[name]).astype(np.int16) + 128
            twin = numpy_helper.from_array(z.astype(np.uint8), f"{name}__u8")
            g.initializer.append(twin)
            shifted[name] = twin.name
        return shifted[name]

    n = 0
    for q in list(g.node):
        if q.op_type != "QuantizeLinear" or len(q.input) < 3 or q.input[2] not in inits:
            continue
        if inits[q.input[2]].data_type != TensorProto.INT8 or q.input[0] in inits:
            continue  # not int8, or a quantized constant rather than an activation
        if any(a.name in ("output_dtype", "saturate") for a in q.attribute):
            continue  # opset-21 forms whose output type is not taken from the zero point
        readers = consumers[q.output[0]]
        if q.output[0] in graph_outputs or not readers or any(r.op_type != "DequantizeLinear" for r in readers):
            continue
        if any(len(r.input) < 3 or r.input[2] != q.input[2] for r in readers):
            continue  # a DQ with another zero point than its Q is not a pair this rewrite understands
        q.input[2] = uint8_zero_point(q.input[2])
        for r in readers:
            r.input[2] = uint8_zero_point(r.input[2])
        n += 1
    _drop_unused_initializers(g)
    return model, n


def relu_islands_to_lookup(model) -> Tuple[object, int]:
    """Replace each ``DequantizeLinear -> Relu -> QuantizeLinear`` chain (nothing else reading the DQ or Relu
    output) by ``com.microsoft.QLinearLeakyRelu(x, x_scale, x_zp, y_scale, y_zp, alpha=0)``; in place.

    Only scalar (per-tensor) scales qualify, which is what activation quantization produces."""
    from onnx import helper

    g = model.graph
    inits = {i.name: i for i in g.initializer}
    consumers: Dict[str, List] = defaultdict(list)
    producer = {}
    for node in g.node:
        for t in node.input:
            consumers[t].append(node)
        for t in node.output:
            producer[t] = node
    graph_outputs = {o.name for o in g.output}

    def scalar(name: str) -> bool:
        return name in inits and list(inits[name].dims) in ([], [1])

    replace, drop = {}, set()
    for relu in g.node:
        if relu.op_type != "Relu" or relu.output[0] in graph_outputs:
            continue
        dq, readers = producer.get(relu.input[0]), consumers[relu.output[0]]
        if dq is None or dq.op_type != "DequantizeLinear" or len(dq.input) < 3 or len(consumers[dq.output[0]]) != 1:
            continue
        if dq.output[0] in graph_outputs or len(readers) != 1 or readers[0].op_type != "QuantizeLinear":
            continue
        q = readers[0]
        if len(q.input) < 3 or not all(scalar(t) for t in (dq.input[1], dq.input[2], q.input[1], q.input[2])):
            continue
        replace[id(q)] = helper.make_node(
            "QLinearLeakyRelu", [dq.input[0], dq.input[1], dq.input[2], q.input[1], q.input[2]], [q.output[0]],
            domain="com.microsoft", alpha=0.0, name=f"{relu.name or 'relu'}__qlinear")
        drop.update((id(dq), id(relu)))
    if replace:
        nodes = [replace.get(id(x), x) for x in g.node if id(x) not in drop]
        del g.node[:]
        g.node.extend(nodes)
        if not any(o.domain == "com.microsoft" for o in model.opset_import):
            model.opset_import.append(helper.make_opsetid("com.microsoft", 1))
        _drop_unused_initializers(g)
    return model, len(replace)


def _drop_unused_initializers(g) -> None:
    used = {t for node in g.node for t in node.input} | {o.name for o in g.output}
    keep = [i for i in g.initializer if i.name in used]
    if len(keep) != len(g.initializer):
        del g.initializer[:]
        g.initializer.extend(keep)


def int8_model_bytes_for_cpu(path: str) -> Tuple[bytes, Dict[str, int]]:
    """The CPU-EP form of an INT8 graph: serialized for ``InferenceSession`` (external data, if any, inlined)
    and what was rewritten, ``{"shifted_q": n, "relu_lookup": k}`` (both 0: run the file as it is)."""
    import onnx

    model, n = shift_int8_activations_to_uint8(onnx.load(path))
    k = 0
    if n:  # the lookup ReLU joins groups that are fused; on an unshifted graph it would sit between float ops
        model, k = relu_islands_to_lookup(model)
    return model.SerializeToString(), {"shifted_q": n, "relu_lookup": k}


__all__ = ["shift_int8_activations_to_uint8", "relu_islands_to_lookup", "int8_model_bytes_for_cpu"]
