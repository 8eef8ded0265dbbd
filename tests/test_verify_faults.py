"""``verify`` cannot be fooled: every realistic deployment fault fails a gate at the default bounds, every
faithful export passes, and what ran is what the report says.

One module fixture trains a cnn-small PGD-AT student on digits (eps 0.1, a few seconds), exports it
through the real export pipeline (fp32, fp16, INT8 symmetric and uint8-asymmetric) and builds the fault
catalogue of :mod:`infoard_deploy.verification.faults` around it. Verification runs at test budgets (n 100,
pgd20 + apgd-ce transfer, own-graph PGD, Square 100) with default gates; most tests verify many
artifacts in one run (the reference's numbers do not depend on them, which is itself tested).
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from verify_helpers import EPS, by_name, verify_many

MAIN_FAULTS = ("retrained", "wrong_eps", "softmax", "logit_scale", "input_255", "transposed", "no_norm",
               "int8_lossy", "qdq_scale", "masked_input")


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


@pytest.fixture(scope="module")
def world(tmp_path_factory, _one_thread):
    from infoard_deploy.data import load_data
    from infoard_deploy.verification.faults import FAULTS, build_faults, faithful_exports, save_reference, train_cnn_small

    d = tmp_path_factory.mktemp("faults")
    bundle = load_data("digits")
    ref = save_reference(train_cnn_small(bundle, 5, EPS, seed=0), d / "student.pt", bundle, EPS)
    faithful = faithful_exports(ref, d / "faithful", names=("fp32", "fp16", "int8", "int8-u8"))
    faults = {f.name: f for f in build_faults(d / "faults", ref, faithful, bundle, eps=EPS, epochs=5, names=FAULTS)}
    return {"dir": d, "ref": ref, "faithful": faithful, "faults": faults, "bundle": bundle}


@pytest.fixture(scope="module")
def main_report(world, tmp_path_factory):
    """Every fault that shares the main reference, and the faithful exports, verified in one run."""
    arts = list(world["faithful"].values()) + [world["faults"][f].path for f in MAIN_FAULTS]
    return verify_many(world["ref"], arts, tmp_path_factory.mktemp("main") / "rep")


def _result(rep, path: Path):
    res = by_name(rep)
    (name,) = [a["name"] for a in rep["artifacts"] if a["path"] == str(path)]
    return res[name]


def test_faithful_exports_pass_and_every_fault_fails(world, main_report):
    rep = main_report
    for label, path in world["faithful"].items():
        passed, failed, _ = _result(rep, path)
        assert passed, f"faithful {label} failed {failed}"
    for name in MAIN_FAULTS:
        passed, failed, cause = _result(rep, world["faults"][name].path)
        assert not passed and failed, f"fault {name} passed"
        assert cause.startswith("likely cause:"), name
    assert rep["passed"] is False and len(rep["causes"]) == len(MAIN_FAULTS)


@pytest.mark.parametrize("fault, gates, cause", [
    ("retrained", {"provenance"}, "different model"),
    ("softmax", {"output_is_logits"}, "output is not logits"),
    ("logit_scale", {"max_logit_delta"}, "not the reference's logits"),
    ("input_255", {"top1_agreement", "clean_drop"}, "interface/preprocessing mismatch"),
    ("transposed", {"top1_agreement"}, "interface/preprocessing mismatch"),
    ("int8_lossy", {"clean_drop"}, "precision loss"),
    ("qdq_scale", {"robust_drop", "flip_rate", "clean_drop"}, "precision loss"),
    ("wrong_eps", {"robust_drop", "flip_rate"}, ""),
    ("masked_input", {"adv_agreement", "max_logit_delta", "reverse_flip_rate"}, "gradient masking"),
])
def test_each_fault_names_its_cause(world, main_report, fault, gates, cause):
    passed, failed, why = _result(main_report, world["faults"][fault].path)
    assert not passed and set(failed) & gates, (fault, failed)
    assert cause in why, (fault, why)


def test_retrained_model_is_caught_by_provenance_alone(world, tmp_path):
    """Same architecture, another seed, honest card: only provenance needs to speak (the rest is skipped)."""
    from infoard_deploy.verification import GateConfig

    skip = ("top1_agreement", "adv_agreement", "max_logit_delta", "clean_drop", "robust_drop", "robust_gain",
            "flip_rate", "reverse_flip_rate", "query_excess")
    rep = verify_many(world["ref"], [world["faults"]["retrained"].path], tmp_path / "r", n=40, square_queries=0,
                      own_graph_steps=0, gates=GateConfig(skip=skip))
    gates = {g["gate"]: g["status"] for g in rep["gates"]}
    assert gates["provenance"] == "FAIL" and gates["robust_drop"] == "skipped" and not rep["passed"]
    assert rep["artifacts"][0]["provenance"]["status"] == "mismatch"
    assert "another model" in rep["causes"][rep["artifacts"][0]["name"]]


def test_fp16_overflow_needs_fp16_arithmetic(world, tmp_path):
    f = world["faults"]["fp16_overflow"]
    rep = verify_many(f.reference, [f.path], tmp_path / "torch16")
    art = rep["artifacts"][0]
    assert art["arithmetic"].startswith("fp16 (torch CPU, onnx2torch graph")
    assert not art["passed"] and "finite_outputs" in _result(rep, f.path)[1]
    assert "numeric overflow at fp16" in art["cause"] and art["parity"]["clean"]["nonfinite_rows"] > 0
    # ONNX Runtime's CPU provider computes the fp16 graph's convolutions in fp32: the overflow never happens there
    rep = verify_many(f.reference, [f.path], tmp_path / "ort", fp16_cpu="ort", n=60, square_queries=0)
    art = rep["artifacts"][0]
    assert art["arithmetic"] == "fp32 (ORT CPU inserted casts around fp16 ops)"
    assert art["parity"]["clean"]["nonfinite_rows"] == 0


def test_cardless_artifact_is_refused_unless_allowed(cli, world, tmp_path):
    f = world["faults"]["cardless"]
    base = ["--device", "cpu", "verify", "--reference", world["ref"], "--artifact", f.path, "--data", "digits",
            "--n", "40", "--attacks", "pgd20", "--square-queries", "0", "--own-graph-steps", "0", "--eps-sweep",
            "none", "--eps", str(EPS), "--threads", "1"]
    code, _, err = cli(*base, "--out", tmp_path / "a")
    assert code == 2 and len(err.strip().splitlines()) == 1 and "no model card" in err and "--allow-cardless" in err
    assert not (tmp_path / "a").exists()
    code, out, err = cli(*base, "--allow-cardless", "--out", tmp_path / "b", "--json")
    assert code == 0, err
    rep = json.loads(out)
    assert rep["warnings"] and "NO MODEL CARD" in rep["warnings"][0]
    assert "provenance unknown" in rep["summary"]
    assert "**WARNING**" in (tmp_path / "b" / "report.md").read_text()


def test_faithful_exports_never_fail_over_seeds(world, tmp_path):
    arts = list(world["faithful"].values())
    for seed in (1, 2):
        rep = verify_many(world["ref"], arts, tmp_path / f"s{seed}", seed=seed, n=80)
        bad = {k: v[1] for k, v in by_name(rep).items() if not v[0]}
        assert not bad, f"seed {seed}: false alarm {bad}"


def test_reference_numbers_do_not_depend_on_the_artifacts(world):
    """Same seed and n: the reference's per-sample outcome is identical whatever is verified beside it."""
    from infoard_deploy.checkpoint import load_model
    from infoard_deploy.data import BatchLoader
    from infoard_deploy.runtimes.factory import open_runtime
    from infoard_deploy.verification import VerifyConfig, verify_robustness

    model, _ = load_model(world["ref"])
    cfg = VerifyConfig(eps=EPS, attacks=("pgd20", "apgd-ce"), square_queries=50, eps_sweep=(), seed=3)

    def run(paths):
        arts = [(Path(p).name, open_runtime(p, max_batch=64, fp16_cpu="torch")) for p in paths]
        loader = BatchLoader(world["bundle"].test, np.arange(96), batch_size=48)
        return verify_robustness(model, arts, loader, cfg, num_classes=10).reference

    alone = run([])
    beside = run([world["faults"]["input_255"].path, world["faults"]["masked_input"].path,
                  world["faithful"]["int8"]])
    assert np.array_equal(alone.broken_at, beside.broken_at)
    assert alone.sweep_correct == beside.sweep_correct


