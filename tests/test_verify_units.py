"""Units of the verification package: parity statistics, runtime dispatch, the query wrapper, the
cascade's flip bookkeeping, checks and gates (fast: tiny models, no training beyond a second)."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from infoard_deploy.errors import UserError
from infoard_deploy.runtimes.onnxrt import OrtRuntime
from infoard_deploy.runtimes.torch_rt import TorchRuntime
from infoard_deploy.verification import (GateConfig, ParityStats, RuntimeModule, VerifyConfig, evaluate_gates, run_checks,
                                   verify_robustness)
from infoard_deploy.verification.robust import ROBUST, ModelResult, VerifyResult

from verify_helpers import EPS, train_student


@pytest.fixture(scope="module")
def digits():
    from infoard_deploy.data import load_data

    return load_data("digits")


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    old = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny models: one thread is fastest on a shared 2-core machine
    yield
    torch.set_num_threads(old)


@pytest.fixture(scope="module")
def plain(digits, _one_thread):
    return train_student(digits, epochs=3, adversarial=False)


@pytest.fixture(scope="module")
def onnx_files(plain, tmp_path_factory):
    import onnx
    from onnxconverter_common import float16

    from infoard_deploy.exporting.onnx import export_onnx
    from infoard_deploy.exporting.quantize import quantize_int8

    d = tmp_path_factory.mktemp("units")
    export_onnx(plain, d / "m.onnx", (1, 8, 8))
    calib = np.random.default_rng(0).random((64, 1, 8, 8), dtype=np.float32)
    quantize_int8(d / "m.onnx", d / "m.int8.onnx", calib)
    # fp16 *with* fp16 inputs (no keep_io_types): the runtime must cast float32 [0,1] inputs itself
    half = float16.convert_float_to_float16(onnx.load(str(d / "m.onnx")), keep_io_types=False)
    onnx.save(half, str(d / "m.fp16io.onnx"))
    return d


def _batch(digits, n=32):
    from infoard_deploy.data import to_tensor

    x, y = digits.test.get(np.arange(n))
    return to_tensor(x), torch.from_numpy(y)


def test_parity_stats_known_values():
    s = ParityStats()
    ref = torch.tensor([[1.0, 0.0], [0.0, 1.0], [2.0, 0.0]])
    art = torch.tensor([[1.5, 0.0], [1.0, 0.5], [2.0, 0.25]])
    s.update(ref, art)
    assert s.n == 3 and s.agree == 2 and s.top1_agreement == pytest.approx(200 / 3)
    assert s.max_abs == pytest.approx(1.0) and s.mean_abs == pytest.approx((0.5 + 1.0 + 0.5 + 0.25) / 6)
    s.update(ref[:1], torch.tensor([[float("nan"), 0.0]]))
    assert s.nonfinite == 1 and s.max_abs == float("inf")


def test_open_runtime_dispatch_and_precision(plain, onnx_files, tmp_path):
    from infoard_deploy.runtimes.factory import onnx_precision, open_runtime

    assert isinstance(open_runtime(plain), TorchRuntime)
    assert onnx_precision(onnx_files / "m.onnx") == "fp32"
    assert onnx_precision(onnx_files / "m.int8.onnx") == "int8"
    assert onnx_precision(onnx_files / "m.fp16io.onnx") == "fp16"
    rt = open_runtime(onnx_files / "m.int8.onnx", "cpu")
    assert isinstance(rt, OrtRuntime) and rt.precision == "int8"
    (tmp_path / "m.engine").write_bytes(b"\0")
    with pytest.raises(UserError, match="CUDA"):
        open_runtime(tmp_path / "m.engine", "cpu")
    (tmp_path / "m.tflite").write_bytes(b"\0")
    with pytest.raises(UserError, match="cannot tell which runtime"):
        open_runtime(tmp_path / "m.tflite")
    with pytest.raises(UserError, match="not found"):
        open_runtime(tmp_path / "nope.onnx")


def test_fp16_io_graph_takes_float32_inputs(plain, onnx_files, digits):
    x, _ = _batch(digits)
    with torch.no_grad():
        ref = plain(x).numpy()
    with OrtRuntime(str(onnx_files / "m.fp16io.onnx"), max_batch=7) as rt:  # chunking: 32 = 4*7 + 4
        out = rt.predict(x)
        assert out.dtype == np.float32 and out.shape == (32, 10)
        assert np.abs(out - ref).max() < 0.05 and (out.argmax(1) == ref.argmax(1)).mean() > 0.9
        assert torch.equal(rt.predict_tensor(x), torch.from_numpy(out))


def test_runtime_module_counts_queries_and_matches_predict(onnx_files, digits):
    x, _ = _batch(digits)
    with OrtRuntime(str(onnx_files / "m.onnx")) as rt:
        mod = RuntimeModule(rt)
        assert len(list(mod.parameters())) == 1 and not any(p.requires_grad for p in mod.parameters())
        out = mod(x)
        assert isinstance(out, torch.Tensor) and np.array_equal(out.numpy(), rt.predict(x))
        mod(x[:5])
        assert mod.calls == 2 and mod.queries == 37


def test_iobinding_paths_match_session_run(onnx_files, digits):
    """The CUDA-EP code path (IOBinding by pointer, chunked) exercised on the CPU EP: same logits."""
    x, _ = _batch(digits, 21)
    with OrtRuntime(str(onnx_files / "m.onnx"), max_batch=8) as rt:
        ref = rt.session.run(None, {rt._in: x.numpy()})[0]
        rt.on_cuda, rt._io_device = True, "cpu"  # what _load sets on a CUDA session, pointed at host memory
        np.testing.assert_allclose(rt.predict(x), ref, rtol=0, atol=1e-6)  # bound host arrays, 3 chunks
        out = rt.predict_tensor(x)  # bound by data_ptr(), written straight into a torch tensor
        assert out.dtype == torch.float32 and out.shape == (21, 10)
        np.testing.assert_allclose(out.numpy(), ref, rtol=0, atol=1e-6)


class ForceClass(nn.Module):
    """The reference's logits with class ``k`` pushed up by ``bias``: a deterministic 'deployment bug'."""

    def __init__(self, net: nn.Module, k: int = 0, bias: float = 1e4):
        super().__init__()
        self.net, self.k, self.bias = net, k, bias

    def forward(self, x):
        out = self.net(x).clone()
        out[:, self.k] += self.bias
        return out


