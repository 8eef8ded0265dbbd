"""Realistic deployment faults around a reference checkpoint, to measure that ``verify`` catches them.

Used by ``tests/test_verify_faults.py`` and ``benchmarks/verify_faults.py``. Every builder starts from the
reference's own faithful exports (``export_artifacts``) and writes an artifact *with a model card*, as a
broken pipeline would: unless the fault is about provenance, the card claims the reference as its source
(``card_like``), so only the artifact's behaviour can give it away.

=================  =======================================================================================
``retrained``      the same architecture retrained with another seed, exported with its own honest card
``wrong_eps``      a model trained at a much smaller eps, shipped under the reference's card
``softmax``        softmax appended to the logits (same arg-max)
``logit_scale``    logits divided by 10 (a temperature folded into the graph; same arg-max)
``input_255``      the graph divides its input by 255 (expects 0-255 pixels, gets [0,1])
``transposed``     the graph transposes H and W of its input (layout mismatch)
``no_norm``        exported without the normalisation the reference applies inside itself
``int8_lossy``     INT8 calibrated on images scaled by 0.1 (clipped activations: clean accuracy collapses)
``qdq_scale``      INT8 with one Conv's weight scale multiplied by 8 (a corrupted calibration table)
``masked_input``   an input quantiser (round to 8 levels) inserted in front: zero gradients, looks robust
``fp16_overflow``  a checkpoint whose activations exceed the fp16 range (fp32 function unchanged), exported
                   to fp16: ORT CPU hides it (fp32 arithmetic); fp16 arithmetic gives NaN rows. It has its own
                   reference (the rescaled checkpoint), from which its export is faithful by process.
``cardless``       a faithful fp32 file shipped without its card (refused unless --allow-cardless)
=================  =======================================================================================
"""
from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, List, Optional

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

FAULTS = ("retrained", "wrong_eps", "softmax", "logit_scale", "input_255", "transposed", "no_norm", "int8_lossy",
          "qdq_scale", "masked_input", "fp16_overflow", "cardless")


@dataclass
class Built:
    name: str
    path: Path
    reference: Path          # the checkpoint to verify it against
    refused_expected: bool = False


