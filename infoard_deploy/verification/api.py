"""One call from files to a written report: ``run_verification(...)`` (what ``infoard-deploy verify`` runs).

Every input is validated before any attack runs (one-line :class:`UserError` on bad usage): the
reference loads, the data matches its input shape and class count, every artifact has a model card
(or ``allow_cardless``), opens and returns (N, K) outputs for the reference's input shape, attack names
exist in the suite and are white-box, the output folder holds no earlier report unless ``force``. Then
:func:`verify_robustness` streams the first ``n`` test examples in batches, checks and gates are evaluated
(bounds per artifact from its card / precision, :mod:`.bounds`), each failed artifact gets its likely
cause (:mod:`.diagnose`), the report is written (complete or not at all, :mod:`.report`), and a failed
gate raises :class:`GateFailure` (after the report is on disk).

fp16 artifacts that would run on ONNX Runtime's CPU provider run op by op in torch float16 instead
(``fp16_cpu="torch"``, the default): ORT CPU computes fp16 Conv/Gemm in fp32 and would hide fp16 overflow.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from torch import nn

from ..errors import GateFailure, UserError
from ..utils import require_file, sha256_file
from .bounds import resolve_bounds
from .checks import run_checks
from .diagnose import diagnose_all
from .gate import GateConfig, evaluate_gates, summary_line
from .provenance import artifact_provenance
from .report import build_report, check_out_dir, clear_old_report, write_report
from .robust import AttackFactory, VerifyConfig, VerifyResult, verify_robustness

# Not usable as transfer attacks here: 'square' runs on every artifact itself (--square-queries);
# 'aa' already contains Square; 'clean' is always measured.
_NOT_TRANSFER = {"clean": "clean accuracy is always measured",
                 "square": "Square runs against every artifact itself; set its budget with --square-queries",
                 "aa": "use its white-box components (apgd-ce,apgd-t,fab-t); Square runs on every artifact"}


def check_attacks(names: Sequence[str]) -> Tuple[str, ...]:
    """Validate transfer-attack names against the suite's registry (unknown -> 'did you mean')."""
    from ..attacks import ATTACKS

    out = []
    for n in names:
        key = str(n).strip().lower()
        ATTACKS.get(key)  # unknown name -> UserError with suggestions
        if key in _NOT_TRANSFER:
            raise UserError(f"--attacks: '{key}' cannot be a transfer attack: {_NOT_TRANSFER[key]}")
        if key not in out:
            out.append(key)
    return tuple(out)


def check_sweep(eps: float, sweep: Sequence[float]) -> Tuple[float, ...]:
    for m in sweep:
        if not m > 0:
            raise UserError(f"--eps-sweep multiples must be positive, got {m:g}")
        if eps * m > 1.0:
            raise UserError(f"--eps-sweep {m:g} x eps {eps:.4g} exceeds 1 (pixels lie in [0,1])")
    return tuple(sorted(set(float(m) for m in sweep)))


def open_artifacts(paths: Sequence[Union[str, Path]], device: torch.device, input_shape: Sequence[int],
                   num_classes: int, batch_size: int, threads: int = 0,
                   fp16_cpu: str = "torch") -> List[Tuple[str, Any]]:
    """Open every artifact and probe it with a (2, C, H, W) batch; mismatches are UserErrors."""
    from ..runtimes.factory import open_runtime

    out: List[Tuple[str, Any]] = []
    seen: Dict[str, int] = {}
    try:
        for p in paths:
            path = require_file(p, "artifact")
            rt = open_runtime(path, device, max_batch=batch_size, threads=threads, fp16_cpu=fp16_cpu)
            out.append((path.name, rt))
            rt.open()
            probe = np.random.default_rng(0).random((2, *input_shape), dtype=np.float32)
            try:
                y = rt.predict(probe)
            except UserError:
                raise
            except Exception as e:
                raise UserError(f"{path.name} does not accept inputs of shape {tuple(probe.shape)} "
                                f"(the reference's): {str(e).splitlines()[0][:200]}") from None
            if y.ndim != 2 or y.shape != (2, num_classes):
                raise UserError(f"{path.name} returns {tuple(y.shape)} for 2 inputs; "
                                f"the reference has {num_classes} classes")
            seen[path.name] = seen.get(path.name, 0) + 1
            if seen[path.name] > 1:
                out[-1] = (f"{path.name}#{seen[path.name]}", rt)
    except BaseException:
        for _, rt in out:
            rt.close()
        raise
    return out