def test_killed_verify_never_leaves_a_passing_report(world, tmp_path):
    from infoard_deploy.verification import run_verification

    out = tmp_path / "rep"
    out.mkdir()
    (out / "report.json").write_text(json.dumps({"passed": True}))  # an earlier, passing run

    def killed(done, running):
        raise KeyboardInterrupt  # the job is killed after the first batch

    with pytest.raises(KeyboardInterrupt):
        run_verification(world["ref"], [str(world["faithful"]["fp32"])], "digits", n=40, attacks=("pgd20",),
                         square_queries=0, eps_sweep=(), out=out, force=True, progress=killed, threads=1)
    assert not (out / "report.json").exists()
    assert not any(p.name.startswith(".rep.staging") for p in tmp_path.iterdir())


def test_report_appears_complete_or_not_at_all(world, tmp_path, monkeypatch):
    from infoard_deploy.verification import report as report_mod

    def broken_plots(rep, out):
        (out / "robust_vs_eps.png").write_bytes(b"half")
        raise OSError("disk full")

    monkeypatch.setattr(report_mod, "_plots", broken_plots)
    with pytest.raises(OSError):
        verify_many(world["ref"], [world["faithful"]["fp32"]], tmp_path / "rep", n=20, square_queries=0,
                    own_graph_steps=0, attacks=("pgd20",))
    assert not (tmp_path / "rep").exists()  # nothing half-written is visible
    assert [p.name for p in tmp_path.iterdir()] == []


