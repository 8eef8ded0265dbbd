"""fp16 conversion and INT8 static quantization (Q/DQ) of an fp32 ONNX graph.

``to_fp16(src, dst)``: onnxconverter-common ``convert_float_to_float16(keep_io_types=True)``, so the
graph computes in fp16 but still takes float32 [0,1] images and returns float32 logits (the same
contract as every runtime). Ops that overflow or lose too much in fp16 can be kept in fp32 with
``op_block_list`` (onnxruntime.ai docs "Float16 and mixed precision models"; users extend the list when
they see NaN outputs).

``quantize_int8(src, dst, calib, method, per_channel=True)``: ONNX Runtime ``quantize_static`` in QDQ
format with **symmetric int8 activations and weights** (``QInt8``/``QInt8``,
``ActivationSymmetric``/``WeightSymmetric``): zero points are 0, the only INT8 scheme TensorRT's explicit
quantization accepts (TensorRT "Working with quantized types"). Weights per output channel. Biases stay
float (``QuantizeBias=False``): TensorRT fuses float biases and has no int32 Q/DQ type, and ONNX
Runtime CPU still fuses DQ->Conv->Q into QLinearConv. ``quant_pre_process`` (shape inference and
graph optimisation, e.g. Conv+BN folding) runs first. Calibration images must come from training data;
that is the caller's contract, checked again in :mod:`.pipeline`.

``activations="uint8-asymmetric"`` is an opt-in for ONNX Runtime CPU only (not TensorRT): on x86 ORT
fuses uint8-activation Q/DQ graphs completely (QLinearConv incl. depthwise, QLinearAdd, Relu/Clip folded
into the zero point), while with symmetric int8 activations depthwise convolutions and activations stay
as float ops between extra Q/DQ pairs -- on MobileNetV2 that makes symmetric INT8 slower than fp32
(see benchmarks/latency.py --investigate).
"""
from __future__ import annotations

import contextlib
import io
import logging
import tempfile
from collections import Counter
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import numpy as np

from ..errors import UserError
from ..utils import atomic_path
from .onnx import io_info, verify_file

CALIBRATION_METHODS = ("minmax", "entropy", "percentile")
ACTIVATION_SCHEMES = ("int8-symmetric", "uint8-asymmetric")


def to_fp16(src: str | Path, dst: str | Path, op_block_list: Optional[Sequence[str]] = None) -> Path:
    """fp16 copy of ``src`` with float32 inputs/outputs; returns ``dst``."""
    import onnx
    from onnxconverter_common import float16

    dst = Path(dst)
    model = onnx.load(str(src))
    kwargs: Dict[str, Any] = {"keep_io_types": True}
    if op_block_list is not None:
        # the converter's default list holds ops without fp16 kernels; ours adds to it
        kwargs["op_block_list"] = sorted(set(float16.DEFAULT_OP_BLOCK_LIST) | set(op_block_list))
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            m16 = float16.convert_float_to_float16(model, **kwargs)
    except Exception as e:
        raise UserError(f"fp16 conversion of {Path(src).name} failed: {str(e).splitlines()[0]}") from None
    with atomic_path(dst, suffix=".onnx") as tmp:
        onnx.save(m16, str(tmp))
        verify_file(tmp, name=dst.name)
    return dst


class ArrayCalibrationReader:
    """ONNX Runtime ``CalibrationDataReader`` protocol over an (N, C, H, W) float32 array, in batches."""

    def __init__(self, input_name: str, images: np.ndarray, batch_size: int = 32):
        self.input_name, self.images, self.batch_size = input_name, images, batch_size
        self._pos = 0

    def get_next(self) -> Optional[Dict[str, np.ndarray]]:
        if self._pos >= len(self.images):
            return None
        chunk = self.images[self._pos:self._pos + self.batch_size]
        self._pos += self.batch_size
        return {self.input_name: np.ascontiguousarray(chunk, dtype=np.float32)}

    def rewind(self) -> None:
        self._pos = 0

    def __iter__(self):  # ORT's base class is iterable; SmoothQuant and friends iterate
        self.rewind()
        while (item := self.get_next()) is not None:
            yield item


def check_calibration(calib: Optional[np.ndarray], chw: Sequence[Optional[int]]) -> np.ndarray:
    """Calibration images must exist, be (N, C, H, W) float in [0,1] and match the model input."""
    if calib is None or (hasattr(calib, "__len__") and len(calib) == 0):
        raise UserError("INT8 quantization needs calibration images: pass --calib-data DATASET|images.npy "
                        "(training images, never the test set)")
    calib = np.asarray(calib)
    if calib.ndim != 4:
        raise UserError(f"calibration images must be (N, C, H, W), got shape {calib.shape}")
    want = tuple(int(c) for c in chw if c is not None)
    if len(want) == 3 and tuple(calib.shape[1:]) != want:
        raise UserError(f"calibration images are {tuple(calib.shape[1:])} but the model takes {want} (C, H, W)")
    if not np.issubdtype(calib.dtype, np.floating):
        raise UserError(f"calibration images must be float32 in [0,1], got {calib.dtype}")
    calib = calib.astype(np.float32, copy=False)
    if not np.all(np.isfinite(calib)) or calib.min() < 0.0 or calib.max() > 1.0:
        raise UserError("calibration images must be finite and lie in [0,1]")
    return calib


