"""Streaming, seeded robustness evaluation of a differentiable model (clean, FGSM, PGD-20, CW-inf, AutoAttack).

Protocol (RobustBench / AutoAttack): a sample counts as robust under an attack only if it is classified
correctly clean *and* on the attack's output, so every attack runs only on the clean-correct samples;
``aa`` is the per-sample AutoAttack cascade (:mod:`.attacks.cascade`); the *worst case* is robust under
every attack that ran. Adversarial examples are projected into ``[x-eps, x+eps] ∩ [0,1]`` before they are
judged (violations are reported by the ``adv_in_bounds`` check). Memory is bounded by the batch size: the
data are iterated batch by batch and only one bool per sample and attack is kept. Results are
deterministic given ``seed`` (and the batch size): each (batch, attack) call gets its own derived seed.

Every result records its provenance (:mod:`.provenance`), so the number can be reproduced from the JSON
alone: software versions, a content hash of the exact examples evaluated, the seed scheme, the model's
normalisation and where it came from, and every attack's full settings (including the constructor
arguments of each torchattacks object, AA components too). The sanity checks
(:mod:`.evaluate_checks`) accumulate over all evaluated examples, not just the first batch.

Inputs: ``model`` maps float (B, C, H, W) in [0,1] to logits (B, K); ``data`` yields ``(x, y)`` or
``(x, y, idx)`` batches (e.g. a :class:`~infoard_deploy.data.BatchLoader`).
"""
from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass, field
from typing import Any, Dict, Iterable, Iterator, List, Optional, Sequence, Union

import numpy as np
import torch
from torch import nn

from .attacks import ATTACKS
from .attacks.cascade import AutoAttackCascade
from .attacks.suite import AA_COMPONENTS, make_attack, project_into_ball
from .errors import UserError
from .evaluation_checks import (BoundsTracker, Check, DeterminismCheck, GradientCheck, ProbabilityCheck,
                              black_box_check, square_and_white_flags)
from .provenance import (DataFingerprint, batch_seed, resolve_normalisation, runtime_record, seed_scheme,
                         software_versions)

SCHEMA = "infoard-deploy.evaluate/1"


@dataclass
class AttackResult:
    """One attack over the evaluated set: ``robust`` (n,) bool per sample; ``attacked`` = samples attacked."""

    name: str
    robust: np.ndarray
    settings: Dict[str, Any]
    white_box: bool
    seconds: float = 0.0
    attacked: int = 0

    @property
    def robust_acc(self) -> float:
        return float(self.robust.mean()) if len(self.robust) else 0.0


