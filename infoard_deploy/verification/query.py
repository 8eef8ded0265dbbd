"""Query (score-based black-box) attacks run against a deployed runtime itself.

torchattacks' attacks need an ``nn.Module`` with at least one parameter (it reads the device from
it); :class:`RuntimeModule` wraps any :class:`~infoard_deploy.runtimes.base.Runtime` as one, with a
zero-size dummy parameter and no gradient path, so Square (Andriushchenko et al., ECCV 2020, "Square
Attack: a query-efficient black-box adversarial attack via random search", the query component of
AutoAttack) can attack an ONNX Runtime session or a TensorRT engine through ``predict`` only.

The Square attack itself comes from the evaluation suite (``make_attack("square", RuntimeModule(rt), ...)``).

Shapes: inputs float32 (B, C, H, W) in [0,1] on the wrapper's device; logits float32 (B, K).
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from ..runtimes.base import Runtime


class RuntimeModule(nn.Module):
    """``forward(x) -> logits`` through ``runtime.predict`` (or ``predict_tensor`` when it has one).

    ``calls`` counts forward calls and ``queries`` the samples sent, so the report can state the
    query cost. Not differentiable: use it for query attacks only.
    """

    def __init__(self, runtime: Runtime, device: Optional[torch.device] = None):
        super().__init__()
        self.runtime = runtime
        # torchattacks.Attack reads the device from the first parameter; it carries nothing.
        self._device_anchor = nn.Parameter(torch.zeros(0, device=device or torch.device("cpu")), requires_grad=False)
        self._fast = getattr(runtime, "predict_tensor", None)
        self.calls = 0
        self.queries = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        self.queries += int(x.shape[0])
        if self._fast is not None:
            return self._fast(x)
        out = torch.from_numpy(self.runtime.predict(x))
        return out if x.device.type == "cpu" else out.to(x.device)


__all__ = ["RuntimeModule"]