def run_verification(reference: Union[str, Path], artifacts: Sequence[Union[str, Path]], data: str, *,
                     data_dir: Optional[str] = None, eps: Optional[float] = None, n: int = 1000,
                     attacks: Sequence[str] = ("pgd20", "cw", "apgd-ce", "apgd-t"), square_queries: int = 1000,
                     eps_sweep: Sequence[float] = (0.5, 1.0, 1.5), gates: GateConfig = GateConfig(),
                     batch_size: int = 256, seed: int = 0, device: Union[str, torch.device] = "cpu",
                     out: Union[str, Path] = "verify_report", force: bool = False, masking_threshold: float = 1.0,
                     attack_factory: Optional[AttackFactory] = None, reference_model: Optional[nn.Module] = None,
                     progress: Optional[Callable[[int, Dict[str, float]], None]] = None,
                     raise_on_gate: bool = True, threads: int = 0, allow_cardless: bool = False,
                     fp16_cpu: str = "torch", own_graph_steps: int = 20,
                     reference_sha256: Optional[str] = None) -> Dict[str, Any]:
    """Verify ``artifacts`` against ``reference``; returns the report dict (also written to ``out``).

    ``reference_model`` replaces loading ``reference`` (library use: any differentiable module taking
    [0,1] inputs); its card is still read from ``reference``, and provenance is checked against the
    sha256 of the ``reference`` file (or ``reference_sha256`` when that file is not on disk). With
    ``raise_on_gate`` a failed gate raises :class:`GateFailure` after the report is written; otherwise
    check ``report["passed"]``. ``allow_cardless`` (or ``gates.allow_cardless``) verifies artifacts that
    have no model card, with a prominent warning; ``own_graph_steps=0`` turns the own-graph white-box
    attack off; ``fp16_cpu="ort"`` runs fp16 graphs on ONNX Runtime's CPU provider (fp32 arithmetic).
    """
    from ..data import BatchLoader, load_data

    if not artifacts:
        raise UserError("give at least one --artifact to verify")
    if n <= 0:
        raise UserError(f"--n must be positive, got {n}")
    if batch_size <= 0:
        raise UserError(f"--batch-size must be positive, got {batch_size}")
    if square_queries < 0:
        raise UserError(f"--square-queries must be >= 0 (0 disables the query attack), got {square_queries}")
    if not masking_threshold >= 0:
        raise UserError(f"--masking-threshold must be >= 0 percent, got {masking_threshold}")
    if own_graph_steps < 0:
        raise UserError(f"--own-graph-steps must be >= 0 (0 disables the own-graph attack), got {own_graph_steps}")
    if fp16_cpu not in ("torch", "ort"):
        raise UserError(f"--fp16-cpu must be 'torch' or 'ort', got '{fp16_cpu}'")
    allow_cardless = bool(allow_cardless or gates.allow_cardless)
    if allow_cardless and not gates.allow_cardless:
        from dataclasses import replace

        gates = replace(gates, allow_cardless=True)
    dev = torch.device(device)
    out = Path(out)
    check_out_dir(out, force)
    attacks = check_attacks(attacks) if attack_factory is None else tuple(a.strip().lower() for a in attacks)
    from ..runtimes.factory import runtime_kind

    for a in artifacts:
        runtime_kind(require_file(a, "artifact"))  # an unknown format is named before its missing card
    ref_path = Path(reference)
    ref_sha = sha256_file(ref_path) if ref_path.is_file() else reference_sha256
    provs = [artifact_provenance(Path(a), ref_sha, allow_cardless) for a in artifacts]
    if reference_model is None:
        from ..checkpoint import load_model_ex

        model, card, ref_info = load_model_ex(reference)
        norm_source, ref_warnings = ref_info.normalisation_source, list(ref_info.warnings)
    else:
        from ..card import load_card

        model, card = reference_model, load_card(reference, required=True)
        norm_source, ref_warnings = "card", []
    bundle = load_data(data, root=data_dir)
    if list(bundle.input_shape) != list(card.input_shape):
        raise UserError(f"data '{data}' has inputs {tuple(bundle.input_shape)} but the reference takes "
                        f"{tuple(card.input_shape)}")
    if bundle.num_classes != card.num_classes:
        raise UserError(f"data '{data}' has {bundle.num_classes} classes but the reference has {card.num_classes}")
    eps = eps if eps is not None else (card.eps or bundle.default_eps)
    if eps is None:
        raise UserError("no --eps given and none in the reference's card or the dataset's defaults")
    if not 0 < eps <= 1:
        raise UserError(f"--eps must lie in (0, 1], got {eps}")
    sweep = check_sweep(eps, eps_sweep)
    cfg = VerifyConfig(eps=float(eps), attacks=attacks, square_queries=int(square_queries), eps_sweep=sweep,
                       seed=int(seed), own_graph_steps=int(own_graph_steps))
    n_used = min(int(n), len(bundle.test))
    loader = BatchLoader(bundle.test, np.arange(n_used), batch_size=batch_size, shuffle=False)
    if threads < 0:
        raise UserError(f"--threads must be >= 0 (0: the runtimes' default), got {threads}")
    arts = open_artifacts(artifacts, dev, card.input_shape, card.num_classes, batch_size, threads, fp16_cpu)
    for (_, rt), prov in zip(arts, provs):
        src = prov.get("source_onnx")
        if src and not str(rt.path).lower().endswith(".onnx"):  # an engine: differentiate the graph it came from
            cand = Path(src) if Path(src).is_absolute() else Path(rt.path).parent / src
            rt.surrogate_path = str(cand) if cand.is_file() else None
    if force:
        clear_old_report(out)
    try:
        res: VerifyResult = verify_robustness(model, arts, loader, cfg, num_classes=card.num_classes, device=dev,
                                              attack_factory=attack_factory, reference_name="torch",
                                              reference_path=str(reference), progress=progress)
    finally:
        for _, rt in arts:
            rt.close()
    for a, prov in zip(res.artifacts, provs):
        a.info["provenance"] = prov
        profiles = prov.get("profiles") or []
        a.info["bounds"] = resolve_bounds(a.precision, prov.get("tolerances"), gates,
                                          profile_name="card:" + ",".join(profiles) if profiles else "card")
    checks = run_checks(res, masking_threshold=masking_threshold)
    gate_results = evaluate_gates(res, gates)
    causes = diagnose_all(res, gate_results)
    prov = _run_provenance(model, loader, cfg, card, norm_source, data, batch_size, ref_warnings)
    meta = {"data": data, "split": "test", "n_requested": int(n), "reference": str(reference),
            "reference_sha256": ref_sha, "device": str(dev), "batch_size": int(batch_size),
            "masking_threshold": masking_threshold, "fp16_cpu": fp16_cpu, "own_graph_steps": int(own_graph_steps),
            "gates": gates.to_dict()}
    rep = build_report(res, checks, gate_results, meta, causes)
    rep["provenance"] = prov
    rep["warnings"] = [f"reference: {w}" for w in ref_warnings] + list(rep["warnings"])
    rep["files"] = {k: str(v) for k, v in write_report(rep, out).items()}
    if raise_on_gate and not rep["passed"]:
        raise GateFailure(f"{summary_line(gate_results, causes)} (report: {out / 'report.md'})")
    return rep


