"""``export_artifacts``: every file the requested profiles name, each checked right after it is made.

Order: fp32 ONNX (the base of everything; kept in a temporary folder when not requested) -> fp16
ONNX -> INT8 Q/DQ ONNX -> TensorRT engines. After each artifact: parity vs the fp32 torch model on
validation images (ONNX files on ONNX Runtime CPU, engines on TensorRT itself), then a model card
beside it with precision, calibration, parity figures, source checkpoint sha256, opset, I/O names
and batch range. A failed gate does not stop the run; the result lists every failure and the CLI
exits 1. Nothing is overwritten without ``force``; an output folder holding another model's
artifacts is named as such.

Crash safety: the output folder is locked for the whole export (:func:`infoard_deploy.runlock.run_lock`).
Each artifact is written under a hidden staging name (``.student.int8.onnx.partial``) and checked there;
only then is it renamed into place, and its card (staged too) renamed last. A run killed at any moment
therefore never leaves a final-named artifact that skipped its parity check; the staging files it
leaves are removed by the next export into that folder. With ``force`` the previous artifact stays in
place until its replacement has passed through all of this.
"""
from __future__ import annotations

import contextlib
import os
import re
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional

import numpy as np
import torch

from ..card import ModelCard, card_path_for, load_card, provenance
from ..errors import UserError
from ..runlock import run_lock
from ..utils import check_out_dir, ort_threads, sha256_file
from .checks import compare_logits, gate
from .data import load_export_images
from .onnx import check_onnx_file, export_onnx, io_info, slim_file, verify_file
from .profiles import DEFAULT_TOLERANCES, Profile
from .quantize import qdq_summary, quantize_int8, to_fp16

Log = Callable[[str], None]


@dataclass
class Artifact:
    kind: str  # onnx | engine
    precision: str
    path: Path
    profiles: List[Profile] = field(default_factory=list)
    requested: bool = True  # False: an intermediate kept in the temporary folder
    opset: int = 18


def _int8_key(p: Profile):
    return (p.calib_method, p.calib_n, p.per_channel, p.percentile, p.activations)


def plan(stem: str, profiles: List[Profile], out_dir: Path) -> List[Artifact]:
    """ONNX files per precision (shared by profiles that agree), one engine per TensorRT profile."""
    if not profiles:
        raise UserError("nothing to export: give --profile NAME or one of --fp32/--fp16/--int8/--trt")
    opsets = {p.opset for p in profiles}
    if len(opsets) > 1:
        raise UserError(f"the profiles ask for different opsets ({', '.join(map(str, sorted(opsets)))}); "
                        f"export them in separate runs")
    opset = opsets.pop()
    onnx_by_prec: Dict[str, Artifact] = {}
    engines: List[Artifact] = []
    for p in profiles:
        for prec in p.precisions:
            a = onnx_by_prec.setdefault(prec, Artifact("onnx", prec, out_dir / f"{stem}.{prec}.onnx", opset=opset))
            if prec == "int8" and a.profiles and _int8_key(a.profiles[0]) != _int8_key(p):
                raise UserError(f"profiles {a.profiles[0].name} and {p.name} ask for different INT8 calibration "
                                f"settings; align them with --calib-method/--calib-n or export separately")
            a.profiles.append(p)
            if p.runtime == "tensorrt":
                engines.append(Artifact("engine", prec, out_dir / f"{stem}.{p.name}.engine", [p], opset=opset))
    if "fp32" not in onnx_by_prec:
        onnx_by_prec["fp32"] = Artifact("onnx", "fp32", Path("fp32.onnx"), [], requested=False, opset=opset)
    names = [e.path.name for e in engines]
    if len(set(names)) != len(names):
        raise UserError("a TensorRT profile is listed twice")
    order = [onnx_by_prec[p] for p in ("fp32", "fp16", "int8") if p in onnx_by_prec]
    return order + engines