@dataclass
class EvalResult:
    """Per-attack robust accuracy (fractions in [0,1] here, percent in :meth:`to_json`), per-sample flags, checks.

    ``aa_broken_by`` (n,) int8 when ``aa`` ran: -1 robust, 0 misclassified clean, k >= 1 broken first by
    ``aa_components[k-1]``. ``provenance``: software, data fingerprint, seed scheme, normalisation, runtime
    (see :mod:`.provenance`); ``notes``: warnings about the run itself (e.g. assumed normalisation), which
    :attr:`warnings` lists ahead of the failed warning-level checks.
    """

    eps: float
    seed: int
    num_classes: int
    attacks: Dict[str, AttackResult]
    worst_case: np.ndarray
    checks: Dict[str, Check]
    seconds: float
    device: str
    aa_broken_by: Optional[np.ndarray] = None
    aa_components: List[Dict[str, Any]] = field(default_factory=list)
    architecture: Optional[str] = None
    dataset: Optional[str] = None
    split: Optional[str] = None
    extra: Dict[str, Any] = field(default_factory=dict)
    provenance: Dict[str, Any] = field(default_factory=dict)
    notes: List[str] = field(default_factory=list)

    @property
    def n_examples(self) -> int:
        return int(len(self.worst_case))

    @property
    def clean(self) -> np.ndarray:
        return self.attacks["clean"].robust

    def robust_acc(self, name: str) -> float:
        return self.attacks[str(name).lower()].robust_acc

    @property
    def worst_case_acc(self) -> float:
        return float(self.worst_case.mean()) if len(self.worst_case) else 0.0

    @property
    def errors(self) -> List[str]:
        return [k for k, c in self.checks.items() if c.status == "error"]

    @property
    def warned_checks(self) -> List[str]:
        """Names of the warning-level checks that fired."""
        return [k for k, c in self.checks.items() if c.status == "warn"]

    @property
    def warnings(self) -> List[str]:
        """Human-readable warnings: the run's :attr:`notes`, then ``"<check>: <message>"`` per fired check."""
        return list(self.notes) + [f"{k}: {self.checks[k].message}" for k in self.warned_checks]

    def to_json(self, per_sample: bool = True) -> Dict[str, Any]:
        """RobustBench-style report; accuracies in percent. Per-sample flags as '0'/'1' strings.

        ``provenance`` (software, data hash, seed scheme, normalisation, runtime), ``attack_settings`` (each
        attack's settings and torchattacks constructor arguments), ``warnings`` (messages), ``warned_checks``
        and ``errors`` (check names) make the report self-describing.
        """
        pct = lambda v: round(100.0 * v, 4)  # noqa: E731
        out: Dict[str, Any] = {
            "schema": SCHEMA, "threat_model": "Linf", "eps": self.eps, "eps_255": round(self.eps * 255, 4),
            "architecture": self.architecture, "dataset": self.dataset, "split": self.split,
            "n_examples": self.n_examples, "seed": self.seed, "num_classes": self.num_classes, "device": self.device,
            "units": "percent", "clean_acc": pct(self.robust_acc("clean")),
        }
        if "aa" in self.attacks:
            out["AA"] = pct(self.robust_acc("aa"))
        out["robust_acc"] = {k: pct(a.robust_acc) for k, a in self.attacks.items() if k != "clean"}
        out["worst_case_acc"] = pct(self.worst_case_acc)
        out["attack_settings"] = {k: a.settings for k, a in self.attacks.items()}
        out["timings"] = {k: {"seconds": round(a.seconds, 4), "attacked": a.attacked,
                              "examples_per_s": round(a.attacked / a.seconds, 3) if a.seconds > 0 else None}
                          for k, a in self.attacks.items()}
        out["timings"]["total"] = {"seconds": round(self.seconds, 4), "examples": self.n_examples,
                                   "examples_per_s": round(self.n_examples / self.seconds, 3) if self.seconds else None}
        if self.aa_components:
            out["aa_cascade"] = [{**c, "robust_acc_after": pct(c["robust_acc_after"])} for c in self.aa_components]
        out["checks"] = {k: c.to_json() for k, c in self.checks.items()}
        out["warnings"], out["warned_checks"], out["errors"] = self.warnings, self.warned_checks, self.errors
        out["provenance"] = self.provenance
        if per_sample:
            bits = lambda a: "".join("1" if v else "0" for v in a)  # noqa: E731
            ps: Dict[str, Any] = {"robust": {k: bits(a.robust) for k, a in self.attacks.items()},
                                  "worst_case": bits(self.worst_case)}
            if self.aa_broken_by is not None:
                ps["aa_broken_by"] = "".join("-" if v < 0 else str(int(v)) for v in self.aa_broken_by)
            out["per_sample"] = ps
        out.update(self.extra)
        return out


def resolve_attacks(attacks: Union[str, Sequence[str]]) -> List[str]:
    """``"clean,pgd20,aa"`` or a list -> registry names, de-duplicated, ``clean`` first (always evaluated)."""
    items = [a for a in (attacks.split(",") if isinstance(attacks, str) else attacks)]
    names: List[str] = ["clean"]
    for a in items:
        a = str(a).strip().lower().replace("_", "-")
        if not a:
            continue
        ATTACKS.get(a)  # unknown -> UserError with "did you mean"
        if a not in names:
            names.append(a)
    return names


