"""Feature points of teachers without registered module names: ONNX graphs, TorchScript, unregistered models.

MIM (:mod:`.mim`; InfoARD, Cai et al. IEEE TIP 2025) aligns the student with the teacher's penultimate
features and its attention maps at several stages. Registered architectures name those points
(``MODELS.meta(arch)["stages"]``, ``head``); a teacher that arrives as a graph has none, so they are found
from the graph itself:

* **ONNX** (source ``fx-graph``): :func:`infoard_deploy.checkpoint.load_model` converts it with onnx2torch
  into a ``torch.fx.GraphModule`` (inside :class:`~infoard_deploy.models.Normalized`, attribute ``net``);
  any other GraphModule teacher is handled the same way.
* **TorchScript**: compiled code ignores Python hooks (a loaded archive's submodules refuse them with
  "register_forward_hook is not supported on ScriptModules"; an in-memory traced module accepts them and
  never calls them), so the scripted part is converted to an fx graph with ``torch._export.converter``
  (TS2EP, a private torch API; weights share storage) and checked against the original on the probe input.
  Captured teacher passes then run through that twin, all other passes through the original. If the
  conversion fails, MIM reports the levels it cannot run (:class:`UserError` unless ``mim_partial``).
* **Unregistered eager models**: ``torch.fx.symbolic_trace`` gives the twin (submodules shared).

Selection, from one probe forward (2 zero images, eval mode, no grad) interpreted node by node
(``torch.fx.Interpreter``), which records every intermediate tensor's shape:

* **stages** = for each distinct spatial size ``(H, W)`` with ``H * W > 1``, the *last* node whose output is a
  float ``(B, C, H, W)`` activation computed after at least one conv / linear layer (so the normalisation
  of the input never counts), ordered shallow to deep. Downsampling makes a size's last activation the
  deepest representation at that resolution: a ResNet stage output, a plain CNN's pre-pool ReLU, a
  pre-activation ResNet's BN-ReLU of the stage output (the next block's first op). Maps larger than the
  smallest seen so far (upsampling, e.g. adaptive pooling of a 2x2 map to 4x4) start no new level.
* **penultimate** = the ``(B, D)`` input of the last linear-like node (``nn.Linear`` / ONNX Gemm / MatMul /
  ``linear`` / ``addmm``) that the logits depend on; failing that, the last ``(B, D)`` activation before it.

The selected nodes get an ``nn.Identity`` inserted after them (named ``_mim_tap_<i>``), an unused side
branch, so :class:`.hooks.FeatureTap` hooks them like named layers, whether the node was a module call or
a function call. In a GraphModule teacher the taps go into the teacher's own graph (no copy, so device moves
and BN modes stay shared) and :meth:`GraphPoints.undo` removes them again (MIM's teardown); twins are
private to MIM and simply dropped. Shapes: stage maps ``(B, C, H, W)``, penultimate ``(B, D)``.
"""
from __future__ import annotations

import copy
import logging
import operator
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import torch
from torch import fx, nn

log = logging.getLogger(__name__)

TAP_PREFIX = "_mim_tap_"
_LINEAR_NAMES = ("linear", "gemm", "matmul", "addmm", "mm")
_WEIGHTED_NAMES = ("conv", "linear", "gemm", "matmul", "addmm")


@dataclass
class GraphPoints:
    """Where a graph teacher's features are hooked. ``runner`` is the module to call for captured passes."""

    runner: nn.Module
    stages: List[str]  # hook names on ``runner`` (forward hooks: stage maps (B, C, H, W)), shallow to deep
    head: Optional[str]  # hook name whose input is the penultimate feature (B, D)
    source: str  # "fx-graph" | "torchscript" | "fx-traced"
    shapes: Dict[str, Tuple[int, ...]] = field(default_factory=dict)  # hook name -> per-sample shape
    nodes: Dict[str, str] = field(default_factory=dict)  # hook name -> graph node it taps (for reports)
    undo: Callable[[], None] = lambda: None


def _is_linear(node: fx.Node, modules: Dict[str, nn.Module]) -> bool:
    if node.op == "call_module":
        m = modules.get(str(node.target))
        return isinstance(m, nn.Linear) or any(k in type(m).__name__.lower() for k in ("gemm", "matmul", "linear"))
    if node.op == "call_function":
        if node.target in (operator.matmul, torch.matmul, torch.mm, torch.addmm, torch.nn.functional.linear):
            return True
        parts = str(node.target).lower().split(".")  # aten.linear.default, aten.addmm.default, aten.mm.default
        return len(parts) > 1 and parts[0] == "aten" and parts[1] in _LINEAR_NAMES
    return False


