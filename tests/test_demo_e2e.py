"""End to end: the demo recipe through every stage (shrunk with --set so it fits the test budget), then a
re-run that skips every finished stage. The full-size demo is timed in BENCHMARKS.md."""
import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

SHRINK = ["teacher.epochs=2", "distill.epochs=2", "evaluate.n=48", 'evaluate.attacks=["clean","fgsm","pgd20","cw"]',
          "verify.n=48", "verify.square_queries=30", 'verify.attacks=["pgd20"]', "export.calib_n=64",
          "verify.fail_on_gate=false"]


@pytest.mark.slow
def test_demo_pipeline_end_to_end(cli, tmp_path):
    args = ["run", str(ROOT / "recipes" / "demo.toml"), "--out", str(tmp_path / "demo"), "--json"]
    for s in SHRINK:
        args += ["--set", s]
    code, out, err = cli("--device", "cpu", *args)
    assert code == 0, err
    summary = json.loads(out)
    run = tmp_path / "demo"
    assert (run / "teacher" / "teacher.pt").exists() and (run / "distill" / "student.pt").exists()
    assert (run / "distill" / "student.card.json").exists()
    ev = json.loads((run / "evaluate" / "result.json").read_text())
    assert ev["n_examples"] == 48 and 0 <= ev["robust_acc"]["pgd20"] <= ev["clean_acc"] <= 100
    assert list(run.joinpath("export").glob("*.onnx")), "export produced no ONNX artifact"
    ver = json.loads((run / "verify" / "result.json").read_text())
    assert ver
    report = (run / "report" / "report.md").read_text()
    assert "Robustness on the deployed runtimes" in report and (run / "report" / "report.html").exists()
    assert (run / "recipe.resolved.toml").exists()
    assert set(summary["status"]) >= {"teacher", "distill", "evaluate", "export", "verify", "report"}

    # re-run: every stage is already done and skipped
    code, out, err = cli("--device", "cpu", *args)
    assert code == 0, err
    assert all(v == 0.0 for k, v in json.loads(out)["seconds"].items() if k != "report")
