"""``run``: teacher -> distill -> evaluate -> export -> verify -> report, from one typed recipe.

Each stage is one call of the public API (:mod:`infoard_deploy.api`) with keyword arguments built from
the recipe; its result goes to ``<run>/<stage>/result.json`` and the equivalent ``infoard-deploy ...`` command
to ``<run>/<stage>/command.txt``, so any stage can be reproduced by hand. A stage is skipped on re-run when
its ``.done.json`` fingerprint (its own settings + the fingerprints of the stages it depends on) is
unchanged; changing a setting re-runs that stage and everything downstream.

Safety: the run folder has one writer at a time (:func:`infoard_deploy.runlock.run_lock`); a stage folder
holding files this pipeline did not write (no ``.stage.json``) is never replaced without ``force``.
"""
from __future__ import annotations

import hashlib
import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Mapping, Optional

from .api.common import Result, command_line
from .errors import GateFailure, UserError
from .recipe import Recipe, dump_recipe, resolve_recipe
from .utils import write_json_atomic, write_text_atomic

DEPENDS = {"teacher": [], "distill": ["teacher"], "evaluate": ["distill"], "export": ["distill"],
           "verify": ["export", "distill"], "report": ["teacher", "distill", "evaluate", "export", "verify"]}
# API function and CLI command of each stage.
STAGE_API = {"teacher": ("train_teacher", "train-teacher"), "distill": ("distill", "distill"),
             "evaluate": ("evaluate", "evaluate"), "export": ("export", "export"), "verify": ("verify", "verify")}
_MARKER = ".stage.json"  # written first into a stage folder the pipeline owns
_OURS = {_MARKER, ".done.json", ".lock"}


