"""Latency / throughput / peak-memory measurement and the ``bench`` command."""
from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from infoard_deploy.errors import UserError
from infoard_deploy.runtimes.base import Runtime


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A randomly initialised cnn-small checkpoint with card, and its fp32 ONNX export."""
    from infoard_deploy.card import ModelCard
    from infoard_deploy.checkpoint import save_model
    from infoard_deploy.exporting.onnx import export_onnx
    from infoard_deploy.models import build_model

    torch.manual_seed(0)
    d = tmp_path_factory.mktemp("bench")
    m = build_model("cnn-small", 10, 1, 8, [0.3], [0.4]).eval()
    card = ModelCard("cnn-small", 10, [1, 8, 8], [0.3], [0.4])
    save_model(m, d / "student.pt", card)
    export_onnx(m, d / "student.onnx", (1, 8, 8))
    return SimpleNamespace(dir=d, pt=d / "student.pt", onnx=d / "student.onnx", model=m)


class SleepyRuntime(Runtime):
    """Takes a known time per call and allocates a known amount of memory: ground truth for measure()."""

    name = "sleepy"

    def __init__(self, ms: float, alloc_mb: int = 0):
        super().__init__()
        self.ms, self.alloc_mb, self.calls = ms, alloc_mb, 0

    def _load(self):
        # touched pages count in RSS; keep it alive while open so the high-water mark sees it
        self.buf = np.ones(self.alloc_mb * 2**20 // 8) if self.alloc_mb else None

    def _unload(self):
        self.buf = None

    def _run(self, x):
        import time

        self.calls += 1
        t = time.perf_counter() + self.ms / 1e3
        while time.perf_counter() < t:  # busy wait: sleep() granularity is too coarse
            pass
        return np.zeros((len(x), 3), np.float32)


def test_measure_reports_known_latency_and_throughput():
    from infoard_deploy.benchmarking import measure

    rt = SleepyRuntime(ms=2.0)
    res = measure(rt, (1, 4, 4), batch_sizes=(1, 8), warmup=2, iters=10)
    assert set(res["latency"]) == {1, 8}
    for b, m in res["latency"].items():
        assert 1.9 <= m["median_ms"] <= 2.0 + 20  # at least the busy wait; generous on a loaded machine
        assert m["min_ms"] <= m["median_ms"] <= m["p95_ms"]
        assert m["throughput_ips"] == pytest.approx(b * 1e3 / m["median_ms"])
        assert m["iters"] == 10
    assert rt.calls == 2 * (2 + 10)  # warm-up calls happen and are not timed
    assert not rt._open  # measure() closes what it opened


def test_measure_peak_memory_sees_allocations():
    from infoard_deploy.benchmarking import measure, reset_peak_rss

    if not reset_peak_rss():
        pytest.skip("the kernel refuses to reset the RSS high-water mark here")
    res = measure(SleepyRuntime(ms=0.1, alloc_mb=96), (1, 2, 2), batch_sizes=(1,), warmup=0, iters=2)
    mem = res["memory"]
    assert mem["method"] == "VmHWM"
    assert mem["peak_delta_mb"] >= 80  # the 96 MB buffer held while the runtime was open
    small = measure(SleepyRuntime(ms=0.1), (1, 2, 2), batch_sizes=(1,), warmup=0, iters=2)["memory"]
    assert small["peak_delta_mb"] < 40  # the reset keeps the earlier 96 MB peak out


def test_measure_real_runtimes(tiny):
    from infoard_deploy.benchmarking import measure
    from infoard_deploy.runtimes import OrtRuntime, TorchRuntime

    for rt in (OrtRuntime(str(tiny.onnx), threads=1), TorchRuntime(tiny.model)):
        res = measure(rt, (1, 8, 8), batch_sizes=(1, 16), warmup=1, iters=3)
        assert all(m["median_ms"] > 0 and m["throughput_ips"] > 0 for m in res["latency"].values())
        assert res["memory"]["peak_rss_mb"] >= res["memory"]["rss_before_mb"] > 0


def test_measure_rejects_bad_settings():
    from infoard_deploy.benchmarking import measure

    with pytest.raises(UserError):
        measure(SleepyRuntime(0.1), (1, 2, 2), batch_sizes=(0,))
    with pytest.raises(UserError):
        measure(SleepyRuntime(0.1), (1, 2, 2), iters=0)


def test_bench_cli_json(tiny, cli):
    code, out, err = cli("bench", "--artifact", tiny.onnx, "--reference", tiny.pt, "--batch-sizes", "1,4",
                         "--threads", "1", "--warmup", "1", "--iters", "3", "--json")
    assert code == 0, err
    res = json.loads(out)
    assert [r["role"] for r in res["results"]] == ["reference", "artifact"]
    ref, art = res["results"]
    assert ref["runtime"] == "torch:fp32" and art["runtime"].startswith("onnxruntime:")
    assert set(art["latency"]) == {"1", "4"} and art["input_shape"] == [1, 8, 8]
    for b in ("1", "4"):
        m = art["latency"][b]
        assert m["latency_vs_reference"] == pytest.approx(m["median_ms"] / ref["latency"][b]["median_ms"])
    assert art["memory"]["peak_rss_mb"] > 0


def test_bench_cli_table(tiny, cli):
    code, out, err = cli("bench", "--artifact", tiny.onnx, "--batch-sizes", "2", "--warmup", "0", "--iters", "2")
    assert code == 0, err
    assert "student.onnx" in out and "median" in out


@pytest.mark.parametrize("args, needle", [
    ((), "nothing to measure"),
    (("--batch-sizes", "0"), "--batch-sizes"),
    (("--batch-sizes", "a,b"), "--batch-sizes"),
])
def test_bench_cli_bad_input(tiny, cli, args, needle):
    extra = ("--artifact", str(tiny.onnx)) if args else ()
    code, _, err = cli("bench", *extra, *args)
    assert code == 2 and needle in err and len(err.strip().splitlines()) == 1


def test_bench_cli_unknown_file_kind(tiny, cli, tmp_path):
    f = tmp_path / "model.tflite"
    f.write_bytes(b"x")
    code, _, err = cli("bench", "--artifact", f)
    assert code == 2 and "tflite" in err