def quantize_int8(src: str | Path, dst: str | Path, calib: Optional[np.ndarray], method: str = "minmax",
                  per_channel: bool = True, percentile: float = 99.999, batch_size: int = 32,
                  activations: str = "int8-symmetric") -> Path:
    """INT8 Q/DQ copy of ``src`` calibrated on ``calib`` (N, C, H, W float32 in [0,1]).

    Weights: int8 symmetric (per channel by default). Activations: int8 symmetric (zero point 0,
    TensorRT-compatible, the default) or ``uint8-asymmetric`` (ONNX Runtime CPU only).
    """
    from onnxruntime.quantization import (CalibrationMethod, QuantFormat, QuantType, quant_pre_process,
                                          quantize_static)

    dst = Path(dst)
    if method not in CALIBRATION_METHODS:
        raise UserError(f"unknown calibration method '{method}' (use {', '.join(CALIBRATION_METHODS)})")
    if activations not in ACTIVATION_SCHEMES:
        raise UserError(f"unknown activation scheme '{activations}' (use {', '.join(ACTIVATION_SCHEMES)})")
    symmetric = activations == "int8-symmetric"
    info = io_info(src)
    calib = check_calibration(calib, info["input_chw"])
    cm = {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
          "percentile": CalibrationMethod.Percentile}[method]
    extra = {"ActivationSymmetric": symmetric, "WeightSymmetric": True, "QuantizeBias": False}
    if method == "percentile":
        extra["CalibPercentile"] = float(percentile)
    reader = ArrayCalibrationReader(str(info["input_names"][0]), calib, batch_size)
    qlog = logging.getLogger("root")
    with tempfile.TemporaryDirectory(prefix="infoard-q-") as td, atomic_path(dst, suffix=".onnx") as tmp, \
            contextlib.redirect_stdout(io.StringIO()):
        pre = Path(td) / "pre.onnx"
        try:
            quant_pre_process(str(src), str(pre))
            source = pre
        except Exception as e:  # pre-processing is an optimisation; quantize the raw graph if it fails
            logging.getLogger(__name__).warning("quant_pre_process failed (%s); quantizing without it", e)
            source = Path(src)
        level = qlog.level
        qlog.setLevel(logging.ERROR)  # ORT's "consider pre-processing" and calibration chatter
        try:
            quantize_static(str(source), str(tmp), reader, quant_format=QuantFormat.QDQ, per_channel=per_channel,
                            activation_type=QuantType.QInt8 if symmetric else QuantType.QUInt8,
                            weight_type=QuantType.QInt8, calibrate_method=cm,
                            extra_options=extra)
        except Exception as e:
            raise UserError(f"INT8 quantization of {Path(src).name} failed: {str(e).splitlines()[0]}") from None
        finally:
            qlog.setLevel(level)
        verify_file(tmp, name=dst.name)
        summary = qdq_summary(tmp)
        if summary["quantize_linear"] == 0:
            raise UserError(f"INT8 quantization of {Path(src).name} inserted no QuantizeLinear nodes "
                            f"(no quantizable Conv/Gemm/MatMul ops?)")
    return dst


def qdq_summary(path: str | Path) -> Dict[str, Any]:
    """What the Q/DQ graph holds: node counts, zero-point values and types, per-channel weights, int8 ops.

    ``symmetric`` is True when every QuantizeLinear/DequantizeLinear zero point is 0 and int8 typed
    (the TensorRT requirement).
    """
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(path))
    inits = {i.name: i for i in model.graph.initializer}
    consts = {}
    for n in model.graph.node:  # zero points may also be Constant nodes
        if n.op_type == "Constant" and n.attribute:
            consts[n.output[0]] = n.attribute[0].t
    counts = Counter(n.op_type for n in model.graph.node)
    zp_types: Counter = Counter()
    nonzero: List[str] = []
    per_channel = 0
    quantized_ops = Counter()
    producers = {o: n for n in model.graph.node for o in n.output}
    for n in model.graph.node:
        if n.op_type in ("QuantizeLinear", "DequantizeLinear"):
            zp_name = n.input[2] if len(n.input) > 2 and n.input[2] else None
            t = inits.get(zp_name) if zp_name else None
            t = t if t is not None else consts.get(zp_name) if zp_name else None
            if t is None:
                zp_types["none"] += 1  # absent zero point means 0 of type uint8 by the spec
                nonzero.append(f"{n.name}: no zero point (defaults to uint8)")
                continue
            arr = numpy_helper.to_array(t)
            zp_types[str(arr.dtype)] += 1
            if np.any(arr != 0):
                nonzero.append(n.name)
            if arr.size > 1:
                per_channel += 1
        elif any(i in producers and producers[i].op_type == "DequantizeLinear" for i in n.input):
            quantized_ops[n.op_type] += 1
    int8_only = set(zp_types) <= {"int8"}
    return {"quantize_linear": counts.get("QuantizeLinear", 0), "dequantize_linear": counts.get("DequantizeLinear", 0),
            "zero_point_types": dict(zp_types), "nonzero_zero_points": nonzero[:10],
            "symmetric": bool(int8_only and not nonzero and zp_types), "per_channel_weights": per_channel,
            "quantized_ops": dict(quantized_ops)}


__all__ = ["to_fp16", "quantize_int8", "qdq_summary", "check_calibration", "ArrayCalibrationReader",
           "CALIBRATION_METHODS", "ACTIVATION_SCHEMES"]
