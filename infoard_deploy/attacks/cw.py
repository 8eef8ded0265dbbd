"""CW-inf: L-inf PGD on the Carlini-Wagner margin loss, as a torchattacks ``Attack``.

The ARD-family tables (IAD ``basic_eval.py``, FAT, RSLAD, CGARD) report "CW-inf" = PGD that maximises
the CW margin loss ``-max(z_y - max_{j!=y} z_j + kappa, 0)`` (Carlini & Wagner 2017, the f_6 objective)
inside the L-inf ball -- not torchattacks' ``CW`` (an L2 attack). IAD/FAT use 30 steps, step eps/4
(2/255 at 8/255), uniform random start and kappa = 50; those are the defaults here.

Shapes: images float (B, C, H, W) in [0,1]; labels int64 (B,); output (B, C, H, W) in [0,1] with
``||x_adv - x||_inf <= eps``.
"""
from __future__ import annotations

import torch
from torchattacks.attack import Attack


def cw_margin_loss(logits: torch.Tensor, labels: torch.Tensor, kappa: float = 50.0) -> torch.Tensor:
    """Per-sample CW loss ``-clamp(z_y - max_{j != y} z_j + kappa, min=0)`` (B,); larger = closer to broken.

    With a large ``kappa`` the loss keeps pushing past the decision boundary (IAD's confidence 50), so the
    gradient does not vanish the moment a sample is misclassified.
    """
    real = logits.gather(1, labels[:, None]).squeeze(1)
    # -inf on the true class so max picks the strongest other class (IAD uses -10000 for the same job)
    other = logits.masked_fill(torch.nn.functional.one_hot(labels, logits.shape[1]).bool(), float("-inf")).amax(1)
    return -(real - other + kappa).clamp(min=0.0)


class CWInf(Attack):
    r"""CW-inf (PGD with the CW margin loss), Linf.

    Arguments:
        model (nn.Module): model to attack; takes [0,1] inputs.
        eps (float): L-inf radius. (Default: 8/255)
        alpha (float): step size. (Default: 2/255, i.e. eps/4)
        steps (int): number of steps. (Default: 30)
        kappa (float): CW confidence. (Default: 50)
        random_start (bool): start at x + U(-eps, eps). (Default: True)

    Examples::
        >>> atk = CWInf(model, eps=8/255, alpha=2/255, steps=30)
        >>> adv_images = atk(images, labels)
    """

    def __init__(self, model, eps: float = 8 / 255, alpha: float = 2 / 255, steps: int = 30, kappa: float = 50.0,
                 random_start: bool = True):
        super().__init__("CWInf", model)
        self.eps, self.alpha, self.steps, self.kappa, self.random_start = eps, alpha, steps, kappa, random_start
        self.supported_mode = ["default"]

    def forward(self, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        images = images.clone().detach().to(self.device)
        labels = labels.clone().detach().to(self.device)
        adv = images.clone()
        if self.random_start:
            adv = (adv + torch.empty_like(adv).uniform_(-self.eps, self.eps)).clamp(0.0, 1.0)
        for _ in range(self.steps):
            adv.requires_grad_(True)
            with torch.enable_grad():
                loss = cw_margin_loss(self.get_logits(adv), labels, self.kappa).sum()
                (grad,) = torch.autograd.grad(loss, [adv])
            adv = adv.detach() + self.alpha * grad.sign()
            delta = torch.clamp(adv - images, min=-self.eps, max=self.eps)
            adv = torch.clamp(images + delta, min=0.0, max=1.0).detach()
        return adv
