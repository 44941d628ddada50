"""What every data source shares: the error type, the :class:`Dataset` record, the expected size of
each known dataset and its check, channel statistics, the 32x32 image decoder, and :func:`describe`.

Nothing here reads a particular format; the source modules (``cifar``, ``svhn``, ``folder``,
``archive``) sit above this one.
"""
import concurrent.futures
import hashlib
import os
from dataclasses import dataclass, field
from typing import List

import numpy as np

import kalman_norm  # noqa: F401  (environment + NumPy aliases before tensorpack / cv2 users)
import cv2

__all__ = ["DataError", "Dataset", "DATASETS", "KNOWN_DATASETS", "NUM_CLASSES", "EXPECTED_COUNTS",
           "IMAGE_SHAPE", "IMAGE_EXTS", "OWN_DATASET", "ACCEPTED_LAYOUTS", "channel_stats",
           "check_counts", "class_counts", "decode_images", "describe", "make_dataset"]

# ``OWN_DATASET`` is how a user says "this is my own image folder / archive": any number of classes
# and images, nothing expected, everything counted and stated. The known names promise the official
# dataset: its split sizes and number of classes are checked (a 48,246-image "CIFAR-10" is an error).
OWN_DATASET = "folder"
KNOWN_DATASETS = ("cifar10", "cifar100", "svhn")
DATASETS = KNOWN_DATASETS + (OWN_DATASET,)
NUM_CLASSES = {"cifar10": 10, "cifar100": 100, "svhn": 10}
# (train, test) images of the official releases; SVHN without its 'extra' split
EXPECTED_COUNTS = {"cifar10": (50000, 10000), "cifar100": (50000, 10000), "svhn": (73257, 26032)}
IMAGE_SHAPE = (32, 32, 3)
IMAGE_EXTS = (".png", ".jpg", ".jpeg")

ACCEPTED_LAYOUTS = (
    "accepted layouts: (1) CIFAR-10 official 'cifar-10-batches-py/' (data_batch_1..5, test_batch) "
    "or its parent; (2) CIFAR-100 official 'cifar-100-python/' (train, test) or its parent; "
    "(3) SVHN 'train_32x32.mat' + 'test_32x32.mat'; (4) an image folder 'train/<class>/*.png|jpg' + "
    "'test/<class>/...' (or 'val/'), optionally under one top-level directory; "
    "(5) a .tar/.tar.gz/.tgz of (4) or of the official CIFAR directory")


class DataError(Exception):
    """The requested data cannot be found, read or understood. The message says what to pass."""


@dataclass
class Dataset:
    train_images: np.ndarray          # uint8 [N, 32, 32, 3] RGB
    train_labels: np.ndarray          # int32 [N]
    test_images: np.ndarray
    test_labels: np.ndarray
    class_names: List[str]
    num_classes: int
    channel_mean: np.ndarray          # float32 [3], 0..255 units, over the train set
    channel_std: np.ndarray
    source: str
    name: str = field(default="")

    def content_hash(self):
        """SHA-256 of the images, labels and class names of both splits (not of where they came
        from): a run records it, and a resume on other data is refused.  Hashes the arrays in
        place (about 0.5 s for CIFAR's 60,000 images)."""
        h = hashlib.sha256()
        for a in (self.train_images, self.train_labels, self.test_images, self.test_labels):
            a = np.ascontiguousarray(a)
            h.update(('%s %s\n' % (a.dtype.str, a.shape)).encode())
            h.update(memoryview(a).cast('B'))
        h.update('\n'.join(self.class_names).encode())
        return h.hexdigest()


def channel_stats(images):
    """Exact per-channel mean/std of uint8 images ``[..., C]`` from 256-bin histograms (no float copy)."""
    flat = images.reshape(-1, images.shape[-1])
    v = np.arange(256, dtype=np.float64)
    channels = flat.shape[1]
    mean, std = np.zeros(channels), np.zeros(channels)
    for ch in range(channels):
        cnt = np.bincount(np.ascontiguousarray(flat[:, ch]), minlength=256).astype(np.float64)
        n = max(cnt.sum(), 1.0)
        mean[ch] = (cnt * v).sum() / n
        std[ch] = np.sqrt(max((cnt * v * v).sum() / n - mean[ch] ** 2, 0.0))
    return mean.astype(np.float32), std.astype(np.float32)


def class_counts(labels, num_classes):
    return np.bincount(np.asarray(labels, np.int64), minlength=num_classes)[:num_classes]


def check_counts(name, num_train, num_test, num_classes, where, strict=True):
    """Compare a split's sizes with the official release of ``name``.

    A mismatch is a :class:`DataError` naming expected and found counts; with ``strict=False`` it is
    only returned (a warning text) -- for tests and deliberate subsets of a known dataset. The
    user's own dataset (``name == OWN_DATASET``) expects nothing. Returns the warning or ``None``.
    """
    if name not in EXPECTED_COUNTS:
        return None
    want_train, want_test = EXPECTED_COUNTS[name]
    want_classes = NUM_CLASSES[name]
    if (num_train, num_test, num_classes) == (want_train, want_test, want_classes):
        return None
    msg = ("%s: %s has %d train / %d test images in %d classes but the data has %d / %d in %d: "
           "the data is incomplete or another dataset; pass the complete %s data, or --dataset %s "
           "for a dataset of your own"
           % (where, name, want_train, want_test, want_classes, num_train, num_test, num_classes,
              name, OWN_DATASET))
    if strict:
        raise DataError(msg)
    return msg


