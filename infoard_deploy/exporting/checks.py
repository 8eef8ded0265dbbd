"""Export-time parity gate: an artifact's logits vs the fp32 torch model on the same images.

Polygraphy-style: identical cached inputs go to the reference and to the artifact's runtime, then
the outputs are compared (NVIDIA Polygraphy ``run --onnxrt --trt``; its default tolerance is 1e-5
abs/rel, and NVIDIA maintainers expect ~1e-3 for fp16). Figures reported for every artifact:

* ``max_abs`` / ``mean_abs``: max and mean |logit delta| over all images and classes;
* ``max_rel``: ``max_abs / max(1, max |reference logit|)`` -- scale-free, so one fp16 tolerance fits
  models whose logits are ~1 or ~30;
* ``top1_agreement``: fraction of images where both pick the same class;
* ``accuracy`` / ``reference_accuracy``: clean accuracy on the labelled images (when labels are known).

Gates per precision are :class:`~infoard_deploy.exporting.profiles.Tolerance` values.
"""
from __future__ import annotations

from typing import Any, Dict, List, Optional

import numpy as np

from .profiles import Tolerance


def compare_logits(ref: np.ndarray, out: np.ndarray, labels: Optional[np.ndarray] = None) -> Dict[str, Any]:
    """Parity figures of ``out`` (N, K) against ``ref`` (N, K); see the module docstring."""
    ref = np.asarray(ref, dtype=np.float64)
    out = np.asarray(out, dtype=np.float64)
    if ref.shape != out.shape:
        raise ValueError(f"logit shapes differ: reference {ref.shape} vs artifact {out.shape}")
    finite = bool(np.all(np.isfinite(out)))
    delta = np.abs(out - ref) if finite else np.full(ref.shape, np.inf)
    scale = max(1.0, float(np.abs(ref).max())) if ref.size else 1.0
    res: Dict[str, Any] = {
        "n": int(ref.shape[0]),
        "finite": finite,
        "max_abs": float(delta.max()) if delta.size else 0.0,
        "mean_abs": float(delta.mean()) if delta.size else 0.0,
        "max_rel": float(delta.max() / scale) if delta.size else 0.0,
        "top1_agreement": float(np.mean(ref.argmax(1) == out.argmax(1))) if ref.size else 1.0,
    }
    if labels is not None and len(labels) == len(ref):
        res["reference_accuracy"] = float(np.mean(ref.argmax(1) == labels))
        res["accuracy"] = float(np.mean(out.argmax(1) == labels))
    return res


def gate(parity: Dict[str, Any], tol: Tolerance) -> List[str]:
    """Human-readable failures of ``parity`` against ``tol`` (empty list: passed)."""
    fails: List[str] = []
    if not parity.get("finite", True):
        return ["logits contain NaN/inf"]
    if tol.max_abs is not None and parity["max_abs"] > tol.max_abs:
        fails.append(f"max |dlogit| {parity['max_abs']:.3g} > {tol.max_abs:g}")
    if tol.max_rel is not None and parity["max_rel"] > tol.max_rel:
        fails.append(f"relative max |dlogit| {parity['max_rel']:.3g} > {tol.max_rel:g}")
    if tol.min_top1 is not None and parity["top1_agreement"] < tol.min_top1:
        fails.append(f"top-1 agreement {parity['top1_agreement']:.4f} < {tol.min_top1:g}")
    if tol.max_acc_drop is not None and "accuracy" in parity:
        drop = parity["reference_accuracy"] - parity["accuracy"]
        if drop > tol.max_acc_drop:
            fails.append(f"clean accuracy drop {drop:.4f} > {tol.max_acc_drop:g}")
    return fails


__all__ = ["compare_logits", "gate"]