def _is_weighted(node: fx.Node, modules: Dict[str, nn.Module]) -> bool:
    """A layer with learned weights (conv / linear), whose output is a feature rather than a rescaled input."""
    if node.op == "call_module":
        m = modules.get(str(node.target))
        return isinstance(m, (nn.modules.conv._ConvNd, nn.Linear)) or \
            any(k in type(m).__name__.lower() for k in _WEIGHTED_NAMES)
    if node.op == "call_function":
        return _is_linear(node, modules) or "conv" in str(getattr(node.target, "__name__", node.target)).lower()
    return False


class _ShapeRecorder(fx.Interpreter):
    """Runs the graph node by node and keeps each tensor output's shape and dtype."""

    def __init__(self, gm: fx.GraphModule):
        super().__init__(gm)
        self.meta: Dict[fx.Node, Tuple[Tuple[int, ...], torch.dtype]] = {}

    def run_node(self, n: fx.Node):
        out = super().run_node(n)
        if isinstance(out, torch.Tensor):
            self.meta[n] = (tuple(out.shape), out.dtype)
        return out


def _graph_inputs(runner: nn.Module, path: str, model: nn.Module, input_shape: Sequence[int]) -> tuple:
    """The positional inputs that reach submodule ``path`` of ``runner`` on a 2-image zero probe.

    The submodule is swapped for a recorder for the probe (ScriptModules take no pre-hooks), then restored.
    """
    p = next(iter(list(runner.parameters()) + list(runner.buffers())), None)
    x = torch.zeros(2, *input_shape, device=p.device if p is not None else None)
    if not path:
        return (x,)
    seen: List[tuple] = []

    class _Rec(nn.Module):
        def forward(self, *args):
            seen.append(args)
            return model(*args)

    parent_name, _, leaf = path.rpartition(".")
    parent = runner.get_submodule(parent_name) if parent_name else runner
    parent._modules[leaf] = _Rec()
    try:
        with torch.no_grad():
            runner(x)
    finally:
        parent._modules[leaf] = model
    return seen[0]


def _eval(model: nn.Module) -> None:
    try:
        model.eval()
    except NotImplementedError:  # a module from torch.export is fixed in its (eval) form and refuses train()
        pass


def select_nodes(gm: fx.GraphModule, meta: Dict[fx.Node, Tuple[Tuple[int, ...], torch.dtype]],
                 batch: int) -> Tuple[List[fx.Node], Optional[fx.Node]]:
    """``(stage nodes shallow to deep, penultimate node or None)`` by the rules in the module docstring."""
    modules = dict(gm.named_modules())
    nodes = list(gm.graph.nodes)
    deep: Dict[fx.Node, bool] = {}
    last_at: Dict[Tuple[int, int], fx.Node] = {}  # insertion order = shallow to deep
    smallest = None
    for n in nodes:
        deep[n] = _is_weighted(n, modules) or any(deep.get(a, False) for a in n.all_input_nodes)
        shape, dtype = meta.get(n, ((), None))
        if (n.op in ("call_module", "call_function", "call_method") and deep[n] and len(shape) == 4
                and shape[0] == batch and shape[2] * shape[3] > 1 and dtype is not None and dtype.is_floating_point):
            area = shape[2] * shape[3]
            if smallest is not None and area > smallest:
                continue  # upsampled (e.g. adaptive pooling to a larger grid): no new resolution level
            smallest = area
            last_at[(shape[2], shape[3])] = n
    stages = list(last_at.values())

    out = next((n for n in reversed(nodes) if n.op == "output"), None)
    logits = out.args[0] if out is not None else None
    while isinstance(logits, (tuple, list)) and logits:
        logits = logits[0]
    if not isinstance(logits, fx.Node):
        return stages, None
    ancestors, todo = set(), [logits]
    while todo:
        n = todo.pop()
        if n not in ancestors:
            ancestors.add(n)
            todo.extend(n.all_input_nodes)
    pos = {n: i for i, n in enumerate(nodes)}
    head = next((n for n in sorted(ancestors, key=pos.get, reverse=True) if _is_linear(n, modules)), None)

    def is_vec(n: fx.Node) -> bool:
        shape, dtype = meta.get(n, ((), None))
        return len(shape) == 2 and shape[0] == batch and deep.get(n, False) and dtype is not None \
            and dtype.is_floating_point

    if head is None:
        return stages, None
    feat = next((a for a in head.all_input_nodes if is_vec(a)), None)
    if feat is None:  # e.g. a MatMul on a (B, 1, D) view: the last (B, D) activation before the head
        feat = next((n for n in reversed(nodes[:pos[head]]) if n in ancestors and is_vec(n)), None)
    return stages, feat


