"""Shared fixtures: tiny models and data, and a CLI runner that returns (exit code, stdout, stderr)."""
from __future__ import annotations


import numpy as np
import pytest
import torch

# The tests use tiny models, which OpenMP barriers dominate: one intra-op thread is faster, and on a
# shared 2-core machine up to ~10x faster (measured), than two.
torch.set_num_threads(1)


@pytest.fixture
def cli(capsys):
    from infoard_deploy.cli import main

    def run(*args):
        code = main([str(a) for a in args])
        out = capsys.readouterr()
        return code, out.out, out.err

    return run


@pytest.fixture
def tiny_bundle():
    """A 10-class 8x8 grey dataset drawn from the real digits set (small and fast)."""
    from infoard_deploy.data import load_data

    return load_data("digits")


@pytest.fixture
def rng():
    return np.random.default_rng(0)
