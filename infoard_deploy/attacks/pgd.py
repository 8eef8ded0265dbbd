"""Training-time L-inf PGD with a per-sample radius, and the validation PGD.

torchattacks attacks take one scalar eps; ASA (Attack-Strength Adaptation) needs a radius per sample,
and each distillation method maximises its own loss (CE for ARD/IAD, KL to the teacher for RSLAD/AdaAD),
so the inner maximisation lives here as one small loop. Evaluation attacks stay in torchattacks.

Shapes: ``x`` float (B, C, H, W) in [0,1]; ``eps``/``alpha`` a float or a (B,) tensor.
"""
from __future__ import annotations

from typing import Callable, Optional, Union

import torch
import torch.nn.functional as F

Radius = Union[float, torch.Tensor]


def _per_sample(v: Radius, x: torch.Tensor) -> torch.Tensor:
    t = torch.as_tensor(v, dtype=x.dtype, device=x.device)
    if t.dim() == 0:
        t = t.expand(x.shape[0])
    return t.view(-1, *([1] * (x.dim() - 1)))


def pgd(loss_fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, eps: Radius, alpha: Radius, steps: int,
        init: str = "uniform", init_std: float = 0.001, generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """Maximise ``loss_fn(x_adv).sum()`` over ``||x_adv - x||_inf <= eps`` and ``x_adv in [0,1]``.

    ``init``: ``uniform`` (U(-eps, eps), ARD/IAD/Madry), ``normal`` (x + init_std * N(0,1), TRADES/RSLAD/AdaAD)
    or ``zero``. Gradients are taken w.r.t. the input only (``autograd.grad``), so no parameter gradient
    accumulates; the caller chooses the BN mode (train for ARD/IAD, eval for RSLAD/AdaAD).
    Returns a detached tensor.
    """
    x = x.detach()
    e = _per_sample(eps, x)
    a = _per_sample(alpha, x)
    if init == "uniform":
        noise = (torch.rand(x.shape, generator=generator, device=x.device, dtype=x.dtype) * 2 - 1) * e
    elif init == "normal":
        noise = init_std * torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
        noise = torch.max(torch.min(noise, e), -e)
    elif init == "zero":
        noise = torch.zeros_like(x)
    else:
        raise ValueError(f"unknown PGD init '{init}'")
    x_adv = (x + noise).clamp(0.0, 1.0)
    for _ in range(steps):
        x_adv.requires_grad_(True)
        with torch.enable_grad():
            loss = loss_fn(x_adv).sum()
            (grad,) = torch.autograd.grad(loss, [x_adv])
        x_adv = x_adv.detach() + a * grad.sign()
        x_adv = torch.min(torch.max(x_adv, x - e), x + e).clamp(0.0, 1.0)
    return x_adv.detach()


def pgd_ce(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, eps: Radius, alpha: Radius, steps: int,
           init: str = "uniform", generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """PGD on the cross-entropy of ``model`` (Madry et al. 2018); model mode is left to the caller."""
    return pgd(lambda z: F.cross_entropy(model(z), y, reduction="none"), x, eps, alpha, steps, init, generator=generator)
