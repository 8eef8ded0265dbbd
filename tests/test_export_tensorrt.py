"""TensorRT engine building: version branching (10.x / 11.x) and build calls, checked against a stand-in
``tensorrt`` module that records what the builder is asked to do; plus a real build when TensorRT and a
GPU are present (marked ``trt``, skipped otherwise)."""
from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from infoard_deploy.errors import UserError
from infoard_deploy.exporting.tensorrt import build_engine, network_flags, profile_shapes, trt_version


class _Rec:
    def __init__(self, log, name):
        self._log, self._name = log, name

    def __getattr__(self, attr):
        def call(*a, **k):
            self._log.append((f"{self._name}.{attr}", a, k))
        return call


def fake_trt(version: str, strongly_typed_flag: bool = True, parse_ok: bool = True, input_shape=(-1, 1, 8, 8),
             build_ok: bool = True):
    """A stand-in for the tensorrt module exposing the 10.x/11.x names build_engine uses."""
    log = []
    flags = SimpleNamespace(STRONGLY_TYPED=1) if strongly_typed_flag else SimpleNamespace()
    major = int(version.split(".")[0])
    builder_flags = SimpleNamespace(TF32=7, **({"FP16": 0, "INT8": 1} if major < 11 else {}))

    class Network:
        num_inputs = 1

        def get_input(self, i):
            return SimpleNamespace(name="input", shape=input_shape)

    class Parser:
        num_errors = 0 if parse_ok else 2

        def __init__(self, network, logger):
            log.append(("OnnxParser", (), {}))

        def parse_from_file(self, path):
            log.append(("parse_from_file", (Path(path).name,), {}))
            return parse_ok

        def get_error(self, i):
            return SimpleNamespace(desc=lambda: f"unsupported node #{i}")

    class Builder:
        def __init__(self, logger):
            pass

        def create_network(self, flags=0):
            log.append(("create_network", (flags,), {}))
            return Network()

        def create_builder_config(self):
            return _Rec(log, "config")

        def create_optimization_profile(self):
            return _Rec(log, "profile")

        def build_serialized_network(self, network, config):
            log.append(("build_serialized_network", (), {}))
            return b"serialized-engine" if build_ok else None

    mod = SimpleNamespace(__version__=version, NetworkDefinitionCreationFlag=flags, BuilderFlag=builder_flags,
                          MemoryPoolType=SimpleNamespace(WORKSPACE="WORKSPACE"), Builder=Builder, OnnxParser=Parser,
                          Logger=type("Logger", (), {"WARNING": 2, "__init__": lambda self, sev=None: None}))
    return mod, log


def _calls(log, name):
    return [c for c in log if c[0] == name]


def test_version_parsing_and_flags():
    assert trt_version(SimpleNamespace(__version__="10.13.0.35")) == (10, 13)
    assert network_flags(fake_trt("10.3.0")[0]) == 1 << 1  # 10.x: STRONGLY_TYPED must be asked for
    assert network_flags(fake_trt("11.4.0.106")[0]) == 1 << 1  # 11.x: accepted (ignored) when present
    assert network_flags(fake_trt("11.4.0", strongly_typed_flag=False)[0]) == 0  # 11.x: always strongly typed
    with pytest.raises(UserError, match="STRONGLY_TYPED"):
        network_flags(fake_trt("10.0.1", strongly_typed_flag=False)[0])
    with pytest.raises(UserError, match="too old"):
        network_flags(fake_trt("8.6.1")[0])
    with pytest.raises(UserError, match="version"):
        trt_version(SimpleNamespace(__version__="dev"))


def test_profile_shapes():
    s = profile_shapes((3, 32, 32), (1, 8, 64))
    assert s == {"min": (1, 3, 32, 32), "opt": (8, 3, 32, 32), "max": (64, 3, 32, 32)}
    for bad in ((8, 4, 64), (0, 1, 2), (1, 2)):
        with pytest.raises(UserError):
            profile_shapes((3, 32, 32), bad)
    with pytest.raises(UserError):
        profile_shapes((32, 32), (1, 2, 3))


