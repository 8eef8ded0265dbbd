"""MIM: hooks capture features on every registered architecture; every student/teacher pair gets working
heads and attention levels; teachers without named layers degrade with a note; the losses are right."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from infoard_deploy.methods.hooks import HEAD, FeatureTap, pair_stages, probe_shapes, resolve_points
from infoard_deploy.methods.mim import MIM, attention_map, info_nce
from infoard_deploy.models import MODELS, build_model, head_name, stage_names

SIZE = 8  # the smallest input every registered architecture accepts



def _build(arch: str, channels: int = 1):
    torch.manual_seed(0)
    return build_model(arch, 10, channels, SIZE, [0.5] * channels, [0.5] * channels)


@pytest.fixture(scope="module")
def shapes():
    """Per-sample feature shapes of every registered architecture (each built once, big WRNs included)."""
    out = {}
    for arch in MODELS.names():
        model = _build(arch)
        stages, head = resolve_points(model, arch)
        assert stages == stage_names(arch) and head == head_name(arch), arch
        tap = FeatureTap(model, stages, head)
        model.train()
        x = torch.rand(2, 1, SIZE, SIZE, requires_grad=False)
        with tap.capture() as feats:
            logits = model(x)
        assert set(feats) == set(stages) | {HEAD}, arch
        assert feats[HEAD].shape == (2, model.net.get_submodule(head.split(".", 1)[1]).in_features)
        assert all(feats[s].dim() == 4 and feats[s].shape[0] == 2 for s in stages)
        assert feats[HEAD].requires_grad and logits.shape == (2, 10)
        # outside capture() nothing is stored; probe_shapes restores the mode
        with torch.no_grad():
            model(x)
        per = probe_shapes(model, tap, [1, SIZE, SIZE])
        assert model.training and per[HEAD] == tuple(feats[HEAD].shape[1:])
        tap.remove()
        out[arch] = (stages, per)
        del model
    return out


def test_every_student_teacher_pair(shapes):
    """Heads and attention levels for all (student, teacher) pairs; loss finite, gradients reach the heads."""
    archs = sorted(shapes)
    for s_arch in archs:
        for t_arch in archs:
            s_stages, s_shapes = shapes[s_arch]
            t_stages, t_shapes = shapes[t_arch]
            mim = MIM(feat=1.0, att=1.0, levels=3, dim=16)
            pairs = pair_stages(s_stages, t_stages, 3)
            assert len(pairs) == min(3, len(s_stages), len(t_stages))
            assert pairs[-1] == (s_stages[-1], t_stages[-1])  # deepest stages always aligned
            mim.build(pairs, s_shapes, t_shapes)
            assert all(p in pairs for p in mim.pairs) and all(size >= 2 for size in mim.att_sizes)
            pairs = mim.pairs  # 1x1 maps carry no attention signal and are dropped
            s_feats = {k: torch.randn(4, *v, requires_grad=True) for k, v in s_shapes.items()}
            t_feats = {k: torch.randn(4, *v) for k, v in t_shapes.items()}
            loss, logs = mim.loss(s_feats, t_feats)
            assert torch.isfinite(loss), (s_arch, t_arch)
            loss.backward()
            assert mim.proj_s.weight.grad.abs().sum() > 0 and mim.proj_t.weight.grad.abs().sum() > 0
            for s, _ in pairs:
                assert s_feats[s].grad is not None and s_feats[s].grad.abs().sum() > 0


def test_pairing_is_proportional():
    s = ["l1", "l2", "l3", "l4"]
    t = ["b1", "b2", "b3"]
    assert pair_stages(s, t, 3) == [("l1", "b1"), ("l3", "b2"), ("l4", "b3")]
    assert pair_stages(s, t, 2) == [("l2", "b2"), ("l4", "b3")]
    assert pair_stages(s, [], 3) == []


def test_setup_end_to_end_and_teardown():
    torch.manual_seed(0)
    student = build_model("resnet18", 10, 3, 16, [0.5] * 3, [0.5] * 3)  # 16x16: layer4 is 2x2
    teacher = build_model("wrn-16-4", 10, 3, 16, [0.5] * 3, [0.5] * 3)
    mim = MIM(levels=3)
    mim.setup(student, teacher, "resnet18", "wrn-16-4", [3, 16, 16], 10)
    assert mim.pairs == [("net.layer1", "net.block1"), ("net.layer3", "net.block2"), ("net.layer4", "net.block3")]
    assert mim.att_sizes == [16, 4, 2]
    assert mim.proj_s.in_features == 512 and mim.proj_t.in_features == 256
    x = torch.rand(4, 3, 16, 16)
    with mim.s_tap.capture() as sf:
        student(x)
    with torch.no_grad(), mim.t_tap.capture() as tf:
        teacher(x)
    loss, logs = mim.loss(sf, tf)
    assert torch.isfinite(loss) and "mim_att" in logs and "mim_nce" in logs
    n_hooks = len(student.net.layer4._forward_hooks)
    mim.remove_hooks()
    assert len(student.net.layer4._forward_hooks) == n_hooks - 1


def test_teacher_without_named_layers_degrades(caplog):
    """A TorchScript teacher (or ONNX / unknown arch) loses the attention level; features use its logits."""
    student, teacher = _build("cnn-small"), _build("cnn-mnist")
    scripted = torch.jit.trace(teacher.eval(), torch.rand(2, 1, SIZE, SIZE))
    for t, arch in ((scripted, "cnn-mnist"), (teacher, None)):
        mim = MIM(levels=2)
        with caplog.at_level("WARNING"):
            mim.setup(student, t, "cnn-small", arch, [1, SIZE, SIZE], 10)
        assert mim.pairs == [] and mim.teacher_feat_from_logits and mim.proj_t.in_features == 10
        assert any("attention level off" in n for n in mim.notes)
        x = torch.rand(4, 1, SIZE, SIZE)
        with mim.s_tap.capture() as sf:
            student(x)
        loss, logs = mim.loss(sf, {}, t_logits=t(x).detach())
        assert torch.isfinite(loss) and "mim_att" not in logs
        mim.remove_hooks()


def test_losses_golden():
    f = torch.zeros(1, 2, 2, 2)
    f[0, 0, 0, 0] = 2.0  # energy 4 at one pixel of channel 0 -> channel mean 2 there
    a = attention_map(f, 2)
    assert torch.allclose(a, torch.tensor([[1.0, 0.0, 0.0, 0.0]]))
    assert torch.allclose(attention_map(f, 1), torch.tensor([[1.0]]))  # pooled then normalised
    # InfoNCE with orthonormal, perfectly aligned pairs: CE of logits diag 1/tau, off-diag 0
    z = torch.eye(3)
    tau = 0.5
    expected = -math.log(math.exp(2) / (math.exp(2) + 2))
    assert info_nce(z, z, tau).item() == pytest.approx(expected, rel=1e-6)
    assert info_nce(z, z[[1, 2, 0]], tau).item() > info_nce(z, z, tau).item()  # mismatched pairs cost more
    mim = MIM(feat=0.0, att=2.0)
    mim.build([("s", "t")], {"s": (2, 4, 4)}, {"t": (3, 2, 2)})
    fs, ft = torch.rand(2, 2, 4, 4), torch.rand(2, 3, 2, 2)
    loss, _ = mim.loss({"s": fs}, {"t": ft})
    a_s = F.normalize(F.avg_pool2d(fs.pow(2).mean(1, keepdim=True), 2).flatten(1), dim=1)
    a_t = F.normalize(ft.pow(2).mean(1).flatten(1), dim=1)
    assert loss.item() == pytest.approx(2.0 * (a_s - a_t).pow(2).mean().item(), rel=1e-5)


def test_onnx_teacher_degrades(tmp_path, caplog):
    """An ONNX teacher (exported, then loaded through onnx2torch as the CLI does) keeps its card's
    architecture name but none of its module names: the attention level is switched off with a note and
    the feature level uses its logits."""
    pytest.importorskip("onnx2torch")
    import warnings

    from infoard_deploy.checkpoint import load_model

    torch.manual_seed(0)
    student = build_model("cnn-mnist-small", 10, 1, 16, [0.5], [0.5])
    teacher = build_model("cnn-mnist", 10, 1, 16, [0.5], [0.5]).eval()
    path = tmp_path / "teacher.onnx"
    with warnings.catch_warnings():  # the TorchScript exporter is deprecated but converts cleanly here
        warnings.simplefilter("ignore")
        torch.onnx.export(teacher, torch.rand(2, 1, 16, 16), str(path), dynamo=False, opset_version=17,
                          keep_initializers_as_inputs=True, input_names=["x"], dynamic_axes={"x": {0: "b"}})
    graph, _ = load_model(path, arch="cnn-mnist", num_classes=10, input_shape=[1, 16, 16], mean=[0.0], std=[1.0])
    x = torch.rand(4, 1, 16, 16)
    assert torch.allclose(graph(x), teacher(x), atol=1e-5)
    mim = MIM(levels=2)
    with caplog.at_level("WARNING"):
        mim.setup(student, graph, "cnn-mnist-small", "cnn-mnist", [1, 16, 16], 10)
    assert mim.pairs == [] and mim.teacher_feat_from_logits
    assert any("no hookable classifier" in n for n in mim.notes) and any("attention level off" in n for n in mim.notes)
    assert "MIM:" in caplog.text
    with mim.s_tap.capture() as sf:
        student(x)
    loss, logs = mim.loss(sf, {}, t_logits=graph(x).detach())
    assert torch.isfinite(loss) and "mim_nce" in logs
    mim.remove_hooks()