def test_own_graph_attack_runs_on_the_deployed_precision(world, tmp_path):
    """INT8: the fake-quant twin of the Q/DQ graph agrees with ONNX Runtime's integer kernels and its
    adversarial examples are judged on ORT; fp16: the emulated graph keeps fp16 values everywhere."""
    from infoard_deploy.data import to_tensor
    from infoard_deploy.runtimes.onnx_torch import GraphRuntime, differentiable_graph
    from infoard_deploy.runtimes.onnxrt import OrtRuntime

    x = to_tensor(world["bundle"].test.get(np.arange(120))[0])
    twin = differentiable_graph(world["faithful"]["int8"])
    with torch.no_grad():
        t = twin(x)
    with OrtRuntime(str(world["faithful"]["int8"]), precision="int8") as rt:
        o = torch.from_numpy(rt.predict(x))
    assert (t.argmax(1) == o.argmax(1)).float().mean() >= 0.97
    xg = x[:8].clone().requires_grad_(True)
    twin(xg).sum().backward()
    assert xg.grad is not None and xg.grad.abs().sum() > 0  # straight-through: gradients reach the input
    with GraphRuntime(str(world["faithful"]["fp16"])) as g16, GraphRuntime(str(world["faithful"]["fp16"]),
                                                                            fp16="native") as n16:
        e, nat = g16.predict(x), n16.predict(x)
        assert "fp16" in g16.arithmetic and "native float16" in n16.arithmetic
    assert np.abs(e - nat).max() < 0.05 and (e.argmax(1) == nat.argmax(1)).mean() == 1.0
    assert np.array_equal(e, e.astype(np.float16).astype(np.float32))  # every logit is an fp16 value
