"""Trainer, teacher methods, and the train-teacher / distill commands (digits + cnn-small, a few epochs)."""
from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from infoard_deploy.attacks.pgd import pgd_ce
from infoard_deploy.checkpoint import load_model
from infoard_deploy.card import load_card
from infoard_deploy.errors import UserError
from infoard_deploy.methods.base import DistillMethod, Schedule, StepOutput
from infoard_deploy.models import build_model
from infoard_deploy.train import TEACHER_METHODS, TrainConfig, TrainingDiverged, build_teacher_method, train
from infoard_deploy.train.metrics import CORE_COLUMNS, read_metrics
from infoard_deploy.utils import seed_everything

REPO = Path(__file__).resolve().parents[1]


class ToyKD(DistillMethod):
    """A small distillation method exercising everything the trainer must carry: a per-sample buffer
    (like ASA's memory), its own trainable head (like MIM), the step generator and the global RNG."""

    name = "toy-kd"
    needs_teacher = False
    schedule = Schedule(epochs=4, lr=0.05, momentum=0.9, weight_decay=5e-4, milestones=[0.5, 0.75], batch_size=64)

    def __init__(self, nan_at_step=None):
        super().__init__()
        self.nan_at_step = nan_at_step
        self.calls = 0

    def setup(self, student, teacher, *, num_train, num_classes, eps, **kw):
        self.register_buffer("visits", torch.zeros(num_train))
        self.head = nn.Linear(num_classes, num_classes)
        self.head_init = self.head.weight.detach().clone()

    def forward(self, student, teacher, x, y, idx, ctx):
        self.calls += 1
        x_adv = pgd_ce(student, x, y, ctx.eps, ctx.eps / 2, 2, init="uniform", generator=ctx.generator)
        x_adv = (x_adv + 1e-3 * torch.randn_like(x_adv)).clamp(0, 1)  # global RNG, restored on resume
        logits = student(x_adv)
        loss = F.cross_entropy(logits, y) + 0.1 * F.cross_entropy(self.head(logits), y)
        if teacher is not None:
            with torch.no_grad():
                p_t = F.softmax(teacher(x), 1)
            loss = loss + F.kl_div(F.log_softmax(logits, 1), p_t, reduction="batchmean")
        if self.nan_at_step is not None and self.calls >= self.nan_at_step:
            loss = loss * float("nan")
        self.visits[idx] += 1
        return StepOutput(loss, x_adv, {"ce": float(loss.detach())})

    def end_epoch(self, epoch):
        return {"visited_frac": float((self.visits > 0).float().mean())}


def _student(bundle, seed=0):
    seed_everything(seed)
    return build_model("cnn-small", bundle.num_classes, 1, 8, bundle.mean, bundle.std)


def _cfg(tmp_path, name="run", **kw):
    base = dict(epochs=2, batch_size=64, seed=0, out_dir=str(tmp_path / name), val_n=120, progress=False, device="cpu")
    base.update(kw)
    return TrainConfig(**base)


# -- teacher methods -------------------------------------------------------------------------------

def test_teacher_methods_registered_and_listed(cli):
    assert set(TEACHER_METHODS.names()) == {"pgd-at", "trades"}
    code, out, _ = cli("list", "teacher-methods", "--json")
    assert code == 0 and {r["name"] for r in json.loads(out)["teacher-methods"]} == {"pgd-at", "trades"}
    with pytest.raises(UserError, match="no option beta"):
        build_teacher_method("pgd-at", beta=6)
    assert TEACHER_METHODS.get("trades").schedule.weight_decay == 2e-4
    assert TEACHER_METHODS.get("pgd-at").schedule.weight_decay == 5e-4