def train_cnn_small(bundle, epochs: int, eps: float, seed: int = 0) -> nn.Module:
    """cnn-small on digits with PGD-AT at ``eps`` (plain training when ``eps`` is 0)."""
    from ..attacks.pgd import pgd_ce
    from ..data import BatchLoader
    from ..models import build_model

    torch.manual_seed(seed)
    m = build_model("cnn-small", 10, 1, 8, bundle.mean, bundle.std)
    opt = torch.optim.SGD(m.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
    for ep in range(epochs):
        for x, y, _ in BatchLoader(bundle.train, batch_size=64, shuffle=True, seed=seed + ep):
            if eps > 0:
                m.eval()
                x = pgd_ce(m, x, y, eps, eps / 4, 5)
            m.train()
            loss = F.cross_entropy(m(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
    return m.eval()


def save_reference(model: nn.Module, path: Path, bundle, eps: float) -> Path:
    from ..card import ModelCard
    from ..checkpoint import save_model

    card = ModelCard("cnn-small", 10, [1, 8, 8], list(bundle.mean), list(bundle.std), eps=eps, dataset="digits")
    return save_model(model, path, card)


def export(ref: Path, out: Path, profiles: List, **kw) -> Dict[str, Path]:
    """Faithful exports of ``ref`` through the real export pipeline; ``{precision: path}``."""
    from ..exporting.pipeline import export_artifacts
    from ..exporting.profiles import load_profile

    profs = [load_profile(p) if isinstance(p, str) else p for p in profiles]
    res = export_artifacts(ref, profs, out, calib_data="digits", force=True, **kw)
    return {a["precision"]: Path(a["path"]) for a in res["artifacts"]}


FAITHFUL = ("fp32", "fp32-opset17", "fp32-slim", "fp16", "int8", "int8-recal", "int8-u8")


def faithful_exports(ref: Path, workdir: Path, names=FAITHFUL) -> Dict[str, Path]:
    """The reference exported the ways a user may legitimately ship it (``FAITHFUL``); ``{label: path}``."""
    from ..exporting.profiles import load_profile

    out: Dict[str, Path] = {}
    base = export(ref, workdir / "base", ["ort-cpu-fp32", "ort-cuda-fp16", "ort-cpu-int8"])
    for label in names:
        if label in ("fp32", "fp16", "int8"):
            out[label] = base[label]
        elif label == "fp32-opset17":
            out[label] = export(ref, workdir / label, [load_profile("ort-cpu-fp32").with_overrides(opset=17)])["fp32"]
        elif label == "fp32-slim":
            out[label] = export(ref, workdir / label, ["ort-cpu-fp32"], slim=True)["fp32"]
        elif label == "int8-recal":  # recalibrated on 200 other TRAIN images (ORT's histogram calibrators
            # fail on this graph, so minmax again)
            prof = load_profile("ort-cpu-int8").with_overrides(calib_n=200)
            out[label] = export(ref, workdir / label, [prof], seed=1)["int8"]
        elif label == "int8-u8":
            out[label] = export(ref, workdir / label, ["ort-cpu-int8-u8"])["int8"]
        else:
            raise ValueError(f"unknown faithful export {label!r}")
    return out


def card_like(template: Path, dst: Path, **changes) -> Path:
    """Write ``dst``'s card as a copy of ``template``'s, with ``artifact_sha256`` of ``dst`` (what an export
    writing ``dst`` from the template's source would have written)."""
    from ..card import card_path_for
    from ..utils import sha256_file

    d = json.loads(card_path_for(template).read_text())
    d["provenance"]["artifact_sha256"] = sha256_file(dst)
    d.update(changes)
    card_path_for(dst).write_text(json.dumps(d, indent=2))
    return dst


def _edit(src: Path, dst: Path, fn: Callable) -> Path:
    import onnx

    m = onnx.load(str(src))
    fn(m)
    onnx.checker.check_model(m)
    onnx.save(m, str(dst))
    return dst


def _append(op: str, const: Optional[float] = None, **attrs) -> Callable:
    def fn(m) -> None:
        from onnx import helper, numpy_helper

        g = m.graph
        out = g.output[0].name
        for node in g.node:
            node.output[:] = [f"{o}__raw" if o == out else o for o in node.output]
        inputs = [f"{out}__raw"]
        if const is not None:
            g.initializer.append(numpy_helper.from_array(np.array(const, np.float32), f"{op}__c"))
            inputs.append(f"{op}__c")
        g.node.append(helper.make_node(op, inputs, [out], **attrs))
    return fn


def _prepend(ops: List[tuple]) -> Callable:
    """Insert ``[(op, const or None, attrs), ...]`` between the graph input and its consumers."""
    def fn(m) -> None:
        from onnx import helper, numpy_helper

        g = m.graph
        inp = g.input[0].name
        cur = inp
        new = []
        for i, (op, const, attrs) in enumerate(ops):
            ins = [cur]
            if const is not None:
                g.initializer.append(numpy_helper.from_array(np.array(const, np.float32), f"pre{i}__c"))
                ins.append(f"pre{i}__c")
            nxt = f"pre{i}__out"
            new.append(helper.make_node(op, ins, [nxt], **attrs))
            cur = nxt
        for node in g.node:
            node.input[:] = [cur if t == inp else t for t in node.input]
        nodes = new + list(g.node)
        del g.node[:]
        g.node.extend(nodes)
    return fn


def rescale_for_fp16_overflow(model: nn.Module, x: torch.Tensor, frac: float = 0.04) -> nn.Module:
    """Scale the first BN's output by K and the next conv's weights by 1/K (ReLU is positively homogeneous,
    so the fp32 function is unchanged), with K chosen so about ``frac`` of ``x`` push an activation past
    fp16's 65504."""
    import copy

    m = copy.deepcopy(model).eval()
    net = m.net
    acts = []
    h = net.stage1[2].register_forward_hook(lambda mod, i, o: acts.append(o.detach().flatten(1).amax(1)))
    with torch.no_grad():
        m(x)
    h.remove()
    peak = torch.cat(acts)
    k = 65504.0 / float(torch.quantile(peak, 1.0 - frac))
    with torch.no_grad():
        net.stage1[1].weight.mul_(k)
        net.stage1[1].bias.mul_(k)
        net.stage1[3].weight.div_(k)
    return m


def build_faults(workdir: Path, reference: Path, exports: Dict[str, Path], bundle, *, eps: float, seed: int = 0,
                 epochs: int = 6, names=FAULTS) -> List[Built]:
    """Build the named faults in ``workdir`` around ``reference`` and its faithful ``exports`` (fp32, int8)."""
    from ..data import to_tensor
    from ..exporting.quantize import quantize_int8
    from ..exporting.onnx import export_onnx
    from ..checkpoint import load_model

    workdir.mkdir(parents=True, exist_ok=True)
    fp32, int8 = exports["fp32"], exports.get("int8")
    ref_model, _ = load_model(reference)
    out: List[Built] = []

    def add(name: str, path: Path, ref: Path = reference, refused: bool = False) -> None:
        out.append(Built(name, path, ref, refused))

    for name in names:
        p = workdir / f"{name}.onnx"
        if name == "retrained":
            other = save_reference(train_cnn_small(bundle, epochs, eps, seed + 1000), workdir / "retrained.pt",
                                   bundle, eps)
            add(name, export(other, workdir / "retrained", ["ort-cpu-fp32"])["fp32"])
        elif name == "wrong_eps":
            other = save_reference(train_cnn_small(bundle, epochs, eps / 5, seed), workdir / "wrong_eps.pt",
                                   bundle, eps / 5)
            src = export(other, workdir / "wrong_eps", ["ort-cpu-fp32"])["fp32"]
            shutil.copyfile(src, p)
            add(name, card_like(fp32, p))
        elif name in ("softmax", "logit_scale"):
            fn = _append("Softmax", axis=1) if name == "softmax" else _append("Mul", 0.1)
            add(name, card_like(fp32, _edit(fp32, p, fn)))
        elif name in ("input_255", "transposed", "masked_input"):
            ops = {"input_255": [("Div", 255.0, {})],
                   "transposed": [("Transpose", None, {"perm": [0, 1, 3, 2]})],
                   "masked_input": [("Mul", 8.0, {}), ("Round", None, {}), ("Div", 8.0, {})]}[name]
            add(name, card_like(fp32, _edit(fp32, p, _prepend(ops))))
        elif name == "no_norm":
            export_onnx(ref_model.net, p, (1, 8, 8))
            add(name, card_like(fp32, p))
        elif name == "int8_lossy":
            calib = to_tensor(bundle.train.get(np.arange(256))[0]).numpy() * 0.1
            quantize_int8(fp32, p, calib)
            add(name, card_like(int8 or fp32, p, precision="int8"))
        elif name == "qdq_scale":
            _corrupt_scale(int8, p, layer=1, factor=8.0)
            add(name, card_like(int8, p))
        elif name == "fp16_overflow":
            x = to_tensor(bundle.test.get(np.arange(len(bundle.test)))[0])
            big = save_reference(rescale_for_fp16_overflow(ref_model, x), workdir / "big.pt", bundle, eps)
            made = export(big, workdir / "big", ["ort-cpu-fp32", "ort-cuda-fp16"])
            # onnxconverter-common clamps weights to 1e4 by default, which would cap the activations; an fp16
            # conversion that does not (ModelOpt AutoCast, a hand-rolled cast) keeps the rescaled weights
            _to_fp16_unclamped(made["fp32"], made["fp16"])
            add(name, card_like(made["fp16"], made["fp16"]), ref=big)
        elif name == "cardless":
            shutil.copyfile(fp32, p)
            add(name, p, refused=True)
        else:
            raise ValueError(f"unknown fault {name!r}")
    return out


def _to_fp16_unclamped(src: Path, dst: Path) -> None:
    import onnx
    from onnxconverter_common import float16

    m16 = float16.convert_float_to_float16(onnx.load(str(src)), keep_io_types=True, max_finite_val=65504.0)
    onnx.save(m16, str(dst))


def _corrupt_scale(src: Path, dst: Path, layer: int, factor: float) -> None:
    import onnx
    from onnx import numpy_helper

    m = onnx.load(str(src))
    inits = {i.name: i for i in m.graph.initializer}
    dq = {n.output[0]: n.input[1] for n in m.graph.node if n.op_type == "DequantizeLinear"
          and n.input[0] in inits and n.input[1] in inits and len(inits[n.input[1]].dims) == 1}
    names = [dq[n.input[1]] for n in m.graph.node if n.op_type == "Conv" and n.input[1] in dq]
    init = inits[names[layer]]
    arr = numpy_helper.to_array(init).astype(np.float32) * np.float32(factor)
    init.CopyFrom(numpy_helper.from_array(arr, init.name))
    onnx.save(m, str(dst))


__all__ = ["FAULTS", "FAITHFUL", "faithful_exports", "Built", "build_faults", "train_cnn_small", "save_reference",
           "export", "card_like",
           "rescale_for_fp16_overflow"]
