"""MIM, Mutual-Information Maximisation between student and teacher, at two granularities.

InfoARD (Cai et al., IEEE TIP 2025) makes the student learn the teacher's features at several levels
and its attention patterns through mutual-information constraints; the formulation is not public, so
this is our design (docs/infoard-design.md) from the closest published objectives:

* **Feature level** -- InfoNCE lower bound on I(z_S; z_T) (van den Oord et al. 2018; CRD, Tian et al.
  ICLR 2020, uses the NCE form with a memory bank): penultimate features of the student at x' and of
  the teacher (at x by default, see ``teacher_input``) go through small projection heads to unit
  vectors in R^dim; with ``s_ij = z_S,i . z_T,j / tau`` the loss is the symmetric cross-entropy with the
  same-sample pair as the positive and the rest of the batch as negatives, and
  ``I(z_S; z_T) >= log B - L_NCE`` (logged as ``mim_mi_lb``).
* **Attention level** -- attention transfer (Zagoruyko & Komodakis, ICLR 2017; szagoruyko/attention-
  transfer ``at``/``at_loss``): ``at(f) = normalize(mean_c f^2)`` per sample, the energy map
  average-pooled to the smaller of the two spatial sizes first (RepDistiller pools the larger map);
  ``mse``: ``mean((at_S - at_T)^2)`` summed over levels; ``nce``: an InfoNCE over the flattened maps
  (the contrastive / MI version). Levels pair student and teacher stages proportionally by depth
  (:func:`.hooks.pair_stages`) and attack the "attention region shift" named by the paper.

``teacher_input``: ``clean`` aligns the student's adversarial features with the teacher's *clean*
features (the teacher forward on x that every RSLAD/ARD step already runs, so MIM costs no teacher pass;
the feature-level analogue of RSLAD's robust soft labels, and what IBD does), ``adv`` with the teacher's
features at the same x' (one extra teacher forward unless the base method, e.g. AdaAD, already runs it).

Heads are children of this module (so of the method): trained with the student, saved in the method's
state, never exported. Teachers without named stages (TorchScript, ONNX) lose the attention level, and
the feature level falls back to the teacher's logits, each with a logged note.
"""
from __future__ import annotations

import logging
import math
from typing import Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from .hooks import HEAD, FeatureTap, hookable, pair_stages, probe_shapes, resolve_points

log = logging.getLogger(__name__)

MIM_DEFAULTS: Dict[str, object] = {
    "mim_feat": 0.1,  # weight of the feature-level InfoNCE
    "mim_att": 100.0,  # weight of the attention level (AT uses beta = 1e3 next to a CE-scale loss)
    "mim_levels": 3,  # attention levels (student/teacher stage pairs), deepest last
    "mim_tau": 0.1,  # InfoNCE temperature
    "mim_dim": 128,  # projection dimension
    "mim_att_mode": "mse",  # mse (AT) | nce (contrastive attention)
    "mim_teacher_input": "clean",  # clean | adv
    "mim_head": "linear",  # linear | mlp
}


def attention_map(f: torch.Tensor, size: int) -> torch.Tensor:
    """(B, C, H, W) -> (B, size*size) L2-normalised spatial attention ``mean_c f^2`` (float32)."""
    a = f.float().pow(2).mean(1, keepdim=True)
    if a.shape[-1] != size or a.shape[-2] != size:
        a = F.adaptive_avg_pool2d(a, size)
    return F.normalize(a.flatten(1), dim=1)


def info_nce(a: torch.Tensor, b: torch.Tensor, tau: float) -> torch.Tensor:
    """Symmetric InfoNCE between row-aligned unit vectors ``a``, ``b`` (B, D); positives on the diagonal."""
    logits = a @ b.t() / tau
    target = torch.arange(a.shape[0], device=a.device)
    return 0.5 * (F.cross_entropy(logits, target) + F.cross_entropy(logits.t(), target))


def _head(kind: str, d_in: int, d_out: int) -> nn.Module:
    if kind == "linear":
        return nn.Linear(d_in, d_out)
    return nn.Sequential(nn.Linear(d_in, d_in), nn.ReLU(inplace=True), nn.Linear(d_in, d_out))


