"""PyTorch -> ONNX (fp32) with the torch.export-based exporter, plus graph checks.

``export_onnx(model, path, input_shape=(C,H,W), opset=18, dynamic_batch=True, slim=False)``:

* the model is put in eval mode (BatchNorm/Dropout in inference form; pytorch/pytorch#75252 and
  microsoft/onnxscript#1791 show train-mode BN leaking into exports otherwise);
* ``torch.onnx.export(..., dynamo=True)`` with ``dynamic_shapes`` naming a batch ``Dim``, traced with
  batch 2: torch.export specialises sizes 0 and 1 (huggingface/optimum#2219), so tracing with batch 1
  would silently freeze the batch (pytorch/pytorch#148886);
* normalisation stays inside the graph (models are ``Normalized``): the ONNX input is float32
  NCHW in [0,1], the output float32 logits (N, K); input named ``input``, output ``logits``;
* ``onnx.checker.check_model(full_check=True)`` (also runs strict shape inference), a check that
  every node is a standard ONNX operator (a custom domain cannot run on ORT CPU or TensorRT), then
  an ONNX Runtime CPU smoke run at batch 1 and 64 (or the static batch);
* optional onnxslim (``pip install infoard-deploy[slim]``).

Exporter failures become a one-line :class:`UserError` naming the operator that has no ONNX translation.
"""
from __future__ import annotations

import contextlib
import io
import re
import warnings
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from torch import nn

from ..errors import UserError
from ..utils import atomic_path

INPUT_NAME = "input"
OUTPUT_NAME = "logits"
_STD_DOMAINS = ("", "ai.onnx")


def _first_line(e: BaseException) -> str:
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(e)).strip()
    return text.splitlines()[0] if text else type(e).__name__


def _explain_export_error(e: BaseException) -> str:
    """Walk the exception chain for the operator the exporter could not translate."""
    seen: List[str] = []
    cur: Optional[BaseException] = e
    while cur is not None and len(seen) < 8:
        seen.append(re.sub(r"\x1b\[[0-9;]*m", "", str(cur)))
        cur = cur.__cause__ or cur.__context__
    text = "\n".join(seen)
    m = re.search(r"No ONNX function found for <OpOverload\(op='([^']+)'", text)
    if m:
        return (f"the ONNX exporter has no translation for operator {m.group(1)}; replace it in the model "
                f"(or register an ONNX function for it) and export again")
    m = re.search(r"call_function\[target=([\w.]+)\]", text)
    if m:
        return f"the ONNX exporter failed on operator {m.group(1)}: {_first_line(e)}"
    return f"torch.onnx.export failed: {_first_line(e)}"


def export_onnx(model: nn.Module, path: str | Path, input_shape: Sequence[int], opset: int = 18,
                dynamic_batch: bool = True, slim: bool = False, max_batch: int = 4096,
                check_batches: Sequence[int] = (1, 64)) -> Path:
    """Export ``model`` (float NCHW [0,1] -> logits) to ``path``; returns the path. See module docstring."""
    path = Path(path)
    if len(input_shape) != 3:
        raise UserError(f"input_shape must be (C, H, W), got {tuple(input_shape)}")
    model = model.eval()
    example = torch.rand(2 if dynamic_batch else 1, *[int(s) for s in input_shape])
    kwargs = {}
    if dynamic_batch:
        kwargs["dynamic_shapes"] = ({0: torch.export.Dim("batch", min=1, max=max_batch)},)
    # The exporter prints progress and emits warnings: keep stdout clean for --json callers.
    with atomic_path(path, suffix=".onnx") as tmp, contextlib.redirect_stdout(io.StringIO()), \
            warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            with torch.no_grad():
                torch.onnx.export(model, (example,), str(tmp), dynamo=True, opset_version=opset,
                                  input_names=[INPUT_NAME], output_names=[OUTPUT_NAME], verbose=False,
                                  external_data=False, **kwargs)
        except UserError:
            raise
        except Exception as e:  # exporter errors come in many types (ConversionError, UserError of torch.export...)
            raise UserError(f"cannot export {type(model).__name__} to ONNX: {_explain_export_error(e)}") from None
        if slim:
            slim_file(tmp, tmp)
        verify_file(tmp, name=path.name, batches=check_batches)
    return path


def verify_file(path: str | Path, name: Optional[str] = None, batches: Sequence[int] = (1, 64)):
    """Checker + standard-ops check + ONNX Runtime CPU run at ``batches`` (batch 1 only if static)."""
    model = check_onnx_file(path, name=name)
    info = io_info(model)
    chw = info["input_chw"]
    if len(chw) != 3 or any(c is None for c in chw):
        raise UserError(f"{name or Path(path).name}: input must be (batch, C, H, W) with static C, H, W; got {chw}")
    ort_smoke(path, chw, batches if info["dynamic_batch"] else (1,), name=name)
    return model


