"""Export to deployable artifacts: ONNX fp32 / fp16 / INT8 Q/DQ and TensorRT engines, each parity-checked.

* :func:`export_onnx` (:mod:`.onnx`): torch.export-based ONNX with a dynamic batch, normalisation inside.
* :func:`to_fp16`, :func:`quantize_int8`, :func:`qdq_summary` (:mod:`.quantize`): fp16 with float32 I/O;
  symmetric int8 Q/DQ calibrated on training images (TensorRT-compatible).
* :func:`build_engine` (:mod:`.tensorrt`): strongly typed TensorRT 10.x/11.x engine; ``tensorrt`` is
  imported only when called.
* :data:`PROFILES`, :func:`load_profile` (:mod:`.profiles`): deployment targets from TOML.
* :func:`export_artifacts` (:mod:`.pipeline`): everything a list of profiles names, gated and carded.
"""
from __future__ import annotations

from .checks import compare_logits, gate
from .onnx import check_onnx_file, export_onnx, io_info, verify_file
from .pipeline import export_artifacts
from .profiles import DEFAULT_TOLERANCES, PROFILES, Profile, Tolerance, load_profile
from .quantize import qdq_summary, quantize_int8, to_fp16
from .tensorrt import TRT_MISSING, build_engine, import_tensorrt, tensorrt_available

__all__ = ["export_onnx", "verify_file", "check_onnx_file", "io_info", "to_fp16", "quantize_int8", "qdq_summary",
           "build_engine", "import_tensorrt", "tensorrt_available", "TRT_MISSING", "PROFILES", "Profile",
           "Tolerance", "DEFAULT_TOLERANCES", "load_profile", "export_artifacts", "compare_logits", "gate"]