def test_cascade_flip_bookkeeping_is_exact(plain, digits):
    """An artifact that always answers class 0: its flags and the flip counts follow from the reference's."""
    from infoard_deploy.data import BatchLoader

    cfg = VerifyConfig(eps=EPS, attacks=("pgd20",), square_queries=20, eps_sweep=(0.5, 1.0))
    loader = BatchLoader(digits.test, np.arange(48), batch_size=16)
    arts = [("same", TorchRuntime(plain)), ("class0", TorchRuntime(ForceClass(plain)))]
    res = verify_robustness(plain, arts, loader, cfg, num_classes=10)
    ref, same, zero = res.reference, res.artifacts[0], res.artifacts[1]
    y = res.labels
    assert res.n == 48 and list(res.indices) == list(range(48))
    assert np.array_equal(same.broken_at, ref.broken_at)  # same model -> same flags, batch by batch
    assert np.array_equal(zero.robust, y == 0) and np.array_equal(zero.broken_at[y != 0], np.zeros((y != 0).sum()))
    f = res.flips(zero)
    assert f["robust_to_broken"]["count"] == int((ref.robust & (y != 0)).sum())
    assert f["broken_to_robust"]["count"] == int((~ref.robust & (y == 0)).sum())
    assert f["robust_to_broken"]["rate"] == pytest.approx(100 * f["robust_to_broken"]["count"] / 48)
    assert same.parity.sets["clean"].top1_agreement == 100.0 and "pgd20" in same.parity.sets
    x, _ = _batch(digits, 48)
    with torch.no_grad():
        ref_says_0 = (plain(x).argmax(1) == 0).float().mean().item()
    assert zero.parity.sets["clean"].top1_agreement == pytest.approx(100 * ref_says_0)
    assert (y == 0).any() and zero.queries > 0 and same.queries > 0  # Square queried both runtimes
    assert set(zero.sweep_correct) == {0.5, 1.0} and zero.sweep_correct[1.0] == int((y == 0).sum())
    gates = evaluate_gates(res, GateConfig(max_robust_drop=2.0, max_flip_rate=0.0))
    failed = {(g.artifact, g.gate) for g in gates if not g.passed}
    assert ("class0", "robust_drop") in failed and ("class0", "flip_rate") in failed
    assert not any(a == "same" for a, _ in failed)


