"""MIM: hooks capture features on every registered architecture; every student/teacher pair gets working
heads and attention levels; unregistered / TorchScript teachers get graph points, and a level that still
cannot run fails setup unless mim_partial; the losses are right. ONNX teachers: test_mim_graph.py."""
from __future__ import annotations

import math
import warnings

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


def test_unregistered_and_torchscript_teachers_get_graph_points():
    """An unregistered eager teacher is fx-traced and a TorchScript one (whose submodules take no hooks)
    converted to an fx twin; both give penultimate features and stage pairs, leaving the teacher as it was."""
    from infoard_deploy.models import Normalized

    student, teacher = _build("cnn-small"), _build("cnn-mnist").eval()
    x = torch.rand(2, 1, SIZE, SIZE)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        scripted = torch.jit.trace(teacher, x)
        wrapped = Normalized(torch.jit.trace(teacher.net, x), [0.0], [1.0])  # as load_model wraps archives
    fired = []
    scripted.net.stage1.register_forward_hook(lambda *a: fired.append(1))  # accepted, but compiled code ...
    scripted(x)
    assert not fired  # ... never calls it: named TorchScript layers cannot be tapped, even of a registered arch
    cases = ((scripted, "torchscript", "torchscript"), (wrapped, "cnn-mnist", "torchscript"),
             (teacher, None, "fx-traced"))
    for t, arch, source in cases:
        mim = MIM(levels=2)
        mim.setup(student, t, "cnn-small", arch, [1, SIZE, SIZE], 10)
        rep = mim.report()
        assert rep["teacher_points"] == source and rep["feature"] == "penultimate" and rep["attention"] == 2
        assert not rep["partial"] and mim.proj_t.in_features == 200
        with mim.s_tap.capture() as sf:
            student(x)
        with torch.no_grad(), mim.t_tap.capture() as tf:
            out = mim.t_tap.run(t, x)
        assert torch.allclose(out, teacher(x) if t is not wrapped else teacher.net(x), atol=1e-5)
        loss, logs = mim.loss(sf, tf)
        assert torch.isfinite(loss) and "mim_att" in logs and "mim_nce" in logs
        mim.remove_hooks()
    assert not any(m._forward_hooks for m in teacher.modules())


def test_unhookable_teacher_fails_or_runs_partial(monkeypatch):
    """When a level cannot run (here: TorchScript that cannot be converted) setup fails with one line, unless
    ``mim_partial`` is on: then the feature level uses the logits, attention is off, and mim_levels() says so."""
    from infoard_deploy.errors import UserError
    from infoard_deploy.methods import StepContext, build_method
    from infoard_deploy.methods import graph

    monkeypatch.setattr(graph, "_torchscript_twin", lambda *a: None)
    student, teacher = _build("cnn-small"), _build("cnn-mnist").eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        scripted = torch.jit.trace(teacher, torch.rand(2, 1, SIZE, SIZE))

    def setup(m):
        m.setup(student, scripted, num_train=8, num_classes=10, eps=0.1, student_arch="cnn-small",
                teacher_arch="torchscript", input_shape=[1, SIZE, SIZE])
        return m

    with pytest.raises(UserError, match="mim_partial") as e:
        setup(build_method("infoard"))
    assert "\n" not in str(e.value) and "penultimate" in str(e.value) and "attention level off" in str(e.value)
    assert not any(m._forward_hooks for m in student.modules())  # the failed setup left no hooks
    m = setup(build_method("infoard", mim_partial="true", asa=True, asa_warmup=0.0))
    lv = m.mim_levels()
    assert lv["feature"] == "logits" and lv["attention"] == 0 and lv["partial"] and lv["teacher_points"] == "none"
    assert lv["requested"] == {"feature": True, "attention": 3} and lv["notes"]
    x, y = torch.rand(4, 1, SIZE, SIZE), torch.randint(0, 10, (4,))
    out = m(student, scripted, x, y, torch.arange(4), StepContext(0, 1, 0.1, 10))
    assert torch.isfinite(out.loss) and "mim_nce" in out.logs and "mim_att" not in out.logs
    m.teardown()
    off = build_method("rslad").mim_levels()
    assert off["feature"] == "off" and off["attention"] == 0 and not off["partial"]


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
