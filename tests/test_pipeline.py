"""Pipeline mechanics with a recording fake API: stage order, skip on re-run, re-run downstream of a changed
setting, resolved recipe saved, equivalent commands recorded, gate failure propagated, nothing of the user's
replaced without --force. (The real end-to-end run of the demo recipe is tested in test_demo_e2e.py.)"""
import json
import shlex

import pytest

from infoard_deploy.errors import GateFailure, UserError
from infoard_deploy.pipeline import STAGE_API, Pipeline
from infoard_deploy.recipe import recipe_from_dict


class Recorder(dict):
    """A fake of the API: every function records its name and keyword arguments."""

    def __init__(self, verify_passed=True):
        super().__init__()
        self.calls, self.kwargs = [], {}
        for fn in ("train_teacher", "distill", "evaluate", "export", "verify"):
            self[fn] = self._make(fn, verify_passed)

    def _make(self, fn, verify_passed):
        def call(**kw):
            self.calls.append(fn)
            self.kwargs[fn] = kw
            res = {"fn": fn}
            if fn == "export":
                from pathlib import Path

                art = Path(kw["out"]) / "student.fp32.onnx"
                art.write_bytes(b"onnx")
                res["artifacts"] = [{"path": str(art)}]
            if fn == "verify":
                res["passed"] = verify_passed
            return res
        return call


def _recipe(**over):
    base = {"name": "t", "distill": {"epochs": 2}, "teacher": {"epochs": 1}}
    base.update(over)
    return recipe_from_dict(base)


def test_stages_run_then_skip_then_rerun_downstream(tmp_path):
    rec = Recorder()
    Pipeline(_recipe(), tmp_path, api=rec).run()
    assert rec.calls == ["train_teacher", "distill", "evaluate", "export", "verify"]
    assert (tmp_path / "recipe.resolved.toml").exists() and (tmp_path / "report" / "report.md").exists()
    assert (tmp_path / "report" / "report.html").read_text().startswith("<!doctype html>")
    assert json.loads((tmp_path / "distill" / "result.json").read_text()) == {"fn": "distill"}

    rec2 = Recorder()
    Pipeline(_recipe(), tmp_path, api=rec2).run()
    assert rec2.calls == []  # everything done: all skipped

    rec3 = Recorder()
    Pipeline(_recipe(distill={"epochs": 3}), tmp_path, api=rec3).run()
    assert rec3.calls == ["distill", "evaluate", "export", "verify"]  # teacher untouched
    # a finished stage re-run with other settings starts over (its own folder: force, not resume)
    assert rec3.kwargs["distill"]["force"] is True and rec3.kwargs["distill"]["resume"] is False


def test_commands_recorded_and_parse_as_the_cli(tmp_path):
    """Each stage's command.txt is the CLI equivalent of its API call, and the CLI accepts it."""
    import typer

    from infoard_deploy.cli import app

    rec = Recorder()
    Pipeline(_recipe(), tmp_path, api=rec).run()
    command = typer.main.get_command(app)
    for stage, (fn, cli_name) in STAGE_API.items():
        line = (tmp_path / stage / "command.txt").read_text().strip()
        argv = shlex.split(line)
        assert argv[0] == "infoard-deploy" and argv[1] == cli_name
        ctx = command.make_context("infoard-deploy", argv[1:], resilient_parsing=True)
        sub = command.get_command(ctx, cli_name)
        sub.make_context(cli_name, argv[2:])  # raises on an unknown option or bad value
    distill = (tmp_path / "distill" / "command.txt").read_text()
    assert "--teacher" in distill and "--epochs 2" in distill


def test_interrupted_run_resumes(tmp_path):
    rec = Recorder()
    (tmp_path / "distill").mkdir(parents=True)
    (tmp_path / "distill" / ".stage.json").write_text("{}")  # ours, interrupted: state.pt, no result
    (tmp_path / "distill" / "state.pt").write_bytes(b"x")
    Pipeline(_recipe(), tmp_path, api=rec).run()
    assert rec.kwargs["distill"]["resume"] is True and rec.kwargs["train_teacher"]["force"] is True


def test_users_files_are_never_replaced_without_force(tmp_path):
    """A teacher.pt the user put into the stage folder is not the pipeline's to overwrite."""
    (tmp_path / "teacher").mkdir(parents=True)
    own = tmp_path / "teacher" / "teacher.pt"
    own.write_bytes(b"my 15-epoch teacher")
    with pytest.raises(UserError, match="did not write"):
        Pipeline(_recipe(), tmp_path, api=Recorder()).run()
    assert own.read_bytes() == b"my 15-epoch teacher"
    rec = Recorder()
    Pipeline(_recipe(), tmp_path, api=rec, force=True).run()
    assert rec.calls[0] == "train_teacher"


def test_given_teacher_not_trained(tmp_path):
    rec = Recorder()
    Pipeline(_recipe(teacher={"path": str(tmp_path / "t.pt")}), tmp_path, api=rec).run()
    assert rec.calls[0] == "distill"
    assert rec.kwargs["distill"]["teacher"] == str(tmp_path / "t.pt")


def test_gate_failure_propagates(tmp_path):
    with pytest.raises(GateFailure):
        Pipeline(_recipe(), tmp_path, api=Recorder(verify_passed=False)).run()
    assert json.loads((tmp_path / "verify" / ".done.json").read_text())["status"] == "gate failed"


@pytest.mark.parametrize("name", ["../escape", "/abs/path", "a/b", "..", ""])
def test_recipe_name_is_a_plain_folder_name(name):
    with pytest.raises(UserError, match="plain folder name"):
        _recipe(name=name)


@pytest.mark.parametrize("over, match", [
    ({"evaluate": {"n": -5}}, "evaluate.n"), ({"verify": {"n": 0}}, "verify.n"),
    ({"export": {"calib_n": 0}}, "export.calib_n"), ({"distill": {"batch_size": 0}}, "distill.batch_size"),
    ({"export": {"profiles": ["/etc/passwd"]}}, "profile names"), ({"data": {"name": "--force"}}, "dataset"),
    ({"distill": {"student": "resnet19"}}, "architecture"), ({"verify": {"attacks": ["pgd21"]}}, "attack"),
])
def test_recipe_values_checked_before_any_stage(over, match):
    with pytest.raises(UserError, match=match):
        _recipe(**over)


def test_failing_set_leaves_a_finished_run_untouched(tmp_path, cli):
    rec = Recorder()
    Pipeline(_recipe(), tmp_path, api=rec).run()
    before = (tmp_path / "recipe.resolved.toml").read_text()
    code, _, err = cli("run", "demo", "--out", str(tmp_path), "--set", "verify.n=0")
    assert code == 2 and "verify.n" in err
    assert (tmp_path / "recipe.resolved.toml").read_text() == before


def test_packaged_recipes_run_by_name():
    from infoard_deploy.recipe import packaged_recipes, resolve_recipe

    names = packaged_recipes()
    assert "demo" in names and "cifar10/wrn34-resnet18-infoard" in names
    assert resolve_recipe("demo").name == "demo"
    with pytest.raises(UserError, match="did you mean"):
        resolve_recipe("dmeo")
