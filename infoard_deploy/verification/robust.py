"""Robust accuracy of deployed artifacts: transfer + query attacks, a per-sample cascade, flip rates.

The design follows AutoAttack (Croce & Hein, ICML 2020, "Reliable evaluation of adversarial robustness
with an ensemble of diverse parameter-free attacks"): one robust flag per sample and model, every attack
runs only on samples still robust (here: robust for *any* model, so one crafted set serves all), and a
sample counts as robust only if it survives every attack (the per-sample worst case). Extended to
deployment:

1. **clean**: the reference (torch) and every artifact predict the same cached batch (parity).
2. **transfer**: each white-box attack of the suite (``pgd20``, ``cw``, ``apgd-ce``, ``apgd-t`` via
   :func:`infoard_deploy.attacks.suite.make_attack`) is crafted *once* on the differentiable reference
   and replayed on every artifact (parity on the same adversarial inputs). For the reference itself
   these are white-box attacks.
   The crafting batch holds only the samples still robust *for the reference*, so the reference's numbers
   never depend on which artifacts sit beside it; samples still robust for some artifact but already broken
   on the reference get their own crafting call on a separate seed stream.
3. **own-graph**: each model is attacked white-box through its *own* differentiable graph
   (:mod:`.whitebox`): the reference itself, an artifact's ONNX file converted to torch (INT8 Q/DQ as
   fake-quant with a straight-through estimator, fp16 in fp16); the examples are judged on the real
   runtime. Per-sample random starts, so a faithful artifact starts exactly where the reference did.
4. **query**: Square (:mod:`.query`) attacks each model through its own ``predict``, starting from the
   samples still robust for that model, so gradient masking and deployment-only weaknesses show.
5. **eps sweep**: transfer PGD at ``eps * m`` for each multiple ``m`` (robust accuracy vs eps plot).

Seeds: every attack call is seeded from ``(seed, batch index, attack, stream)`` (:func:`.whitebox.stream_seed`;
the stream is ``reference`` / ``artifacts`` for transfer crafting, ``self`` for Square, whose query stream
is deliberately the same for every model so a faithful artifact replays the reference's queries) and the
own-graph starts from ``(seed, dataset index)``; no call draws from a shared generator, so artifact-side
work cannot shift the reference's randomness.

Per sample and model we keep only ``broken_at`` (the stage that first broke it, ``-1`` = robust), so
memory is bounded by the batch size. Inputs: batches ``(x float32 (B,C,H,W) in [0,1], y int64 (B,), idx)``.
"""
from __future__ import annotations

import time
from contextlib import ExitStack
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence, Tuple

import numpy as np
import torch
from torch import nn

from ..runtimes.base import Runtime
from .checks import PreflightProbe, preflight_probe
from .parity import ParityTable
from .query import RuntimeModule
from .whitebox import own_graph_attack, stream_seed

ROBUST = -1  # broken_at value of a sample no attack broke
AttackFactory = Callable[..., Callable[[torch.Tensor, torch.Tensor], torch.Tensor]]


@dataclass(frozen=True)
class VerifyConfig:
    eps: float
    attacks: Tuple[str, ...] = ("pgd20", "cw", "apgd-ce", "apgd-t")
    square_queries: int = 1000          # 0 disables the query stage
    square_restarts: int = 1
    eps_sweep: Tuple[float, ...] = (0.5, 1.0, 1.5)
    sweep_attack: str = "pgd20"
    seed: int = 0
    own_graph_steps: int = 20           # PGD steps per loss of the own-graph stage; 0 disables it

    @property
    def stages(self) -> List[str]:
        return (["clean", *self.attacks] + (["own-graph"] if self.own_graph_steps > 0 else [])
                + (["square"] if self.square_queries > 0 else []))