@pytest.mark.parametrize("name", ["pgd-at", "trades"])
def test_teacher_method_loss_matches_its_definition(tiny_bundle, name):
    from infoard_deploy.data import BatchLoader
    from infoard_deploy.methods.base import StepContext

    model = _student(tiny_bundle)
    model.train()
    x, y, idx = next(iter(BatchLoader(tiny_bundle.train, batch_size=32)))
    m = build_teacher_method(name)
    gen = torch.Generator().manual_seed(0)
    eps = 0.1
    out = m(model, None, x, y, idx, StepContext(epoch=0, epochs=1, eps=eps, num_classes=10, generator=gen))
    d = (out.x_adv - x).abs().amax()
    assert d <= eps + 1e-6 and out.x_adv.min() >= 0 and out.x_adv.max() <= 1 and d > eps / 2
    assert model.training  # TRADES attacks in eval mode and must restore train mode
    if name == "pgd-at":
        ref = F.cross_entropy(model(out.x_adv), y)
        assert torch.allclose(out.loss, ref, atol=1e-5)
        assert ref > F.cross_entropy(model(x), y)  # the attack raised the loss
    else:
        ln, la = model(x), model(out.x_adv)
        kl = F.kl_div(F.log_softmax(la, 1), F.softmax(ln, 1), reduction="batchmean")
        assert torch.allclose(out.loss, F.cross_entropy(ln, y) + 6.0 * kl, atol=1e-5)
        assert kl > 0
    out.loss.backward()
    assert all(p.grad is not None for p in model.parameters())


# -- trainer ------------------------------------------------------------------------------------

def test_pgd_at_learns_and_writes_card(tiny_bundle, tmp_path):
    r = train(_student(tiny_bundle), build_teacher_method("pgd-at", steps=3), tiny_bundle,
              _cfg(tmp_path, epochs=3, lr=0.05, batch_size=32, train_limit=640, model_name="teacher"),
              card_base={"architecture": "cnn-small"})
    h = r.history
    assert len(h) == 3 and h[-1]["loss"] < h[0]["loss"]
    assert h[-1]["val_clean"] > 0.6 and h[-1]["val_robust"] > 0.3  # chance is 0.1
    assert r.final_model_path == tmp_path / "run" / "teacher.pt"
    model, card = load_model(r.final_model_path)
    assert card.architecture == "cnn-small" and card.mean == list(tiny_bundle.mean) and card.eps == 0.1
    assert card.provenance["method"] == "pgd-at" and card.provenance["seed"] == 0 and card.provenance["epochs"] == 3
    assert card.metrics["val_robust"] == h[-1]["val_robust"]
    # milestones 50 % / 75 % of 3 epochs both round to epoch 2: epoch 3 runs at lr * 0.1^2
    assert [row["lr"] for row in h] == pytest.approx([0.05, 0.05, 0.0005])


def test_metrics_files_have_every_field(tiny_bundle, tmp_path):
    r = train(_student(tiny_bundle), ToyKD(), tiny_bundle, _cfg(tmp_path, train_limit=256),
              card_base={"architecture": "cnn-small"})
    rows = read_metrics(tmp_path / "run")
    assert rows == json.loads(json.dumps(r.history))
    with open(tmp_path / "run" / "metrics.csv") as f:
        csv_rows = list(csv.DictReader(f))
    assert len(rows) == len(csv_rows) == 2
    for row, crow in zip(rows, csv_rows):
        for k in CORE_COLUMNS + ["avg_ce", "visited_frac"]:
            assert row[k] is not None and crow[k] != "", k
        assert float(crow["loss"]) == pytest.approx(row["loss"])
    assert rows[-1]["visited_frac"] == pytest.approx(256 / len(tiny_bundle.train))  # train_limit respected
    assert rows[0]["images_per_s"] > 0 and 0 <= rows[0]["train_adv_acc"] <= 1