def _fake_result(sweep_ref, square_broken=0, n=100):
    cfg = VerifyConfig(eps=0.1, attacks=("pgd20",), square_queries=10, eps_sweep=(0.5, 1.0, 1.5))
    broken = np.full(n, ROBUST, np.int16)
    broken[:square_broken] = cfg.stages.index("square")
    ref = ModelResult("torch", "reference", "torch", "fp32", None, broken,
                      sweep_correct=dict(zip((0.5, 1.0, 1.5), sweep_ref)))
    return VerifyResult(cfg, np.arange(n), np.zeros(n, np.int64), ref, [], {})


def test_checks_fire_on_masking_signs():
    checks = {c.name: c for c in run_checks(_fake_result([90, 60, 30], square_broken=0))}
    assert checks["gradient_masking_suspected"].status == "ok" and checks["eps_sweep_monotone"].status == "ok"
    checks = {c.name: c for c in run_checks(_fake_result([50, 60, 70], square_broken=5), masking_threshold=2.0)}
    assert checks["gradient_masking_suspected"].status == "warn" and checks["gradient_masking_suspected"].value == 5.0
    assert checks["eps_sweep_monotone"].status == "warn"
    checks = {c.name: c for c in run_checks(_fake_result([90, 60, 30], square_broken=1), masking_threshold=2.0)}
    assert checks["gradient_masking_suspected"].status == "ok"  # 1% < 2% threshold


@pytest.mark.parametrize("kw", [{"max_robust_drop": -0.1}, {"max_flip_rate": 120}, {"min_top1_agreement": -1},
                                {"max_logit_delta": -1}])
def test_gate_config_rejects_bad_bounds(kw):
    with pytest.raises(UserError):
        GateConfig(**kw)


# -- statistics, bounds, provenance --------------------------------------------------------------------
def test_wilson_and_newcombe_bounds():
    from infoard_deploy.verification.stats import newcombe_paired, wilson, z_one_sided

    z = z_one_sided(0.95)
    assert z == pytest.approx(1.6449, abs=1e-4)
    lo, hi = wilson(0, 300, z)
    assert lo == 0.0 and 0.008 < hi < 0.01  # zero events still leave an upper bound
    lo, hi = wilson(30, 100, 1.959964)  # Wilson (1927) 95% two-sided for 30/100: 0.2189 .. 0.3958
    assert lo == pytest.approx(0.2189, abs=1e-3) and hi == pytest.approx(0.3958, abs=1e-3)
    d, lo, hi = newcombe_paired(120, 2, 0, 28, z)
    assert d == pytest.approx(2 / 150) and lo < 0 < d < hi < 0.04
    d2, lo2, hi2 = newcombe_paired(120, 0, 2, 28, z)  # mirror image
    assert d2 == pytest.approx(-d) and lo2 == pytest.approx(-hi) and hi2 == pytest.approx(-lo)
    # more samples, same effect: a tighter interval
    assert newcombe_paired(1200, 20, 0, 280, z)[2] < hi


def test_decision_rule():
    from infoard_deploy.verification.stats import decide, paired_decision, rate_decision, z_one_sided

    z = z_one_sided(0.95)
    assert not decide(1.0, 0.0, 4.0, 3.0, 2.0).failed       # under the minimum effect: never fails
    assert decide(2.5, 0.5, 4.0, 3.0, 2.0).failed           # above it, and n too small to certify <= 3
    assert not decide(2.5, 2.1, 2.9, 3.0, 2.0).failed       # above it, but certified within the bound
    assert decide(3.5, 3.1, 3.9, 3.0, 2.0).failed           # beyond the bound: always
    assert rate_decision(1, 300, 0.0, 0.0, z).failed        # an explicit bound of 0: any event fails
    assert not rate_decision(0, 300, 0.0, 0.0, z).failed
    # faithful-INT8-like drift (2 net samples of 150) passes an int8 bound of 3 points; 6 of 150 fail
    assert not paired_decision(120, 2, 0, 28, 3.0, 2.0, z).failed
    assert paired_decision(116, 6, 0, 28, 3.0, 2.0, z).failed