def check_outputs(arts: List[Artifact], source_sha: str, force: bool) -> None:
    """Refuse to overwrite any existing artifact or card without ``force``; name foreign artifacts."""
    for f in (f for a in arts if a.requested for f in (a.path, card_path_for(a.path))):
        if f.is_dir():  # even --force replaces files only, never a user's folder
            raise UserError(f"{f} is a folder where the export would write a file; move it or choose another --out")
    if force:
        return
    for a in (a for a in arts if a.requested):
        for f in (a.path, card_path_for(a.path)):
            if not f.exists():
                continue
            other = None
            try:
                c = load_card(f if f.name.endswith(".card.json") else a.path, required=False)
                other = (c.provenance or {}).get("source_sha256") if c else None
            except UserError:
                pass
            if other and other != source_sha:
                raise UserError(f"{f.parent} holds {f.name} exported from another model (source sha256 "
                                f"{other[:12]}... vs {source_sha[:12]}...); use --force to overwrite or another --out")
            raise UserError(f"{f} already exists; use --force to overwrite it or choose another --out")


def _reference_model(model_path: Path):
    from ..checkpoint import load_model

    try:
        card = load_card(model_path, required=True)
    except UserError as e:
        if "no model card" in str(e):
            raise UserError(f"export needs the model card beside {model_path.name} ({card_path_for(model_path).name}: "
                            f"architecture, input shape, mean/std, dataset); distill / train-teacher write it, and "
                            f"`infoard-deploy card {model_path.name} --dataset NAME [--mean ... --std ...]` writes "
                            f"one for a foreign file") from None
        raise
    model, card = load_model(model_path, card=card)
    return model.cpu().eval(), card


def _logits(fn, x: np.ndarray, bs: int = 256) -> np.ndarray:
    return np.concatenate([fn(x[i:i + bs]) for i in range(0, len(x), bs)]) if len(x) else np.zeros((0, 0))


def staging_path(final: Path) -> Path:
    """The hidden name an artifact is written and checked under before it is renamed to ``final``."""
    return final.with_name(f".{final.name}.partial")


def clear_staging(out_dir: Path, arts: List[Artifact]) -> List[Path]:
    """Remove staging / temporary files a killed export left for these artifacts; returns them.

    Only the exact hidden names this module and ``atomic_path`` derive from this export's artifact and
    card names are touched (``.NAME.partial``, ``..NAME.partial.XXXXXXXX.onnx``, ``.NAME.XXXXXXXX.tmp``),
    never a user's own ``.NAME.bak``. Call it holding the folder's run lock, so no live export's files go.
    """
    names = [n for a in arts if a.requested for n in (a.path.name, card_path_for(a.path).name)]
    alts = "|".join(re.escape(n) for n in names)
    pattern = re.compile(rf"^(?:\.(?:{alts})\.partial|\.{{1,2}}(?:{alts})(?:\.partial)?\.[A-Za-z0-9_]{{8}}"
                         rf"(?:\.onnx|\.engine|\.tmp))$")
    removed = []
    try:
        entries = list(os.scandir(out_dir))
    except OSError:
        return removed
    for e in entries:
        if names and pattern.match(e.name) and e.is_file(follow_symlinks=False):
            with contextlib.suppress(OSError):
                os.unlink(e.path)
                removed.append(Path(e.path))
    return removed


def export_artifacts(model_path: str | Path, profiles: List[Profile], out_dir: str | Path, *,
                     calib_data: Optional[str] = None, data_dir: Optional[str] = None, check_n: int = 1000,
                     val_fraction: float = 0.1, seed: int = 0, force: bool = False, slim: bool = False,
                     device: Optional[torch.device] = None, log: Log = lambda s: None) -> Dict[str, Any]:
    """Produce and check every artifact of ``profiles``; returns the result (see the CLI's ``--json``)."""
    model_path = Path(model_path)
    if not model_path.is_file():
        raise UserError(f"model file not found: {model_path}")
    out_dir = check_out_dir(out_dir, "--out")
    is_onnx = model_path.suffix.lower() == ".onnx"
    if is_onnx:
        check_onnx_file(model_path)  # custom-domain / malformed graphs fail before anything else
    model, card = _reference_model(model_path)
    sha = sha256_file(model_path)
    stem = model_path.stem
    arts = plan(stem, profiles, out_dir)
    with run_lock(out_dir, "export"):
        stale = clear_staging(out_dir, arts)
        if stale:
            log(f"removed {len(stale)} staging file(s) left by an interrupted export")
        check_outputs(arts, sha, force)
        return _export_locked(arts, model, card, model_path, sha, is_onnx, profiles, out_dir, calib_data,
                              data_dir, check_n, val_fraction, seed, slim, device, log)