@dataclass
class ModelResult:
    """Per-model outcome. ``broken_at[i]``: index into ``stages`` of the stage that first broke sample i."""

    name: str
    role: str                      # reference | artifact
    runtime: str
    precision: str
    path: Optional[str]
    broken_at: np.ndarray
    sweep_correct: Dict[float, int] = field(default_factory=dict)
    queries: int = 0               # samples sent by Square
    parity: Optional[ParityTable] = None
    probe: Optional[PreflightProbe] = None
    seconds: Dict[str, float] = field(default_factory=dict)
    arithmetic: str = "fp32 (torch)"   # what arithmetic actually executed the model
    own_graph: str = "off"           # how the own-graph white-box stage attacked it (or why it could not)
    info: Dict[str, Any] = field(default_factory=dict)  # provenance, tolerances ... (filled by the API)

    @property
    def n(self) -> int:
        return len(self.broken_at)

    def correct_after(self, stage_idx: int) -> np.ndarray:
        """Samples still correct after stages ``0..stage_idx`` (cumulative cascade)."""
        return (self.broken_at == ROBUST) | (self.broken_at > stage_idx)

    @property
    def clean_acc(self) -> float:
        return 100.0 * float(self.correct_after(0).mean()) if self.n else 0.0

    @property
    def robust(self) -> np.ndarray:
        return self.broken_at == ROBUST

    @property
    def robust_acc(self) -> float:
        return 100.0 * float(self.robust.mean()) if self.n else 0.0

    def stage_acc(self, stages: Sequence[str]) -> Dict[str, float]:
        return {s: 100.0 * float(self.correct_after(i).mean()) for i, s in enumerate(stages)}

    def broken_by(self, stages: Sequence[str]) -> Dict[str, int]:
        return {s: int((self.broken_at == i).sum()) for i, s in enumerate(stages)}


@dataclass
class VerifyResult:
    config: VerifyConfig
    indices: np.ndarray
    labels: np.ndarray
    reference: ModelResult
    artifacts: List[ModelResult]
    seconds: Dict[str, float]

    @property
    def n(self) -> int:
        return len(self.labels)

    def flips(self, art: ModelResult) -> Dict[str, Dict[str, float]]:
        """Robust on torch but broken on the artifact, and the reverse (counts and % of n); same for clean."""
        n = max(self.n, 1)
        rr, ar = self.reference.robust, art.robust
        rc, ac = self.reference.correct_after(0), art.correct_after(0)
        pairs = {"robust_to_broken": rr & ~ar, "broken_to_robust": ~rr & ar,
                 "clean_correct_to_wrong": rc & ~ac, "clean_wrong_to_correct": ~rc & ac}
        return {k: {"count": int(v.sum()), "rate": 100.0 * float(v.sum()) / n} for k, v in pairs.items()}

    def query_extra(self, m: ModelResult) -> Dict[str, float]:
        """Samples that survived every white-box / transfer attack but Square broke."""
        c = int(self.square_only(m).sum())
        return {"count": c, "rate": 100.0 * c / max(self.n, 1)}

    @staticmethod
    def zero_grad_fraction(m: ModelResult) -> Optional[float]:
        """Share of the samples the own-graph attack tried on ``m`` whose input gradient was exactly zero."""
        st = m.info.get("own_graph_stats") or {}
        return st["zero_grad"] / st["n"] if st.get("n") else None

    def square_only(self, m: ModelResult) -> np.ndarray:
        """(n,) bool: samples only the query attack broke on ``m``."""
        st = self.config.stages
        return m.broken_at == st.index("square") if "square" in st else np.zeros(m.n, bool)


