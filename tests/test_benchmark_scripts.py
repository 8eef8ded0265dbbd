"""The benchmark scripts' own logic: config names and the paired per-image comparison."""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

from distill_bench import parse_config  # noqa: E402
from paired_aa import paired  # noqa: E402


def test_parse_config():
    assert parse_config("rslad+asa") == ("rslad", True, None)
    assert parse_config("infoard-asa-mim") == ("infoard", False, False)
    assert parse_config("infoard@swap") == ("infoard", None, None)


def test_paired_difference_and_interval():
    rng = np.random.default_rng(0)
    b = [rng.random(200) < 0.5 for _ in range(3)]
    same = paired(b, b, reps=2000)
    assert same["diff"] == 0.0 and same["ci95"] == [0.0, 0.0] and same["a_only"] == [0, 0, 0]
    # A fixes 6 images per seed that B gets wrong and breaks none: +3 points exactly, interval above 0
    a = [bi.copy() for bi in b]
    for ai in a:
        ai[np.flatnonzero(~ai)[:6]] = True
    r = paired(a, b, reps=2000)
    assert r["diff"] == pytest.approx(3.0) and r["a_only"] == [6, 6, 6] and r["b_only"] == [0, 0, 0]
    assert 0.0 < r["ci95"][0] <= 3.0 <= r["ci95"][1]
    # swapped roles give the mirrored result
    assert paired(b, a, reps=2000)["diff"] == pytest.approx(-3.0)
