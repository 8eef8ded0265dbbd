"""Bad input never yields a traceback: non-zero exit, exactly one line on stderr, user files untouched.

Each test builds the user's files in ``tmp_path``, snapshots them (SHA-256 of every file), runs the
CLI (``inspect`` / ``data``) or, where no command path exists, the library call, and checks the
snapshot afterwards.
"""
from __future__ import annotations

import gzip
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


@pytest.mark.parametrize("value", ["0", "2", "abc", "1/0", "-8/255", "nan"])
def test_bad_eps_library(value):
    with pytest.raises(UserError) as e:
        parse_eps(value)
    msg = str(e.value)
    assert "--eps" in msg and "\n" not in msg and msg.strip()