def _logits(m: nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return m(x).float()


def _wrong(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """(B,) bool: misclassified; a row holding NaN/inf is never a correct prediction."""
    return (out.argmax(1) != y) | ~torch.isfinite(out).all(1)


def _project(x_adv: torch.Tensor, x: torch.Tensor, eps: float) -> torch.Tensor:
    """Keep the threat model exact (guards against float drift in an attack): |d|_inf <= eps, [0,1]."""
    x_adv = torch.where(torch.isnan(x_adv), x, x_adv.detach())
    return torch.min(torch.max(x_adv, x - eps), x + eps).clamp(0.0, 1.0)


def _reseed(atk, seed: int) -> None:
    """Seed a suite attack (a seeded object) for its next call; deterministic given ``seed``."""
    if hasattr(atk, "reseed"):
        atk.reseed(seed)


def _default_factory() -> AttackFactory:
    from ..attacks.suite import make_attack

    return make_attack


def arithmetic_of(rt: Runtime) -> str:
    """What arithmetic a runtime really executes (its own ``arithmetic`` when it has one)."""
    own = getattr(rt, "arithmetic", None)
    if isinstance(own, str) and own:
        return own
    return f"{rt.precision} ({rt.name})"


def surrogate_for(rt: Runtime) -> Tuple[Optional[nn.Module], str]:
    """``(differentiable module, description)`` of an artifact's own graph, or ``(None, why not)``."""
    from ..errors import UserError

    path = getattr(rt, "surrogate_path", None) or rt.path
    if not path or not str(path).lower().endswith(".onnx"):
        model = getattr(rt, "model", None)
        if isinstance(model, nn.Module):
            return model, "PGD-CE + PGD-margin on the module itself"
        return None, "unavailable: no ONNX graph to differentiate (give the engine's card extra.source_onnx)"
    from ..runtimes.onnx_torch import differentiable_graph

    try:
        mod = differentiable_graph(path)
    except UserError as e:
        return None, f"unavailable: {e}"
    how = {"int8": "fake-quant Q/DQ with straight-through rounding",
           "fp16": "fp16 emulated: every fp16 op output rounded, identity-gradient casts"}.get(rt.precision,
                                                                                              "fp32 graph")
    return mod, f"PGD-CE + PGD-margin on the onnx2torch graph ({how})"


def verify_robustness(reference: nn.Module, artifacts: Sequence[Tuple[str, Runtime]],
                      batches: Iterable[Tuple[torch.Tensor, torch.Tensor, torch.Tensor]], cfg: VerifyConfig, *,
                      num_classes: int, device: torch.device = torch.device("cpu"),
                      attack_factory: Optional[AttackFactory] = None, reference_name: str = "torch",
                      reference_path: Optional[str] = None,
                      progress: Optional[Callable[[int, Dict[str, float]], None]] = None,
                      surrogates: Optional[Dict[str, Optional[nn.Module]]] = None) -> VerifyResult:
    """Run the cascade; returns per-sample flags, parity tables and timings (see the module docstring).

    ``artifacts``: ``(display name, Runtime)`` pairs (opened here if needed, closed on return when
    opened here). ``attack_factory(name, model, eps, *, num_classes, seed) -> attack(x, y)`` defaults
    to the evaluation suite. ``surrogates`` maps an artifact name to its differentiable graph for the
    own-graph stage (``None``: skip it for that artifact); missing names are built by :func:`surrogate_for`.
    The global torch RNG is left as it was.
    """
    factory = attack_factory or _default_factory()
    reference = reference.to(device).eval()
    for p in reference.parameters():
        p.requires_grad_(False)
    t_all = time.perf_counter()
    stages = cfg.stages
    own_stage = stages.index("own-graph") if "own-graph" in stages else None
    sq_stage = stages.index("square") if "square" in stages else None
    with ExitStack() as stack, torch.random.fork_rng(devices=[device.index or 0] if device.type == "cuda" else []):
        torch.manual_seed(cfg.seed)
        mods: List[nn.Module] = [reference]
        results = [ModelResult(reference_name, "reference", "torch", "fp32", reference_path,
                               np.zeros(0, np.int16), arithmetic="fp32 (torch reference)")]
        surs: List[Optional[nn.Module]] = [reference]
        results[0].own_graph = "PGD-CE + PGD-margin on the reference itself" if own_stage else "off"
        for name, rt in artifacts:
            if not rt._open:
                stack.enter_context(rt)
            mods.append(RuntimeModule(rt, device))
            label = rt.describe().split(" (")[0]  # e.g. onnxruntime[cpu]:int8 (the path has its own field)
            if getattr(rt, "shifted_nodes", 0):  # say so when ORT CPU ran the exact uint8 form of the graph
                label += " (exact uint8 rewrite)"
            r = ModelResult(name, "artifact", label, rt.precision, rt.path, np.zeros(0, np.int16),
                            parity=ParityTable(), arithmetic=arithmetic_of(rt))
            sur: Optional[nn.Module] = None
            if own_stage is not None:
                if surrogates is not None and name in surrogates:
                    sur = surrogates[name]
                    r.own_graph = "given surrogate" if sur is not None else "unavailable: none given"
                else:
                    sur, r.own_graph = surrogate_for(rt)
                if sur is not None:
                    sur = sur.to(device).eval()
            surs.append(sur)
            results.append(r)
        white = [(a, factory(a, reference, cfg.eps, num_classes=num_classes, seed=cfg.seed)) for a in cfg.attacks]
        sweep = [(m, factory(cfg.sweep_attack, reference, cfg.eps * m, num_classes=num_classes, seed=cfg.seed))
                 for m in cfg.eps_sweep]
        seconds: Dict[str, float] = {"craft": 0.0, "replay": 0.0, "own_graph": 0.0, "query": 0.0, "sweep": 0.0}
        broken: List[List[np.ndarray]] = [[] for _ in mods]
        all_idx, all_y = [], []
        done = 0
        for b, (x, y, idx) in enumerate(batches):
            x, y = x.to(device, torch.float32), y.to(device)
            idx_np = np.asarray(idx.cpu() if isinstance(idx, torch.Tensor) else idx)
            if b == 0:
                for r, m in zip(results, mods):
                    r.probe = preflight_probe(m, x[: min(len(x), 32)])
            bk = [torch.full((len(x),), ROBUST, dtype=torch.int16, device=device) for _ in mods]

            def mark(k: int, rows: torch.Tensor, wrong: torch.Tensor, stage: int) -> None:
                hit = rows[wrong & (bk[k][rows] == ROBUST)]
                bk[k][hit] = stage

            # 1. clean: identical cached inputs to every model (parity set "clean")
            t0 = time.perf_counter()
            ref_clean = _logits(reference, x)
            everyone = torch.arange(len(x), device=device)
            mark(0, everyone, _wrong(ref_clean, y), 0)
            for k in range(1, len(mods)):
                out = _logits(mods[k], x)
                results[k].parity.update("clean", ref_clean, out)
                mark(k, everyone, _wrong(out, y), 0)
            seconds["replay"] += time.perf_counter() - t0

            # 2. transfer: crafted on the reference, first for the samples the reference still holds (its own
            #    stream), then for those only some artifact still holds (a separate stream); replayed on all
            for s, (aname, atk) in enumerate(white, start=1):
                ref_rows = (bk[0] == ROBUST).nonzero().flatten()
                if len(mods) > 1:
                    art_alive = torch.stack([v == ROBUST for v in bk[1:]]).any(0)
                    extra_rows = (art_alive & (bk[0] != ROBUST)).nonzero().flatten()
                else:
                    extra_rows = ref_rows[:0]
                for rows, stream in ((ref_rows, "reference"), (extra_rows, "artifacts")):
                    if len(rows) == 0:
                        continue
                    _reseed(atk, stream_seed(cfg.seed, b, aname, stream))
                    t0 = time.perf_counter()
                    xs, ys = x[rows], y[rows]
                    xa = _project(atk(xs, ys), xs, cfg.eps)
                    seconds["craft"] += time.perf_counter() - t0
                    t0 = time.perf_counter()
                    ref_adv = _logits(reference, xa)
                    if stream == "reference":
                        mark(0, rows, _wrong(ref_adv, ys), s)
                    for k in range(1, len(mods)):
                        out = _logits(mods[k], xa)
                        results[k].parity.update(aname, ref_adv, out)
                        mark(k, rows, _wrong(out, ys), s)
                    seconds["replay"] += time.perf_counter() - t0

            # 3. own graph: white-box on each model's own differentiable graph, judged on its real runtime
            if own_stage is not None:
                for k, m in enumerate(mods):
                    rows = (bk[k] == ROBUST).nonzero().flatten()
                    if len(rows) == 0 or surs[k] is None:
                        continue
                    t0 = time.perf_counter()
                    xs, ys = x[rows], y[rows]
                    st = results[k].info.setdefault("own_graph_stats", {})
                    xa = _project(own_graph_attack(surs[k], xs, ys, idx_np[rows.cpu().numpy()].tolist(), cfg.eps,
                                                   cfg.seed, cfg.own_graph_steps, stats=st), xs, cfg.eps)
                    out = _logits(m, xa)
                    if k > 0:
                        results[k].parity.update("own-graph", _logits(reference, xa), out)
                    mark(k, rows, _wrong(out, ys), own_stage)
                    dt = time.perf_counter() - t0
                    seconds["own_graph"] += dt
                    results[k].seconds["own_graph"] = results[k].seconds.get("own_graph", 0.0) + dt

            # 4. query: Square against each model itself, from the samples still robust for that model
            if sq_stage is not None:
                for k, m in enumerate(mods):
                    rows = (bk[k] == ROBUST).nonzero().flatten()
                    if len(rows) == 0:
                        continue
                    t0 = time.perf_counter()
                    q0 = m.queries if isinstance(m, RuntimeModule) else 0
                    # One query stream for every model: a faithful artifact sees exactly the reference's queries.
                    sq = factory("square", m, cfg.eps, num_classes=num_classes,
                                 seed=stream_seed(cfg.seed, b, "square", "self"),
                                 n_queries=cfg.square_queries, n_restarts=cfg.square_restarts)
                    xa = _project(sq(x[rows], y[rows]), x[rows], cfg.eps)
                    mark(k, rows, _wrong(_logits(m, xa), y[rows]), sq_stage)
                    if isinstance(m, RuntimeModule):
                        results[k].queries += m.queries - q0
                    dt = time.perf_counter() - t0
                    seconds["query"] += dt
                    results[k].seconds["square"] = results[k].seconds.get("square", 0.0) + dt

            # 5. eps sweep: transfer PGD at eps * m on the whole batch (not part of the cascade)
            for mult, atk in sweep:
                _reseed(atk, stream_seed(cfg.seed, b, f"sweep-{mult:g}", "reference"))
                t0 = time.perf_counter()
                xa = _project(atk(x, y), x, cfg.eps * mult)
                for k, m in enumerate(mods):
                    results[k].sweep_correct[mult] = (results[k].sweep_correct.get(mult, 0)
                                                      + int((~_wrong(_logits(m, xa), y)).sum()))
                seconds["sweep"] += time.perf_counter() - t0

            for k in range(len(mods)):
                broken[k].append(bk[k].cpu().numpy())
            all_idx.append(idx_np)
            all_y.append(y.cpu().numpy())
            done += len(x)
            if progress is not None:
                progress(done, {r.name: 100.0 * float(sum((v == ROBUST).sum() for v in broken[k])) / done
                                for k, r in enumerate(results)})
    for k, r in enumerate(results):
        r.broken_at = np.concatenate(broken[k]) if broken[k] else np.zeros(0, np.int16)
    seconds["total"] = time.perf_counter() - t_all
    return VerifyResult(cfg, np.concatenate(all_idx) if all_idx else np.zeros(0, np.int64),
                        np.concatenate(all_y) if all_y else np.zeros(0, np.int64), results[0], results[1:], seconds)


__all__ = ["VerifyConfig", "VerifyResult", "ModelResult", "verify_robustness", "surrogate_for", "arithmetic_of",
           "ROBUST"]
