"""MIM on graph teachers: ONNX (onnx2torch GraphModule) and TorchScript teachers expose stage maps and
penultimate features found from the graph; they equal the torch teacher's activations, and InfoARD trains
on them at every level (feature level on penultimate features, attention on >= 1 stage pair)."""
from __future__ import annotations

import warnings

import pytest
import torch
import torch.nn.functional as F

from infoard_deploy.checkpoint import load_model
from infoard_deploy.methods import StepContext, build_method
from infoard_deploy.methods.graph import TAP_PREFIX, graph_points
from infoard_deploy.models import build_model

pytest.importorskip("onnx2torch")

SIZE, K = 16, 4
# (arch, channels, student): a plain CNN (stage = pre-pool ReLU) and a pre-activation ResNet (residual adds,
# stage = the next block's BN-ReLU of the stage output)
ARCHS = {"cnn-mnist": (1, "cnn-mnist-small"), "preact-resnet18": (3, "resnet18")}


def _torch_teacher(arch: str):
    c, _ = ARCHS[arch]
    torch.manual_seed(0)
    t = build_model(arch, K, c, SIZE, [0.5] * c, [0.25] * c)
    with torch.no_grad():  # non-trivial BN statistics, so eval-mode BN is not an identity
        for _ in range(2):
            t.train()(torch.rand(16, c, SIZE, SIZE))
    return t.eval()


@pytest.fixture(scope="module")
def teachers(tmp_path_factory):
    """{(arch, fmt): (torch teacher, graph teacher loaded by load_model)} for fmt in onnx / torchscript."""
    from infoard_deploy.exporting.onnx import export_onnx

    out = {}
    d = tmp_path_factory.mktemp("teachers")
    for arch, (c, _) in ARCHS.items():
        t = _torch_teacher(arch)
        onnx_path = export_onnx(t, d / f"{arch}.onnx", [c, SIZE, SIZE], check_batches=(1, 2))
        ts_path = d / f"{arch}.pt"
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.jit.save(torch.jit.trace(t, torch.rand(2, c, SIZE, SIZE)), str(ts_path))
        for fmt, path in (("onnx", onnx_path), ("torchscript", ts_path)):
            g, card = load_model(path, num_classes=K, input_shape=[c, SIZE, SIZE], mean=[0.0] * c, std=[1.0] * c)
            assert card.architecture == fmt
            out[(arch, fmt)] = (t, g)
    return out


def _torch_points(t, arch: str, x: torch.Tensor):
    """The torch teacher's activations the graph points must equal: (stage maps shallow to deep, penultimate)."""
    acts, handles = {}, []
    net = t.net
    if arch == "cnn-mnist":  # pre-pool ReLU of each stage, then the (identity-sized) pooled stage-2 output
        mods = {"s1": net.stage1[5], "s2": net.stage2[5], "s3": net.stage2}
        post = {}
    else:  # the BN-ReLU that opens the next stage (pre-activation), and the final BN-ReLU
        mods = {"s1": net.layer2[0].bn1, "s2": net.layer3[0].bn1, "s3": net.layer4[0].bn1, "s4": net.bn}
        post = {k: F.relu for k in mods}
    for k, m in mods.items():
        handles.append(m.register_forward_hook(lambda _m, _i, o, k=k: acts.__setitem__(k, o.clone())))
    handles.append(net.linear.register_forward_pre_hook(lambda _m, i: acts.__setitem__("head", i[0].clone())))
    with torch.no_grad():
        t(x)
    for h in handles:
        h.remove()
    return [post.get(k, lambda v: v)(acts[k]) for k in mods], acts["head"]


@pytest.mark.parametrize("fmt", ["onnx", "torchscript"])
@pytest.mark.parametrize("arch", list(ARCHS))
def test_graph_points_equal_torch_activations(teachers, arch, fmt):
    t, g = teachers[(arch, fmt)]
    c, _ = ARCHS[arch]
    pts, why = graph_points(g, [c, SIZE, SIZE])
    assert pts is not None, why
    try:
        assert pts.source == ("fx-graph" if fmt == "onnx" else "torchscript")
        x = torch.rand(3, c, SIZE, SIZE)
        stages, head = _torch_points(t, arch, x)
        assert len(pts.stages) == len(stages) and pts.head is not None
        from infoard_deploy.methods.hooks import HEAD, FeatureTap

        tap = FeatureTap(g, pts.stages, pts.head, runner=pts.runner)
        with torch.no_grad(), tap.capture() as feats:
            out = tap.run(g, x)
        tap.remove()
        assert torch.allclose(out, t(x), atol=1e-4)
        sizes = [feats[s].shape[-1] for s in pts.stages]
        assert sizes == sorted(sizes, reverse=True) and min(sizes) >= 2  # shallow to deep, no 1x1 maps
        for name, ref in zip(pts.stages, stages):
            assert feats[name].shape == ref.shape and torch.allclose(feats[name], ref, atol=1e-4), name
            assert pts.shapes[name] == tuple(ref.shape[1:])
        assert torch.allclose(feats[HEAD], head, atol=1e-4)
    finally:
        pts.undo()
    if fmt == "onnx":  # the taps went into the teacher's own graph and are gone again
        assert TAP_PREFIX not in g.net.code and not any(TAP_PREFIX in n for n, _ in g.named_modules())
    else:  # the TorchScript teacher is untouched: the taps live in MIM's private fx twin
        assert isinstance(g.net, torch.jit.ScriptModule)