@pytest.mark.parametrize("version", ["10.3.0.26", "10.13.0.35", "11.4.0.106"])
@pytest.mark.parametrize("precision", ["fp16", "int8", "fp32"])
def test_build_engine_is_strongly_typed_without_precision_flags(tmp_path, version, precision):
    trt, log = fake_trt(version)
    src = tmp_path / "m.onnx"
    src.write_bytes(b"onnx")
    facts = build_engine(src, tmp_path / "m.engine", (1, 8, 8), batch=(1, 16, 128), workspace_mb=256,
                         precision=precision, trt=trt)
    assert (tmp_path / "m.engine").read_bytes() == b"serialized-engine"
    assert _calls(log, "create_network")[0][1] == (2,)
    assert _calls(log, "parse_from_file")[0][1] == ("m.onnx",)
    # precision comes from the graph: no FP16/INT8 builder flags, ever
    assert not _calls(log, "config.set_flag")
    cleared = _calls(log, "config.clear_flag")
    assert cleared == ([("config.clear_flag", (7,), {})] if precision == "fp32" else [])  # TF32 off for fp32 only
    assert _calls(log, "config.set_memory_pool_limit") == [("config.set_memory_pool_limit", ("WORKSPACE", 256 << 20), {})]
    assert _calls(log, "profile.set_shape") == [("profile.set_shape", ("input", (1, 1, 8, 8), (16, 1, 8, 8),
                                                                       (128, 1, 8, 8)), {})]
    assert len(_calls(log, "config.add_optimization_profile")) == 1
    assert facts["batch"] == {"min": 1, "opt": 16, "max": 128} and facts["strongly_typed"]
    assert facts["api"] == f"{version.split('.')[0]}.x" and facts["engine_bytes"] == len(b"serialized-engine")


def test_build_engine_errors_are_one_line(tmp_path):
    src = tmp_path / "m.onnx"
    src.write_bytes(b"onnx")
    with pytest.raises(UserError, match=r"cannot parse m.onnx: unsupported node #0 \(\+1 more\)"):
        build_engine(src, tmp_path / "a.engine", (1, 8, 8), trt=fake_trt("10.8.0", parse_ok=False)[0])
    with pytest.raises(UserError, match="static batch"):
        build_engine(src, tmp_path / "b.engine", (1, 8, 8), trt=fake_trt("10.8.0", input_shape=(1, 1, 8, 8))[0])
    with pytest.raises(UserError, match="input is"):
        build_engine(src, tmp_path / "c.engine", (3, 8, 8), trt=fake_trt("10.8.0")[0])
    with pytest.raises(UserError, match="could not build"):
        build_engine(src, tmp_path / "d.engine", (1, 8, 8), trt=fake_trt("11.0.0", build_ok=False)[0])
    assert not list(tmp_path.glob("*.engine"))  # nothing half-written


def test_trt_runtime_dtype_mapping_and_device_check():
    from infoard_deploy.runtimes import RUNTIMES
    from infoard_deploy.runtimes.tensorrt_rt import TrtRuntime, torch_dtype

    assert RUNTIMES.get("tensorrt") is TrtRuntime
    assert torch_dtype(SimpleNamespace(name="HALF")) is torch.float16
    assert torch_dtype(SimpleNamespace(name="FLOAT")) is torch.float32
    with pytest.raises(UserError):
        torch_dtype(SimpleNamespace(name="FP4"))
    with pytest.raises(UserError, match="CUDA device"):
        TrtRuntime("x.engine", device="cpu")


@pytest.mark.trt
def test_real_engine_build_and_parity(tmp_path):
    from infoard_deploy.exporting.tensorrt import tensorrt_available

    if not tensorrt_available():
        pytest.skip("needs TensorRT and an NVIDIA GPU")
    from infoard_deploy.exporting.onnx import export_onnx
    from infoard_deploy.exporting.quantize import quantize_int8, to_fp16
    from infoard_deploy.models import build_model
    from infoard_deploy.runtimes.tensorrt_rt import TrtRuntime

    torch.manual_seed(0)
    m = build_model("cnn-small", 10, 1, 8, [0.3], [0.4]).eval()
    export_onnx(m, tmp_path / "m.onnx", (1, 8, 8))
    to_fp16(tmp_path / "m.onnx", tmp_path / "m16.onnx")
    rng = np.random.default_rng(0)
    quantize_int8(tmp_path / "m.onnx", tmp_path / "m8.onnx", rng.random((64, 1, 8, 8), dtype=np.float32))
    x = rng.random((37, 1, 8, 8), dtype=np.float32)
    with torch.no_grad():
        ref = m(torch.from_numpy(x)).numpy()
    for src, prec, tol in (("m16.onnx", "fp16", 2e-2), ("m8.onnx", "int8", 0.5)):
        build_engine(tmp_path / src, tmp_path / f"{prec}.engine", (1, 8, 8), batch=(1, 16, 64), workspace_mb=256,
                     precision=prec)
        with TrtRuntime(str(tmp_path / f"{prec}.engine"), precision=prec, device="cuda") as rt:
            out = rt.predict(x)
            assert rt.predict(x[:1]).shape == (1, 10)
        assert out.shape == (37, 10) and np.abs(out - ref).max() <= tol * max(1.0, np.abs(ref).max())
