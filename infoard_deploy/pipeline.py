"""``infoard-deploy run RECIPE.toml``: teacher -> distill -> evaluate -> export -> verify -> report.

Each stage runs the same CLI command a user would type (so the pipeline and the commands can never
drift apart), in-process, with its JSON result captured into ``<run>/<stage>/result.json``. A stage is
skipped on re-run when its ``.done.json`` fingerprint (its own settings + the fingerprints of the stages
it depends on) is unchanged; changing a setting re-runs that stage and everything downstream.
"""
from __future__ import annotations

import hashlib
import json
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional

from .commands._common import err_console as console  # progress on stderr: stdout stays clean for --json
from .errors import GateFailure, UserError
from .recipe import Recipe, dump_recipe
from .utils import write_json_atomic, write_text_atomic

DEPENDS = {"teacher": [], "distill": ["teacher"], "evaluate": ["distill"], "export": ["distill"],
           "verify": ["export", "distill"], "report": ["teacher", "distill", "evaluate", "export", "verify"]}


def _fingerprint(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


class Pipeline:
    def __init__(self, recipe: Recipe, run_dir: Path, force: bool = False,
                 invoke: Optional[Callable[[List[str], Path], int]] = None):
        self.recipe = recipe
        self.run_dir = Path(run_dir)
        self.force = force
        self._invoke = invoke
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

    # -- stage commands --------------------------------------------------------------------------
    def _data_args(self) -> List[str]:
        d = self.recipe.data
        args = ["--data", d.name]
        if d.dir:
            args += ["--data-dir", d.dir]
        if d.download:
            args += ["--download"]
        return args

    def _eps_args(self) -> List[str]:
        return ["--eps", self.recipe.eps] if self.recipe.eps else []

    def argv(self, stage: str) -> Optional[List[str]]:
        r = self.recipe
        out = self.stage_dir(stage)
        if stage == "teacher":
            if r.teacher.path:
                return None  # a given teacher: nothing to train
            t = r.teacher
            a = ["train-teacher", *self._data_args(), "--arch", t.arch, "--method", t.method,
                 "--batch-size", str(t.batch_size), "--seed", str(r.seed), "--out", str(out),
                 "--val-fraction", str(r.data.val_fraction), *self._eps_args(), "--json"]
            if t.epochs is not None:
                a += ["--epochs", str(t.epochs)]
            if t.lr is not None:
                a += ["--lr", str(t.lr)]
            if r.data.train_limit:
                a += ["--train-limit", str(r.data.train_limit)]
            return a
        if stage == "distill":
            s = r.distill
            a = ["distill", "--teacher", str(self.teacher_path), "--student", s.student, "--method", s.method,
                 *self._data_args(), "--batch-size", str(s.batch_size), "--seed", str(r.seed),
                 "--out", str(out), "--val-fraction", str(r.data.val_fraction), *self._eps_args(), "--json"]
            if s.asa is not None:
                a += ["--asa" if s.asa else "--no-asa"]
            if s.mim is not None:
                a += ["--mim" if s.mim else "--no-mim"]
            if s.epochs is not None:
                a += ["--epochs", str(s.epochs)]
            if s.lr is not None:
                a += ["--lr", str(s.lr)]
            for k, v in s.options.items():
                a += ["--opt", f"{k}={v}"]
            if r.teacher.mean is not None:
                a += ["--teacher-mean", ",".join(map(str, r.teacher.mean)), "--teacher-std", ",".join(map(str, r.teacher.std))]
            if r.data.train_limit:
                a += ["--train-limit", str(r.data.train_limit)]
            return a
        if stage == "evaluate":
            e = r.evaluate
            a = ["evaluate", "--model", str(self.student_path), *self._data_args(), "--attacks", ",".join(e.attacks),
                 "--batch-size", str(e.batch_size), "--seed", str(r.seed), "--split", e.split, *self._eps_args(), "--json"]
            if e.n:
                a += ["--n", str(e.n)]
            if e.square_queries:
                a += ["--square-queries", str(e.square_queries)]
            return a
        if stage == "export":
            x = r.export
            a = ["export", "--model", str(self.student_path), "--out", str(out), "--calib-data", r.data.name,
                 "--calib-n", str(x.calib_n), "--calib-method", x.calib_method, "--force", "--json"]
            if r.data.dir:
                a += ["--data-dir", r.data.dir]
            for p in x.profiles:
                a += ["--profile", p]
            return a
        if stage == "verify":
            v = r.verify
            a = ["verify", "--reference", str(self.student_path), *self._data_args(), "--n", str(v.n),
                 "--attacks", ",".join(v.attacks), "--square-queries", str(v.square_queries),
                 "--max-robust-drop", str(v.max_robust_drop), "--batch-size", str(v.batch_size), "--seed", str(r.seed),
                 "--out", str(out / "report"), "--force", *self._eps_args(), "--json"]
            for art in self.artifacts():
                a += ["--artifact", str(art)]
            return a
        return None

    def artifacts(self) -> List[Path]:
        """Artifacts the export stage produced (ONNX files and TensorRT engines), from its JSON result."""
        res = self.result("export")
        found = []
        for item in res.get("artifacts", []):
            p = Path(item["path"] if isinstance(item, dict) else item)
            if p.suffix in (".onnx", ".engine") and p.exists():
                found.append(p)
        if not found:
            found = sorted(self.stage_dir("export").glob("*.onnx"))
        return found

    # -- running -------------------------------------------------------------------------------
    def _call(self, argv: List[str], sink: Path) -> int:
        if self._invoke is not None:
            return self._invoke(argv, sink)
        from .cli import main
        from .commands._common import STATE

        dev = self.recipe.device if self.recipe.device != "auto" else STATE.device_spec
        old = STATE.json_sink
        STATE.json_sink = str(sink)
        try:
            return main(["--device", dev, *argv])
        finally:
            STATE.json_sink = old

    def _stage_config(self, stage: str) -> Dict[str, Any]:
        r = asdict(self.recipe)
        shared = {"seed": r["seed"], "eps": r["eps"], "data": r["data"]}
        own = {"teacher": r["teacher"], "distill": r["distill"], "evaluate": r["evaluate"], "export": r["export"],
               "verify": r["verify"], "report": {}}[stage]
        ups = {u: self.fingerprints.get(u) for u in DEPENDS[stage]}
        return {"shared": shared, "own": own, "upstream": ups}

    def run_stage(self, stage: str) -> None:
        out = self.stage_dir(stage)
        fp = _fingerprint(self._stage_config(stage))
        marker = out / ".done.json"
        if not self.force and marker.exists():
            try:
                done = json.loads(marker.read_text())
            except json.JSONDecodeError:
                done = {}
            if done.get("fingerprint") == fp:
                self.fingerprints[stage] = fp
                self.status[stage] = str(done.get("status", "done"))
                self.timings[stage] = 0.0
                console.print(f"[dim]- {stage}: already done, skipped[/dim]")
                return
        t0 = time.perf_counter()
        if stage == "report":
            from .pipeline_report import write_run_report

            out.mkdir(parents=True, exist_ok=True)
            write_run_report(self)
            code = 0
        else:
            argv = self.argv(stage)
            if argv is None:
                self.fingerprints[stage] = fp
                self.status[stage] = "given"
                return
            out.mkdir(parents=True, exist_ok=True)
            if stage in ("teacher", "distill") and (out / "state.pt").exists() and not self.force:
                argv = argv + ["--resume"]
            elif stage in ("teacher", "distill"):
                argv = argv + ["--force"]
            console.rule(f"[bold]{stage}[/bold]")
            console.print("[dim]infoard-deploy " + " ".join(argv) + "[/dim]")
            code = self._call(argv, out / "result.json")
            if code == 1 and stage == "verify":
                self.status[stage] = "gate failed"
            elif code != 0:
                raise UserError(f"stage '{stage}' failed (exit {code}); fix the cause and re-run to resume")
        self.timings[stage] = time.perf_counter() - t0
        self.fingerprints[stage] = fp
        self.status.setdefault(stage, "done")
        write_json_atomic(marker, {"fingerprint": fp, "seconds": self.timings[stage], "status": self.status[stage]})

    def run(self) -> Dict[str, Any]:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        write_text_atomic(self.run_dir / "recipe.resolved.toml", dump_recipe(self.recipe))
        t0 = time.perf_counter()
        for stage in Recipe.ALL_STAGES:
            if stage in self.recipe.stages:
                self.run_stage(stage)
        summary = {"run_dir": str(self.run_dir), "status": self.status, "seconds": self.timings,
                   "total_seconds": time.perf_counter() - t0}
        write_json_atomic(self.run_dir / "summary.json", summary)
        if self.status.get("verify", "").startswith("gate failed") and self.recipe.verify.fail_on_gate:
            raise GateFailure(f"deployment verification failed; see {self.run_dir / 'verify' / 'report'}")
        return summary
