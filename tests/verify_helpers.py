"""Builders for the verification tests: a tiny robust student, faithful and broken deployments.

* :func:`train_student` -- cnn-small on digits, PGD-AT (Madry et al. 2018), eps 0.1, a few seconds.
* :func:`corrupt_qdq_scale` -- multiply the weight scale of one Q/DQ layer of an INT8 ONNX graph (what a
  wrong calibration table or a buggy quantiser does to a deployment).
* :class:`InputQuantizer` -- ``round(x * levels) / levels`` in front of a network: its gradient is zero
  almost everywhere, the textbook gradient-masking defence (Athalye et al. 2018) that looks robust to
  white-box attacks and is not.
* the fault catalogue itself lives in :mod:`infoard_deploy.verification.faults` (shared with
  ``benchmarks/verify_faults.py``); :func:`verify_many` runs one verification over many artifacts.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

EPS = 0.1


def train_student(bundle, epochs: int, adversarial: bool, seed: int = 0) -> nn.Module:
    """cnn-small on digits, PGD-AT at EPS (or plain training): the fault benchmark's own trainer."""
    from infoard_deploy.verification.faults import train_cnn_small

    return train_cnn_small(bundle, epochs, EPS if adversarial else 0.0, seed=seed)


def write_card(path: Path, *, architecture: str, mean, std, precision: str = "fp32", kind: str = "checkpoint",
               source: Path = None) -> None:
    """A card beside ``path``; with ``source`` its provenance names that checkpoint (as the export writes it)."""
    from infoard_deploy.card import ModelCard, card_path_for
    from infoard_deploy.utils import sha256_file

    prov = {"source_sha256": sha256_file(source), "artifact_sha256": sha256_file(path)} if source else {}
    ModelCard(architecture, 10, [1, 8, 8], list(mean), list(std), classes=[str(i) for i in range(10)], eps=EPS,
              dataset="digits", kind=kind, precision=precision, provenance=prov).save(card_path_for(path))


def weight_scale_names(path: Path):
    """Per-channel weight-scale initializers of the DequantizeLinear nodes feeding each Conv, in layer order."""
    import onnx

    m = onnx.load(str(path))
    inits = {i.name: i for i in m.graph.initializer}
    dq_scale = {n.output[0]: n.input[1] for n in m.graph.node
                if n.op_type == "DequantizeLinear" and n.input[0] in inits and n.input[1] in inits
                and len(inits[n.input[1]].dims) == 1}  # per-channel: a weight, not an activation
    return [dq_scale[n.input[1]] for n in m.graph.node if n.op_type == "Conv" and n.input[1] in dq_scale]


def corrupt_qdq_scale(src: Path, dst: Path, layer: int = 1, factor: float = 8.0) -> str:
    """Copy ``src`` with the weight scale of its ``layer``-th quantised Conv multiplied by ``factor``."""
    import onnx
    from onnx import numpy_helper

    m = onnx.load(str(src))
    name = weight_scale_names(src)[layer]
    for init in m.graph.initializer:
        if init.name == name:
            arr = numpy_helper.to_array(init).astype(np.float32) * np.float32(factor)
            init.CopyFrom(numpy_helper.from_array(arr, name))
    onnx.save(m, str(dst))
    return name


class InputQuantizer(nn.Module):
    """``net(round(x * levels) / levels)``: zero gradient w.r.t. ``x`` almost everywhere."""

    def __init__(self, net: nn.Module, levels: int = 8):
        super().__init__()
        self.net, self.levels = net, levels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(torch.round(x * self.levels) / self.levels)


def verify_many(reference: Path, artifacts, out: Path, *, n: int = 100, seed: int = 0, **kw) -> dict:
    """One ``run_verification`` at test budgets (pgd20 + apgd-ce transfer, own-graph, Square 100); the report."""
    from infoard_deploy.verification import run_verification

    args = dict(n=n, attacks=("pgd20", "apgd-ce"), square_queries=100, eps=EPS, eps_sweep=(), seed=seed,
                out=out, force=True, raise_on_gate=False, threads=1, batch_size=128)
    args.update(kw)
    return run_verification(reference, [str(a) for a in artifacts], "digits", **args)


def by_name(rep: dict) -> dict:
    """``{artifact name: (passed, failed gate names, cause)}`` of a report."""
    out = {}
    for a in rep["artifacts"]:
        failed = [g["gate"] for g in rep["gates"] if g["artifact"] == a["name"] and not g["passed"]]
        out[a["name"]] = (a["passed"], failed, a.get("cause", ""))
    return out
