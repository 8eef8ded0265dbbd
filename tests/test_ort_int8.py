"""How ONNX Runtime's CPU provider runs a symmetric INT8 export (:mod:`infoard_deploy.runtimes.ort_int8`).

The two in-memory rewrites (activations as uint8 + 128, ReLU islands as lookup tables) must be exact and
must leave every convolution, add and ReLU fused; the file on disk stays the TensorRT graph.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")


def _fused_ops(model_or_path, tmp_path, name):
    """Op counts of the graph ONNX Runtime actually runs (its optimised model) on the CPU EP."""
    import collections

    opts = ort.SessionOptions()
    opts.optimized_model_filepath = str(tmp_path / f"{name}.opt.onnx")
    src = model_or_path.SerializeToString() if isinstance(model_or_path, onnx.ModelProto) else str(model_or_path)
    ort.InferenceSession(src, opts, providers=["CPUExecutionProvider"])
    return collections.Counter(n.op_type for n in onnx.load(opts.optimized_model_filepath).graph.node)


def test_cpu_int8_shift_is_exact_and_fuses_every_conv(tmp_path):
    """The rewrites ORT CPU sessions use (uint8+128, ReLU lookups): logits bit-identical, every conv / add / relu
    fused, the file untouched."""
    from infoard_deploy.exporting.onnx import export_onnx
    from infoard_deploy.exporting.quantize import quantize_int8
    from infoard_deploy.models import build_model
    from infoard_deploy.runtimes.factory import open_runtime
    from infoard_deploy.runtimes.ort_int8 import relu_islands_to_lookup, shift_int8_activations_to_uint8

    torch.manual_seed(0)
    # MobileNetV2 has what ORT's own s8->u8 pass leaves unfused: depthwise convs and residual adds
    model = build_model("mobilenetv2", 10, 3, 16, [0.5] * 3, [0.25] * 3).eval()
    fp32, int8 = tmp_path / "m.onnx", tmp_path / "m.int8.onnx"
    export_onnx(model, fp32, (3, 16, 16))
    rng = np.random.default_rng(0)
    quantize_int8(fp32, int8, rng.random((32, 3, 16, 16), dtype=np.float32), "minmax")
    before = int8.read_bytes()

    shifted, n = shift_int8_activations_to_uint8(onnx.load(str(int8)))
    onnx.checker.check_model(shifted, full_check=True)
    n_q = sum(1 for x in onnx.load(str(int8)).graph.node if x.op_type == "QuantizeLinear")
    assert n == n_q  # every activation Q (weights are DQ of initializers, not Q nodes)
    # (ORT 1.32 fuses only part of the unshifted graph: 36 of 57 MobileNetV2 convs at 32x32, no residual add)
    fast = _fused_ops(shifted, tmp_path, "fast")
    convs = sum(1 for x in onnx.load(str(fp32)).graph.node if x.op_type == "Conv")
    assert fast["QLinearConv"] == convs and fast["Conv"] == 0 and fast["QLinearAdd"] >= 1

    relu_free, k = relu_islands_to_lookup(shifted)
    relus = sum(1 for x in onnx.load(str(fp32)).graph.node if x.op_type == "Relu")
    assert k == relus and not any(x.op_type == "Relu" for x in relu_free.graph.node)
    fused = _fused_ops(relu_free, tmp_path, "nolut")
    assert fused["QLinearLeakyRelu"] == relus and fused["QuantizeLinear"] <= 2  # only at the float ends

    x = rng.random((64, 3, 16, 16), dtype=np.float32)
    with open_runtime(int8) as rt:
        assert rt.shifted_nodes == n and rt.relu_lookups == relus and "uint8+128" in rt.describe()
        out_fast = rt.predict(x)
    from infoard_deploy.runtimes.onnxrt import OrtRuntime

    with OrtRuntime(str(int8), precision="int8", cpu_int8_shift=False) as rt:
        assert rt.shifted_nodes == 0
        out_plain = rt.predict(x)
    np.testing.assert_array_equal(out_fast, out_plain)
    assert int8.read_bytes() == before

    # a graph with nothing to shift (fp32) and an already-uint8 graph come back unchanged
    assert shift_int8_activations_to_uint8(onnx.load(str(fp32)))[1] == 0
    assert shift_int8_activations_to_uint8(shifted)[1] == 0