def _export_locked(arts, model, card, model_path: Path, sha: str, is_onnx: bool, profiles, out_dir: Path,
                   calib_data, data_dir, check_n: int, val_fraction: float, seed: int, slim: bool, device,
                   log: Log) -> Dict[str, Any]:
    if any(a.kind == "engine" for a in arts):
        from .tensorrt import import_tensorrt

        import_tensorrt()  # fail fast, before writing anything, when TensorRT or the GPU is missing
    want_int8 = any(a.precision == "int8" for a in arts)
    int8_prof = next((p for a in arts if a.precision == "int8" for p in a.profiles), None)
    imgs = load_export_images(calib_data, card.dataset, data_dir, card.input_shape,
                              int8_prof.calib_n if int8_prof else 0, check_n, val_fraction, seed, want_int8)
    with torch.no_grad():
        ref = _logits(lambda v: model(torch.from_numpy(v)).numpy(), imgs.check_x)
    log(f"reference: {card.architecture} on {len(imgs.check_x)} images ({imgs.info.get('check_split')})")
    results: List[Dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="infoard-export-") as td:
        built: Dict[str, Path] = {}
        for a in arts:
            if not a.requested:
                a.path = Path(td) / f"{model_path.stem}.fp32.onnx"
            results.append(_make_one(a, model, card, model_path, sha, is_onnx, imgs, ref, built, slim, device, log))
    out = [r for r in results if not r.get("intermediate")]
    failures = [f"{Path(r['path']).name}: {f}" for r in results for f in r["failures"]]
    return {"model": str(model_path), "source_sha256": sha, "out_dir": str(out_dir),
            "profiles": [p.name for p in profiles], "data": imgs.info, "artifacts": out,
            "passed": not failures, "failures": failures}


@contextlib.contextmanager
def _staged(final: Path, requested: bool):
    """Yield the path to write ``final`` under; remove it on failure. Messages name ``final``, not the stage."""
    stage = staging_path(final) if requested else final
    try:
        yield stage
    except UserError as e:
        raise UserError(str(e).replace(stage.name, final.name)) from None
    finally:
        if requested and stage.exists():
            stage.unlink()


def _publish(stage: Path, final: Path, card: ModelCard) -> None:
    """Rename a checked artifact into place, then its card (written under a staging name first).

    The card goes last: a reader that sees a card sees the artifact it describes. A stale card of a
    replaced artifact (``force``) is removed first so it never sits beside the new file.
    """
    cpath = card_path_for(final)
    cstage = staging_path(cpath)
    card.save(cstage)
    try:
        with contextlib.suppress(FileNotFoundError):
            cpath.unlink()
        os.replace(stage, final)
        os.replace(cstage, cpath)
    finally:
        with contextlib.suppress(FileNotFoundError):
            cstage.unlink()


def _make_one(a: Artifact, model, card: ModelCard, model_path: Path, sha: str, is_onnx: bool, imgs, ref,
              built: Dict[str, Path], slim: bool, device, log: Log) -> Dict[str, Any]:
    with _staged(a.path, a.requested) as stage:
        return _make_staged(a, stage, model, card, model_path, sha, is_onnx, imgs, ref, built, slim, device, log)


