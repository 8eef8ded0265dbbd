"""Export to ONNX fp32 / fp16 / INT8 Q/DQ (+ TensorRT plumbing), profiles, cards and bad-input handling.

One tiny cnn-small is trained on digits (a few seconds) and exported once through the CLI; most tests
inspect those artifacts. Bad-input tests check: one line, non-zero exit, nothing written/overwritten.
"""
from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from infoard_deploy.errors import UserError

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")


# -- fixtures ---------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """cnn-small trained 8 epochs on digits (val acc ~0.98), saved with its card."""
    from infoard_deploy.card import ModelCard
    from infoard_deploy.checkpoint import save_model
    from infoard_deploy.data import BatchLoader, load_data, split_indices
    from infoard_deploy.models import build_model

    torch.manual_seed(0)
    b = load_data("digits")
    m = build_model("cnn-small", 10, 1, 8, b.mean, b.std)
    opt = torch.optim.Adam(m.parameters(), lr=3e-3)
    tr, _ = split_indices(len(b.train), 0.1, 0)
    for ep in range(8):
        m.train()
        for x, y, _ in BatchLoader(b.train, tr, 64, shuffle=True, seed=ep):
            loss = torch.nn.functional.cross_entropy(m(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
    m.eval()
    d = tmp_path_factory.mktemp("model")
    card = ModelCard("cnn-small", 10, list(b.input_shape), list(b.mean), list(b.std), classes=b.classes,
                     dataset="digits")
    path = save_model(m, d / "student.pt", card)
    return SimpleNamespace(path=path, model=m, card=card, bundle=b)


@pytest.fixture(scope="module")
def exported(trained, tmp_path_factory):
    """`export --profile ort-cpu-fp32 --fp16 --int8` once; the parsed JSON result and the folder."""
    from infoard_deploy.cli import main
    from infoard_deploy.commands._common import STATE

    out = tmp_path_factory.mktemp("export")
    sink = out.parent / "export-result.json"
    STATE.json_sink = str(sink)  # the module-scoped fixture cannot use capsys
    try:
        code = main(["export", "--model", str(trained.path), "--profile", "ort-cpu-fp32", "--fp16", "--int8",
                     "--calib-data", "digits", "--calib-n", "256", "--out", str(out), "--json"])
    finally:
        STATE.json_sink = None
    assert code == 0
    return SimpleNamespace(out=out, result=json.loads(sink.read_text()))


def _one_line_error(code, err, *needles):
    assert code == 2, err
    assert "Traceback" not in err
    assert len(err.strip().splitlines()) == 1, err
    for n in needles:
        assert n in err, err


def _snapshot(folder: Path):
    return {p.name: (p.stat().st_mtime_ns, p.read_bytes()) for p in folder.iterdir()} if folder.exists() else {}


# -- the happy path ---------------------------------------------------------------------------------
def test_export_produces_three_parity_checked_artifacts(exported):
    res = exported.result
    assert res["passed"] and not res["failures"]
    names = {Path(a["path"]).name: a for a in res["artifacts"]}
    assert set(names) == {"student.fp32.onnx", "student.fp16.onnx", "student.int8.onnx"}
    fp32, fp16, int8 = names["student.fp32.onnx"], names["student.fp16.onnx"], names["student.int8.onnx"]
    assert fp32["parity"]["max_rel"] <= 1e-4 and fp32["parity"]["top1_agreement"] == 1.0
    assert 0 < fp16["parity"]["max_rel"] <= 1e-2  # fp16 really differs, within tolerance
    assert int8["parity"]["top1_agreement"] >= 0.97
    assert int8["parity"]["max_abs"] > fp16["parity"]["max_abs"]  # int8 moves logits more than fp16
    for a in res["artifacts"]:
        p = a["parity"]
        assert p["n"] > 100 and p["accuracy"] >= p["reference_accuracy"] - 0.02 and p["reference_accuracy"] > 0.9
    assert fp32["profiles"] == ["ort-cpu-fp32"] and int8["profiles"] == ["ort-cpu-int8"]


def test_artifacts_run_at_batch_1_and_64_and_match_torch(exported, trained):
    rng = np.random.default_rng(1)
    for prec, atol in (("fp32", 1e-4), ("fp16", 5e-2)):
        sess = ort.InferenceSession(str(exported.out / f"student.{prec}.onnx"), providers=["CPUExecutionProvider"])
        inp = sess.get_inputs()[0]
        assert inp.type == "tensor(float)" and sess.get_outputs()[0].type == "tensor(float)"
        for b in (1, 64, 5):
            x = rng.random((b, 1, 8, 8), dtype=np.float32)
            out = sess.run(None, {inp.name: x})[0]
            with torch.no_grad():
                ref = trained.model(torch.from_numpy(x)).numpy()  # [0,1] in: normalisation is inside the graph
            assert out.shape == (b, 10)
            np.testing.assert_allclose(out, ref, atol=atol, rtol=0)


def test_cards_beside_every_artifact(exported, trained):
    from infoard_deploy.card import load_card
    from infoard_deploy.utils import sha256_file

    sha = sha256_file(trained.path)
    for prec in ("fp32", "fp16", "int8"):
        path = exported.out / f"student.{prec}.onnx"
        card = load_card(path)
        raw = json.loads((exported.out / f"student.{prec}.card.json").read_text())
        assert card.precision == prec and card.kind == "onnx"
        assert card.mean == trained.card.mean and card.std == trained.card.std and card.input_shape == [1, 8, 8]
        assert card.provenance["source_sha256"] == sha
        assert card.provenance["artifact_sha256"] == sha256_file(path)
        assert raw["extra"]["opset"] == 18
        assert raw["extra"]["input_names"] == ["input"] and raw["extra"]["output_names"] == ["logits"]
        assert raw["extra"]["dynamic_batch"]["dynamic"] is True
        assert raw["extra"]["batch_range"] == {"min": 1, "opt": 64, "max": 512 if prec == "fp16" else 256}
        par = raw["metrics"]["parity"]
        assert {"max_abs", "mean_abs", "top1_agreement", "accuracy"} <= set(par)
        assert raw["metrics"]["gate"]["passed"] is True
    cal = json.loads((exported.out / "student.int8.card.json").read_text())["extra"]["calibration"]
    assert cal["method"] == "minmax" and cal["n"] == 256 and cal["split"].startswith("train")
    assert "calibration" not in json.loads((exported.out / "student.fp32.card.json").read_text())["extra"]


def test_int8_graph_is_symmetric_qdq(exported):
    from onnx import numpy_helper

    from infoard_deploy.exporting.quantize import qdq_summary

    path = exported.out / "student.int8.onnx"
    m = onnx.load(str(path))
    inits = {i.name: numpy_helper.to_array(i) for i in m.graph.initializer}
    q = [n for n in m.graph.node if n.op_type == "QuantizeLinear"]
    dq = [n for n in m.graph.node if n.op_type == "DequantizeLinear"]
    assert q and dq
    per_channel_scales = 0
    for n in q + dq:
        zp = inits[n.input[2]]
        assert zp.dtype == np.int8 and np.all(zp == 0)  # symmetric int8: what TensorRT accepts
        per_channel_scales += inits[n.input[1]].size > 1
    assert per_channel_scales >= 4  # conv + gemm weights quantized per output channel
    consumers = {n.op_type for n in m.graph.node if any(i in {d.output[0] for d in dq} for i in n.input)}
    assert {"Conv", "Gemm"} <= consumers
    s = qdq_summary(path)
    assert s["symmetric"] and s["quantize_linear"] == len(q) and s["zero_point_types"] == {"int8": len(q) + len(dq)}


def test_uint8_asymmetric_option_for_onnxruntime(exported, tmp_path):
    from infoard_deploy.exporting.quantize import qdq_summary, quantize_int8

    rng = np.random.default_rng(0)
    calib = rng.random((64, 1, 8, 8), dtype=np.float32)
    dst = quantize_int8(exported.out / "student.fp32.onnx", tmp_path / "u8.onnx", calib,
                        activations="uint8-asymmetric")
    s = qdq_summary(dst)
    assert not s["symmetric"] and "uint8" in s["zero_point_types"] and "int8" in s["zero_point_types"]
    with pytest.raises(UserError, match="activation scheme"):
        quantize_int8(exported.out / "student.fp32.onnx", tmp_path / "x.onnx", calib, activations="int4")
    with pytest.raises(UserError, match="calibration images"):
        quantize_int8(exported.out / "student.fp32.onnx", tmp_path / "y.onnx", None)
    with pytest.raises(UserError, match=r"\(1, 8, 8\)"):
        quantize_int8(exported.out / "student.fp32.onnx", tmp_path / "z.onnx", calib[:, :, :4])
    assert not (tmp_path / "x.onnx").exists() and not (tmp_path / "y.onnx").exists()


def test_fp16_graph_has_fp16_weights_and_fp32_io(exported):
    m = onnx.load(str(exported.out / "student.fp16.onnx"))
    kinds = {i.data_type for i in m.graph.initializer if len(i.dims) >= 2}
    assert kinds == {onnx.TensorProto.FLOAT16}
    assert m.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert m.graph.output[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT


def test_calibration_draws_training_images_only(trained, monkeypatch):
    import infoard_deploy.data as data_mod
    from infoard_deploy.data import split_indices, to_tensor
    from infoard_deploy.exporting.data import load_export_images

    real = data_mod.load_data

    def guarded(name, root=None, download=False, **kw):
        b = real(name, root=root, download=download, **kw)

        class NoTest:
            def __len__(self):
                return len(b.test)

            def get(self, idx):
                raise AssertionError("the test split was read during export")

        b.test = NoTest()
        return b

    monkeypatch.setattr(data_mod, "load_data", guarded)
    imgs = load_export_images("digits", None, None, (1, 8, 8), calib_n=200, check_n=50, want_calib=True)
    assert imgs.calib.shape == (200, 1, 8, 8) and imgs.calib.dtype == np.float32
    assert 0.0 <= imgs.calib.min() and imgs.calib.max() <= 1.0
    train_x = to_tensor(trained.bundle.train.get(np.arange(len(trained.bundle.train)))[0]).numpy()
    _, val_idx = split_indices(len(train_x), 0.1, 0)
    flat = train_x.reshape(len(train_x), -1)
    val_rows = {flat[i].tobytes() for i in val_idx}
    train_rows = {r.tobytes() for r in flat}
    for img in imgs.calib.reshape(200, -1):
        assert img.tobytes() in train_rows  # a training image ...
    assert sum(img.tobytes() in val_rows for img in imgs.calib.reshape(200, -1)) <= 2  # ... not the parity slice
    np.testing.assert_array_equal(imgs.check_x, train_x[val_idx[:50]])  # parity images: the TRAIN val slice


# -- profiles ---------------------------------------------------------------------------------------
def test_shipped_profiles_load_and_register():
    from infoard_deploy.exporting.profiles import PROFILES, load_profile

    expected = {"ort-cpu-fp32", "ort-cpu-int8", "ort-cuda-fp16", "trt-fp16", "trt-int8", "jetson-orin-fp16",
                "jetson-orin-int8"}
    assert expected <= set(PROFILES.names())
    for name in expected:
        p = load_profile(name)
        assert p.name == name and PROFILES.meta(name)["about"] == p.description and p.description
        assert 1 <= p.batch_min <= p.batch_opt <= p.batch_max
    assert load_profile("trt-int8").runtime == "tensorrt" and load_profile("trt-int8").providers == ()
    assert load_profile("jetson-orin-fp16").batch_max <= 32
    with pytest.raises(UserError, match="did you mean"):
        load_profile("trt-fp61")


@pytest.mark.parametrize("body, msg", [
    ('name="x"\nruntime="onnxruntime"\nprecisions=["fp32"]\nbatchsize=4\n', "unknown key"),
    ('name="x"\nruntime="onnxruntime"\nprecisions=["fp32"]\n[batch]\nmin=1\nopt=2\nmax=4\nmid=3\n', "unknown key"),
    ('name="x"\nruntime="onnxruntime"\nprecisions=["fp32"]\n[tolerances.fp32]\nmax_abss=1.0\n', "unknown key"),
    ('name="x"\nruntime="tflite"\nprecisions=["fp32"]\n', "runtime must be"),
    ('name="x"\nruntime="onnxruntime"\nprecisions=["fp8"]\n', "unknown precision"),
    ('name="x"\nruntime="onnxruntime"\nprecisions=["fp32"]\n[batch]\nmin=8\nopt=4\nmax=64\n', "min <= opt <= max"),
    ('name="x"\nruntime="tensorrt"\nprecisions=["fp16"]\nproviders=["CPUExecutionProvider"]\n', "onnxruntime profiles only"),
    ('name="x"\nruntime="onnxruntime"\nprecisions=["fp32"]\n[tolerances.int8]\nmin_top1=0.9\n', "does not produce"),
    ('name="x"\nruntime="onnxruntime"\nprecisions=["int8"]\n[calibration]\nmethod="kl"\n', "calibration.method"),
    ('name="x"\nprecisions=["fp32"]\n', "missing required key 'runtime'"),
    ('name="x"\nruntime="tensorrt"\nprecisions=["int8"]\n[calibration]\nactivations="uint8-asymmetric"\n',
     "only int8-symmetric"),
    ('name = [', "not valid TOML"),
])
def test_profile_validation_rejects_bad_files(tmp_path, body, msg):
    from infoard_deploy.exporting.profiles import load_profile

    f = tmp_path / "p.toml"
    f.write_text(body)
    with pytest.raises(UserError, match=msg):
        load_profile(f)


# -- gates and bad input ----------------------------------------------------------------------------
def test_gate_failure_exits_1_with_figures(trained, tmp_path, cli):
    prof = tmp_path / "strict.toml"
    prof.write_text('name = "strict-fp16"\nruntime = "onnxruntime"\nprecisions = ["fp16"]\n'
                    '[tolerances.fp16]\nmax_abs = 1e-9\n')
    code, out, err = cli("export", "--model", trained.path, "--profile", prof, "--check-n", "64",
                         "--out", tmp_path / "o")
    assert code == 1, err
    assert "gate failed" in err and "max |dlogit|" in err and "> 1e-09" in err
    card = json.loads((tmp_path / "o" / "student.fp16.card.json").read_text())
    assert card["metrics"]["gate"]["passed"] is False and card["provenance"]["profiles"] == ["strict-fp16"]


def test_int8_without_calibration_data_is_refused(trained, tmp_path, cli):
    d = tmp_path / "m"
    d.mkdir()
    (d / "student.pt").write_bytes(trained.path.read_bytes())
    card = json.loads(Path(str(trained.path).replace(".pt", ".card.json")).read_text())
    card["dataset"] = None  # nothing to calibrate on
    (d / "student.card.json").write_text(json.dumps(card))
    code, _, err = cli("export", "--model", d / "student.pt", "--int8", "--out", tmp_path / "o")
    _one_line_error(code, err, "calibration")
    assert not (tmp_path / "o").exists() or not any((tmp_path / "o").iterdir())


def test_card_without_normalisation_is_refused(trained, tmp_path, cli):
    d = tmp_path / "m"
    d.mkdir()
    (d / "student.pt").write_bytes(trained.path.read_bytes())
    card = json.loads(Path(str(trained.path).replace(".pt", ".card.json")).read_text())
    del card["mean"], card["std"]
    (d / "student.card.json").write_text(json.dumps(card))
    code, _, err = cli("export", "--model", d / "student.pt", "--fp32", "--out", tmp_path / "o")
    _one_line_error(code, err, "mean", "std")
    assert not (tmp_path / "o").exists()


def test_unsupported_torch_operator_is_a_user_error(tmp_path):
    from infoard_deploy.exporting.onnx import export_onnx

    class Bessel(torch.nn.Module):  # prims.bessel_i1e has no ONNX translation
        def forward(self, x):
            return torch.special.i1e(x).flatten(1)[:, :10]

    with pytest.raises(UserError, match="bessel_i1e") as e:
        export_onnx(Bessel(), tmp_path / "b.onnx", (1, 8, 8))
    assert "\n" not in str(e.value)
    assert not list(tmp_path.iterdir())  # no partial file left behind


def test_custom_domain_node_in_given_onnx_is_refused(trained, tmp_path, cli):
    from onnx import TensorProto, helper

    node = helper.make_node("Mystery", ["input"], ["logits"], domain="com.acme")
    g = helper.make_graph([node], "g", [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 1, 8, 8])],
                          [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 10])])
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 18), helper.make_opsetid("com.acme", 1)])
    src = tmp_path / "custom.onnx"
    onnx.save(model, str(src))
    (tmp_path / "custom.card.json").write_text(
        json.dumps({**json.loads(Path(str(trained.path).replace(".pt", ".card.json")).read_text()),
                    "architecture": "onnx"}))
    code, _, err = cli("export", "--model", src, "--fp32", "--out", tmp_path / "o")
    _one_line_error(code, err, "com.acme::Mystery", "unsupported operator")
    assert not (tmp_path / "o").exists()