def test_resume_is_bit_identical(tiny_bundle, tmp_path):
    full = train(_student(tiny_bundle), m_full := ToyKD(), tiny_bundle,
                 _cfg(tmp_path, "full", epochs=4, train_limit=320), card_base={"architecture": "cnn-small"})
    first = train(_student(tiny_bundle), ToyKD(), tiny_bundle,
                  _cfg(tmp_path, "cut", epochs=4, stop_after=2, train_limit=320),
                  card_base={"architecture": "cnn-small"})
    assert not first.completed and first.final_model_path is None and len(first.history) == 2
    # a fresh process would rebuild everything: new (differently initialised) objects, then --resume
    rest = train(_student(tiny_bundle, seed=123), m_rest := ToyKD(), tiny_bundle,
                 _cfg(tmp_path, "cut", epochs=4, resume=True, train_limit=320), card_base={"architecture": "cnn-small"})
    assert rest.completed and rest.epochs_run == 2
    a, _ = load_model(full.final_model_path)
    b, _ = load_model(rest.final_model_path)
    for (k, va), vb in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(va, vb), k
    for (k, va), vb in zip(m_full.state_dict().items(), m_rest.state_dict().values()):
        assert torch.equal(va, vb), k  # per-sample buffer and the method's head
    assert [r["loss"] for r in full.history] == [r["loss"] for r in rest.history]
    assert [r["val_robust"] for r in full.history] == [r["val_robust"] for r in rest.history]
    assert not torch.equal(m_full.head.weight.detach(), m_full.head_init)  # the head is optimised too
    assert torch.equal(m_full.head_init, m_rest.head_init)  # ... from the same seeded start


def test_resume_refuses_changed_settings(tiny_bundle, tmp_path):
    train(_student(tiny_bundle), ToyKD(), tiny_bundle, _cfg(tmp_path, epochs=2, stop_after=1, train_limit=128),
          card_base={"architecture": "cnn-small"})
    with pytest.raises(UserError, match="lr 0.05 -> 0.01"):
        train(_student(tiny_bundle), ToyKD(), tiny_bundle,
              _cfg(tmp_path, epochs=2, resume=True, lr=0.01, train_limit=128), card_base={"architecture": "cnn-small"})
    with pytest.raises(UserError, match="method 'toy-kd' -> 'pgd-at'"):
        train(_student(tiny_bundle), build_teacher_method("pgd-at"), tiny_bundle,
              _cfg(tmp_path, epochs=2, resume=True, lr=0.05, train_limit=128), card_base={"architecture": "cnn-small"})


def test_teacher_is_frozen(tiny_bundle, tmp_path):
    teacher = _student(tiny_bundle, seed=5)
    teacher.train()  # the trainer must switch it to eval mode
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    modes = []
    teacher.register_forward_pre_hook(lambda mod, inp: modes.append(mod.training))
    m = ToyKD()
    m.needs_teacher = True
    train(_student(tiny_bundle), m, tiny_bundle, _cfg(tmp_path, epochs=1, train_limit=128), teacher=teacher,
          card_base={"architecture": "cnn-small"})
    assert modes and not any(modes)  # every teacher forward ran in eval mode
    assert all(not p.requires_grad and p.grad is None for p in teacher.parameters())
    for k, v in teacher.state_dict().items():
        assert torch.equal(v, before[k]), k  # weights and BN statistics untouched


def test_missing_teacher_and_bad_settings(tiny_bundle, tmp_path):
    m = ToyKD()
    m.needs_teacher = True
    with pytest.raises(UserError, match="pass --teacher"):
        train(_student(tiny_bundle), m, tiny_bundle, _cfg(tmp_path), card_base={"architecture": "cnn-small"})
    with pytest.raises(UserError, match="needs a CUDA device"):
        train(_student(tiny_bundle), ToyKD(), tiny_bundle, _cfg(tmp_path, amp="bf16", device="cpu"),
              card_base={"architecture": "cnn-small"})
    with pytest.raises(UserError, match="milestones"):
        train(_student(tiny_bundle), ToyKD(), tiny_bundle, _cfg(tmp_path, milestones=[1.5]),
              card_base={"architecture": "cnn-small"})


def test_nan_loss_stops_with_clear_error(tiny_bundle, tmp_path):
    with pytest.raises(TrainingDiverged) as e:
        train(_student(tiny_bundle), ToyKD(nan_at_step=3), tiny_bundle, _cfg(tmp_path),
              card_base={"architecture": "cnn-small"})
    msg = str(e.value)
    assert "diverged" in msg and "epoch 1 step 3" in msg and "\n" not in msg


# -- commands ---------------------------------------------------------------------------------------

