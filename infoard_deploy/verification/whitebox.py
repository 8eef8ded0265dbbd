"""White-box attack on a model's *own* differentiable graph, with per-sample seeds; stream seeds for the rest.

Transfer from the fp32 reference plus a query attack can miss what quantization or fp16 rounding did to
the deployed function. The ``own-graph`` stage attacks each model through its own graph: the reference
itself, and for an artifact the ONNX file converted to torch (:mod:`infoard_deploy.runtimes.onnx_torch`:
INT8 Q/DQ as fake-quant with a straight-through estimator, fp16 run in fp16 with identity-gradient casts).
The resulting inputs are then judged on the *real* runtime (ORT INT8 kernels, torch fp16 ...), so the
surrogate only has to point in the right direction.

:func:`own_graph_attack`: two L-inf PGD runs (Madry et al. 2018), one on cross-entropy and one on the
CW margin (Carlini & Wagner 2017), ``steps`` each, step ``eps/4`` for the first half and ``eps/10`` after,
keeping per sample the iterate with the largest margin on the surrogate. Every sample's random start is
drawn from its own generator seeded by ``(seed, dataset index, loss)``, so a sample's adversarial example
does not depend on which other samples share its batch -- the reference and a faithful artifact start
from the same points, and the reference's result never depends on the artifacts verified beside it.

:func:`stream_seed` derives every other attack's seed from ``(seed, batch index, attack, stream)``.
"""
from __future__ import annotations

import hashlib
from typing import Dict, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn


def stream_seed(seed: int, batch: int, attack: str, stream: str) -> int:
    """A 63-bit seed that depends only on its four parts (not on what ran before)."""
    h = hashlib.sha256(f"{int(seed)}|{int(batch)}|{attack}|{stream}".encode()).digest()
    return int.from_bytes(h[:8], "little") & ((1 << 63) - 1)


def _margin(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """``max_{j != y} z_j - z_y`` per sample (> 0: misclassified)."""
    z = logits.float()
    true = z.gather(1, y[:, None]).squeeze(1)
    other = z.clone()
    other.scatter_(1, y[:, None], float("-inf"))
    return other.max(1).values - true


def _starts(x: torch.Tensor, idx: Sequence[int], eps: float, seed: int, tag: str) -> torch.Tensor:
    noise = torch.empty_like(x, device="cpu")
    for i, j in enumerate(idx):
        g = torch.Generator().manual_seed(stream_seed(seed, int(j), "own-graph", tag))
        noise[i] = torch.rand(x.shape[1:], generator=g) * 2 - 1
    return (x + eps * noise.to(x.device)).clamp(0.0, 1.0)


def own_graph_attack(model: nn.Module, x: torch.Tensor, y: torch.Tensor, idx: Sequence[int], eps: float,
                     seed: int, steps: int = 20, stats: Optional[Dict[str, int]] = None) -> torch.Tensor:
    """Adversarial examples for ``model`` (its own graph) within ``||d||_inf <= eps``, ``[0,1]``; see above.

    ``stats`` (if given) accumulates ``n`` (samples attacked) and ``zero_grad`` (samples whose input gradient
    of the cross-entropy at the first step is exactly zero: a non-differentiable op such as ``Round`` in the
    graph -- gradient masking inside the artifact)."""
    x = x.detach().float()
    best = x.clone()
    with torch.no_grad():
        best_m = _margin(model(x), y)
    best_m = torch.where(torch.isfinite(best_m), best_m, torch.full_like(best_m, float("-inf")))
    losses = (("ce", lambda z: F.cross_entropy(z.float(), y, reduction="none")),
              ("margin", lambda z: _margin(z, y)))
    for tag, loss_fn in losses:
        xa = _starts(x, idx, eps, seed, tag)
        for step in range(steps):
            alpha = eps / 4 if step < steps // 2 else eps / 10
            xa = xa.detach().requires_grad_(True)
            with torch.enable_grad():
                z = model(xa)
                (grad,) = torch.autograd.grad(loss_fn(z).sum(), [xa])
            if stats is not None and tag == "ce" and step == 0:
                g0 = torch.nan_to_num(grad, nan=0.0).abs().flatten(1).amax(1)
                stats["n"] = stats.get("n", 0) + len(x)
                stats["zero_grad"] = stats.get("zero_grad", 0) + int((g0 == 0).sum())
            with torch.no_grad():
                m = _margin(z, y)
                better = torch.isfinite(m) & (m > best_m)
                best[better], best_m[better] = xa.detach()[better], m[better]
                grad = torch.nan_to_num(grad, nan=0.0, posinf=0.0, neginf=0.0)
                xa = xa.detach() + alpha * grad.sign()
                xa = torch.min(torch.max(xa, x - eps), x + eps).clamp(0.0, 1.0)
        with torch.no_grad():
            m = _margin(model(xa), y)
            better = torch.isfinite(m) & (m > best_m)
            best[better], best_m[better] = xa[better], m[better]
    return best.detach()


__all__ = ["own_graph_attack", "stream_seed"]