@contextlib.contextmanager
def _frozen_eval(model: nn.Module) -> Iterator[None]:
    """Eval mode and no parameter gradients (attacks differentiate w.r.t. the input only; FAB calls
    ``backward()``, which would otherwise accumulate into ``.grad``); both restored afterwards."""
    was_training = model.training
    flags = [(p, p.requires_grad) for p in model.parameters()]
    for p, _ in flags:
        p.requires_grad_(False)
    model.eval()
    try:
        yield
    finally:
        for p, r in flags:
            p.requires_grad_(r)
        model.train(was_training)


_batch_seed = batch_seed  # the per-(batch, attack) seed; documented by provenance.seed_scheme("evaluate")


def _progress(progress: Any, total: Optional[int]):
    if not progress:
        return None
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    console = progress if isinstance(progress, Console) else Console(stderr=True)
    p = Progress(TextColumn("{task.description}"), BarColumn(bar_width=16), MofNCompleteColumn(), TimeElapsedColumn(),
                 TextColumn("{task.fields[accs]}"), console=console)
    return p


def _check_batch(x: torch.Tensor, y: torch.Tensor) -> None:
    if x.dim() != 4 or y.dim() != 1 or x.shape[0] != y.shape[0]:
        raise UserError(f"batches must be x (B, C, H, W) and y (B,), got {tuple(x.shape)} and {tuple(y.shape)}")
    if not torch.is_floating_point(x):
        raise UserError(f"inputs must be float in [0,1], got {x.dtype}")
    if x.numel() and (float(x.min()) < 0.0 or float(x.max()) > 1.0):
        raise UserError("inputs must lie in [0,1] (normalisation lives inside the model)")


def _build(names: List[str], model: nn.Module, eps: float, k: int, seed: int, overrides: Dict[str, Dict[str, Any]]):
    built = {}
    for name in names[1:]:
        if name == "aa":
            over = {c.replace("-", "_"): dict(overrides[c]) for c in AA_COMPONENTS if c in overrides}
            for c, v in overrides.get("aa", {}).items():  # explicit aa.<component> settings win
                over.setdefault(c.replace("-", "_"), {}).update(v)
            built[name] = make_attack("aa", model, eps, num_classes=k, seed=seed, **over)
        else:
            built[name] = make_attack(name, model, eps, num_classes=k, seed=seed, **overrides.get(name, {}))
    return built