def test_output_folder_of_another_model_needs_force(exported, trained, tmp_path, cli):
    out = tmp_path / "o"
    out.mkdir()
    for f in ("student.fp32.onnx", "student.fp32.card.json"):
        (out / f).write_bytes((exported.out / f).read_bytes())
    card = json.loads((out / "student.fp32.card.json").read_text())
    card["provenance"]["source_sha256"] = "f" * 64  # exported from some other checkpoint
    (out / "student.fp32.card.json").write_text(json.dumps(card))
    before = _snapshot(out)
    code, _, err = cli("export", "--model", trained.path, "--fp32", "--out", out)
    _one_line_error(code, err, "another model", "--force")
    assert _snapshot(out) == before
    code, _, err = cli("export", "--model", trained.path, "--fp32", "--out", out, "--force", "--check-n", "32")
    assert code == 0, err
    new = json.loads((out / "student.fp32.card.json").read_text())
    assert new["provenance"]["source_sha256"] != "f" * 64


def test_same_model_rerun_without_force_is_refused(exported, trained, cli):
    before = _snapshot(exported.out)
    code, _, err = cli("export", "--model", trained.path, "--fp32", "--out", exported.out)
    _one_line_error(code, err, "already exists", "--force")
    assert _snapshot(exported.out) == before


