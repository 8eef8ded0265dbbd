"""Fetch the official dataset files and verify their SHA-256 before anyone reads them.

Each file is streamed to a temporary file *in the target folder*, hashed while it streams, and only
renamed into place (``os.replace``, atomic on POSIX) when the digest matches. A mismatch raises
:class:`UserError` and removes the partial file, so a folder never holds an unverified dataset file.
An existing file is never overwritten: if it matches it is kept, if not the user is told to move it.

Digests (SHA-256 of the files exactly as served) and where they were checked:

* MNIST: TensorFlow Datasets ``url_checksums/mnist.txt`` (CVDF mirror of LeCun's files).
* Fashion-MNIST: TensorFlow Datasets ``url_checksums/fashion_mnist.txt`` (Zalando's S3 bucket).
  Debian's ``dataset-fashion-mnist`` ships the same images re-gzipped (the .gz bytes differ, e.g.
  26,421,856 vs 26,421,880 bytes for the training images), so for these files the SHA-256 of the
  *decompressed* IDX payload, computed from the Debian files, is accepted as well.
* CIFAR-10 / CIFAR-100 python archives: torchvision's ``prototype/datasets/_builtin/cifar.py`` and
  Keras' ``datasets/cifar10.py`` / ``cifar100.py`` (``file_hash``); the Toronto page lists MD5 only.

``INFOARD_DATA_MIRROR`` (a base URL, ``file://`` allowed) is tried before the official locations,
for air-gapped sites; the digests are checked all the same.
"""
from __future__ import annotations

import gzip
import hashlib
import http.client
import os
import shutil
import socket
import sys
import tempfile
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple

from ..errors import UserError


@dataclass(frozen=True)
class RemoteFile:
    name: str
    sha256: str  # of the file as served
    payload_sha256: Optional[str] = None  # of the gunzipped content (re-compressed copies)


@dataclass(frozen=True)
class RemoteDataset:
    mirrors: Tuple[str, ...]  # base URLs, tried in order; the file name is appended
    files: Tuple[RemoteFile, ...]
    size_mb: int
    source: str = ""


_MNIST_MIRRORS = (
    "https://ossci-datasets.s3.amazonaws.com/mnist/",
    "https://storage.googleapis.com/cvdf-datasets/mnist/",
    "http://yann.lecun.com/exdb/mnist/",
)

REMOTE: Dict[str, RemoteDataset] = {
    "mnist": RemoteDataset(
        _MNIST_MIRRORS,
        (
            RemoteFile("train-images-idx3-ubyte.gz", "440fcabf73cc546fa21475e81ea370265605f56be210a4024d2ca8f203523609"),
            RemoteFile("train-labels-idx1-ubyte.gz", "3552534a0a558bbed6aed32b30c495cca23d567ec52cac8be1a0730e8010255c"),
            RemoteFile("t10k-images-idx3-ubyte.gz", "8d422c7b0a1c1c79245a5bcf07fe86e33eeafee792b84584aec276f5a2dbc4e6"),
            RemoteFile("t10k-labels-idx1-ubyte.gz", "f7ae60f92e00ec6debd23a6088c31dbd2371eca3ffa0defaefb259924204aec6"),
        ),
        size_mb=12,
        source="tensorflow/datasets url_checksums/mnist.txt",
    ),
    "fashion-mnist": RemoteDataset(
        ("http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",),
        (
            RemoteFile("train-images-idx3-ubyte.gz", "3aede38d61863908ad78613f6a32ed271626dd12800ba2636569512369268a84",
                       "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888"),
            RemoteFile("train-labels-idx1-ubyte.gz", "a04f17134ac03560a47e3764e11b92fc97de4d1bfaf8ba1a3aa29af54cc90845",
                       "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9"),
            RemoteFile("t10k-images-idx3-ubyte.gz", "346e55b948d973a97e58d2351dde16a484bd415d4595297633bb08f03db6a073",
                       "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b"),
            RemoteFile("t10k-labels-idx1-ubyte.gz", "67da17c76eaffca5446c3361aaab5c3cd6d1c2608764d35dfb1850b086bf8dd5",
                       "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34"),
        ),
        size_mb=30,
        source="tensorflow/datasets url_checksums/fashion_mnist.txt; payload digests from Debian dataset-fashion-mnist",
    ),
    "cifar10": RemoteDataset(
        ("https://www.cs.toronto.edu/~kriz/",),
        (RemoteFile("cifar-10-python.tar.gz", "6d958be074577803d12ecdefd02955f39262c83c16fe9348329d7fe0b5c001ce"),),
        size_mb=163,
        source="torchvision prototype cifar.py / keras datasets/cifar10.py",
    ),
    "cifar100": RemoteDataset(
        ("https://www.cs.toronto.edu/~kriz/",),
        (RemoteFile("cifar-100-python.tar.gz", "85cd44d02ba6437773c5bbd22e183051d648de2e7d6b014e1ef29b855ba677a7"),),
        size_mb=161,
        source="torchvision prototype cifar.py / keras datasets/cifar100.py",
    ),
}

_TIMEOUT_S = 30.0
_CHUNK = 1 << 20