def slim_file(src: str | Path, dst: str | Path) -> None:
    """Run onnxslim (constant folding, dead-node and redundant-op removal) on ``src`` into ``dst``."""
    try:
        import onnxslim
    except ImportError:
        raise UserError("--slim needs onnxslim: pip install infoard-deploy[slim]") from None
    import onnx

    try:
        with contextlib.redirect_stdout(io.StringIO()):
            slimmed = onnxslim.slim(onnx.load(str(src)))
    except Exception as e:
        raise UserError(f"onnxslim failed on {Path(src).name}: {_first_line(e)}") from None
    onnx.save(slimmed, str(dst))


def nonstandard_nodes(model) -> List[str]:
    """``domain::op (node)`` for every node that is not a standard ONNX operator nor a local function."""
    import onnx

    local = {(f.domain, f.name) for f in model.functions}
    bad = []
    for n in model.graph.node:
        if (n.domain, n.op_type) in local:
            continue
        if n.domain not in _STD_DOMAINS or not onnx.defs.has(n.op_type):
            bad.append(f"{n.domain or 'ai.onnx'}::{n.op_type} (node '{n.name}')")
    return bad


def check_onnx_file(path: str | Path, name: Optional[str] = None):
    """Load, run the full ONNX checker and reject non-standard operators; returns the ModelProto."""
    import onnx

    name = name or Path(path).name
    try:
        model = onnx.load(str(path))
    except Exception as e:
        raise UserError(f"{name} is not a readable ONNX model: {_first_line(e)}") from None
    bad = nonstandard_nodes(model)
    if bad:
        more = f" (+{len(bad) - 3} more)" if len(bad) > 3 else ""
        raise UserError(f"{name} uses unsupported operator(s) {', '.join(bad[:3])}{more}: only standard ONNX "
                        f"operators can run on ONNX Runtime CPU and TensorRT")
    try:
        onnx.checker.check_model(model, full_check=True)
    except Exception as e:
        raise UserError(f"{name} fails the ONNX checker: {_first_line(e)}") from None
    if len(model.graph.input) != 1 or len(model.graph.output) < 1:
        raise UserError(f"{name} must have exactly one input (images) and one output (logits); "
                        f"it has {len(model.graph.input)} input(s)")
    return model


def io_info(path_or_model) -> Dict[str, object]:
    """Input/output names, the input's (C, H, W) and whether the batch dimension is dynamic."""
    import onnx

    model = onnx.load(str(path_or_model)) if isinstance(path_or_model, (str, Path)) else path_or_model
    inp = model.graph.input[0]
    dims = inp.type.tensor_type.shape.dim
    batch = dims[0].dim_param if dims and dims[0].dim_param else (dims[0].dim_value if dims else None)
    chw = [d.dim_value if d.HasField("dim_value") else None for d in dims[1:]]
    return {"input_names": [i.name for i in model.graph.input], "output_names": [o.name for o in model.graph.output],
            "input_chw": chw, "dynamic_batch": isinstance(batch, str), "batch_dim": batch,
            "opset": max((o.version for o in model.opset_import if o.domain in _STD_DOMAINS), default=None)}


def ort_session(path: str | Path, threads: int = 0):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3  # errors only: ORT warns about benign things (e.g. unused initialisers)
    if threads:
        opts.intra_op_num_threads = threads
    return ort.InferenceSession(str(path), sess_options=opts, providers=["CPUExecutionProvider"])


def ort_smoke(path: str | Path, input_shape: Sequence[int], batches: Sequence[int] = (1, 64),
              name: Optional[str] = None) -> Dict[int, Tuple[int, ...]]:
    """Run the graph on ONNX Runtime CPU at each batch size; finite (batch, K) logits or a UserError."""
    name = name or Path(path).name
    try:
        sess = ort_session(path)
    except Exception as e:
        raise UserError(f"ONNX Runtime cannot load {name}: {_first_line(e)}") from None
    in_name = sess.get_inputs()[0].name
    rng = np.random.default_rng(0)
    shapes = {}
    for b in batches:
        x = rng.random((int(b), *[int(s) for s in input_shape]), dtype=np.float32)
        try:
            out = sess.run(None, {in_name: x})[0]
        except Exception as e:
            raise UserError(f"{name} does not run on ONNX Runtime CPU at batch {b}: {_first_line(e)}") from None
        if out.ndim != 2 or out.shape[0] != b:
            raise UserError(f"{name} returns shape {out.shape} at batch {b}; expected ({b}, num_classes)")
        if not np.all(np.isfinite(out)):
            raise UserError(f"{name} produces NaN/inf logits on ONNX Runtime CPU at batch {b}")
        shapes[int(b)] = tuple(out.shape)
    return shapes


__all__ = ["export_onnx", "verify_file", "check_onnx_file", "io_info", "ort_smoke", "ort_session", "slim_file",
           "nonstandard_nodes", "INPUT_NAME", "OUTPUT_NAME"]
