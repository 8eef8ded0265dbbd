"""Bad input never yields a traceback: non-zero exit, exactly one line on stderr, user files untouched.

Each test builds the user's files in ``tmp_path``, snapshots them (SHA-256 of every file), runs the
CLI (``inspect`` / ``data``) or, where no command path exists, the library call, and checks the
snapshot afterwards. ``test_battery`` is the table of hostile inputs for every command: exit code 2,
one line on stderr matching the row, no traceback / "internal error", nothing written.
"""
from __future__ import annotations

import gzip
import os
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from datafiles import _Evil, evil_pickle, write_cifar, write_mnist
from infoard_deploy.card import ModelCard
from infoard_deploy.checkpoint import save_model
from infoard_deploy.errors import UserError
from infoard_deploy.models import build_model
from infoard_deploy.utils import parse_eps, sha256_file


def snapshot(root: Path) -> dict:
    return {str(p.relative_to(root)): sha256_file(p) for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture
def fails(cli, tmp_path):
    """``fails(*args, match=regex)``: run the CLI and check the one-line failure contract."""

    def run(*args, match: str):
        before = snapshot(tmp_path)
        code, out, err = cli(*args)
        assert code != 0, out
        assert "Traceback" not in err and "Traceback" not in out
        lines = err.strip().splitlines()
        assert len(lines) == 1, err
        assert re.search(match, lines[0]), lines[0]
        assert snapshot(tmp_path) == before  # no existing user file was modified
        return lines[0]

    return run


@pytest.fixture
def ckpt(tmp_path):
    """A real cnn-small state dict (1 channel, 10 classes) without a card."""
    torch.manual_seed(0)
    p = tmp_path / "student.pt"
    torch.save(build_model("cnn-small", 10, 1, 8, [0.3], [0.4]).net.state_dict(), p)
    return p


SMALL = ["--arch", "cnn-small", "--input-shape", "1,8,8", "--mean", "0.3", "--std", "0.4"]


# ---------------------------------------------------------------- model files

def test_missing_file(fails, tmp_path):
    fails("inspect", tmp_path / "nope.pt", *SMALL, match=r"model file not found: .*nope\.pt")


def test_directory_instead_of_file(fails, tmp_path):
    (tmp_path / "dir.pt").mkdir()
    fails("inspect", tmp_path / "dir.pt", match="is a directory")


def test_corrupt_checkpoint(fails, tmp_path):
    (tmp_path / "bad.pt").write_bytes(b"PK\x03\x04 this is not a zip nor a pickle" * 10)
    fails("inspect", tmp_path / "bad.pt", *SMALL, match=r"bad\.pt is corrupt or not a PyTorch checkpoint")


def test_pickle_that_would_run_code(fails, tmp_path):
    marker = tmp_path / "pwned"
    torch.save({"state_dict": {"w": torch.ones(1)}, "hook": _Evil(str(marker))}, tmp_path / "evil.pt")
    fails("inspect", tmp_path / "evil.pt", *SMALL, match="refused to load evil.pt: it is a pickle that would run code")
    assert not marker.exists()


def test_wrong_architecture_names_keys(fails, ckpt):
    line = fails("inspect", ckpt, "--arch", "resnet18", "--input-shape", "1,32,32", "--mean", "0", "--std", "1",
                 match="does not match architecture 'resnet18'")
    assert "missing keys conv1.weight" in line and "unexpected keys stage1.0.weight" in line


def test_wrong_class_count(fails, ckpt):
    fails("inspect", ckpt, *SMALL, "--num-classes", "5", match="has 10 output classes but 5 were expected")


def test_wrong_input_channels(fails, ckpt):
    fails("inspect", ckpt, "--arch", "cnn-small", "--input-shape", "3,8,8", "--mean", "0,0,0", "--std", "1,1,1",
          match="takes 1 input channels but 3 were expected")


def test_card_missing_normalisation(fails, tmp_path):
    m = build_model("cnn-small", 10, 1, 8, [0.3], [0.4])
    p = save_model(m, tmp_path / "m.pt", ModelCard("cnn-small", 10, [1, 8, 8], [0.3], [0.4]))
    card = tmp_path / "m.card.json"
    card.write_text('{"architecture": "cnn-small", "num_classes": 10, "input_shape": [1, 8, 8]}')
    fails("inspect", p, match="missing mean, std")


@pytest.mark.parametrize("shape,match", [("3,32", "C,H,W"), ("a,b,c", "comma-separated integers"),
                                         ("0,8,8", "positive")])
def test_bad_input_shape(fails, ckpt, shape, match):
    fails("inspect", ckpt, "--arch", "cnn-small", "--input-shape", shape, match=match)


def test_unknown_architecture_suggests(fails, ckpt):
    fails("inspect", ckpt, "--arch", "cnn-smal", match="did you mean 'cnn-small'")


# ---------------------------------------------------------------- datasets

def test_unknown_dataset_suggests(fails):
    fails("data", "cifar1", match=r"unknown dataset 'cifar1'; did you mean 'cifar10'")


def test_missing_data_dir(fails, tmp_path):
    fails("data", "cifar10", "--data-dir", tmp_path / "nothere", match="data directory not found")


def test_bad_idx_magic(fails, tmp_path):
    write_mnist(tmp_path / "m")
    p = tmp_path / "m" / "train-images-idx3-ubyte.gz"
    raw = bytearray(gzip.decompress(p.read_bytes()))
    raw[2] = 0x0D  # float data type: not the unsigned-byte IDX the dataset uses
    p.write_bytes(gzip.compress(bytes(raw)))
    fails("data", "mnist", "--data-dir", tmp_path / "m", match="bad magic number")


def test_truncated_idx(fails, tmp_path):
    write_mnist(tmp_path / "m", gz=False)
    p = tmp_path / "m" / "t10k-images-idx3-ubyte"
    p.write_bytes(p.read_bytes()[:-50])
    fails("data", "mnist", "--data-dir", tmp_path / "m", match="truncated")


def test_truncated_gzip(fails, tmp_path):
    write_mnist(tmp_path / "m")
    p = tmp_path / "m" / "train-labels-idx1-ubyte.gz"
    p.write_bytes(p.read_bytes()[:20])
    fails("data", "mnist", "--data-dir", tmp_path / "m", match="cannot read .*train-labels")


def test_corrupt_tar(fails, tmp_path):
    path, _ = write_cifar(tmp_path / "c")
    path.write_bytes(path.read_bytes()[: len(path.read_bytes()) // 2])
    fails("data", "cifar10", "--data-dir", tmp_path / "c", match="cifar-10-python.tar.gz")


def test_cifar_batch_that_is_not_a_pickle(fails, tmp_path):
    write_cifar(tmp_path / "c", packed=False, corrupt={"test_batch": b"\x80\x02garbage"})
    fails("data", "cifar10", "--data-dir", tmp_path / "c", match="test_batch is not a valid CIFAR batch pickle")


def test_cifar_pickle_that_would_run_code(fails, tmp_path):
    marker = tmp_path / "pwned"
    write_cifar(tmp_path / "c", corrupt={"data_batch_1": evil_pickle(marker)})
    fails("data", "cifar10", "--data-dir", tmp_path / "c", match="refused to unpickle")
    assert not marker.exists()


def _npz(path, **arrays):
    np.savez(path, **arrays)
    return path


def test_nan_pixels(fails, tmp_path):
    x = np.random.default_rng(0).random((6, 4, 4, 1)).astype(np.float32)
    x[2, 1, 1, 0] = np.nan
    p = _npz(tmp_path / "d.npz", x_train=x, y_train=np.arange(6) % 2, x_test=x[:2] * 0, y_test=[0, 1])
    fails("data", "npz", "--data-dir", p, match="NaN")


def test_out_of_range_pixels(fails, tmp_path):
    x = np.random.default_rng(0).random((6, 4, 4, 3)).astype(np.float32) * 255  # 0..255 stored as float
    p = _npz(tmp_path / "d.npz", x_train=x, y_train=np.arange(6) % 2, x_test=x[:2], y_test=[0, 1])
    fails("data", "npz", "--data-dir", p, match=r"float pixels must lie in \[0,1\]")


def test_label_image_count_mismatch(fails, tmp_path):
    x = np.zeros((6, 4, 4, 1), np.uint8)
    p = _npz(tmp_path / "d.npz", x_train=x, y_train=[0, 1, 0, 1, 0], x_test=x[:2], y_test=[0, 1])
    fails("data", "npz", "--data-dir", p, match="one label per image")


def test_channel_first_npz(fails, tmp_path):
    x = np.zeros((6, 3, 8, 8), np.uint8)
    p = _npz(tmp_path / "d.npz", x_train=x, y_train=np.arange(6) % 2, x_test=x[:2], y_test=[0, 1])
    fails("data", "npz", "--data-dir", p, match="channel-first")


def test_unreadable_image_in_folder(fails, tmp_path):
    from PIL import Image

    for split in ("train", "test"):
        for cls in ("a", "b"):
            (tmp_path / "f" / split / cls).mkdir(parents=True)
            Image.fromarray(np.zeros((6, 6), np.uint8)).save(tmp_path / "f" / split / cls / "0.png")
    (tmp_path / "f" / "train" / "b" / "1.png").write_bytes(b"not a png")
    fails("data", "imagefolder", "--data-dir", tmp_path / "f", match=r"cannot read image .*1\.png")


def test_bad_val_fraction(fails):
    fails("data", "digits", "--val-fraction", "1.5", match="validation fraction must lie in")


def test_download_with_wrong_files_keeps_nothing(fails, tmp_path, monkeypatch):
    # a "mirror" serving files that are not the official ones: rejected, nothing kept, no folder left
    write_mnist(tmp_path / "fake-mirror")
    monkeypatch.setenv("INFOARD_DATA_MIRROR", (tmp_path / "fake-mirror").as_uri())
    fails("data", "mnist", "--data-dir", tmp_path / "dl", "--download", match="failed its SHA-256 check")
    assert not (tmp_path / "dl").exists()


# ---------------------------------------------------------------- options

@pytest.mark.parametrize("device,match", [("tpu", "bad device 'tpu'"), ("cuda:99", "cuda:99")])
def test_bad_device(fails, device, match):
    fails("--device", device, "data", "digits", match=match)


def test_check_out_dir_and_file_library(tmp_path):
    from infoard_deploy.utils import check_out_dir, check_out_file

    (tmp_path / "f").write_text("x")
    cases = [(check_out_dir, tmp_path / "f", "--out .* is an existing file, expected a folder"),
             (check_out_dir, tmp_path / "f" / "sub", r"f is a file, so the folder cannot be created"),
             (check_out_dir, "/proc/nope/x", r"cannot create files in /proc"),
             (check_out_dir, "", "must name a folder"),
             (check_out_file, tmp_path, "is a folder, expected a file name"),
             (check_out_file, "/proc/nope/r.json", r"cannot create files in /proc")]
    for fn, path, match in cases:
        with pytest.raises(UserError, match=match) as e:
            fn(path)
        assert "\n" not in str(e.value)
    assert check_out_dir(tmp_path / "a" / "b", "--report-dir") == tmp_path / "a" / "b"
    assert not (tmp_path / "a").exists() and sorted(p.name for p in tmp_path.iterdir()) == ["f"]  # no side effects
    assert check_out_file(tmp_path / "new" / "r.json") == tmp_path / "new" / "r.json"
    if os.geteuid() != 0:
        (tmp_path / "ro").mkdir(mode=0o555)
        with pytest.raises(UserError, match="ro is not writable"):
            check_out_dir(tmp_path / "ro" / "x")


def test_set_threads(monkeypatch):
    from infoard_deploy import utils

    calls = []
    monkeypatch.setattr(utils, "_ORT_THREADS", 0)
    monkeypatch.setattr(torch, "set_num_threads", calls.append)  # the test process keeps its own setting
    for bad_value in (-1, 1.5, "2", True):
        with pytest.raises(UserError, match="--threads must be"):
            utils.set_threads(bad_value)
    utils.set_threads(0)
    assert calls == [] and utils.ort_threads() == 0
    utils.set_threads(2)
    assert calls == [2] and utils.ort_threads() == 2


@pytest.mark.parametrize("value", ["0", "2", "abc", "1/0", "-8/255", "nan"])
def test_bad_eps_library(value):
    with pytest.raises(UserError) as e:
        parse_eps(value)
    msg = str(e.value)
    assert "--eps" in msg and "\n" not in msg and msg.strip()


# ---------------------------------------------------------------- the battery: every command, one line, exit 2

@pytest.fixture(scope="module")
def bad(tmp_path_factory):
    """Input files for the battery: a trained model (+ ONNX export), hostile cards, data and paths."""
    import io
    import json
    import shutil
    import zipfile

    from infoard_deploy.data import BatchLoader, load_data
    from infoard_deploy.exporting.pipeline import export_artifacts
    from infoard_deploy.exporting.profiles import load_profile

    d = tmp_path_factory.mktemp("battery")
    torch.manual_seed(0)
    b = load_data("digits")
    m = build_model("cnn-small", 10, 1, 8, b.mean, b.std)
    opt = torch.optim.Adam(m.parameters(), lr=3e-3)
    for ep in range(3):  # accurate enough that distill prints no near-chance warning on stderr
        for x, y, _ in BatchLoader(b.train, np.arange(len(b.train)), 64, shuffle=True, seed=ep):
            opt.zero_grad()
            torch.nn.functional.cross_entropy(m(x), y).backward()
            opt.step()
    model = save_model(m.eval(), d / "m" / "student.pt",
                       ModelCard("cnn-small", 10, [1, 8, 8], list(b.mean), list(b.std), dataset="digits"))
    export_artifacts(model, [load_profile("ort-cpu-fp32")], d / "onnx", check_n=32)
    for name, changes in {"a": {"input_shape": ["a", 8, 8]}, "nan": {"mean": [float("nan")]},
                          "huge": {"input_shape": [3, 10**6, 10**6], "mean": [0.3] * 3, "std": [0.4] * 3}}.items():
        (d / name).mkdir()
        shutil.copy(model, d / name / "student.pt")
        card = {**json.loads((d / "m" / "student.card.json").read_text()), **changes}
        (d / name / "student.card.json").write_text(json.dumps(card))
    x, y = np.zeros((12, 8, 8, 1), np.uint8), np.arange(12) % 3
    y[5] = 9_999_999
    np.savez(d / "labels.npz", x_train=x[:8], y_train=y[:8], x_test=x[8:], y_test=y[8:])
    hdr = io.BytesIO()  # lie.npz: a 1 KB file whose header claims 100 PB
    np.lib.format.write_array_header_1_0(hdr, {"descr": "|u1", "fortran_order": False, "shape": (10**6, 10**8, 1)})
    with zipfile.ZipFile(d / "lie.npz", "w") as z:
        z.writestr("x_train.npy", hdr.getvalue() + bytes(64))
    (d / "file").write_text("a user's file")
    (d / "ro").mkdir()
    (d / "ro").chmod(0o555)
    yield d
    (d / "ro").chmod(0o755)


def _tree(root: Path) -> dict:
    return {str(p.relative_to(root)): sha256_file(p) if p.is_file() else "dir" for p in sorted(root.rglob("*"))}


M, A, NAN, HUGE, ONNX = "{d}/m/student.pt", "{d}/a/student.pt", "{d}/nan/student.pt", "{d}/huge/student.pt", \
    "{d}/onnx/student.fp32.onnx"
TT = ["train-teacher", "--data", "digits", "--arch", "cnn-small", "--epochs", "1"]
DI = ["distill", "--teacher", M, "--student", "cnn-small", "--data", "digits", "--epochs", "1"]
EV = ["evaluate", "--model", M, "--data", "digits", "--n", "8", "--attacks", "clean"]
VE = ["verify", "--reference", M, "--artifact", ONNX, "--data", "digits", "--n", "8", "--attacks", "pgd20"]
NPZ = ["--data", "npz", "--data-dir", "{d}/labels.npz"]
LABELS = "labels go up to 9999999 but only 4 distinct values occur"
OUT_FILE, PROC = "is an existing file, expected a folder", "cannot create files in /proc"
ROOT = pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")

BATTERY = [
    (TT + ["--out", "{d}/file"], OUT_FILE),
    (TT + ["--out", "/proc/nope/x"], PROC),
    pytest.param(TT + ["--out", "{d}/ro/x"], "is not writable", marks=ROOT),
    (["train-teacher", "--arch", "cnn-small", *NPZ, "--out", "{d}/o"], LABELS),
    (TT + ["--threads", "-1", "--out", "{d}/o"], "--threads must be >= 0"),
    (DI + ["--out", "{d}/file"], OUT_FILE),
    (DI + ["--out", "/proc/nope/x"], PROC),
    (["distill", "--teacher", A, "--student", "cnn-small", "--data", "digits", "--out", "{d}/o"],
     "student.card.json: input_shape C must be an integer, got 'a'"),
    (["distill", "--teacher", M, "--student", "cnn-small", *NPZ, "--out", "{d}/o"], LABELS),
    (DI + ["--threads", "-1", "--out", "{d}/o"], "--threads must be >= 0"),
    (["evaluate", "--model", NAN, "--data", "digits"], "mean value must be a finite number, got nan"),
    (["evaluate", "--model", HUGE, "--data", "digits"], r"H and W must lie in 1\.\.4096, got 1000000x1000000"),
    (["evaluate", "--model", A, "--data", "digits"], "input_shape C must be an integer"),
    (["evaluate", "--model", M, *NPZ], LABELS),
    (EV + ["--attack-opt", "pgd20.steps=-1"], "steps must be a positive integer"),
    (EV + ["--out", "/proc/nope/x.json"], PROC),
    (EV + ["--out", "{d}/m"], "is a folder, expected a file"),
    (EV + ["--threads", "-1"], "--threads must be >= 0"),
    (["export", "--model", M, "--fp32", "--out", "{d}/file"], OUT_FILE),
    (["export", "--model", M, "--fp32", "--out", "/proc/nope/x"], PROC),
    pytest.param(["export", "--model", M, "--fp32", "--out", "{d}/ro/x"], "is not writable", marks=ROOT),
    (["export", "--model", A, "--fp32", "--out", "{d}/o"], "input_shape C must be an integer"),
    (["export", "--model", HUGE, "--fp32", "--out", "{d}/o"], "H and W must lie in"),
    (["export", "--model", NAN, "--fp32", "--out", "{d}/o"], "mean value must be a finite number"),
    (VE + ["--out", "{d}/file"], "is not a directory|is an existing file"),
    (VE + ["--out", "/proc/nope/x"], PROC),
    (["verify", "--reference", NAN, "--artifact", ONNX, "--data", "digits", "--out", "{d}/o"], "finite"),
    (["verify", "--reference", M, "--artifact", ONNX, *NPZ, "--out", "{d}/o"], LABELS),
    (["bench", "--artifact", ONNX, "--iters", "0"], "--iters must be >= 1"),
    (["bench", "--artifact", ONNX, "--warmup", "-1"], "--warmup must be >= 0"),
    (["bench", "--artifact", ONNX, "--threads", "-1"], "--threads must be >= 0"),
    (["bench", "--reference", HUGE], "H and W must lie in"),
    (["inspect", NAN], "mean value must be a finite number"),
    (["inspect", HUGE], "too large|H and W must lie in"),
    (["inspect", A], "input_shape C must be an integer"),
    (["data", "npz", "--data-dir", "{d}/labels.npz"], LABELS),
    (["data", "npz", "--data-dir", "{d}/lie.npz"], "declares shape .* the file is corrupt"),
    (["run", "{d}/m"], "is a folder"),
    (["run", "demo", "--out", "{d}/file"], OUT_FILE),
    (["run", "demo", "--out", "/proc/nope/x"], PROC),
    (["list", "nonsense"], "unknown section 'nonsense'"),
    (["compare", "demo", "--threads", "-1", "--out", "{d}/o"], "--threads must be >= 0"),
    (["compare", "demo", "--set", "compare.variants.v={{config='infoard',opts={{asa_rule='nope'}}}}",
      "--set", "compare.configs=['infoard','v']", "--out", "{d}/o"],
     "compare config 'v': option 'asa_rule' must be one of visit, teacher, teacher-inv, got 'nope'"),
]


@pytest.mark.parametrize("argv,match", BATTERY, ids=lambda v: " ".join(v)[:60] if isinstance(v, list) else None)
def test_battery(cli, bad, argv, match):
    before = _tree(bad)
    code, out, err = cli("--device", "cpu", *[a.format(d=bad) for a in argv])
    assert code == 2, (out, err)
    assert "Traceback" not in out + err and "internal error" not in out + err, err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert re.search(match, lines[0]), lines[0]
    assert _tree(bad) == before  # nothing written, created or modified
