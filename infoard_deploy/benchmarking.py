"""Latency, throughput and peak memory of a :class:`~infoard_deploy.runtimes.Runtime`.

``measure(runtime, input_shape=(C,H,W), batch_sizes=(1, 64), warmup=10, iters=50)`` returns::

    {"latency": {1: {"median_ms", "p95_ms", "mean_ms", "min_ms", "throughput_ips", "iters"}, 64: {...}},
     "memory": {"rss_before_mb", "peak_rss_mb", "peak_delta_mb", "method"}}

Latency is wall time of one ``runtime.predict(x)`` call on a pre-built float32 batch in [0,1]: host
array in, host logits out, so it includes the runtime's own input/output copies (for TensorRT the
host<->GPU transfers) -- what a caller of the deployed artifact pays. ``throughput_ips`` is images per
second at the median latency. Warm-up calls (graph optimisation, kernel selection, lazy allocation)
are not timed.

Memory: the process's resident-set high-water mark (Linux ``VmHWM``) while the runtime is opened and
run, minus the RSS just before. The high-water mark is reset first through ``/proc/self/clear_refs``
(value 5, Linux >= 4.0) so earlier peaks do not leak in; where that is refused the figure falls back to
``ru_maxrss`` (then it is an upper bound that may include earlier work, and ``method`` says so). It
counts host memory only; GPU memory is reported as ``cuda_peak_mb`` from torch's allocator when the
runtime runs on CUDA (TensorRT's own allocations made through torch buffers are included).
"""
from __future__ import annotations

import resource
import time
from pathlib import Path
from typing import Any, Dict, Optional, Sequence, Tuple

import numpy as np

from .errors import UserError


def _status_kb(field: str) -> Optional[int]:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return None


def rss_mb() -> Optional[float]:
    kb = _status_kb("VmRSS")
    return kb / 1024.0 if kb is not None else None


def reset_peak_rss() -> bool:
    """Reset the kernel's RSS high-water mark; True when it worked."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def peak_rss_mb() -> Tuple[Optional[float], str]:
    kb = _status_kb("VmHWM")
    if kb is not None:
        return kb / 1024.0, "VmHWM"
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0, "ru_maxrss"


def _time_calls(fn, x: np.ndarray, warmup: int, iters: int, min_time_s: float) -> np.ndarray:
    for _ in range(warmup):
        fn(x)
    times = []
    t_end = time.perf_counter() + min_time_s
    while len(times) < iters or time.perf_counter() < t_end:
        t0 = time.perf_counter()
        fn(x)
        times.append(time.perf_counter() - t0)
        if len(times) >= 20 * max(iters, 1):  # a cap for very fast calls with a long min_time_s
            break
    return np.asarray(times) * 1e3


def measure(runtime, input_shape: Sequence[int], batch_sizes: Sequence[int] = (1, 64), warmup: int = 10,
            iters: int = 50, seed: int = 0, min_time_s: float = 0.0) -> Dict[str, Any]:
    """Time ``runtime.predict`` per batch size; see the module docstring for what is measured."""
    if warmup < 0 or iters < 1:
        raise UserError(f"warmup must be >= 0 and iters >= 1 (got {warmup}, {iters})")
    bad = [b for b in batch_sizes if int(b) < 1]
    if bad or not batch_sizes:
        raise UserError(f"batch sizes must be positive integers, got {list(batch_sizes)}")
    shape = tuple(int(s) for s in input_shape)
    rng = np.random.default_rng(seed)
    before = rss_mb()
    exact = reset_peak_rss()
    cuda = _cuda_device(runtime)
    if cuda is not None:
        import torch

        torch.cuda.reset_peak_memory_stats(cuda)
    was_open = getattr(runtime, "_open", False)
    runtime.open()
    lat: Dict[int, Dict[str, float]] = {}
    try:
        for b in batch_sizes:
            x = rng.random((int(b), *shape), dtype=np.float32)
            ms = _time_calls(runtime.predict, x, warmup, iters, min_time_s)
            med = float(np.median(ms))
            lat[int(b)] = {"median_ms": med, "p95_ms": float(np.percentile(ms, 95)), "mean_ms": float(ms.mean()),
                           "min_ms": float(ms.min()), "throughput_ips": float(int(b) * 1e3 / med) if med > 0 else 0.0,
                           "iters": int(len(ms))}
        peak, method = peak_rss_mb()
    finally:
        if not was_open:
            runtime.close()
    mem: Dict[str, Any] = {"rss_before_mb": before, "peak_rss_mb": peak,
                           "peak_delta_mb": (peak - before) if (peak is not None and before is not None) else None,
                           "method": method if exact else f"{method} (not reset: may include earlier work)"}
    if cuda is not None:
        import torch

        mem["cuda_peak_mb"] = torch.cuda.max_memory_allocated(cuda) / 2**20
    return {"latency": lat, "memory": mem}


def _cuda_device(runtime):
    dev = getattr(runtime, "device", None)
    try:
        import torch

        if dev is not None and torch.device(dev).type == "cuda" and torch.cuda.is_available():
            return torch.device(dev)
    except (TypeError, RuntimeError):
        return None
    return None


def open_for_bench(path: str | Path, device=None, threads: int = 0, max_batch: int = 256):
    """``(runtime unopened, (C, H, W) or None, label)`` for an artifact or a torch checkpoint."""
    import torch

    from .card import load_card
    from .runtimes.factory import open_runtime, runtime_kind

    path = Path(path)
    kind = runtime_kind(path)
    dev = torch.device(device) if device is not None else torch.device("cpu")
    card = None
    try:
        card = load_card(path, required=False)
    except UserError:
        card = None
    if kind == "onnxruntime":
        from .runtimes.onnxrt import OrtRuntime

        rt = open_runtime(path, "cpu" if dev.type != "cuda" else dev, max_batch=max_batch)
        if isinstance(rt, OrtRuntime):
            rt.threads = threads
    elif kind == "tensorrt":
        rt = open_runtime(path, dev if dev.type == "cuda" else "cuda", max_batch=max_batch)
    else:
        if threads:
            torch.set_num_threads(threads)
        rt = open_runtime(path, dev, max_batch=max_batch)
    shape = tuple(card.input_shape) if card is not None else None
    if shape is None and kind == "onnxruntime":
        with rt:
            shape = rt.input_shape
    if shape is None:
        raise UserError(f"cannot tell the input shape of {path.name}: put its model card beside it")
    return rt, shape, f"{kind}:{rt.precision}"


__all__ = ["measure", "open_for_bench", "rss_mb", "peak_rss_mb", "reset_peak_rss"]