@pytest.mark.parametrize("base", ["rslad", "adaad"])
@pytest.mark.parametrize("fmt", ["onnx", "torchscript"])
def test_infoard_trains_on_graph_teacher(teachers, fmt, base):
    """Feature level on penultimate features, >= 1 attention pair, a finite loss, gradients to the student
    and the MIM heads only; the captured teacher view (clean for RSLAD, x' for AdaAD) runs through the taps."""
    t, g = teachers[("cnn-mnist", fmt)]
    torch.manual_seed(1)
    s = build_model("cnn-mnist-small", K, 1, SIZE, [0.5], [0.25]).train()
    m = build_method("infoard", base=base, asa=True, asa_warmup=0.0)
    m.setup(s, g, num_train=32, num_classes=K, eps=0.1, student_arch="cnn-mnist-small", teacher_arch=fmt,
            input_shape=[1, SIZE, SIZE])
    try:
        lv = m.mim_levels()
        assert lv["feature"] == "penultimate" and lv["attention"] >= 1 and not lv["partial"] and lv["ready"]
        assert lv["teacher_points"] == ("fx-graph" if fmt == "onnx" else "torchscript")
        assert m.mim.proj_t.in_features == 200  # cnn-mnist's FC-200 output, not its K logits
        g_state = {k: v.clone() for k, v in g.state_dict().items()}
        x = torch.rand(8, 1, SIZE, SIZE)
        y = torch.randint(0, K, (8,))
        ctx = StepContext(epoch=0, epochs=1, eps=0.1, num_classes=K, generator=torch.Generator().manual_seed(0))
        out = m(s, g, x, y, torch.arange(8), ctx)
        assert torch.isfinite(out.loss) and out.logs["mim_att"] > 0 and "mim_nce" in out.logs
        out.loss.backward()
        assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in s.parameters())
        assert all(p.grad is not None and p.grad.abs().sum() > 0 for n, p in m.named_parameters() if "proj" in n)
        assert all(p.grad is None for p in g.parameters()) and not g.training
        assert all(torch.equal(v, g_state[k]) for k, v in g.state_dict().items())
    finally:
        m.teardown()
    if fmt == "onnx":
        assert TAP_PREFIX not in g.net.code
    m.teardown()  # twice is fine


def test_matched_pairs_by_depth(teachers):
    """Graph stages pair with the student's registered stages shallow to deep, deepest with deepest."""
    _, g = teachers[("preact-resnet18", "onnx")]
    s = build_model("resnet18", K, 3, SIZE, [0.5] * 3, [0.25] * 3)
    m = build_method("rslad", mim=True)
    m.setup(s, g, num_train=8, num_classes=K, eps=0.1, student_arch="resnet18", teacher_arch="onnx",
            input_shape=[3, SIZE, SIZE])
    try:
        lv = m.mim_levels()
        assert [p[0] for p in lv["pairs"]] == ["net.layer1", "net.layer3", "net.layer4"]
        assert lv["attention_sizes"] == [16, 4, 2] and all(p[1].startswith("node_") for p in lv["pairs"])
    finally:
        m.teardown()


def test_stage_selection_rules():
    """Last map at each resolution after the first weighted layer (input normalisation excluded), no 1x1 maps,
    no upsampled maps; the penultimate feature is the input of the last linear layer the logits depend on."""
    from torch import nn

    class Toy(nn.Module):
        def __init__(self):
            super().__init__()
            self.c1, self.c2 = nn.Conv2d(1, 4, 3, padding=1), nn.Conv2d(4, 8, 3, padding=1)
            self.fc, self.out = nn.Linear(8, 6), nn.Linear(6, 3)

        def forward(self, x):
            x = (x - 0.5) / 0.25  # 8x8 but not a feature
            a = F.max_pool2d(F.relu(self.c1(x)), 2)  # 8x8 relu, 4x4 pool
            b = F.max_pool2d(F.relu(self.c2(a)), 2)  # 4x4 relu, 2x2 pool
            up = F.adaptive_avg_pool2d(b, 4)  # upsampled to 4x4: no new level
            z = F.adaptive_avg_pool2d(up, 1).flatten(1)  # 1x1: no attention signal
            return self.out(F.relu(self.fc(z)))

    toy = Toy().eval()
    pts, why = graph_points(toy, [1, 8, 8])
    assert pts is not None and pts.source == "fx-traced", why
    assert [pts.nodes[s] for s in pts.stages] == ["relu", "relu_1", "max_pool2d_1"]
    assert [pts.shapes[s][-1] for s in pts.stages] == [8, 4, 2]
    assert pts.nodes[pts.head] == "relu_2" and pts.shapes[pts.head] == (6,)
    assert not any(TAP_PREFIX in n for n, _ in toy.named_modules())  # the taps live in the traced twin
