"""Data sources, splits, loader and downloads, on small files in the official formats written here."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from datafiles import evil_pickle, write_cifar, write_mnist
from infoard_deploy.data import DATASETS, BatchLoader, load_data, split_indices, to_tensor
from infoard_deploy.data.download import RemoteFile, download_dataset, fetch_file
from infoard_deploy.errors import UserError
from infoard_deploy.utils import sha256_file

FASHION_DIR = Path("/usr/share/datasets/fashion-mnist")


def _all(s):
    return s.get(np.arange(len(s)))


# ---------------------------------------------------------------- IDX (MNIST / Fashion-MNIST)

@pytest.mark.parametrize("gz", [True, False])
def test_idx_reader_roundtrip(tmp_path, gz):
    arrays = write_mnist(tmp_path, gz=gz)
    b = load_data("mnist", root=tmp_path)
    x, y = _all(b.train)
    assert x.shape == (24, 12, 12, 1) and x.dtype == np.uint8
    np.testing.assert_array_equal(x[..., 0], arrays["train_x"])
    np.testing.assert_array_equal(y, arrays["train_y"])
    xt, yt = _all(b.test)
    np.testing.assert_array_equal(xt[..., 0], arrays["test_x"])
    np.testing.assert_array_equal(yt, arrays["test_y"])
    assert b.input_shape == (1, 12, 12) and b.num_classes == 10 and b.default_eps == 0.3


@pytest.mark.skipif(not FASHION_DIR.exists(), reason="Debian dataset-fashion-mnist not installed")
def test_fashion_mnist_found_in_system_location():
    b = load_data("fashion-mnist")
    assert len(b.train) == 60000 and len(b.test) == 10000
    assert b.classes[0] == "T-shirt/top" and b.classes[9] == "Ankle boot"
    x, y = b.train.get(np.arange(100))
    assert x.shape == (100, 28, 28, 1) and set(np.unique(_all(b.test)[1])) == set(range(10))


# ---------------------------------------------------------------- CIFAR

@pytest.mark.parametrize("packed", [True, False])
def test_cifar10_archive_and_extracted(tmp_path, packed):
    path, arrays = write_cifar(tmp_path, "cifar10", packed=packed)
    for root in (tmp_path, path):  # the folder holding it, or the archive / extracted folder itself
        b = load_data("cifar10", root=root)
        x, y = _all(b.train)
        assert x.shape == (20, 32, 32, 3) and x.dtype == np.uint8
        # channel-planar rows decoded back to exactly the NHWC images that were written
        np.testing.assert_array_equal(x, arrays["train_x"])
        np.testing.assert_array_equal(y, arrays["train_y"])
        np.testing.assert_array_equal(_all(b.test)[0], arrays["test_x"])
        assert b.classes == [f"class{i}" for i in range(10)]
        assert b.input_shape == (3, 32, 32) and b.augment == "crop_flip:4"
        assert b.default_eps == pytest.approx(8 / 255)
        assert list(b.mean) == [0.4914, 0.4822, 0.4465] and list(b.std) == [0.2471, 0.2435, 0.2616]


@pytest.mark.parametrize("packed", [True, False])
def test_cifar100_fine_labels_and_names(tmp_path, packed):
    path, arrays = write_cifar(tmp_path, "cifar100", packed=packed)
    b = load_data("cifar100", root=tmp_path)
    x, y = _all(b.train)
    np.testing.assert_array_equal(x, arrays["train_x"])
    np.testing.assert_array_equal(y, arrays["train_y"])  # fine, not coarse, labels
    assert b.num_classes == 100 and b.classes[:2] == ["fine0", "fine1"] and b.classes[-1] == "fine99"
    assert list(b.mean) == [0.5071, 0.4865, 0.4409] and list(b.std) == [0.2673, 0.2564, 0.2762]


def test_cifar_pickle_that_runs_code_is_refused(tmp_path):
    marker = tmp_path / "pwned"
    write_cifar(tmp_path / "d", "cifar10", corrupt={"data_batch_2": evil_pickle(marker)})
    with pytest.raises(UserError, match="refused"):
        load_data("cifar10", root=tmp_path / "d")
    assert not marker.exists()


def test_safe_unpickler_formats_refusals_and_fuzz():
    import pickle

    from datafiles import py2_pickle
    from infoard_deploy.data.safe_pickle import safe_loads

    d = {b"data": (np.arange(2 * 3072) % 256).astype(np.uint8).reshape(2, -1), b"labels": [1, 2],
         b"f": np.float32(1.5)}
    for raw in (py2_pickle(d), *(pickle.dumps(d, protocol=p) for p in (0, 2, 4))):
        out = safe_loads(raw, "x")
        np.testing.assert_array_equal(out[b"data"], d[b"data"])
        assert out[b"labels"] == [1, 2] and out[b"f"] == np.float32(1.5)
        out[b"data"][0, 0] = 7  # a real, writable array
    with pytest.raises(UserError, match="refused"):
        safe_loads(pickle.dumps({b"x": np.array([{}, []], dtype=object)}, protocol=2), "x")
    with pytest.raises(UserError, match="refused global"):
        safe_loads(pickle.dumps(print, protocol=2), "x")
    # corrupted streams fail cleanly (numpy's own reconstruction segfaulted on some of these)
    raw = bytearray(py2_pickle(d))
    rng = np.random.default_rng(0)
    for _ in range(300):
        b = bytearray(raw)
        for _ in range(int(rng.integers(1, 4))):
            b[int(rng.integers(0, 330))] = int(rng.integers(0, 256))
        try:
            safe_loads(bytes(b), "x")
        except UserError:
            pass


# ---------------------------------------------------------------- imagefolder

def _write_images(root: Path, split: str, per_class: dict, size=(10, 12), mode="RGB", ext="png", seed=0):
    from PIL import Image

    rng = np.random.default_rng(seed)
    written = {}
    for cls, n in per_class.items():
        d = root / split / cls
        d.mkdir(parents=True, exist_ok=True)
        for i in range(n):
            c = 3 if mode == "RGB" else 1
            a = rng.integers(0, 256, (*size, c), dtype=np.uint8)
            img = Image.fromarray(a if c == 3 else a[..., 0], mode)
            p = d / f"{i:03d}.{ext}"
            img.save(p)
            written[p] = a
    return written


def test_imagefolder_png_exact_and_lazy(tmp_path):
    tr = _write_images(tmp_path, "train", {"cat": 3, "dog": 2})
    _write_images(tmp_path, "test", {"cat": 1, "dog": 1}, seed=1)
    b = load_data("imagefolder", root=tmp_path)
    assert b.classes == ["cat", "dog"] and b.input_shape == (3, 10, 12)
    assert len(b.train) == 5 and len(b.test) == 2
    x, y = _all(b.train)
    assert x.shape == (5, 10, 12, 3) and y.tolist() == [0, 0, 0, 1, 1]
    np.testing.assert_array_equal(x[0], tr[tmp_path / "train" / "cat" / "000.png"])  # PNG is lossless
    # images are read when asked for, not held in memory: a file changed on disk is seen
    from PIL import Image

    Image.fromarray(np.zeros((10, 12, 3), np.uint8)).save(tmp_path / "train" / "dog" / "001.png")
    assert b.train.get(np.array([4]))[0].max() == 0
    assert not hasattr(b.train, "x")


def test_imagefolder_jpeg_grey_and_mixed(tmp_path):
    _write_images(tmp_path / "g", "train", {"a": 2, "b": 2}, mode="L", ext="jpg")
    _write_images(tmp_path / "g", "test", {"a": 1}, mode="L", ext="jpeg")
    b = load_data("imagefolder", root=tmp_path / "g")
    assert b.input_shape == (1, 10, 12) and len(b.mean) == 1
    assert b.test.get(np.arange(1))[1].tolist() == [0]
    # one colour image makes the whole set RGB; grey ones are replicated to 3 equal channels
    _write_images(tmp_path / "m", "train", {"a": 2}, mode="L")
    _write_images(tmp_path / "m", "train", {"b": 1}, mode="RGB", seed=3)
    _write_images(tmp_path / "m", "test", {"a": 1}, mode="L")
    m = load_data("imagefolder", root=tmp_path / "m")
    x, _ = _all(m.train)
    assert m.input_shape == (3, 10, 12)
    np.testing.assert_array_equal(x[0, ..., 0], x[0, ..., 2])


def test_imagefolder_sizes_must_agree_or_resize(tmp_path):
    _write_images(tmp_path, "train", {"a": 2, "b": 1})
    _write_images(tmp_path, "test", {"a": 1}, size=(16, 16))
    with pytest.raises(UserError, match="differ in size.*resize"):
        load_data("imagefolder", root=tmp_path)
    b = load_data("imagefolder", root=tmp_path, resize="8x9")
    assert b.input_shape == (3, 8, 9) and _all(b.test)[0].shape == (1, 8, 9, 3)


# ---------------------------------------------------------------- npz

def test_npz_single_file_and_folder(tmp_path, rng):
    x = rng.integers(0, 256, (10, 6, 6, 3), dtype=np.uint8)
    y = np.arange(10) % 3
    np.savez(tmp_path / "d.npz", x_train=x[:8], y_train=y[:8], x_test=x[8:], y_test=y[8:],
             classes=np.array(["r", "g", "b"]))
    b = load_data("npz", root=tmp_path / "d.npz")
    assert b.classes == ["r", "g", "b"] and b.input_shape == (3, 6, 6)
    np.testing.assert_array_equal(_all(b.train)[0], x[:8])
    np.testing.assert_allclose(b.mean, (x[:8].reshape(-1, 3) / 255.0).mean(0), rtol=1e-6)
    f = tmp_path / "folder"
    f.mkdir()
    xf = (x[..., 0] / 255.0).astype(np.float32)  # grey (N,H,W) float in [0,1]
    np.savez(f / "train.npz", x=xf[:8], y=y[:8])
    np.savez(f / "test.npz", x=xf[8:], y=y[8:])
    b2 = load_data("npz", root=f)
    assert b2.input_shape == (1, 6, 6) and b2.classes == ["0", "1", "2"]
    t = to_tensor(_all(b2.test)[0])
    np.testing.assert_allclose(t[:, 0].numpy(), xf[8:])


def test_npz_object_arrays_refused(tmp_path):
    np.savez(tmp_path / "o.npz", x_train=np.array([object()] * 2), y_train=[0, 1], x_test=[0], y_test=[0])
    with pytest.raises(UserError, match="Python objects"):
        load_data("npz", root=tmp_path / "o.npz")


# ---------------------------------------------------------------- splits and loader

def test_validation_split_disjoint_seeded_and_from_train():
    n = 1000
    tr, val = split_indices(n, 0.1, seed=3)
    assert len(val) == 100 and len(tr) == 900
    assert not set(tr) & set(val) and set(tr) | set(val) == set(range(n))  # only train indices, none lost
    tr2, val2 = split_indices(n, 0.1, seed=3)
    np.testing.assert_array_equal(val, val2)
    np.testing.assert_array_equal(tr, tr2)
    assert not np.array_equal(val, split_indices(n, 0.1, seed=4)[1])
    assert len(split_indices(n, 0.1, seed=3, limit=50)[0]) == 50


def test_data_command_reports_splits(cli, tmp_path):
    write_cifar(tmp_path, "cifar10", per_batch=10)
    code, out, err = cli("data", "cifar10", "--data-dir", tmp_path, "--val-fraction", "0.2", "--json")
    assert code == 0, err
    rep = json.loads(out)
    assert rep["splits"] == {"train": 40, "val": 10, "test": 6, "train_total": 50, "val_fraction": 0.2, "seed": 0}
    assert rep["input_shape"] == [3, 32, 32] and rep["augment"] == "crop_flip:4" and rep["num_classes"] == 10
    assert sum(rep["label_counts"]["train"]) == 50 and sum(rep["label_counts"]["test"]) == 6
    ps = rep["pixel_stats"]
    assert all(0.0 <= v <= 1.0 for v in ps["mean"] + ps["min"] + ps["max"]) and len(ps["std"]) == 3
    code, out, _ = cli("data", "digits")
    assert code == 0 and "val" in out and "normalisation" in out


def test_shuffle_is_seeded_per_epoch(tiny_bundle):
    def order(seed, epoch):
        ld = BatchLoader(tiny_bundle.train, batch_size=64, shuffle=True, seed=seed)
        ld.set_epoch(epoch)
        return torch.cat([i for _, _, i in ld]).numpy()

    a = order(0, 0)
    np.testing.assert_array_equal(a, order(0, 0))
    assert not np.array_equal(a, order(0, 1)) and not np.array_equal(a, order(1, 0))
    assert sorted(a.tolist()) == list(range(len(tiny_bundle.train)))


def test_augmentation_keeps_range_shape_and_labels(tmp_path):
    write_cifar(tmp_path, "cifar10", per_batch=8)
    b = load_data("cifar10", root=tmp_path)
    plain = BatchLoader(b.train, batch_size=16, augment="none")
    aug = BatchLoader(b.train, batch_size=16, augment=b.augment, seed=1)
    changed = False
    for (x0, y0, i0), (x1, y1, i1) in zip(plain, aug):
        assert x1.shape == x0.shape == (len(y0), 3, 32, 32) and x1.dtype == torch.float32
        assert float(x1.min()) >= 0.0 and float(x1.max()) <= 1.0
        assert torch.equal(y0, y1) and torch.equal(i0, i1)
        changed |= not torch.equal(x0, x1)
    assert changed
    again = BatchLoader(b.train, batch_size=16, augment=b.augment, seed=1)
    assert all(torch.equal(a[0], c[0]) for a, c in zip(aug, again))  # augmentation is seeded too


def test_ddp_shards_disjoint_and_equal(tiny_bundle):
    n = len(tiny_bundle.train)
    world = 3
    shards = []
    for rank in range(world):
        ld = BatchLoader(tiny_bundle.train, batch_size=50, shuffle=True, seed=5, rank=rank, world_size=world)
        shards.append(torch.cat([i for _, _, i in ld]).numpy())
    assert len({len(s) for s in shards}) == 1  # equal length: no rank waits on a collective
    pad = len(shards[0]) * world - n
    total = np.concatenate(shards)
    assert set(total.tolist()) == set(range(n))
    assert len(total) - len(set(total.tolist())) == pad < world  # only the padding repeats


# ---------------------------------------------------------------- downloads

@pytest.mark.skipif(not FASHION_DIR.exists(), reason="Debian dataset-fashion-mnist not installed")
def test_download_verifies_and_places_files(tmp_path, monkeypatch):
    # Debian's re-gzipped Fashion-MNIST served from a file:// mirror: accepted by the payload digest
    monkeypatch.setenv("INFOARD_DATA_MIRROR", FASHION_DIR.as_uri())
    out = download_dataset("fashion-mnist", tmp_path / "fm")
    assert sorted(p.name for p in out.iterdir()) == sorted(p.name for p in FASHION_DIR.iterdir())
    b = load_data("fashion-mnist", root=out)
    assert len(b.train) == 60000 and b.info["source"] == str(out)


def test_download_mismatch_leaves_nothing(tmp_path):
    src = tmp_path / "src.bin"
    src.write_bytes(b"not the official file")
    dest = tmp_path / "dl" / "file.bin"
    with pytest.raises(UserError, match="SHA-256"):
        fetch_file([src.as_uri()], dest, RemoteFile("file.bin", "0" * 64))
    assert not dest.exists() and list(dest.parent.iterdir()) == []
    ok = fetch_file([src.as_uri()], dest, RemoteFile("file.bin", sha256_file(src)))
    assert ok.read_bytes() == src.read_bytes()
    # an existing file that differs is never overwritten
    dest.write_bytes(b"user data")
    with pytest.raises(UserError, match="exists"):
        fetch_file([src.as_uri()], dest, RemoteFile("file.bin", sha256_file(src)))
    assert dest.read_bytes() == b"user data"


def test_download_without_network_is_one_line(tmp_path):
    with pytest.raises(UserError) as e:
        fetch_file(["http://127.0.0.1:9/x.gz"], tmp_path / "x.gz", RemoteFile("x.gz", "0" * 64))
    assert "no network" in str(e.value) and "\n" not in str(e.value)
    assert list(tmp_path.iterdir()) == []


def test_every_source_registered():
    assert {"digits", "mnist", "fashion-mnist", "cifar10", "cifar100", "imagefolder", "npz"} <= set(DATASETS.names())
    assert all(DATASETS.meta(n).get("about") for n in DATASETS.names())


# ---------------------------------------------------------------- untrusted sizes and labels

def test_sparse_labels_do_not_make_millions_of_classes(tmp_path):
    x = np.zeros((12, 4, 4, 1), np.uint8)
    y = np.arange(12) % 3
    y[5] = 9_999_999  # one id column value among class indices: must not build a 10M-class model
    np.savez(tmp_path / "d.npz", x_train=x[:8], y_train=y[:8], x_test=x[8:], y_test=y[8:])
    with pytest.raises(UserError, match=r"labels go up to 9999999 but only 4 distinct values occur .*0\.\.K-1"):
        load_data("npz", root=tmp_path / "d.npz")


def _npz_with_header(path, shape, data=b"\0" * 64):
    """An .npz whose x_train header declares ``shape`` but holds only ``data``."""
    import io
    import zipfile

    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, {"descr": "|u1", "fortran_order": False, "shape": shape})
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("x_train.npy", buf.getvalue() + data)
        for k, v in (("y_train", [0, 1]), ("x_test", np.zeros((2, 4, 4, 1), np.uint8)), ("y_test", [0, 1])):
            b = io.BytesIO()
            np.save(b, np.asarray(v))
            z.writestr(f"{k}.npy", b.getvalue())
    return path


def test_npz_headers_are_checked_before_numpy_allocates(tmp_path):
    p = _npz_with_header(tmp_path / "lie.npz", (10**6, 10**4, 10**4, 1))  # 100 PB claimed in a 1 KB file
    with pytest.raises(UserError, match=r"declares shape .* holds only .* corrupt"):
        load_data("npz", root=p)
    big = tmp_path / "big.npz"  # honest but absurd: 5000-pixel sides, compressed to almost nothing
    np.savez_compressed(big, x_train=np.zeros((1, 5000, 8, 1), np.uint8), y_train=[0], x_test=np.zeros((1, 4, 4, 1),
                        np.uint8), y_test=[1])
    with pytest.raises(UserError, match=r"x_train: images are 5000x8; sides must lie in 1\.\.4096"):
        load_data("npz", root=big)
    (tmp_path / "a.npy").write_bytes(b"\x93NUMPY")  # not a zip at all
    with pytest.raises(UserError, match="not a valid .npz file"):
        load_data("npz", root=tmp_path / "a.npy")


def test_idx_header_is_checked_before_the_body_is_read(tmp_path):
    import gzip
    import struct

    write_mnist(tmp_path / "m")
    p = tmp_path / "m" / "train-images-idx3-ubyte.gz"
    p.write_bytes(gzip.compress(struct.pack(">HBBIII", 0, 8, 3, 60000, 100000, 100000)))
    with pytest.raises(UserError, match=r"images are 100000x100000; sides must lie in 1\.\.4096"):
        load_data("mnist", root=tmp_path / "m")
    p.write_bytes(gzip.compress(struct.pack(">HBBIII", 0, 8, 3, 2**32 - 1, 4096, 4096)))
    with pytest.raises(UserError, match="more than this machine's memory"):
        load_data("mnist", root=tmp_path / "m")


def test_labels_outside_the_class_list_are_refused(tmp_path):
    from datafiles import write_idx

    arrays = write_mnist(tmp_path / "m")
    write_idx(tmp_path / "m" / "t10k-labels-idx1-ubyte", np.full(len(arrays["test_y"]), 200, np.uint8))
    with pytest.raises(UserError, match=r"test labels must lie in 0\.\.9 \(10 classes\), found 200\.\.200"):
        load_data("mnist", root=tmp_path / "m")


def test_imagefolder_refuses_oversized_images(tmp_path):
    from PIL import Image

    for split in ("train", "test"):
        for cls in ("a", "b"):
            (tmp_path / split / cls).mkdir(parents=True)
            Image.fromarray(np.zeros((6, 6), np.uint8)).save(tmp_path / split / cls / "0.png")
    Image.fromarray(np.zeros((5000, 4), np.uint8)).save(tmp_path / "train" / "a" / "1.png")
    with pytest.raises(UserError, match=r"1\.png is 5000x4; images may be at most 4096 pixels per side \(or pass"):
        load_data("imagefolder", root=tmp_path)
    assert load_data("imagefolder", root=tmp_path, resize=6).input_shape == (1, 6, 6)  # photos: resize them
    with pytest.raises(UserError, match=r"resize must lie in 1\.\.4096"):
        load_data("imagefolder", root=tmp_path, resize="9000x8")