class MIM(nn.Module):
    def __init__(self, feat: float = 0.1, att: float = 100.0, levels: int = 3, tau: float = 0.1, dim: int = 128,
                 att_mode: str = "mse", teacher_input: str = "clean", head: str = "linear"):
        super().__init__()
        if att_mode not in ("mse", "nce"):
            raise ValueError(f"mim_att_mode must be mse or nce, got '{att_mode}'")
        if teacher_input not in ("clean", "adv"):
            raise ValueError(f"mim_teacher_input must be clean or adv, got '{teacher_input}'")
        if head not in ("linear", "mlp"):
            raise ValueError(f"mim_head must be linear or mlp, got '{head}'")
        if tau <= 0 or dim < 1 or levels < 0 or feat < 0 or att < 0:
            raise ValueError("MIM needs tau > 0, dim >= 1, levels >= 0 and non-negative weights")
        self.w_feat, self.w_att, self.levels = float(feat), float(att), int(levels)
        self.tau, self.dim = float(tau), int(dim)
        self.att_mode, self.teacher_input, self.head_kind = att_mode, teacher_input, head
        self.pairs: List[Tuple[str, str]] = []
        self.att_sizes: List[int] = []
        self.teacher_feat_from_logits = False
        self.s_tap: Optional[FeatureTap] = None
        self.t_tap: Optional[FeatureTap] = None
        self.proj_s: Optional[nn.Module] = None
        self.proj_t: Optional[nn.Module] = None
        self.notes: List[str] = []

    @classmethod
    def from_options(cls, opts: Dict[str, object]) -> "MIM":
        return cls(**{k[len("mim_"):]: opts[k] for k in MIM_DEFAULTS})

    # -- construction --------------------------------------------------------------------------
    def _note(self, msg: str) -> None:
        self.notes.append(msg)
        log.warning("MIM: %s", msg)

    def setup(self, student: nn.Module, teacher: nn.Module, student_arch: Optional[str], teacher_arch: Optional[str],
              input_shape: Optional[Sequence[int]], num_classes: int) -> None:
        """Hook both models, probe feature shapes with one tiny forward each, and build the heads."""
        if input_shape is None:
            raise ValueError("MIM needs input_shape (C, H, W) at setup to size its projection heads")
        self.remove_hooks()
        s_stages, s_head = resolve_points(student, student_arch)
        t_stages, t_head = resolve_points(teacher, teacher_arch)
        if s_head is None:
            self._note(f"student '{student_arch}' has no hookable classifier; feature level off")
        if not hookable(teacher) or teacher_arch is None:
            self._note("teacher has no named layers (TorchScript / ONNX / unknown architecture): attention level off, "
                       "feature level uses the teacher's logits")
        elif t_head is None:
            self._note(f"teacher '{teacher_arch}' has no hookable classifier; feature level uses its logits")
        pairs = pair_stages(s_stages, t_stages, self.levels) if self.w_att > 0 else []
        if self.w_att > 0 and self.levels > 0 and not pairs:
            self._note("no student/teacher stage pairs to align; attention level off")
        s_head = s_head if self.w_feat > 0 else None
        self.s_tap = FeatureTap(student, [p[0] for p in pairs], s_head)
        self.t_tap = FeatureTap(teacher, [p[1] for p in pairs], t_head if self.w_feat > 0 else None) \
            if hookable(teacher) else None
        s_shapes = probe_shapes(student, self.s_tap, input_shape)
        t_shapes = probe_shapes(teacher, self.t_tap, input_shape) if self.t_tap is not None else {}
        if self.w_feat > 0 and s_head is not None and HEAD not in t_shapes:
            t_shapes[HEAD] = (num_classes,)
            self.teacher_feat_from_logits = True
        dev = next(student.parameters()).device
        self.build(pairs, s_shapes, t_shapes)
        self.to(dev)

    def build(self, pairs: Sequence[Tuple[str, str]], s_shapes: Dict[str, Tuple[int, ...]],
              t_shapes: Dict[str, Tuple[int, ...]]) -> None:
        """Create heads / attention sizes from per-sample feature shapes (``HEAD`` -> (D,), stage -> (C, H, W))."""
        sized = [((s, t), min(s_shapes[s][-1], t_shapes[t][-1])) for s, t in pairs]
        if any(size < 2 for _, size in sized):  # a 1x1 map normalises to the constant 1: no signal
            self._note(f"attention pairs with a 1x1 map dropped: {[p for p, size in sized if size < 2]}")
        self.pairs = [p for p, size in sized if size >= 2]
        self.att_sizes = [size for _, size in sized if size >= 2]
        if self.w_feat > 0 and HEAD in s_shapes and HEAD in t_shapes:
            self.proj_s = _head(self.head_kind, s_shapes[HEAD][0], self.dim)
            self.proj_t = _head(self.head_kind, t_shapes[HEAD][0], self.dim)
        else:
            self.proj_s = self.proj_t = None

    @property
    def has_feat(self) -> bool:
        return self.proj_s is not None

    def remove_hooks(self) -> None:
        for tap in (self.s_tap, self.t_tap):
            if tap is not None:
                tap.remove()
        self.s_tap = self.t_tap = None

    # -- loss ----------------------------------------------------------------------------------
    def loss(self, s_feats: Dict[str, torch.Tensor], t_feats: Dict[str, torch.Tensor],
             t_logits: Optional[torch.Tensor] = None) -> Tuple[torch.Tensor, Dict[str, torch.Tensor]]:
        """Weighted MIM terms from captured features; returns (scalar loss, detached log tensors)."""
        logs: Dict[str, torch.Tensor] = {}
        total: Optional[torch.Tensor] = None
        if self.has_feat:
            zt_in = t_logits if self.teacher_feat_from_logits else t_feats[HEAD]
            z_s = F.normalize(self.proj_s(s_feats[HEAD].flatten(1).float()), dim=1)
            z_t = F.normalize(self.proj_t(zt_in.detach().flatten(1).float()), dim=1)
            nce = info_nce(z_s, z_t, self.tau)
            total = self.w_feat * nce
            logs["mim_nce"] = nce.detach()
            logs["mim_mi_lb"] = math.log(z_s.shape[0]) - nce.detach()
        if self.pairs:
            att = None
            for (s, t), size in zip(self.pairs, self.att_sizes):
                a_s, a_t = attention_map(s_feats[s], size), attention_map(t_feats[t].detach(), size)
                term = (a_s - a_t).pow(2).mean() if self.att_mode == "mse" else info_nce(a_s, a_t, self.tau)
                att = term if att is None else att + term
            total = self.w_att * att if total is None else total + self.w_att * att
            logs["mim_att"] = att.detach()
        if total is None:
            total = torch.zeros((), device=next(iter(s_feats.values())).device if s_feats else None)
        return total, logs


__all__ = ["MIM", "MIM_DEFAULTS", "attention_map", "info_nce"]