def _run_provenance(model, loader, cfg: VerifyConfig, card, norm_source: str, data: str,
                    batch_size: int, warnings: List[str]) -> Dict[str, Any]:
    """Software versions, a content hash of the examples verified, the seed scheme, the reference's
    normalisation and the exact settings of every attack (as built for the reference)."""
    from ..attacks.suite import make_attack
    from ..provenance import DataFingerprint, normalisation_record, seed_scheme, software_versions

    fp = DataFingerprint()
    batches = 0
    for x, y, *_ in loader:
        fp.update(x, y)
        batches += 1
    settings: Dict[str, Any] = {}
    for name in (*cfg.attacks, *(("square",) if cfg.square_queries else ())):
        try:
            over = {"n_queries": cfg.square_queries} if name == "square" else {}
            settings[name] = make_attack(name, model, cfg.eps, num_classes=card.num_classes, seed=cfg.seed,
                                         **over).describe()
        except Exception:  # a custom attack factory's names: the config records them
            settings[name] = {"name": name}
    settings["own-graph"] = {"steps": cfg.own_graph_steps, "losses": ["ce", "margin"]}
    return {"software": software_versions(), "data": {"name": data, "split": "test", **fp.to_json()},
            "seed_scheme": seed_scheme("verify", seed=cfg.seed, attacks=list(cfg.attacks), batch_size=batch_size,
                                       batches=batches),
            "normalisation": normalisation_record(card.mean, card.std, norm_source,
                                                  warnings if norm_source == "assumed" and not warnings else None),
            "attack_settings": settings}


__all__ = ["run_verification", "check_attacks", "check_sweep", "open_artifacts"]
