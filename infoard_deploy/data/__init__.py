"""Data sources behind one interface (see :mod:`.base`); inputs are always float in [0,1], NCHW.

:data:`DATASETS` maps a name to a loader ``(root=None, download=False, **opts) -> DataBundle``.
"""
from __future__ import annotations

from functools import partial
from pathlib import Path
from typing import Any, Callable, Optional

from ..errors import UserError
from ..registry import Registry
from .base import ArraySet, DataBundle, ImageSet
from .digits import load_digits_bundle
from .loader import BatchLoader, augment_batch, split_indices, to_tensor
from .mnist import load_idx_bundle
from .cifar import load_cifar_bundle
from .folder import load_folder_bundle
from .npz import load_npz_bundle

DATASETS: Registry[Callable[..., DataBundle]] = Registry("dataset")
DATASETS.register("digits", load_digits_bundle, about="scikit-learn 8x8 digits, bundled (no download)")
DATASETS.register("mnist", partial(load_idx_bundle, "mnist"), about="MNIST, official IDX .gz files")
DATASETS.register("fashion-mnist", partial(load_idx_bundle, "fashion-mnist"),
                  about="Fashion-MNIST IDX files (auto-found from Debian's dataset-fashion-mnist)")
DATASETS.register("cifar10", partial(load_cifar_bundle, "cifar10"), about="CIFAR-10, official python-version archive (tar.gz or extracted)")
DATASETS.register("cifar100", partial(load_cifar_bundle, "cifar100"), about="CIFAR-100 (fine labels), official python-version archive")
DATASETS.register("imagefolder", load_folder_bundle, about="root/train/<class>/*.png|jpg and root/test/<class>/, decoded lazily")
DATASETS.register("npz", load_npz_bundle, about="x uint8 NHWC + y labels: one .npz (x_train/y_train/x_test/y_test) or train.npz/test.npz")


def load_data(name: str, root: Optional[str | Path] = None, download: bool = False, **opts: Any) -> DataBundle:
    """Load dataset ``name`` (a registry key) and check it; bad or missing files raise UserError."""
    loader = DATASETS.get(name)
    if root is not None and not Path(root).exists() and not download:
        raise UserError(f"data directory not found: {root}")
    return loader(root=root, download=download, **opts).check()


__all__ = ["DATASETS", "ArraySet", "DataBundle", "ImageSet", "BatchLoader", "augment_batch", "split_indices",
           "to_tensor", "load_data"]