def _fingerprint(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


@dataclass
class StageCall:
    """One API call: ``api`` names the function, ``kwargs`` its arguments, ``command`` the CLI equivalent."""

    stage: str
    api: str
    kwargs: Dict[str, Any]
    command: str


@dataclass
class RunResult(Result):
    """Status and seconds per stage, and the run folder (its ``report/report.md`` sums everything up)."""

    data: Dict[str, Any] = field(default_factory=dict)

    @property
    def run_dir(self) -> Path:
        return Path(self.data["run_dir"])


def _default_api() -> Mapping[str, Callable[..., Any]]:
    from . import api

    return {"train_teacher": api.train_teacher, "distill": api.distill, "evaluate": api.evaluate,
            "export": api.export, "verify": api.verify}


class Pipeline:
    def __init__(self, recipe: Recipe, run_dir: Path, force: bool = False,
                 api: Optional[Mapping[str, Callable[..., Any]]] = None,
                 log: Optional[Callable[[str], None]] = None):
        self.recipe = recipe
        self.run_dir = Path(run_dir)
        self.force = force
        self._api = api
        self.log = log or (lambda s: None)
        self.fingerprints: Dict[str, str] = {}
        self.timings: Dict[str, float] = {}
        self.status: Dict[str, str] = {}

    # -- paths ---------------------------------------------------------------------------------
    def stage_dir(self, stage: str) -> Path:
        return self.run_dir / stage

    def result(self, stage: str) -> Dict[str, Any]:
        p = self.stage_dir(stage) / "result.json"
        return json.loads(p.read_text()) if p.exists() else {}

    @property
    def teacher_path(self) -> Path:
        t = self.recipe.teacher
        return Path(t.path) if t.path else self.stage_dir("teacher") / "teacher.pt"

    @property
    def student_path(self) -> Path:
        return self.stage_dir("distill") / "student.pt"

    def artifacts(self) -> List[Path]:
        """Artifacts the export stage produced (ONNX files and TensorRT engines), from its JSON result."""
        found = []
        for item in self.result("export").get("artifacts", []):
            p = Path(item["path"] if isinstance(item, dict) else item)
            if p.suffix in (".onnx", ".engine") and p.exists():
                found.append(p)
        return found

    # -- the calls -----------------------------------------------------------------------------
    def call(self, stage: str) -> Optional[StageCall]:
        """The API call of ``stage`` (None for a given teacher or the report)."""
        r, out = self.recipe, self.stage_dir(stage)
        d = r.data
        data = {"data": d.name, "data_dir": d.dir, "download": d.download}
        train = {**data, "eps": r.eps, "seed": r.seed, "out": str(out), "val_fraction": d.val_fraction,
                 "train_limit": d.train_limit, "device": r.device}
        if stage == "teacher":
            if r.teacher.path:
                return None
            t = r.teacher
            kw = {**train, "arch": t.arch, "method": t.method, "epochs": t.epochs, "batch_size": t.batch_size,
                  "lr": t.lr}
        elif stage == "distill":
            s = r.distill
            kw = {**train, "teacher": str(self.teacher_path), "student": s.student, "method": s.method,
                  "asa": s.asa, "mim": s.mim, "epochs": s.epochs, "batch_size": s.batch_size, "lr": s.lr,
                  "opts": dict(s.options), "protocol": s.protocol, "teacher_mean": r.teacher.mean, "teacher_std": r.teacher.std}
        elif stage == "evaluate":
            e = r.evaluate
            kw = {"model": str(self.student_path), **data, "eps": r.eps, "attacks": list(e.attacks), "n": e.n,
                  "split": e.split, "batch_size": e.batch_size, "seed": r.seed, "square_queries": e.square_queries,
                  "val_fraction": d.val_fraction, "device": r.device}
        elif stage == "export":
            x = r.export
            kw = {"model": str(self.student_path), "profiles": list(x.profiles), "out": str(out),
                  "calib_data": d.name, "data_dir": d.dir, "calib_n": x.calib_n, "calib_method": x.calib_method,
                  "val_fraction": d.val_fraction, "seed": r.seed, "device": r.device}
        elif stage == "verify":
            v = r.verify
            kw = {"reference": str(self.student_path), "artifacts": [str(a) for a in self.artifacts()],
                  **data, "eps": r.eps, "n": v.n, "attacks": list(v.attacks), "square_queries": v.square_queries,
                  "max_robust_drop": v.max_robust_drop, "batch_size": v.batch_size, "seed": r.seed,
                  "out": str(out / "report"), "device": r.device}
            kw.pop("download")
        else:
            return None
        fn, cli = STAGE_API[stage]
        return StageCall(stage, fn, kw, command_line(cli, kw))

    # -- running -------------------------------------------------------------------------------
    def _stage_config(self, stage: str) -> Dict[str, Any]:
        r = asdict(self.recipe)
        shared = {"seed": r["seed"], "eps": r["eps"], "data": r["data"]}
        own = {"teacher": r["teacher"], "distill": r["distill"], "evaluate": r["evaluate"], "export": r["export"],
               "verify": r["verify"], "report": {}}[stage]
        ups = {u: self.fingerprints.get(u) for u in DEPENDS[stage]}
        return {"shared": shared, "own": own, "upstream": ups}

    def _claim(self, stage: str) -> bool:
        """Make ``stage``'s folder ours; True when it already held our earlier output (may be replaced)."""
        out = self.stage_dir(stage)
        marker = out / _MARKER
        if marker.exists():
            return True
        foreign = sorted(p.name for p in out.iterdir() if p.name not in _OURS) if out.is_dir() else []
        if foreign and not self.force:
            raise UserError(f"{out} holds files this pipeline did not write ({', '.join(foreign[:3])}); move them, "
                            "point the recipe at them (teacher.path), or pass --force to replace them")
        out.mkdir(parents=True, exist_ok=True)
        write_json_atomic(marker, {"written_by": "infoard-deploy run", "stage": stage})
        return bool(foreign)

    def run_stage(self, stage: str) -> None:
        out = self.stage_dir(stage)
        fp = _fingerprint(self._stage_config(stage))
        marker = out / ".done.json"
        if not self.force and marker.exists() and (out / _MARKER).exists():
            try:
                done = json.loads(marker.read_text())
            except json.JSONDecodeError:
                done = {}
            if done.get("fingerprint") == fp:
                self.fingerprints[stage] = fp
                self.status[stage] = str(done.get("status", "done"))
                self.timings[stage] = 0.0
                self.log(f"- {stage}: already done, skipped")
                return
        t0 = time.perf_counter()
        if stage == "report":
            from .pipeline_report import write_run_report

            self._claim(stage)
            write_run_report(self)
        else:
            call = self.call(stage)
            if call is None:
                self.fingerprints[stage] = fp
                self.status[stage] = "given"
                return
            self._claim(stage)
            finished_before = (out / "result.json").exists()
            for stale in (marker, out / "result.json"):  # a re-run stage is not done until it finishes again
                stale.unlink(missing_ok=True)
            if stage in ("teacher", "distill"):
                # our own interrupted run continues; one that finished with other settings starts over
                resume = (out / "state.pt").exists() and not self.force and not finished_before
                call.kwargs.update(resume=resume, force=not resume)
            elif stage in ("export", "verify"):
                call.kwargs["force"] = True  # the folder is ours (checked by _claim)
            write_text_atomic(out / "command.txt", call.command + "\n")
            self.log(f"== {stage}: {call.command}")
            res = self.api[call.api](**call.kwargs)
            data = res.to_dict() if hasattr(res, "to_dict") else dict(res)
            write_json_atomic(out / "result.json", {k: v for k, v in data.items() if k != "samples"})
            if stage == "verify" and not data.get("passed", True):
                self.status[stage] = "gate failed"
            elif stage == "export" and not data.get("passed", True):
                self.status[stage] = "parity failed"  # verify still runs: it says how the artifact differs
        self.timings[stage] = time.perf_counter() - t0
        self.fingerprints[stage] = fp
        self.status.setdefault(stage, "done")
        write_json_atomic(marker, {"fingerprint": fp, "seconds": self.timings[stage], "status": self.status[stage]})

    @property
    def api(self) -> Mapping[str, Callable[..., Any]]:
        if self._api is None:
            self._api = _default_api()
        return self._api

    def run(self) -> RunResult:
        from .runlock import run_lock

        self.run_dir.mkdir(parents=True, exist_ok=True)
        with run_lock(self.run_dir, what="run"):
            write_text_atomic(self.run_dir / "recipe.resolved.toml", dump_recipe(self.recipe))
            t0 = time.perf_counter()
            for stage in Recipe.ALL_STAGES:
                if stage in self.recipe.stages:
                    self.run_stage(stage)
            summary = {"run_dir": str(self.run_dir), "status": self.status, "seconds": self.timings,
                       "total_seconds": time.perf_counter() - t0}
            write_json_atomic(self.run_dir / "summary.json", summary)
        failed = [f"{s} {self.status[s]}" for s in ("export", "verify") if "failed" in self.status.get(s, "")]
        if failed and self.recipe.verify.fail_on_gate:
            raise GateFailure(f"{' and '.join(failed)}; see {self.run_dir / 'verify' / 'report' / 'report.md'}")
        return RunResult(summary)


def run(recipe: str | Path | Recipe, out: Optional[str | Path] = None, *, overrides: Optional[List[str]] = None,
        force: bool = False, log: Optional[Callable[[str], None]] = None) -> RunResult:
    """Run a recipe: a packaged name (``"demo"``, ``"cifar10/wrn34-resnet18-infoard"``), a TOML path, or a
    :class:`~infoard_deploy.recipe.Recipe`. ``overrides`` are ``a.b=value`` strings (the CLI's ``--set``).

    Writes ``out`` (default ``runs/<recipe name>``); resumes finished / interrupted stages. Raises
    :class:`GateFailure` when verification failed and the recipe says ``fail_on_gate``.
    """
    from .utils import check_out_dir

    r = recipe if isinstance(recipe, Recipe) else resolve_recipe(recipe, overrides or [])
    run_dir = check_out_dir(Path(out) if out is not None else Path("runs") / r.name, "--out")
    return Pipeline(r, run_dir, force=force, log=log).run()


def list_recipes() -> List[str]:
    """Names of the recipes packaged with infoard-deploy (``run NAME`` runs one)."""
    from .recipe import packaged_recipes

    return sorted(packaged_recipes())


__all__ = ["Pipeline", "StageCall", "RunResult", "run", "list_recipes", "DEPENDS"]