def make_dataset(name, arrays, source):
    """Validate decoded arrays ``(train_x, train_y, test_x, test_y, class_names)`` of dataset ``name``
    (a known name or ``OWN_DATASET``) and wrap them in a :class:`Dataset` with channel statistics.
    Split sizes are checked by the caller (:func:`check_counts`), before anything is cached."""
    tr_x, tr_y, te_x, te_y, class_names = arrays
    class_names = [str(c) for c in class_names]
    want = NUM_CLASSES.get(name, len(class_names))
    if len(class_names) != want:
        raise DataError("dataset %r has %d classes but the data at %s has %d (%s): pass the %s data, "
                        "the dataset name matching these files, or --dataset %s for your own data"
                        % (name, want, source, len(class_names),
                           ", ".join(class_names[:12]) + (", ..." if len(class_names) > 12 else ""),
                           name, OWN_DATASET))
    for split, x, y in (("train", tr_x, tr_y), ("test", te_x, te_y)):
        if x.dtype != np.uint8 or x.shape[1:] != IMAGE_SHAPE or len(x) != len(y):
            raise DataError("%s: %s images have shape %s dtype %s (%d labels); expected uint8 "
                            "[N,32,32,3]" % (source, split, x.shape, x.dtype, len(y)))
        if len(y) == 0:
            raise DataError("%s: the %s split is empty" % (source, split))
        if y.min() < 0 or y.max() >= want:
            raise DataError("%s: %s labels span %d..%d, outside 0..%d for %s"
                            % (source, split, y.min(), y.max(), want - 1, name))
    mean, std = channel_stats(tr_x)
    return Dataset(train_images=tr_x, train_labels=tr_y.astype(np.int32), test_images=te_x,
                   test_labels=te_y.astype(np.int32), class_names=class_names, num_classes=want,
                   channel_mean=mean, channel_std=std, source=source, name=name)


def _per_class_text(ds, max_listed=20):
    tr = class_counts(ds.train_labels, ds.num_classes)
    te = class_counts(ds.test_labels, ds.num_classes)
    if ds.num_classes <= max_listed:
        return "per class (train/test): " + ", ".join(
            "%s %d/%d" % (c, a, b) for c, a, b in zip(ds.class_names, tr, te))
    return ("per class: train %d..%d, test %d..%d images"
            % (tr.min(), tr.max(), te.min(), te.max()))


def describe(ds):
    """One line for logs: sizes, classes, statistics and source of a :class:`Dataset`.

    A dataset of the user's own (``OWN_DATASET``) also states its count per class, since nothing
    was checked against an expected size."""
    names = ds.class_names
    shown = ", ".join(names[:10]) + (", ..." if len(names) > 10 else "")
    line = ("%s: train %d, test %d images %s uint8; %d classes (%s); mean %s std %s; source: %s"
            % (ds.name or "dataset", len(ds.train_labels), len(ds.test_labels),
               "x".join(str(s) for s in ds.train_images.shape[1:]), ds.num_classes, shown,
               np.array2string(ds.channel_mean, precision=2, separator=","),
               np.array2string(ds.channel_std, precision=2, separator=","), ds.source))
    if ds.name not in EXPECTED_COUNTS:
        line += "; " + _per_class_text(ds)
    return line


# --------------------------------------------------------------------------- 32x32 decoding

def _decode_one(name, src, out):
    try:
        buf = np.frombuffer(src, np.uint8) if isinstance(src, (bytes, bytearray)) \
            else np.fromfile(src, np.uint8)
    except OSError as e:
        raise DataError("cannot read image %s (%s)" % (name, e))
    img = cv2.imdecode(buf, cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION) if buf.size else None
    if img is None:
        raise DataError("cannot decode image %s (corrupt or not a PNG/JPEG): fix or remove it" % name)
    if img.shape != IMAGE_SHAPE:
        raise DataError("image %s has shape %s, expected 32x32x3 (images are not resized): pass "
                        "32x32 images" % (name, "x".join(str(s) for s in img.shape)))
    out[...] = img[:, :, ::-1]   # BGR -> RGB


def decode_images(items, num_threads=None):
    """Decode ``[(display name, bytes or path)]`` into uint8 ``[N,32,32,3]`` RGB, in threads
    (OpenCV releases the GIL). Any unreadable image is a :class:`DataError` naming it: a CIFAR-sized
    dataset is decoded once and cached, so a silently smaller set would be remembered."""
    out = np.empty((len(items),) + IMAGE_SHAPE, np.uint8)
    num_threads = num_threads or min(8, os.cpu_count() or 1)
    chunk = max(1, min(2048, (len(items) + num_threads - 1) // num_threads))

    def work(start):
        for i in range(start, min(start + chunk, len(items))):
            _decode_one(items[i][0], items[i][1], out[i])

    if num_threads == 1 or len(items) <= chunk:
        for s in range(0, len(items), chunk):
            work(s)
        return out
    with concurrent.futures.ThreadPoolExecutor(num_threads) as ex:
        for f in [ex.submit(work, s) for s in range(0, len(items), chunk)]:
            f.result()
    return out
