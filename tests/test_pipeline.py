"""Pipeline mechanics with a recording fake command runner: stage order, skip on re-run, re-run downstream
of a changed setting, resolved recipe saved, gate failure propagated. (The real end-to-end run of
recipes/demo.toml is tested in test_demo_e2e.py.)"""
import json

import pytest

from infoard_deploy.errors import GateFailure
from infoard_deploy.pipeline import Pipeline
from infoard_deploy.recipe import recipe_from_dict


class Recorder:
    def __init__(self, verify_code=0):
        self.calls = []
        self.verify_code = verify_code

    def __call__(self, argv, sink):
        self.calls.append(argv[0])
        result = {"command": argv[0], "argv": argv}
        if argv[0] == "export":
            result["artifacts"] = []
        sink.parent.mkdir(parents=True, exist_ok=True)
        sink.write_text(json.dumps(result))
        return self.verify_code if argv[0] == "verify" else 0


def _recipe(**over):
    base = {"name": "t", "distill": {"epochs": 2}, "teacher": {"epochs": 1}}
    base.update(over)
    return recipe_from_dict(base)


def test_stages_run_then_skip_then_rerun_downstream(tmp_path):
    rec = Recorder()
    Pipeline(_recipe(), tmp_path, invoke=rec).run()
    assert rec.calls == ["train-teacher", "distill", "evaluate", "export", "verify"]
    assert (tmp_path / "recipe.resolved.toml").exists() and (tmp_path / "report" / "report.md").exists()
    assert (tmp_path / "report" / "report.html").read_text().startswith("<!doctype html>")

    rec2 = Recorder()
    Pipeline(_recipe(), tmp_path, invoke=rec2).run()
    assert rec2.calls == []  # everything done: all skipped

    rec3 = Recorder()
    Pipeline(_recipe(distill={"epochs": 3}), tmp_path, invoke=rec3).run()
    assert rec3.calls == ["distill", "evaluate", "export", "verify"]  # teacher untouched


def test_resume_flag_passed_when_state_exists(tmp_path):
    rec = Recorder()
    (tmp_path / "distill").mkdir(parents=True)
    (tmp_path / "distill" / "state.pt").write_bytes(b"x")
    seen = {}

    def inv(argv, sink):
        seen[argv[0]] = argv
        return rec(argv, sink)

    Pipeline(_recipe(), tmp_path, invoke=inv).run()
    assert "--resume" in seen["distill"] and "--force" in seen["train-teacher"]


def test_given_teacher_not_trained(tmp_path):
    rec = Recorder()
    Pipeline(_recipe(teacher={"path": str(tmp_path / "t.pt")}), tmp_path, invoke=rec).run()
    assert rec.calls[0] == "distill"


def test_gate_failure_propagates(tmp_path):
    with pytest.raises(GateFailure):
        Pipeline(_recipe(), tmp_path, invoke=Recorder(verify_code=1)).run()
