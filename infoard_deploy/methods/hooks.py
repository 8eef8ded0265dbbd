"""Capture intermediate features by module name with forward hooks, without editing the model.

Hook points come from the model registry: :func:`infoard_deploy.models.stage_names` (feature maps,
``(B, C, H, W)``, shallow to deep) and :func:`infoard_deploy.models.head_name` (the final Linear; a
forward *pre*-hook on it yields the penultimate features ``(B, D)``). The pattern follows torchdistill's
forward-hook feature capture.

A :class:`FeatureTap` stores outputs only inside ``with tap.capture() as feats:``, so the many forward
passes of the inner PGD loop neither keep graphs alive nor overwrite the features of the pass that
matters. Names are resolved through DDP / ``torch.compile`` wrappers (``module.``, ``_orig_mod.``).
Teachers without named stages (TorchScript archives, ONNX graphs converted by onnx2torch, unknown
architectures) resolve to nothing here; :mod:`.graph` finds their points from the graph and hands a
``runner`` (the module whose forward the tap observes: the teacher itself, or a hookable twin of it).
"""
from __future__ import annotations

import contextlib
import logging
from typing import Dict, Iterator, List, Optional, Sequence, Tuple

import torch
from torch import nn

log = logging.getLogger(__name__)

HEAD = "__head__"  # key under which the penultimate features (input of the head Linear) are stored
_WRAPPER_PREFIXES = ("", "module.", "_orig_mod.", "module._orig_mod.", "_orig_mod.module.")


def find_module(model: nn.Module, name: str) -> Optional[nn.Module]:
    """The submodule called ``name``, looking through DDP / compile wrappers; ``None`` if absent."""
    for prefix in _WRAPPER_PREFIXES:
        try:
            return model.get_submodule(prefix + name)
        except (AttributeError, KeyError, RuntimeError):
            continue
    return None


def hookable(model: nn.Module) -> bool:
    """False when any part is TorchScript: compiled code ignores Python hooks (a loaded archive refuses
    them; an in-memory traced module accepts them and never calls them), so named layers cannot be tapped."""
    return not any(isinstance(m, torch.jit.ScriptModule) for m in model.modules())


def resolve_points(model: nn.Module, arch: Optional[str]) -> Tuple[List[str], Optional[str]]:
    """``(stage names, head name)`` that exist in ``model`` for registered ``arch``.

    Returns ``([], None)`` when ``arch`` is unknown (e.g. an ONNX teacher) or the model cannot be hooked.
    """
    if arch is None or not hookable(model):
        return [], None
    from ..models import MODELS, head_name, stage_names

    if arch not in MODELS:
        return [], None
    stages = [s for s in stage_names(arch) if find_module(model, s) is not None]
    head = head_name(arch)
    return stages, (head if isinstance(find_module(model, head), nn.Linear) else None)


class FeatureTap:
    """Forward hooks on ``stages`` (outputs) and on ``head`` (its input) of ``model``.

    ``with tap.capture() as feats:`` -> after the forward pass inside the block, ``feats[name]`` holds
    each stage output and ``feats[HEAD]`` the penultimate features. Tensors keep their autograd graph
    (student) or none (teacher under ``no_grad``). :meth:`remove` detaches the hooks.
    """

    def __init__(self, model: nn.Module, stages: Sequence[str], head: Optional[str],
                 runner: Optional[nn.Module] = None):
        self.stages, self.head = list(stages), head
        # Captured passes call ``runner`` instead of the model they are given (a hookable twin of a
        # TorchScript / traced teacher: same weights, same outputs); ``None`` = the model itself.
        self.runner = runner
        model = runner if runner is not None else model
        self._active = False
        self._store: Dict[str, torch.Tensor] = {}
        self._handles = []
        for name in self.stages:
            mod = find_module(model, name)
            if mod is None:
                raise KeyError(f"no module named '{name}' to hook")
            self._handles.append(mod.register_forward_hook(self._make_hook(name)))
        if head is not None:
            mod = find_module(model, head)
            if mod is None:
                raise KeyError(f"no module named '{head}' to hook")
            self._handles.append(mod.register_forward_pre_hook(self._make_pre_hook()))

    def _make_hook(self, name: str):
        def hook(_module, _inputs, output):
            if self._active:
                self._store[name] = output

        return hook

    def _make_pre_hook(self):
        def hook(_module, inputs):
            if self._active:
                self._store[HEAD] = inputs[0]

        return hook

    def run(self, model: nn.Module, x: torch.Tensor) -> torch.Tensor:
        """``model(x)`` through the hooked runner; call inside :meth:`capture` to record features."""
        return (self.runner if self.runner is not None else model)(x)

    @contextlib.contextmanager
    def capture(self) -> Iterator[Dict[str, torch.Tensor]]:
        feats: Dict[str, torch.Tensor] = {}
        self._store, self._active = feats, True
        try:
            yield feats
        finally:
            self._active = False
            self._store = {}

    def remove(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []


@torch.no_grad()
def probe_shapes(model: nn.Module, tap: FeatureTap, input_shape: Sequence[int]) -> Dict[str, Tuple[int, ...]]:
    """Per-sample shapes of the tapped features, from one eval-mode forward pass of 2 zero images.

    The model's train/eval mode is restored, and eval mode means BN running statistics are untouched.
    """
    p = next(model.parameters(), None)
    dev = p.device if p is not None else torch.device("cpu")
    was_training = model.training
    model.eval()
    try:
        with tap.capture() as feats:
            tap.run(model, torch.zeros(2, *input_shape, device=dev))
    finally:
        model.train(was_training)
    return {k: tuple(v.shape[1:]) for k, v in feats.items()}


def pair_stages(student_stages: Sequence[str], teacher_stages: Sequence[str], levels: int) -> List[Tuple[str, str]]:
    """Pick ``levels`` (student, teacher) stage pairs, deepest last, matched proportionally by depth.

    Level j of L uses student stage ``round((j+1) n_s / L) - 1`` and teacher stage ``round((j+1) n_t / L) - 1``,
    so the deepest stages are always paired (e.g. ResNet-18 layer1/layer3/layer4 <-> WRN block1/2/3).
    """
    n_s, n_t = len(student_stages), len(teacher_stages)
    n = min(levels, n_s, n_t)
    if n <= 0:
        return []
    pairs = []
    for j in range(n):
        si = max(0, int(round((j + 1) * n_s / n)) - 1)
        ti = max(0, int(round((j + 1) * n_t / n)) - 1)
        pairs.append((student_stages[si], teacher_stages[ti]))
    return pairs


__all__ = ["HEAD", "FeatureTap", "find_module", "hookable", "resolve_points", "probe_shapes", "pair_stages"]
