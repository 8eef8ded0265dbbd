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
state, never exported. Teachers without registered names (ONNX via onnx2torch, TorchScript, unregistered
models) get their points from the graph (:mod:`.graph`). A requested level that still cannot run (no
teacher graph, no student classifier, only 1x1 maps) raises a one-line :class:`UserError` at setup unless
``partial=True`` (option ``mim_partial``); then training continues with what runs (the feature level on
the teacher's logits, the attention level off) and :meth:`MIM.report` says so, for the card and result.
"""
from __future__ import annotations

import logging
import math
from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import UserError
from .graph import GraphPoints, graph_points
from .hooks import HEAD, FeatureTap, pair_stages, probe_shapes, resolve_points

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
    "mim_partial": False,  # train on when a requested level cannot run (recorded by report()) instead of failing
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
                 att_mode: str = "mse", teacher_input: str = "clean", head: str = "linear", partial: bool = False):
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
        self.partial = bool(partial)
        self.ready = False  # setup() ran
        self.degraded = False  # a requested level does not run as asked (only with partial=True)
        self.teacher_points: Optional[str] = None  # registered | fx-graph | torchscript | fx-traced | none
        self._graph: Optional[GraphPoints] = None  # plain attribute: the teacher twin is not MIM state
        self._t_nodes: Dict[str, str] = {}  # teacher hook name -> graph node, kept for report() after teardown

    @classmethod
    def from_options(cls, opts: Dict[str, object]) -> "MIM":
        return cls(**{k[len("mim_"):]: opts[k] for k in MIM_DEFAULTS})

    # -- construction --------------------------------------------------------------------------
    def _note(self, msg: str) -> None:
        self.notes.append(msg)
        log.warning("MIM: %s", msg)

    def _teacher_points(self, teacher: nn.Module, arch: Optional[str], input_shape: Sequence[int],
                        need_stages: bool, need_head: bool) -> Tuple[List[str], Optional[str], str]:
        """``(stages, head, why-not)``: registered names when they cover what is needed, else the points found
        from the teacher's graph (:mod:`.graph`) when those cover more; ``why-not`` explains what is missing."""

        def score(stages, head) -> int:
            return int(bool(stages) and need_stages) + int(head is not None and need_head)

        stages, head = resolve_points(teacher, arch)
        if score(stages, head) == int(need_stages) + int(need_head):
            return stages, head, ""
        try:
            graph, why = graph_points(teacher, input_shape)
        except Exception as e:  # an exotic graph the interpreter cannot run: reported, not a crash here
            first = (str(e).splitlines() or [""])[0][:80]
            graph, why = None, f"its graph could not be probed ({type(e).__name__}: {first})"
        if graph is None:
            return stages, head, why
        if score(graph.stages, graph.head) > score(stages, head):
            self._graph, self.teacher_points, self._t_nodes = graph, graph.source, dict(graph.nodes)
            return graph.stages, graph.head, ""
        graph.undo()
        missing = [w for w, need, got in (("stage maps", need_stages, graph.stages),
                                          ("classifier input", need_head, graph.head)) if need and not got]
        return stages, head, "its graph has no " + " or ".join(missing)

    def setup(self, student: nn.Module, teacher: nn.Module, student_arch: Optional[str], teacher_arch: Optional[str],
              input_shape: Optional[Sequence[int]], num_classes: int) -> None:
        """Hook both models, probe feature shapes with one tiny forward each, and build the heads.

        Raises :class:`UserError` when a requested level cannot run and ``partial`` is off.
        """
        if input_shape is None:
            raise ValueError("MIM needs input_shape (C, H, W) at setup to size its projection heads")
        self.remove_hooks()
        self.notes, self.ready, self.degraded, self.teacher_points = [], False, False, "registered"
        self.teacher_feat_from_logits, self._t_nodes = False, {}
        need_feat, need_att = self.w_feat > 0, self.w_att > 0 and self.levels > 0
        s_stages, s_head = resolve_points(student, student_arch)
        t_stages, t_head, why = self._teacher_points(teacher, teacher_arch, input_shape, need_att, need_feat)
        if why and not (t_stages or t_head):
            self.teacher_points = "none"
        pairs = pair_stages(s_stages, t_stages, self.levels) if need_att else []
        s_head = s_head if need_feat else None
        runner = self._graph.runner if self._graph is not None else None
        self.s_tap = FeatureTap(student, [p[0] for p in pairs], s_head)
        self.t_tap = FeatureTap(teacher, [p[1] for p in pairs], t_head if need_feat else None, runner=runner)
        s_shapes = probe_shapes(student, self.s_tap, input_shape)
        t_shapes = probe_shapes(teacher, self.t_tap, input_shape)
        if need_feat and s_head is not None and HEAD not in t_shapes:
            t_shapes[HEAD] = (num_classes,)
            self.teacher_feat_from_logits = True
        dev = next(student.parameters()).device
        self.build(pairs, s_shapes, t_shapes)
        self.to(dev)
        teacher_name = f"teacher '{teacher_arch or type(teacher).__name__}'"
        problems = []
        if need_feat and s_head is None:
            problems.append(f"student '{student_arch}' has no hookable classifier (feature level off)")
        elif need_feat and self.teacher_feat_from_logits:
            problems.append(f"{teacher_name} exposes no penultimate features, {why or 'none found'} "
                            f"(feature level on its logits)")
        if need_att and not self.pairs:
            cause = ("every stage pair has a 1x1 map" if pairs else
                     f"student '{student_arch}' has no registered stages" if not s_stages else
                     why or "the teacher has no stage maps")
            problems.append(f"no student/teacher stage pairs with {teacher_name}: {cause} (attention level off)")
        self.ready = True
        if problems:
            msg = "MIM cannot run every requested level: " + "; ".join(problems)
            if not self.partial:
                self.remove_hooks()
                raise UserError(msg + "; pass mim_partial=true to train with the levels that run")
            self.degraded = True
            self._note(msg + " (mim_partial: training with the levels that run)")

    def report(self) -> Dict[str, Any]:
        """What MIM runs, for the card / result: see :meth:`..base.AdversarialDistillation.mim_levels`."""
        feature = "off"
        if self.has_feat:
            feature = "logits" if self.teacher_feat_from_logits else "penultimate"
        names = self._t_nodes
        return {"feature": feature, "attention": len(self.pairs),
                "pairs": [[s, names.get(t, t)] for s, t in self.pairs], "attention_sizes": list(self.att_sizes),
                "requested": {"feature": self.w_feat > 0, "attention": self.levels if self.w_att > 0 else 0},
                "teacher_points": self.teacher_points, "partial": self.degraded, "ready": self.ready,
                "notes": list(self.notes)}

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
        """Detach every hook and take the taps out of an ONNX teacher's graph; safe to call twice."""
        for tap in (self.s_tap, self.t_tap):
            if tap is not None:
                tap.remove()
        self.s_tap = self.t_tap = None
        if self._graph is not None:
            self._graph.undo()
            self._graph = None

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
