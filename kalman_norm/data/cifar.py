"""CIFAR-10 / CIFAR-100 in their official pickled form, and tensorpack's loaders to download them.

* CIFAR-10: ``cifar-10-batches-py/`` with ``data_batch_1..5``, ``test_batch`` and optionally
  ``batches.meta`` (class names; without it the official names are used).
* CIFAR-100: ``cifar-100-python/`` with ``train``, ``test`` and optionally ``meta``; the 100 fine
  labels are used.

Each pickle holds ``data`` uint8 ``[N, 3072]`` (channel-major 3x32x32, RGB) and the labels; images
come out NHWC RGB.
"""
import pickle

import numpy as np

from tensorpack.dataflow import dataset as tp_dataset

from .common import DataError

__all__ = ["CIFAR10_NAMES", "CIFAR10_DIR", "CIFAR100_DIR", "CIFAR10_TRAIN", "CIFAR10_FILES",
           "CIFAR100_FILES", "TENSORPACK_SUBDIRS", "read_cifar", "download_cifar"]

CIFAR10_NAMES = ["airplane", "automobile", "bird", "cat", "deer",
                 "dog", "frog", "horse", "ship", "truck"]
CIFAR10_DIR, CIFAR100_DIR = "cifar-10-batches-py", "cifar-100-python"
CIFAR10_TRAIN = ["data_batch_%d" % i for i in range(1, 6)]
CIFAR10_FILES = CIFAR10_TRAIN + ["test_batch"]           # + optional batches.meta
CIFAR100_FILES = ["train", "test"]                         # + optional meta
TENSORPACK_SUBDIRS = {"cifar10": "cifar10_data", "cifar100": "cifar100_data"}


def _load_pickle(src, where, fname):
    try:
        if hasattr(src, "read"):
            src.seek(0)
            d = pickle.load(src, encoding="bytes")
        else:
            with open(src, "rb") as f:
                d = pickle.load(f, encoding="bytes")
    except Exception as e:
        raise DataError("%s: cannot unpickle %s (%s: %s); the file is corrupt or truncated: "
                        "re-download the official data" % (where, fname, type(e).__name__, e))
    if not isinstance(d, dict):
        raise DataError("%s: %s does not hold a dict as the official CIFAR files do" % (where, fname))
    return {(k.encode() if isinstance(k, str) else k): v for k, v in d.items()}


def read_cifar(layout, files, where):
    """``layout``: 'cifar10' or 'cifar100'; ``files``: {basename: path or binary file object}.
    Returns ``(train_x, train_y, test_x, test_y, class_names)``."""
    need = CIFAR10_FILES if layout == "cifar10" else CIFAR100_FILES
    missing = [f for f in need if f not in files]
    if missing:
        raise DataError("%s: incomplete official %s data, missing %s: pass the complete directory "
                        "(%s)" % (where, layout, ", ".join(missing), ", ".join(need)))
    label_key = b"labels" if layout == "cifar10" else b"fine_labels"
    parts = {}
    for split, fnames in (("train", CIFAR10_TRAIN if layout == "cifar10" else ["train"]),
                          ("test", ["test_batch" if layout == "cifar10" else "test"])):
        xs, ys = [], []
        for f in fnames:
            d = _load_pickle(files[f], where, f)
            if b"data" not in d or label_key not in d:
                other = "CIFAR-100 ('fine_labels')" if b"fine_labels" in d else \
                    ("CIFAR-10 ('labels')" if b"labels" in d else "unknown")
                raise DataError("%s: %s has no %r entry (looks like %s data) but %s was requested: "
                                "pass --dataset matching the files"
                                % (where, f, label_key.decode(), other, layout))
            x = np.asarray(d[b"data"])
            y = np.asarray(d[label_key]).reshape(-1)
            if x.dtype != np.uint8 or x.ndim != 2 or x.shape[1] != 3072 or len(x) != len(y):
                raise DataError("%s: %s holds data of shape %s dtype %s with %d labels, expected uint8 "
                                "[N,3072]" % (where, f, x.shape, x.dtype, len(y)))
            xs.append(x.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))   # channel-major -> NHWC
            ys.append(y.astype(np.int32))
        parts[split] = (np.ascontiguousarray(np.concatenate(xs)), np.concatenate(ys))
    meta_name, meta_key = ("batches.meta", b"label_names") if layout == "cifar10" \
        else ("meta", b"fine_label_names")
    names = None
    if meta_name in files:
        names = _load_pickle(files[meta_name], where, meta_name).get(meta_key)
        if names is not None:
            names = [n.decode() if isinstance(n, bytes) else str(n) for n in names]
    if names is None:
        names = CIFAR10_NAMES if layout == "cifar10" else ["class_%02d" % i for i in range(100)]
    return parts["train"][0], parts["train"][1], parts["test"][0], parts["test"][1], names


def download_cifar(layout, root):
    """Let tensorpack's Cifar10 / Cifar100 loader download and extract the official archive into
    ``root`` (it does so when ``root`` lacks the official directory)."""
    (tp_dataset.Cifar10 if layout == "cifar10" else tp_dataset.Cifar100)("test", dir=root)