def insert_taps(gm: fx.GraphModule, nodes: Sequence[fx.Node]) -> Tuple[List[str], Callable[[], None]]:
    """Add ``nn.Identity`` side branches after ``nodes``; returns their names and an idempotent undo."""
    names: List[str] = []
    for node in nodes:
        i = 0
        while hasattr(gm, f"{TAP_PREFIX}{i}"):
            i += 1
        name = f"{TAP_PREFIX}{i}"
        gm.add_submodule(name, nn.Identity())
        with gm.graph.inserting_after(node):
            gm.graph.call_module(name, (node,))
        names.append(name)
    gm.recompile()

    def undo() -> None:
        if not names:
            return
        for n in list(gm.graph.nodes):
            if n.op == "call_module" and n.target in names:
                gm.graph.erase_node(n)
        for name in names:
            if hasattr(gm, name):
                delattr(gm, name)
        names.clear()
        gm.recompile()

    return list(names), undo


def _swap(root: nn.Module, path: str, new: nn.Module) -> nn.Module:
    """A shallow copy of ``root`` whose submodule at ``path`` is ``new`` (everything else shared)."""
    if not path:
        return new
    head, _, rest = path.partition(".")
    clone = copy.copy(root)
    clone._modules = type(root._modules)(root._modules)
    clone._modules[head] = _swap(root._modules[head], rest, new)
    return clone


def _first(model: nn.Module, kind) -> Optional[str]:
    return next((name for name, m in model.named_modules() if isinstance(m, kind)), None)


def _torchscript_twin(script: nn.Module, args: tuple) -> Optional[fx.GraphModule]:
    """Convert a ScriptModule to an fx GraphModule (TS2EP); ``None`` when conversion or the check fails."""
    import warnings

    try:
        from torch._export.converter import TS2EPConverter

        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")
            gm = TS2EPConverter(script, args).convert().module()
            ok = torch.allclose(gm(*args), script(*args), rtol=1e-4, atol=1e-5)
    except Exception as e:  # private converter: any failure means "cannot hook", reported by MIM
        log.info("TorchScript -> fx conversion failed: %s", str(e).splitlines()[0] if str(e) else type(e).__name__)
        return None
    return gm if ok else None


def graph_points(teacher: nn.Module, input_shape: Sequence[int]) -> Tuple[Optional[GraphPoints], str]:
    """Hook points of ``teacher`` found from its graph; ``(None, reason)`` when there is no usable graph."""
    path = _first(teacher, fx.GraphModule)
    if path is not None:
        gm, runner, source = teacher.get_submodule(path) if path else teacher, teacher, "fx-graph"
    else:
        path = _first(teacher, torch.jit.ScriptModule)
        if path is not None:
            script = teacher.get_submodule(path) if path else teacher
            gm = _torchscript_twin(script, _graph_inputs(teacher, path, script, input_shape))
            if gm is None:
                return None, "its TorchScript code cannot be hooked or converted to an fx graph"
            runner, source = _swap(teacher, path, gm), "torchscript"
        else:
            try:
                gm, path, source = fx.symbolic_trace(teacher), "", "fx-traced"
            except Exception as e:
                return None, f"it cannot be traced into a graph ({type(e).__name__})"
            runner = gm
    _eval(runner)  # BN statistics must not move during the probe (the teacher is already frozen by setup)
    args = _graph_inputs(runner, path, gm, input_shape)
    rec = _ShapeRecorder(gm)
    with torch.no_grad():
        rec.run(*args)
    stages, feat = select_nodes(gm, rec.meta, batch=2)
    picked = stages + ([feat] if feat is not None else [])
    names, undo = insert_taps(gm, picked) if picked else ([], lambda: None)
    prefix = f"{path}." if path else ""
    hooks = [prefix + n for n in names]
    pts = GraphPoints(runner=runner, stages=hooks[:len(stages)], head=hooks[-1] if feat is not None else None,
                      source=source, undo=undo if source == "fx-graph" else (lambda: None))
    for h, node in zip(hooks, picked):
        pts.shapes[h] = tuple(rec.meta[node][0][1:])
        pts.nodes[h] = node.name
    return pts, ""


__all__ = ["GraphPoints", "graph_points", "select_nodes", "insert_taps", "TAP_PREFIX"]