def test_trt_without_tensorrt_says_so(trained, tmp_path, cli):
    from infoard_deploy.exporting.tensorrt import TRT_MISSING, tensorrt_available

    if tensorrt_available():
        pytest.skip("TensorRT and a GPU are present here")
    code, _, err = cli("export", "--model", trained.path, "--trt", "--out", tmp_path / "o")
    assert code == 2 and len(err.strip().splitlines()) == 1
    try:
        import tensorrt  # noqa: F401
    except (ImportError, OSError):
        assert TRT_MISSING in err
    else:
        assert "GPU" in err
    assert not (tmp_path / "o").exists()


def test_profile_flags_conflict_on_calibration(trained, tmp_path):
    from infoard_deploy.exporting.pipeline import plan
    from infoard_deploy.exporting.profiles import load_profile

    a, b = load_profile("ort-cpu-int8"), load_profile("jetson-orin-int8")  # minmax vs entropy
    with pytest.raises(UserError, match="different INT8 calibration"):
        plan("s", [a, b], tmp_path)
    arts = plan("s", [a, b.with_overrides(calib_method="minmax")], tmp_path)
    assert [x.path.name for x in arts] == ["fp32.onnx", "s.int8.onnx", "s.jetson-orin-int8.engine"]
    assert not arts[0].requested  # the fp32 base is an intermediate here