def test_train_teacher_cli_refuses_clobber_and_resumes(cli, tmp_path):
    out = tmp_path / "t"
    args = ["train-teacher", "--data", "digits", "--arch", "cnn-small", "--method", "trades", "--epochs", "1",
            "--train-limit", "192", "--val-n", "64", "--attack-steps", "3", "--out", out]
    code, stdout, err = cli(*args, "--json")
    assert code == 0, err
    res = json.loads(stdout)
    assert res["completed"] and Path(res["model"]).exists() and res["val_clean"] is not None
    card = load_card(out / "teacher.pt")
    assert card.provenance["method"] == "trades" and card.provenance["beta"] == 6.0
    assert card.provenance["config"]["train_limit"] == 192
    code, _, err = cli(*args)
    assert code == 2 and "already holds a run" in err and len(err.strip().splitlines()) == 1
    code, _, err = cli(*args, "--force")
    assert code == 0, err
    code, _, err = cli(*args, "--resume")  # already complete: nothing to train, result re-reported
    assert code == 0, err
    code, _, err = cli(*[a if a != out else tmp_path / "nothing" for a in args], "--resume")
    assert code == 2 and "nothing to resume" in err and len(err.strip().splitlines()) == 1
    code, _, err = cli(*args, "--resume", "--force")
    assert code == 2 and "contradict" in err


def _run_cli(args, out_log):
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONPATH=str(REPO))
    return subprocess.Popen([sys.executable, "-m", "infoard_deploy", "--device", "cpu", *map(str, args)],
                            stdout=out_log, stderr=subprocess.STDOUT, env=env, cwd=REPO)


def test_kill_9_then_resume_matches_uninterrupted(cli, tmp_path):
    args = ["train-teacher", "--data", "digits", "--arch", "cnn-small", "--method", "pgd-at", "--epochs", "3",
            "--train-limit", "320", "--val-n", "32", "--attack-steps", "3", "--batch-size", "32"]
    with open(tmp_path / "victim.log", "w") as log:
        victim = _run_cli(args + ["--out", tmp_path / "victim"], log)
        state = tmp_path / "victim" / "state.pt"
        deadline = time.time() + 120
        while not state.exists() and victim.poll() is None and time.time() < deadline:
            time.sleep(0.02)
        assert victim.poll() is None, "victim finished before it could be killed"
        victim.send_signal(signal.SIGKILL)  # during epoch 2 (or while writing its state): no clean-up
        victim.wait()
        assert not (tmp_path / "victim" / "teacher.pt").exists()
        resumed = _run_cli(args + ["--out", tmp_path / "victim", "--resume"], log)
        # meanwhile the uninterrupted reference, in this process (one thread, like the subprocesses)
        code, _, err = cli("--device", "cpu", *args, "--out", tmp_path / "ref")
        assert code == 0, err
        assert resumed.wait(timeout=300) == 0, (tmp_path / "victim.log").read_text()
    a = torch.load(tmp_path / "ref" / "teacher.pt", weights_only=True)
    b = torch.load(tmp_path / "victim" / "teacher.pt", weights_only=True)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    ra, rb = read_metrics(tmp_path / "ref"), read_metrics(tmp_path / "victim")
    assert [r["loss"] for r in ra] == [r["loss"] for r in rb] and len(rb) == 3


# -- CUDA (skipped without a GPU) -----------------------------------------------------------------------

@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("amp,channels_last", [("auto", False), ("bf16", True), ("fp16", True)])
def test_cuda_amp_channels_last_and_resume(tiny_bundle, tmp_path, amp, channels_last):
    kw = dict(epochs=2, lr=0.05, device="cuda", amp=amp, channels_last=channels_last)
    student = _student(tiny_bundle)
    first = train(student, build_teacher_method("trades", steps=3), tiny_bundle, _cfg(tmp_path, stop_after=1, **kw),
                  card_base={"architecture": "cnn-small"})
    assert not first.completed and next(student.parameters()).is_cuda
    if channels_last:
        assert student.net.stage1[0].weight.is_contiguous(memory_format=torch.channels_last)
    r = train(_student(tiny_bundle), build_teacher_method("trades", steps=3), tiny_bundle,
              _cfg(tmp_path, resume=True, **kw), card_base={"architecture": "cnn-small"})
    assert r.completed and all(h["loss"] == h["loss"] for h in r.history)
    assert r.history[-1]["val_clean"] > 0.3