def _payload_sha256(path: Path) -> Optional[str]:
    """SHA-256 of a gzip file's decompressed content; None when it is not valid gzip."""
    h = hashlib.sha256()
    try:
        with gzip.open(path, "rb") as f:
            for chunk in iter(lambda: f.read(_CHUNK), b""):
                h.update(chunk)
    except (OSError, EOFError):
        return None
    return h.hexdigest()


def file_matches(path: Path, spec: RemoteFile, digest: Optional[str] = None) -> bool:
    """True when ``path`` is the official file (or, where allowed, a re-compressed copy of it)."""
    if digest is None:
        h = hashlib.sha256()
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(_CHUNK), b""):
                h.update(chunk)
        digest = h.hexdigest()
    if digest == spec.sha256:
        return True
    return spec.payload_sha256 is not None and _payload_sha256(path) == spec.payload_sha256


_NET_ERRORS = (urllib.error.URLError, socket.timeout, ConnectionError, http.client.HTTPException, OSError, ValueError)


def _reason(url: str, e: BaseException) -> str:
    return f"{url}: {' '.join(str(getattr(e, 'reason', None) or e).split())}"


def _open(url: str):
    req = urllib.request.Request(url, headers={"User-Agent": "infoard-deploy"})
    return urllib.request.urlopen(req, timeout=_TIMEOUT_S)  # noqa: S310 - http(s)/file URLs we chose


def fetch_file(urls: Sequence[str], dest: Path, spec: RemoteFile,
               progress: Optional[Callable[[str], None]] = None) -> Path:
    """Download ``spec`` from the first reachable URL into ``dest`` (verified, atomic).

    Network failures try the next URL; a digest mismatch stops at once (a wrong file from any
    mirror is a red flag, not a hiccup). Raises UserError with one line in both cases.
    """
    dest = Path(dest)
    if dest.exists():
        if file_matches(dest, spec):
            return dest
        raise UserError(f"{dest} exists but is not the official {spec.name} (SHA-256 differs); move it away and retry")
    dest.parent.mkdir(parents=True, exist_ok=True)
    errors: List[str] = []
    for url in urls:
        if progress:
            progress(f"downloading {url}")
        try:
            resp = _open(url)
        except _NET_ERRORS as e:
            errors.append(_reason(url, e))
            continue
        fd, tmp_name = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".part", dir=dest.parent)
        tmp = Path(tmp_name)
        try:
            h = hashlib.sha256()
            complete = True
            with resp, os.fdopen(fd, "wb") as out:
                while True:
                    try:
                        chunk = resp.read(_CHUNK)
                    except _NET_ERRORS as e:  # the connection dropped mid-file: try the next mirror
                        errors.append(_reason(url, e))
                        complete = False
                        break
                    if not chunk:
                        break
                    h.update(chunk)
                    try:
                        out.write(chunk)
                    except OSError as e:
                        raise UserError(f"cannot write {tmp.parent}: {e.strerror or e}") from None
            if not complete:
                continue
            if not file_matches(tmp, spec, h.hexdigest()):
                raise UserError(f"{spec.name} from {url} failed its SHA-256 check (got {h.hexdigest()[:16]}..., "
                                f"expected {spec.sha256[:16]}...); nothing was kept")
            os.replace(tmp, dest)
            return dest
        finally:
            if tmp.exists():
                tmp.unlink()
    raise UserError(f"cannot download {spec.name} (no network?): {errors[-1] if errors else 'no URL'}; "
                    f"place the file in {dest.parent} by hand")


def mirrors_for(name: str) -> List[str]:
    spec = REMOTE[name]
    extra = os.environ.get("INFOARD_DATA_MIRROR", "").strip()
    bases = ([extra.rstrip("/") + "/"] if extra else []) + list(spec.mirrors)
    return bases


def _tty_progress(msg: str) -> None:
    # interactive users see what a minutes-long download is doing; logs and tests stay clean
    if sys.stderr.isatty():
        sys.stderr.write(msg + "\n")


def download_dataset(name: str, folder: str | Path, progress: Optional[Callable[[str], None]] = _tty_progress) -> Path:
    """Fetch every official file of ``name`` into ``folder`` (verified); returns ``folder``."""
    if name not in REMOTE:
        raise UserError(f"no download is known for dataset '{name}' (downloadable: {', '.join(sorted(REMOTE))})")
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise UserError(f"download target {folder} is a file, expected a folder")
    created = not folder.exists()
    spec = REMOTE[name]
    if progress:
        progress(f"{name}: about {spec.size_mb} MB into {folder} (SHA-256 checked)")
    try:
        for f in spec.files:
            fetch_file([b + f.name for b in mirrors_for(name)], folder / f.name, f, progress)
    except UserError:
        # a folder we made and that holds nothing is removed again
        if created and folder.exists() and not any(folder.iterdir()):
            shutil.rmtree(folder, ignore_errors=True)
        raise
    return folder


def default_cache(name: str) -> Path:
    """``$INFOARD_DATA_HOME/<name>`` or ``~/.cache/infoard-deploy/<name>``."""
    base = os.environ.get("INFOARD_DATA_HOME") or (Path.home() / ".cache" / "infoard-deploy")
    return Path(base) / name


__all__ = ["REMOTE", "RemoteFile", "RemoteDataset", "download_dataset", "fetch_file", "file_matches",
           "mirrors_for", "default_cache"]