def test_bounds_come_from_card_then_precision_then_flags():
    from infoard_deploy.verification.bounds import resolve_bounds

    b = resolve_bounds("int8", None, GateConfig())
    assert (b.min_clean_agreement, b.max_robust_drop, b.max_flip_rate, b.max_logit_rel) == (97.0, 3.0, 5.0, 0.5)
    assert b.max_robust_gain == 6.0
    assert b.sources["max_robust_drop"] == "default:int8"
    card = {"ort-cpu-int8": {"min_top1": 0.97, "max_robust_drop": 0.05},
            "trt-int8": {"min_top1": 0.98, "max_robust_drop": 0.04}}
    b = resolve_bounds("int8", card, GateConfig(), profile_name="card:x")
    assert b.min_clean_agreement == pytest.approx(98.0) and b.max_robust_drop == pytest.approx(4.0)  # strictest
    assert b.sources["max_robust_drop"] == "card:x"
    b = resolve_bounds("int8", card, GateConfig(max_robust_drop=1.0, max_logit_delta=2.0))
    assert b.max_robust_drop == 1.0 and b.max_robust_gain == 6.0  # the gain keeps its own bound
    assert b.max_logit_abs == 2.0 and b.max_logit_rel is None
    f32 = resolve_bounds("fp32", None, GateConfig())
    f16 = resolve_bounds("fp16", None, GateConfig())
    assert f32.max_logit_rel < f16.max_logit_rel and f32.max_robust_drop <= f16.max_robust_drop


def test_provenance_statuses(tmp_path):
    import json

    from infoard_deploy.card import card_path_for
    from infoard_deploy.utils import sha256_file
    from infoard_deploy.verification.provenance import artifact_provenance
    from verify_helpers import write_card

    ref = tmp_path / "ref.pt"
    ref.write_bytes(b"reference")
    other = tmp_path / "other.pt"
    other.write_bytes(b"other")
    art = tmp_path / "a.onnx"
    art.write_bytes(b"artifact")
    sha = sha256_file(ref)
    with pytest.raises(UserError, match="no model card"):
        artifact_provenance(art, sha, allow_cardless=False)
    assert artifact_provenance(art, sha, allow_cardless=True)["status"] == "cardless"
    write_card(art, architecture="cnn-small", mean=[0.5], std=[0.5], kind="onnx")
    assert artifact_provenance(art, sha, False)["status"] == "unrecorded"
    write_card(art, architecture="cnn-small", mean=[0.5], std=[0.5], kind="onnx", source=ref)
    assert artifact_provenance(art, sha, False)["status"] == "match"
    write_card(art, architecture="cnn-small", mean=[0.5], std=[0.5], kind="onnx", source=other)
    assert artifact_provenance(art, sha, False)["status"] == "mismatch"
    write_card(art, architecture="cnn-small", mean=[0.5], std=[0.5], kind="onnx", source=ref)
    art.write_bytes(b"artifact, edited after export")
    info = artifact_provenance(art, sha, False)
    assert info["status"] == "modified" and info["recorded_artifact_sha256"] != info["artifact_sha256"]
    card = json.loads(card_path_for(art).read_text())
    assert card["provenance"]["source_sha256"] == sha


def test_gate_config_rejects_unknown_skip_and_bad_confidence():
    with pytest.raises(UserError, match="unknown gate"):
        GateConfig(skip=("robust_dorp",))
    with pytest.raises(UserError, match="--confidence"):
        GateConfig(confidence=1.0)
    with pytest.raises(UserError, match="--min-effect-ratio"):
        GateConfig(min_effect_ratio=1.5)


def test_report_records_run_provenance(tmp_path):
    """Issue 17: software versions, the data's content hash, the seed scheme, the reference's normalisation and
    every attack's settings are in the verify report."""
    import json

    from infoard_deploy.api import export, verify
    from infoard_deploy.card import ModelCard
    from infoard_deploy.checkpoint import save_model
    from infoard_deploy.data import load_data
    from infoard_deploy.models import build_model

    b = load_data("digits")
    torch.manual_seed(0)
    m = build_model("cnn-small", 10, 1, 8, b.mean, b.std).eval()
    ref = save_model(m, tmp_path / "student.pt", ModelCard("cnn-small", 10, [1, 8, 8], list(b.mean), list(b.std),
                                                           classes=b.classes, dataset="digits", eps=0.1))
    arts = export(ref, ["ort-cpu-fp32"], calib_data="digits", out=str(tmp_path / "x"), check_n=32).artifact_paths
    rep = verify(ref, arts, "digits", n=32, attacks=["pgd20"], square_queries=10, eps_sweep=[],
                 out=str(tmp_path / "r"), device="cpu")
    p = rep["provenance"]
    assert p["software"]["torch"] and len(p["data"]["sha256"]) == 64 and p["data"]["n"] == 32
    assert p["seed_scheme"]["kind"] == "verify" and p["normalisation"]["source"] == "card"
    assert p["attack_settings"]["square"]["n_queries"] == 10 and "pgd20" in p["attack_settings"]
    assert json.loads((tmp_path / "r" / "report.json").read_text())["provenance"]["data"] == p["data"]