def _make_staged(a: Artifact, stage: Path, model, card: ModelCard, model_path: Path, sha: str, is_onnx: bool,
                 imgs, ref, built: Dict[str, Path], slim: bool, device, log: Log) -> Dict[str, Any]:
    prof0 = a.profiles[0] if a.profiles else None
    extra: Dict[str, Any] = {}
    if a.kind == "onnx":
        if a.precision == "fp32":
            if is_onnx:
                if slim:
                    slim_file(model_path, stage)
                else:
                    shutil.copyfile(model_path, stage)
                verify_file(stage, name=a.path.name)
            else:
                export_onnx(model, stage, card.input_shape, opset=a.opset, slim=slim)
        elif a.precision == "fp16":
            to_fp16(built["fp32"], stage)
        else:
            quantize_int8(built["fp32"], stage, imgs.calib, prof0.calib_method, prof0.per_channel, prof0.percentile,
                          activations=prof0.activations)
            extra["calibration"] = {"method": prof0.calib_method, "n": int(len(imgs.calib)),
                                    "per_channel": prof0.per_channel, "source": imgs.info.get("calib_source"),
                                    "split": imgs.info.get("calib_split", "user file"),
                                    "activations": prof0.activations, "weights": "int8-symmetric"}
            extra["qdq"] = qdq_summary(stage)
        built[a.precision] = stage
        from ..runtimes.onnxrt import OrtRuntime

        with OrtRuntime(str(stage), providers=["CPUExecutionProvider"], precision=a.precision,
                        threads=ort_threads()) as rt:
            out = _logits(rt.predict, imgs.check_x)
        runtime = "ort-cpu"
        io = io_info(stage)
        extra.update({"opset": io["opset"], "input_names": io["input_names"], "output_names": io["output_names"],
                      "dynamic_batch": {"dynamic": io["dynamic_batch"], "smoke_tested": [1, 64] if io["dynamic_batch"] else [1]}})
    else:
        from ..runtimes.tensorrt_rt import TrtRuntime
        from .tensorrt import build_engine

        p = prof0
        log(f"building TensorRT engine {a.path.name} (batch {p.batch_min}/{p.batch_opt}/{p.batch_max}, "
            f"workspace {p.workspace_mb} MB)")
        facts = build_engine(built[a.precision], stage, card.input_shape, p.batch, p.workspace_mb, a.precision)
        dev = device if device is not None and device.type == "cuda" else torch.device("cuda")
        with TrtRuntime(str(stage), precision=a.precision, device=dev) as rt:
            out = _logits(rt.predict, imgs.check_x)
        runtime = "tensorrt"
        extra.update({"tensorrt": facts, "input_names": [facts["input_name"]],
                      "dynamic_batch": facts["batch"], "source_onnx": facts["source_onnx"]})
    parity = compare_logits(ref, out, imgs.check_y)
    fails: List[str] = []
    tols = {}
    for name, t in ([(p.name, p.tolerance(a.precision)) for p in a.profiles]
                    or [("default", DEFAULT_TOLERANCES[a.precision])]):
        tols[name] = t.to_dict()
        fails += [f for f in gate(parity, t) if f not in fails]
    if a.profiles:
        extra["batch_range"] = {"min": prof0.batch_min, "opt": prof0.batch_opt, "max": prof0.batch_max}
    if not a.requested:  # the temporary fp32 base of fp16/int8: gated, but no file or card is kept
        log(f"fp32 base graph: max|d| {parity['max_abs']:.3g} -> {'ok' if not fails else 'FAILED'}")
        return {"path": a.path.name, "intermediate": True, "precision": a.precision, "parity": parity,
                "passed": not fails, "failures": fails}
    c = ModelCard(**{**{k: getattr(card, k) for k in ("architecture", "num_classes", "input_shape", "mean", "std",
                                                      "classes", "eps", "dataset")},
                     "kind": a.kind, "precision": a.precision,
                     "provenance": provenance(source=str(model_path.resolve()), source_sha256=sha, source_kind=card.kind,
                                              command="export", profiles=[p.name for p in a.profiles],
                                              artifact_sha256=sha256_file(stage)),
                     "metrics": {"parity": parity, "gate": {"passed": not fails, "failures": fails, "tolerances": tols},
                                 "check_data": imgs.info.get("check_split")},
                     "extra": extra})
    _publish(stage, a.path, c)
    if a.precision in built and built[a.precision] == stage:
        built[a.precision] = a.path  # fp16 / int8 / engines derive from the published file
    acc = f", acc {parity['accuracy']:.4f} (ref {parity['reference_accuracy']:.4f})" if "accuracy" in parity else ""
    log(f"{a.path.name}: max|d| {parity['max_abs']:.3g}, top-1 agree {parity['top1_agreement']:.4f}{acc} -> "
        f"{'ok' if not fails else 'FAILED: ' + '; '.join(fails)}")
    return {"path": str(a.path), "card": str(card_path_for(a.path)), "kind": a.kind, "precision": a.precision,
            "runtime": runtime, "profiles": [p.name for p in a.profiles], "parity": parity,
            "passed": not fails, "failures": fails, "tolerances": tols}


__all__ = ["export_artifacts", "plan", "check_outputs", "clear_staging", "staging_path", "Artifact"]