def evaluate_model(model: nn.Module, data: Iterable, eps: float, attacks: Union[str, Sequence[str]],
                   n: Optional[int] = None, num_classes: Optional[int] = None, seed: int = 0,
                   device: Union[str, torch.device] = "cpu", progress: Any = True, *,
                   overrides: Optional[Dict[str, Dict[str, Any]]] = None, architecture: Optional[str] = None,
                   dataset: Optional[str] = None, split: Optional[str] = None, square_alpha: float = 0.002,
                   tol: float = 1e-6, normalisation: Optional[Dict[str, Any]] = None,
                   warnings: Sequence[str] = ()) -> EvalResult:
    """Evaluate ``model`` under ``attacks`` at L-inf radius ``eps`` on the first ``n`` samples of ``data``.

    ``overrides``: per-attack settings, e.g. ``{"square": {"n_queries": 200}}`` (component settings also
    apply inside ``aa``). ``progress``: True, False or a rich Console. The model is moved to ``device``;
    its train/eval mode and ``requires_grad`` flags are restored afterwards.

    ``normalisation``: what the loader knows, ``{"mean": [...], "std": [...], "source": "card" | "flag" |
    "file" | "architecture" | "assumed"}`` (recorded in ``provenance``; ``assumed`` or a missing source adds a
    warning; mean/std default to the model's own ``Normalized`` layer, and a mismatch with it warns).
    ``warnings``: the caller's messages, copied into the report's ``warnings``.
    """
    eps = float(eps)
    if not 0.0 < eps <= 1.0:
        raise UserError(f"eps must lie in (0, 1], got {eps}")
    if n is not None and int(n) <= 0:
        raise UserError(f"n must be a positive number of examples, got {n}")
    names = resolve_attacks(attacks)
    overrides = {str(k).strip().lower().replace("_", "-"): dict(v) for k, v in (overrides or {}).items()}
    for k in overrides:
        if k != "aa" and k not in ATTACKS:
            raise UserError(ATTACKS.unknown_message(k))
    dev = torch.device(device)
    model = model.to(dev)
    notes = [str(w) for w in warnings]
    try:
        norm = resolve_normalisation(model, normalisation, notes)
    except ValueError as e:
        raise UserError(str(e)) from None
    flags: Dict[str, List[np.ndarray]] = {k: [] for k in names}
    secs = {k: 0.0 for k in names}
    attacked = {k: 0 for k in names}
    aa_by: List[np.ndarray] = []
    aa_secs: Dict[str, float] = {}
    aa_att: Dict[str, int] = {}
    checks: Dict[str, Check] = {}
    probs, bounds, det, grads = ProbabilityCheck(), BoundsTracker(tol), DeterminismCheck(), GradientCheck()
    fingerprint, batch_sizes = DataFingerprint(), []
    built: Dict[str, Any] = {}
    k = num_classes
    total = int(n) if n is not None else None
    if hasattr(data, "indices"):
        total = min(total or len(data.indices), len(data.indices))
    seen, t_start = 0, time.perf_counter()
    bar = _progress(progress, total)
    with _frozen_eval(model), (bar or contextlib.nullcontext()):
        task = bar.add_task("evaluating", total=total, accs="") if bar else None
        for b, batch in enumerate(data):
            if not isinstance(batch, (tuple, list)) or len(batch) < 2:
                raise UserError("data must yield (x, y) or (x, y, idx) batches")
            x, y = torch.as_tensor(batch[0]), torch.as_tensor(batch[1])
            if n is not None:
                x, y = x[: int(n) - seen], y[: int(n) - seen]
            if x.shape[0] == 0:
                break
            _check_batch(x, y)
            idx = batch[2][: x.shape[0]] if len(batch) > 2 else None
            fingerprint.update(x.to(torch.float32), y.to(torch.int64), idx)  # the examples exactly as evaluated
            batch_sizes.append(int(x.shape[0]))
            x, y = x.to(dev, torch.float32), y.to(dev, torch.int64)
            t0 = time.perf_counter()
            with torch.no_grad():
                logits = model(x)
            if not isinstance(logits, torch.Tensor) or logits.dim() != 2 or logits.shape[0] != x.shape[0]:
                raise UserError(f"the model must return logits (B, K); got {getattr(logits, 'shape', type(logits))}")
            if k is None:
                k = int(logits.shape[1])
            if logits.shape[1] != k:
                raise UserError(f"the model returns {logits.shape[1]} classes but num_classes is {k}")
            if int(y.min()) < 0 or int(y.max()) >= k:
                raise UserError(f"labels must lie in [0, {k - 1}]; found {int(y.min())}..{int(y.max())}")
            if b == 0:
                built = _build(names, model, eps, k, seed, overrides)
            ok = logits.argmax(1) == y
            flags["clean"].append(ok.cpu().numpy())
            secs["clean"] += time.perf_counter() - t0
            attacked["clean"] += int(x.shape[0])
            probs.update(logits)  # the checks see every batch
            det.update(model, x, logits)
            grads.update(model, x, y)
            for i, name in enumerate(names[1:], start=1):
                atk = built[name]
                atk.reseed(_batch_seed(seed, b, i))
                robust, idx = ok.clone(), ok.nonzero().flatten()
                t0 = time.perf_counter()
                if bar:
                    bar.update(task, description=f"batch {b + 1} · {name}")
                if isinstance(atk, AutoAttackCascade):
                    by = torch.where(ok, -1, 0).to(torch.int8)
                    if idx.numel():
                        out = atk.run(x[idx], y[idx])
                        robust[idx], by[idx] = out.robust, out.broken_by
                        for j, c in enumerate(out.names):
                            aa_secs[c] = aa_secs.get(c, 0.0) + out.seconds[j]
                            aa_att[c] = aa_att.get(c, 0) + out.attacked[j]
                            bounds.update_counts(f"aa/{c}", out.linf_excess[j], out.range_excess[j],
                                                 out.violations[j], out.attacked[j])
                    aa_by.append(by.cpu().numpy())
                elif idx.numel():
                    xs, ys = x[idx], y[idx]
                    try:
                        adv = atk(xs, ys)
                    except RuntimeError as e:
                        if "does not require grad" in str(e):
                            raise UserError(f"attack '{name}' needs input gradients but the model is not "
                                            "differentiable; use square") from None
                        raise
                    valid, linf, rng = project_into_ball(xs, adv, eps)
                    bounds.update(name, linf, rng)
                    with torch.no_grad():
                        robust[idx] = model(valid).argmax(1) == ys
                flags[name].append(robust.cpu().numpy())
                secs[name] += time.perf_counter() - t0
                attacked[name] += int(idx.numel())
                if bar:
                    accs = " · ".join(f"{a} {100 * np.concatenate(flags[a]).mean():.1f}%" for a in names if flags[a])
                    bar.update(task, accs=accs)
            seen += int(x.shape[0])
            if bar:
                bar.update(task, advance=int(x.shape[0]))
            if n is not None and seen >= int(n):
                break
    if seen == 0:
        raise UserError("no examples to evaluate (empty data)")
    results = {}
    for name in names:
        atk = built.get(name)
        settings = atk.describe() if atk is not None else {}
        wb = bool(ATTACKS.meta(name).get("white_box", True)) and name not in ("clean", "aa")
        results[name] = AttackResult(name, np.concatenate(flags[name]), settings, wb, secs[name], attacked[name])
    worst = np.logical_and.reduce([r.robust for r in results.values()])
    res = EvalResult(eps, int(seed), int(k), results, worst, checks, time.perf_counter() - t_start, str(dev),
                     architecture=architecture, dataset=dataset, split=split, notes=notes)
    res.provenance = {
        "software": software_versions(),
        "data": {"name": dataset, "split": split, **fingerprint.to_json()},
        "seed_scheme": seed_scheme("evaluate", seed=seed, attacks=names, batch_size=batch_sizes[0],
                                   batches=len(batch_sizes)),
        "normalisation": norm,
        "runtime": runtime_record(dev),
    }
    if aa_by:
        res.aa_broken_by = np.concatenate(aa_by)
        comps = built["aa"].names
        for j, c in enumerate(comps, start=1):
            after = res.aa_broken_by == -1
            after |= res.aa_broken_by > j  # still unbroken right after component j
            res.aa_components.append({"attack": c, "broken": int(np.sum(res.aa_broken_by == j)),
                                      "attacked": aa_att.get(c, 0), "seconds": round(aa_secs.get(c, 0.0), 4),
                                      "robust_acc_after": float(after.mean())})
    checks["deterministic_eval"], checks["nonzero_input_gradients"] = det.result(), grads.result()
    _finish_checks(res, probs, bounds, square_alpha)
    return res


def _finish_checks(res: EvalResult, probs: ProbabilityCheck, bounds: BoundsTracker, alpha: float) -> None:
    """Add the checks that need the whole run: probabilities, bounds, black box vs white box."""
    flags = {k: (a.robust, a.white_box) for k, a in res.attacks.items()}
    square_broken, white = square_and_white_flags(res.clean, flags, res.aa_broken_by,
                                                  [c["attack"] for c in res.aa_components])
    res.checks["logits_not_probabilities"] = probs.result()
    res.checks["adv_in_bounds"] = bounds.result()
    res.checks["black_box_beats_white_box"] = black_box_check(square_broken, white, alpha)
    order = ["logits_not_probabilities", "deterministic_eval", "nonzero_input_gradients", "adv_in_bounds",
             "black_box_beats_white_box"]
    res.checks = {k: res.checks[k] for k in order if k in res.checks}
