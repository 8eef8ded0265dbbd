"""ONNX -> TensorRT engine: strongly typed build for TensorRT 10.x and 11.x.

Precision comes from the ONNX graph itself -- an fp16 graph (:func:`..quantize.to_fp16`) or a
symmetric INT8 Q/DQ graph (:func:`..quantize.quantize_int8`) -- never from builder flags:

* TensorRT 11 removed ``BuilderFlag.FP16/INT8``, the calibrators and weak typing; every network is
  strongly typed and the ``STRONGLY_TYPED`` creation flag is accepted but ignored (TensorRT 11.x
  migration guide, "Strongly Typed Networks Are Now Required").
* TensorRT 10.x (10.0 removed implicit batch and the binding API) builds weakly typed networks unless
  ``NetworkDefinitionCreationFlag.STRONGLY_TYPED`` is passed to ``create_network``; weak typing is
  deprecated since 10.12. We always pass it, so 10.x and 11.x engines come out identical in intent.
* One optimisation profile covers the batch range (min/opt/max from the export profile); the workspace
  is a memory-pool limit (``MemoryPoolType.WORKSPACE``). fp32 engines also clear ``BuilderFlag.TF32`` so
  the fp32 parity tolerance holds (TF32 is on by default on Ampere and newer).

``import tensorrt`` happens only inside these functions; without it the caller gets one line:
"TensorRT is not installed: pip install infoard-deploy[trt] on a machine with an NVIDIA GPU".
Functions take an optional ``trt`` module so the version branching is testable with a stand-in.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Dict, List, Sequence, Tuple

from ..errors import UserError
from ..utils import atomic_path

TRT_MISSING = "TensorRT is not installed: pip install infoard-deploy[trt] on a machine with an NVIDIA GPU"
NO_GPU = "TensorRT needs an NVIDIA GPU, but no CUDA device is visible (check the driver / CUDA_VISIBLE_DEVICES)"


def import_tensorrt(require_gpu: bool = True):
    """The ``tensorrt`` module, or a one-line :class:`UserError` when it or a GPU is missing."""
    try:
        import tensorrt as trt  # noqa: F401  (optional dependency, extra "trt")
    except (ImportError, OSError):  # OSError: the wheel is there but libnvinfer / CUDA libraries are not
        raise UserError(TRT_MISSING) from None
    if require_gpu:
        import torch

        if not torch.cuda.is_available():
            raise UserError(NO_GPU)
    return trt


def tensorrt_available() -> bool:
    try:
        import_tensorrt()
        return True
    except UserError:
        return False


def trt_version(trt) -> Tuple[int, int]:
    """``(major, minor)`` from ``trt.__version__`` (e.g. "10.13.0.35" -> (10, 13))."""
    m = re.match(r"(\d+)\.(\d+)", str(getattr(trt, "__version__", "")))
    if not m:
        raise UserError(f"cannot read the TensorRT version ('{getattr(trt, '__version__', None)}')")
    return int(m.group(1)), int(m.group(2))


def network_flags(trt) -> int:
    """Creation flags for a strongly typed, explicit-batch network on TensorRT 10.x / 11.x."""
    major, minor = trt_version(trt)
    if major < 10:
        raise UserError(f"TensorRT {major}.{minor} is too old: infoard-deploy needs TensorRT 10.x or 11.x "
                        f"(pip install 'tensorrt>=10')")
    flag = getattr(getattr(trt, "NetworkDefinitionCreationFlag", None), "STRONGLY_TYPED", None)
    if flag is None:
        if major >= 11:
            return 0  # strongly typed is the only mode; the enum member may be gone in later releases
        raise UserError(f"TensorRT {major}.{minor} lacks NetworkDefinitionCreationFlag.STRONGLY_TYPED")
    return 1 << int(flag)


def profile_shapes(input_shape: Sequence[int], batch: Sequence[int]) -> Dict[str, Tuple[int, ...]]:
    """min/opt/max NCHW shapes for the optimisation profile from ``batch = (min, opt, max)``."""
    if len(batch) != 3:
        raise UserError(f"batch range must be (min, opt, max), got {tuple(batch)}")
    bmin, bopt, bmax = (int(b) for b in batch)
    if not (1 <= bmin <= bopt <= bmax):
        raise UserError(f"batch range must satisfy 1 <= min <= opt <= max, got {bmin}/{bopt}/{bmax}")
    chw = tuple(int(s) for s in input_shape)
    if len(chw) != 3 or min(chw) < 1:
        raise UserError(f"input shape must be (C, H, W) with positive sizes, got {chw}")
    return {"min": (bmin, *chw), "opt": (bopt, *chw), "max": (bmax, *chw)}


def _parser_errors(parser) -> List[str]:
    out = []
    for i in range(int(getattr(parser, "num_errors", 0))):
        err = parser.get_error(i)
        desc = err.desc() if hasattr(err, "desc") else str(err)
        out.append(" ".join(str(desc).split()))
    return out


def build_engine(onnx_path: str | Path, engine_path: str | Path, input_shape: Sequence[int],
                 batch: Sequence[int] = (1, 64, 256), workspace_mb: int = 1024, precision: str = "fp16",
                 trt=None) -> Dict[str, Any]:
    """Build and serialize a strongly typed engine from ``onnx_path``; returns build facts for the card.

    ``precision`` only labels the engine (and clears TF32 for fp32): the types come from the graph.
    """
    onnx_path, engine_path = Path(onnx_path), Path(engine_path)
    trt = trt if trt is not None else import_tensorrt()
    shapes = profile_shapes(input_shape, batch)
    major, minor = trt_version(trt)
    flags = network_flags(trt)
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errs = _parser_errors(parser)
        raise UserError(f"TensorRT cannot parse {onnx_path.name}: {errs[0] if errs else 'unknown parser error'}"
                        + (f" (+{len(errs) - 1} more)" if len(errs) > 1 else ""))
    if network.num_inputs != 1:
        raise UserError(f"{onnx_path.name} has {network.num_inputs} inputs; an image classifier has one")
    inp = network.get_input(0)
    dims = tuple(int(d) for d in inp.shape)
    if len(dims) != 4 or tuple(d for d in dims[1:]) != tuple(shapes["opt"][1:]):
        raise UserError(f"{onnx_path.name} input is {dims}, expected (batch, {', '.join(map(str, shapes['opt'][1:]))})")
    if dims[0] != -1 and not (dims[0] == shapes["min"][0] == shapes["max"][0]):
        raise UserError(f"{onnx_path.name} has a static batch of {dims[0]}; export it with a dynamic batch "
                        f"to build for batches {shapes['min'][0]}..{shapes['max'][0]}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_mb) << 20)
    tf32 = getattr(trt.BuilderFlag, "TF32", None)
    if precision == "fp32" and tf32 is not None:
        config.clear_flag(tf32)
    profile = builder.create_optimization_profile()
    profile.set_shape(inp.name, shapes["min"], shapes["opt"], shapes["max"])
    config.add_optimization_profile(profile)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise UserError(f"TensorRT could not build an engine from {onnx_path.name} (see the TensorRT log above; "
                        f"try a larger workspace_mb or another precision)")
    data = bytes(serialized)
    with atomic_path(engine_path, suffix=".engine") as tmp:
        tmp.write_bytes(data)
    return {"tensorrt_version": str(trt.__version__), "api": f"{major}.x", "strongly_typed": True,
            "network_flags": flags, "input_name": inp.name,
            "batch": {"min": shapes["min"][0], "opt": shapes["opt"][0], "max": shapes["max"][0]},
            "workspace_mb": int(workspace_mb), "engine_bytes": len(data), "source_onnx": onnx_path.name}


__all__ = ["build_engine", "import_tensorrt", "tensorrt_available", "trt_version", "network_flags",
           "profile_shapes", "TRT_MISSING", "NO_GPU"]
