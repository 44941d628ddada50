"""Data layer of the CIFAR trainer: load CIFAR-10 / CIFAR-100 / SVHN and build tensorpack DataFlows.

Loading (:func:`load_dataset`) accepts

* ``data=None``: tensorpack's own loaders and default directory (``$TENSORPACK_DATASET``, else
  ``~/tensorpack_data``); they download the official files when they are missing.
* a directory in the official layout: ``cifar-10-batches-py/`` (``data_batch_1..5``, ``test_batch``),
  ``cifar-100-python/`` (``train``, ``test``; fine labels), or SVHN's ``train_32x32.mat`` and
  ``test_32x32.mat`` (needs scipy). The official directory itself or its parent may be given.
* an image folder ``train/<class>/*.{png,jpg,jpeg}`` + ``test/<class>/...`` (``val/`` is accepted
  in place of ``test/``), possibly under one top-level directory,
* a ``.tar`` / ``.tar.gz`` / ``.tgz`` holding such an image folder (or the official CIFAR pickles).
  Members are read straight from the archive, nothing is extracted to disk.

Image folders and archives are decoded once (in threads; OpenCV releases the GIL) and cached as an
``.npz`` in ``cache_dir`` (default ``$KALMAN_NORM_CACHE`` or ``~/.cache/kalman_norm``), keyed by the
absolute path, size and mtime of the source. Every problem with the data raises :class:`DataError`
with the offending path and what to pass instead.

Labels follow the sorted class names (image folders) or the official label order (pickles, .mat;
SVHN's label 10 is the digit 0). Images are uint8 ``[N, 32, 32, 3]`` RGB (NHWC).

DataFlows (:func:`get_dataflow`) yield ``[images uint8 [B,32,32,3], labels int32 [B]]``.

* Training: reshuffled every epoch, with the augmentation of the paper (and of the ResNet CIFAR
  recipe it follows): zero-pad 4 pixels on each side, take a random 32x32 crop, flip horizontally
  with probability 1/2. It is vectorized over the batch with NumPy and deterministic given a seed.
* Test: no augmentation, fixed order.

Normalization -- subtracting the per-channel mean and dividing by the per-channel std of the
training set (``Dataset.channel_mean`` / ``channel_std``, in 0..255 units), the usual practice for
CIFAR ResNets -- is deliberately *not* done here: the model does it inside the TF graph, so batches
stay uint8 when they cross the process boundary of ``MultiProcessRunnerZMQ`` (4x less data than
float32) and the exported graph is self-contained.
"""
import concurrent.futures
import hashlib
import io
import multiprocessing as mp
import os
import pickle
import tarfile
import tempfile
import time
import zlib
from dataclasses import dataclass, field
from typing import List

import numpy as np

import kalman_norm  # noqa: F401  (environment + NumPy aliases before tensorpack)
from kalman_norm._process import exit_with_parent
from tensorpack.dataflow import MultiProcessRunnerZMQ, RNGDataFlow
from tensorpack.utils import logger

__all__ = ["DataError", "Dataset", "load_dataset", "get_dataflow", "describe", "DATASETS",
           "default_cache_dir"]

DATASETS = ("cifar10", "cifar100", "svhn")
NUM_CLASSES = {"cifar10": 10, "cifar100": 100, "svhn": 10}
IMAGE_SHAPE = (32, 32, 3)
IMAGE_EXTS = (".png", ".jpg", ".jpeg")
CACHE_VERSION = 1
PAD = 4  # pixels of zero padding before the random crop

CIFAR10_NAMES = ["airplane", "automobile", "bird", "cat", "deer",
                 "dog", "frog", "horse", "ship", "truck"]
CIFAR10_DIR, CIFAR100_DIR = "cifar-10-batches-py", "cifar-100-python"
CIFAR10_TRAIN = ["data_batch_%d" % i for i in range(1, 6)]
CIFAR10_FILES = CIFAR10_TRAIN + ["test_batch"]           # + optional batches.meta
CIFAR100_FILES = ["train", "test"]                         # + optional meta
SVHN_FILES = ["train_32x32.mat", "test_32x32.mat"]
SPLIT_DIRS = ("train", "test", "val")

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


# --------------------------------------------------------------------------- public API

def default_cache_dir():
    return os.environ.get("KALMAN_NORM_CACHE") or os.path.join(os.path.expanduser("~"), ".cache",
                                                                 "kalman_norm")


def load_dataset(name, data=None, cache_dir=None):
    """Load ``name`` ('cifar10', 'cifar100', 'svhn') from ``data`` (see the module docstring)."""
    key = str(name).lower().replace("-", "")
    if key not in DATASETS:
        raise DataError("unknown dataset name %r: choose one of %s" % (name, ", ".join(DATASETS)))
    if data is None:
        arrays, source = _load_default(key)
    else:
        path = os.path.abspath(os.path.expanduser(os.fspath(data)))
        if not os.path.exists(path):
            raise DataError("data path %s does not exist: pass --data with an existing directory "
                            "(official %s files or an image folder) or a .tar.gz of an image folder"
                            % (path, key))
        if os.path.isdir(path):
            arrays, source = _load_dir(key, path, cache_dir)
        else:
            arrays, source = _load_file(key, path, cache_dir)
    return _make_dataset(key, arrays, source)


def describe(ds):
    """One line for logs: sizes, classes, statistics and source of a :class:`Dataset`."""
    names = ds.class_names
    shown = ", ".join(names[:10]) + (", ..." if len(names) > 10 else "")
    return ("%s: train %d, test %d images %s uint8; %d classes (%s); mean %s std %s; source: %s"
            % (ds.name or "dataset", len(ds.train_labels), len(ds.test_labels),
               "x".join(str(s) for s in ds.train_images.shape[1:]), ds.num_classes, shown,
               np.array2string(ds.channel_mean, precision=2, separator=","),
               np.array2string(ds.channel_std, precision=2, separator=","), ds.source))


def get_dataflow(images, labels, batch_size, train, num_proc=1, seed=None, remainder=False):
    """A DataFlow of ``[uint8 images [B,H,W,3], int32 labels [B]]`` batches.

    Args:
        train: shuffle every epoch + pad-4 random crop + random horizontal flip. ``len()`` is
            ``N // batch_size`` (partial batches are always dropped in training; ``remainder`` is
            only used for test flows).
        num_proc: training only. ``>= 1``: run the augmentation in that many worker processes
            (``MultiProcessRunnerZMQ``); 0: in the calling process. Test flows always run in-process
            (order matters there).
        seed: makes the training flow deterministic. Worker ``k`` of a multi-process flow derives
            its own stream from ``(seed, k)``, so workers do not produce the same batches.
            ``None``: seeded from time/pid like tensorpack's RNGDataFlow.
        remainder: test only: also produce the last partial batch.
    """
    images = np.asarray(images)
    labels = np.asarray(labels)
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] != 3:
        raise ValueError("images must be uint8 [N,H,W,3], got %s %s" % (images.dtype, images.shape))
    if labels.shape != (images.shape[0],):
        raise ValueError("labels must have shape [%d], got %s" % (images.shape[0], labels.shape))
    batch_size = int(batch_size)
    if batch_size <= 0:
        raise ValueError("batch_size must be positive, got %d" % batch_size)
    if train and len(labels) < batch_size:
        raise ValueError("batch_size %d is larger than the training set (%d images)"
                         % (batch_size, len(labels)))
    df = _BatchFlow(images, labels.astype(np.int32), batch_size, bool(train), seed,
                    bool(remainder) and not train)
    if train and num_proc and num_proc >= 1:
        df = MultiProcessRunnerZMQ(df, int(num_proc))
    return df


def augment_batch(images, rng, pad=PAD):
    """Pad ``pad`` zero pixels on each side, random crop back to HxW, random horizontal flip.

    Vectorized: one gather for the whole batch. Returns ``(out, offsets [B,2] (y,x), flipped [B])``.
    """
    b, h, w, _ = images.shape
    padded = np.pad(images, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
    oy = rng.randint(0, 2 * pad + 1, size=b)
    ox = rng.randint(0, 2 * pad + 1, size=b)
    flip = rng.rand(b) < 0.5
    rows = oy[:, None] + np.arange(h)[None, :]                         # [B, H]
    cols = ox[:, None] + np.arange(w)[None, :]                         # [B, W]
    cols = np.where(flip[:, None], cols[:, ::-1], cols)
    out = padded[np.arange(b)[:, None, None], rows[:, :, None], cols[:, None, :]]
    return out, np.stack([oy, ox], axis=1), flip


# --------------------------------------------------------------------------- DataFlow

class _BatchFlow(RNGDataFlow):
    def __init__(self, images, labels, batch_size, train, seed, remainder):
        self.images, self.labels = images, labels
        self.batch_size, self.train, self.seed, self.remainder = batch_size, train, seed, remainder

    def __len__(self):
        n, b = len(self.labels), self.batch_size
        if self.train or not self.remainder:
            return n // b
        return (n + b - 1) // b

    def reset_state(self):
        proc = mp.current_process()
        in_worker = isinstance(proc, MultiProcessRunnerZMQ._Worker)
        if in_worker:
            exit_with_parent()
        if self.seed is None:
            super().reset_state()
            return
        worker = proc.idx if in_worker else 0
        state = np.random.SeedSequence([int(self.seed), int(worker)]).generate_state(1)[0]
        self.rng = np.random.RandomState(int(state))

    def __iter__(self):
        if self.train and self.rng is None:
            raise RuntimeError("reset_state() must be called before iterating a training dataflow")
        n, b = len(self.labels), self.batch_size
        if self.train:
            order = self.rng.permutation(n)
            for k in range(n // b):
                idx = order[k * b:(k + 1) * b]
                out, _, _ = augment_batch(self.images[idx], self.rng)
                yield [out, self.labels[idx]]
        else:
            for k in range(len(self)):
                sl = slice(k * b, min((k + 1) * b, n))
                yield [np.ascontiguousarray(self.images[sl]), self.labels[sl].copy()]


# --------------------------------------------------------------------------- dataset assembly

def _make_dataset(name, arrays, source):
    tr_x, tr_y, te_x, te_y, class_names = arrays
    class_names = [str(c) for c in class_names]
    want = NUM_CLASSES[name]
    if len(class_names) != want:
        raise DataError("dataset %r has %d classes but the data at %s has %d (%s): pass the %s data, "
                        "or the dataset name matching these files"
                        % (name, want, source, len(class_names),
                           ", ".join(class_names[:12]) + (", ..." if len(class_names) > 12 else ""),
                           name))
    for split, x, y in (("train", tr_x, tr_y), ("test", te_x, te_y)):
        if x.dtype != np.uint8 or x.shape[1:] != IMAGE_SHAPE or len(x) != len(y):
            raise DataError("%s: %s images have shape %s dtype %s (%d labels); expected uint8 "
                            "[N,32,32,3]" % (source, split, x.shape, x.dtype, len(y)))
        if len(y) == 0:
            raise DataError("%s: the %s split is empty" % (source, split))
        if y.min() < 0 or y.max() >= want:
            raise DataError("%s: %s labels span %d..%d, outside 0..%d for %s"
                            % (source, split, y.min(), y.max(), want - 1, name))
    mean, std = _channel_stats(tr_x)
    return Dataset(train_images=tr_x, train_labels=tr_y.astype(np.int32), test_images=te_x,
                   test_labels=te_y.astype(np.int32), class_names=class_names, num_classes=want,
                   channel_mean=mean, channel_std=std, source=source, name=name)


def _channel_stats(images):
    """Exact per-channel mean/std of uint8 images from 256-bin histograms (fast, no float copy)."""
    flat = images.reshape(-1, images.shape[-1])
    v = np.arange(256, dtype=np.float64)
    mean, std = np.zeros(3), np.zeros(3)
    for ch in range(3):
        cnt = np.bincount(np.ascontiguousarray(flat[:, ch]), minlength=256).astype(np.float64)
        n = max(cnt.sum(), 1.0)
        mean[ch] = (cnt * v).sum() / n
        std[ch] = np.sqrt(max((cnt * v * v).sum() / n - mean[ch] ** 2, 0.0))
    return mean.astype(np.float32), std.astype(np.float32)


# --------------------------------------------------------------------------- data=None

def _load_default(name):
    # tensorpack's default location (tensorpack.utils.fs.get_dataset_path), created if missing
    base = os.environ.get("TENSORPACK_DATASET") or os.path.join(os.path.expanduser("~"),
                                                                "tensorpack_data")
    sub = {"cifar10": "cifar10_data", "cifar100": "cifar100_data", "svhn": "svhn_data"}[name]
    root = os.path.join(base, sub)
    try:
        os.makedirs(root, exist_ok=True)
    except OSError as e:
        raise DataError("cannot create tensorpack's dataset directory %s (%s): set TENSORPACK_DATASET "
                        "to a writable directory, or pass --data DIR with the %s files" % (root, e, name))
    if not _official_present(name, root):
        logger.info("%s not found in %s; downloading it with tensorpack ..." % (name, root))
        try:
            from tensorpack.dataflow import dataset as tp_dataset
            if name == "cifar10":
                tp_dataset.Cifar10("test", dir=root)
            elif name == "cifar100":
                tp_dataset.Cifar100("test", dir=root)
            else:
                _require_scipy(root)
                tp_dataset.SVHNDigit("train", data_dir=root)
                tp_dataset.SVHNDigit("test", data_dir=root)
        except DataError:
            raise
        except Exception as e:  # URLError, socket errors, broken downloads, ...
            raise DataError("could not download %s into %s (%s: %s). There is probably no network: "
                            "pass --data DIR with the official %s files, or an image folder / .tar.gz "
                            "(train/<class>/*.png|jpg, test/<class>/...)"
                            % (name, root, type(e).__name__, e, name))
    arrays, source = _load_dir(name, root, cache_dir=None)
    return arrays, "tensorpack default dir: " + source


def _official_present(name, root):
    if name == "cifar10":
        return os.path.isdir(os.path.join(root, CIFAR10_DIR))
    if name == "cifar100":
        return os.path.isdir(os.path.join(root, CIFAR100_DIR))
    return all(os.path.isfile(os.path.join(root, f)) for f in SVHN_FILES)


# --------------------------------------------------------------------------- directories

def _visible(entries):
    return sorted(e for e in entries if not e.startswith("."))


def _detect_dir_layouts(path):
    """Return {layout: directory} for the layouts found at ``path``."""
    found = {}
    entries = set(os.listdir(path))
    if os.path.isdir(os.path.join(path, CIFAR10_DIR)):
        found["cifar10"] = os.path.join(path, CIFAR10_DIR)
    elif any(os.path.isfile(os.path.join(path, f)) for f in CIFAR10_FILES):
        found["cifar10"] = path
    if os.path.isdir(os.path.join(path, CIFAR100_DIR)):
        found["cifar100"] = os.path.join(path, CIFAR100_DIR)
    elif all(os.path.isfile(os.path.join(path, f)) for f in CIFAR100_FILES) or \
            (os.path.isfile(os.path.join(path, "train")) and "meta" in entries):
        found["cifar100"] = path
    if any(f in entries for f in SVHN_FILES):
        found["svhn"] = path
    folder = _image_folder_root(path)
    if folder is not None:
        found["folder"] = folder
    return found


def _image_folder_root(path):
    def is_root(p):
        return os.path.isdir(os.path.join(p, "train")) and (
            os.path.isdir(os.path.join(p, "test")) or os.path.isdir(os.path.join(p, "val")))
    if is_root(path):
        return path
    subdirs = [e for e in _visible(os.listdir(path)) if os.path.isdir(os.path.join(path, e))]
    if len(subdirs) == 1 and is_root(os.path.join(path, subdirs[0])):
        return os.path.join(path, subdirs[0])
    return None


def _pick_layout(name, found, path, listing):
    if name in found:
        return name
    if "folder" in found:
        return "folder"
    if found:
        others = ", ".join("%s (%s)" % (k, v) for k, v in sorted(found.items()))
        raise DataError("dataset %r was requested but %s holds %s data: pass --dataset %s, or --data "
                        "pointing at the %s files" % (name, path, others, sorted(found)[0], name))
    shown = ", ".join(listing[:10]) + (", ..." if len(listing) > 10 else "") if listing else "nothing"
    raise DataError("%s is in none of the known layouts (found: %s); %s"
                    % (path, shown, ACCEPTED_LAYOUTS))


def _load_dir(name, path, cache_dir):
    found = _detect_dir_layouts(path)
    layout = _pick_layout(name, found, path, _visible(os.listdir(path)))
    where = found[layout]
    if layout == "folder":
        return _cached(("folder", where), _fingerprint_dir(where), cache_dir,
                       lambda: _read_image_folder_dir(where), "image folder " + where)
    files = _official_file_reader(layout, where)
    return _read_official(layout, files, where), "official %s files in %s" % (layout, where)


def _official_file_reader(layout, root):
    names = {"cifar10": CIFAR10_FILES + ["batches.meta"], "cifar100": CIFAR100_FILES + ["meta"],
             "svhn": SVHN_FILES}[layout]
    files = {}
    for n in names:
        p = os.path.join(root, n)
        if os.path.isfile(p):
            files[n] = p
    return files


def _read_image_folder_dir(root):
    splits = {}
    for split in SPLIT_DIRS:
        sdir = os.path.join(root, split)
        if not os.path.isdir(sdir):
            continue
        classes = {}
        for c in _visible(os.listdir(sdir)):
            cdir = os.path.join(sdir, c)
            if not os.path.isdir(cdir):
                continue
            classes[c] = [(os.path.join(cdir, f), os.path.join(cdir, f))
                          for f in _visible(os.listdir(cdir)) if f.lower().endswith(IMAGE_EXTS)]
        splits[split] = classes
    return _assemble_folder(splits, root)


def _fingerprint_dir(root):
    h = hashlib.sha1()
    for split in SPLIT_DIRS:
        sdir = os.path.join(root, split)
        if not os.path.isdir(sdir):
            continue
        for dirpath, dirnames, filenames in os.walk(sdir):
            dirnames.sort()
            for f in sorted(filenames):
                st = os.stat(os.path.join(dirpath, f))
                h.update(("%s|%d|%d\n" % (os.path.relpath(os.path.join(dirpath, f), root),
                                          st.st_size, st.st_mtime_ns)).encode())
    return h.hexdigest()


# --------------------------------------------------------------------------- single files

def _is_tar_name(path):
    return path.lower().endswith((".tar", ".tar.gz", ".tgz"))


def _load_file(name, path, cache_dir):
    base = os.path.basename(path)
    if base in SVHN_FILES or base in CIFAR10_FILES or base in CIFAR100_FILES:
        raise DataError("%s is a single file of the official layout: pass --data with the directory "
                        "that contains it (%s)" % (path, os.path.dirname(path)))
    if not _is_tar_name(path):
        try:
            ok = tarfile.is_tarfile(path)
        except OSError:
            ok = False
        if not ok:
            raise DataError("%s is neither a directory nor a .tar/.tar.gz/.tgz archive; %s"
                            % (path, ACCEPTED_LAYOUTS))
    st = os.stat(path)
    fp = "%d|%d" % (st.st_size, st.st_mtime_ns)
    return _cached(("tar", path), fp, cache_dir, lambda: _read_tar(name, path), "archive " + path)


def _read_tar(name, path):
    """Stream the archive once; keep image members and official CIFAR/SVHN files in memory."""
    images = {}       # (prefix, split, class) -> [(member name, bytes)]
    official = {}     # (layout, basename) -> bytes
    listing = []
    official_names = {CIFAR10_DIR: set(CIFAR10_FILES + ["batches.meta"]),
                      CIFAR100_DIR: set(CIFAR100_FILES + ["meta"])}
    last = None
    try:
        with tarfile.open(path, "r|*") as tf:
            for m in tf:
                last = m.name
                parts = [p for p in m.name.replace("\\", "/").split("/") if p not in ("", ".")]
                if len(listing) < 10 and parts:
                    listing.append("/".join(parts) + ("/" if m.isdir() else ""))
                if not m.isfile() or not parts or parts[-1].startswith("."):
                    continue
                base = parts[-1]
                parent = parts[-2] if len(parts) >= 2 else ""
                if parent in official_names and base in official_names[parent]:
                    layout = "cifar10" if parent == CIFAR10_DIR else "cifar100"
                    official[(layout, base)] = tf.extractfile(m).read()
                    continue
                if base in SVHN_FILES:
                    official[("svhn", base)] = tf.extractfile(m).read()
                    continue
                if not base.lower().endswith(IMAGE_EXTS):
                    continue
                if len(parts) == 3 and parts[0] in SPLIT_DIRS:
                    key = ("", parts[0], parts[1])
                elif len(parts) == 4 and parts[1] in SPLIT_DIRS:
                    key = (parts[0], parts[1], parts[2])
                else:
                    continue
                images.setdefault(key, []).append((m.name, tf.extractfile(m).read()))
    except (tarfile.TarError, EOFError, zlib.error, OSError) as e:
        raise DataError("%s is a corrupt or truncated archive (%s: %s%s): re-download/re-create it, or "
                        "pass --data with an extracted directory"
                        % (path, type(e).__name__, e, "; last member read: %s" % last if last else ""))

    if not images and any(k[0] == name for k in official):
        files = {base: io.BytesIO(b) for (layout, base), b in official.items() if layout == name}
        return _read_official(name, files, path)
    if not images:
        have = sorted({k[0] for k in official})
        if have:
            raise DataError("dataset %r was requested but the archive %s holds official %s files: pass "
                            "--dataset %s, or an archive of the %s data" % (name, path, ", ".join(have),
                                                                            have[0], name))
        raise DataError("archive %s is in none of the known layouts (first entries: %s); %s"
                        % (path, ", ".join(listing) or "empty archive", ACCEPTED_LAYOUTS))
    prefixes = sorted({k[0] for k in images})
    if len(prefixes) > 1:
        raise DataError("archive %s has image folders under several top-level directories (%s): "
                        "pass an archive with a single train/ + test/ tree"
                        % (path, ", ".join(p or "<root>" for p in prefixes)))
    splits = {}
    for (_, split, cls), items in images.items():
        splits.setdefault(split, {})[cls] = sorted(items)
    where = path + ("!/" + prefixes[0] if prefixes[0] else "")
    return _assemble_folder(splits, where)


# --------------------------------------------------------------------------- image folders

def _assemble_folder(splits, where):
    """splits: {split: {class: [(display name, bytes or file path)]}} -> arrays."""
    if "train" not in splits or not splits["train"]:
        raise DataError("%s: no train/<class>/ directories with images found; %s" % (where, ACCEPTED_LAYOUTS))
    test_split = "test" if splits.get("test") else ("val" if splits.get("val") else None)
    if test_split is None:
        raise DataError("%s: no test/<class>/ (or val/<class>/) directories with images found; %s"
                        % (where, ACCEPTED_LAYOUTS))
    train_c, test_c = set(splits["train"]), set(splits[test_split])
    if train_c != test_c:
        raise DataError("%s: train and %s have different class sets: only in train: %s; only in %s: %s. "
                        "Pass a folder whose train/ and %s/ hold the same class directories"
                        % (where, test_split, sorted(train_c - test_c) or "-", test_split,
                           sorted(test_c - train_c) or "-", test_split))
    classes = sorted(train_c)
    out = []
    for split in ("train", test_split):
        items, labels = [], []
        for label, c in enumerate(classes):
            files = splits[split].get(c, [])
            if not files:
                raise DataError("%s: class directory %s/%s has no images (*.png, *.jpg, *.jpeg)"
                                % (where, split, c))
            items.extend(files)
            labels.extend([label] * len(files))
        out.append((_decode_images(items), np.asarray(labels, np.int32)))
    (tr_x, tr_y), (te_x, te_y) = out
    return tr_x, tr_y, te_x, te_y, classes


def _decode_one(name, src, out):
    import cv2
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


def _decode_images(items, num_threads=None):
    """Decode [(display name, bytes or path)] into uint8 [N,32,32,3] RGB, in threads."""
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


# --------------------------------------------------------------------------- official formats

def _read_official(layout, files, where):
    """files: {basename: path or file object}."""
    need = {"cifar10": CIFAR10_FILES, "cifar100": CIFAR100_FILES, "svhn": SVHN_FILES}[layout]
    missing = [f for f in need if f not in files]
    if missing:
        raise DataError("%s: incomplete official %s data, missing %s: pass the complete directory "
                        "(%s)" % (where, layout, ", ".join(missing), ", ".join(need)))
    if layout == "svhn":
        return _read_svhn(files, where)
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
            xs.append(x.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))
            ys.append(y.astype(np.int32))
        parts[split] = (np.ascontiguousarray(np.concatenate(xs)), np.concatenate(ys))
    meta_name, meta_key = ("batches.meta", b"label_names") if layout == "cifar10" \
        else ("meta", b"fine_label_names")
    names = None
    if meta_name in files:
        meta = _load_pickle(files[meta_name], where, meta_name)
        names = meta.get(meta_key)
        if names is not None:
            names = [n.decode() if isinstance(n, bytes) else str(n) for n in names]
    if names is None:
        names = CIFAR10_NAMES if layout == "cifar10" else ["class_%02d" % i for i in range(100)]
    return parts["train"][0], parts["train"][1], parts["test"][0], parts["test"][1], names


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


def _require_scipy(where):
    try:
        import scipy.io  # noqa: F401
    except ImportError:
        raise DataError("reading SVHN .mat files (%s) needs scipy: pip install scipy, or pass an "
                        "image folder / .tar.gz instead" % where)


def _read_svhn(files, where):
    _require_scipy(where)
    import scipy.io
    out = []
    for f in SVHN_FILES:
        src = files[f]
        try:
            if hasattr(src, "read"):
                src.seek(0)
            m = scipy.io.loadmat(src)
            x, y = m["X"], np.asarray(m["y"]).reshape(-1)
        except Exception as e:
            raise DataError("%s: cannot read %s (%s: %s); the file is corrupt or not the official "
                            "SVHN cropped-digit .mat" % (where, f, type(e).__name__, e))
        if x.ndim != 4 or x.shape[:3] != IMAGE_SHAPE or x.shape[3] != len(y):
            raise DataError("%s: %s has X of shape %s, expected [32,32,3,N] with N=%d labels"
                            % (where, f, x.shape, len(y)))
        y = y.astype(np.int32)
        y[y == 10] = 0
        out += [np.ascontiguousarray(x.transpose(3, 0, 1, 2).astype(np.uint8)), y]
    return out[0], out[1], out[2], out[3], [str(i) for i in range(10)]


# --------------------------------------------------------------------------- cache

def _cache_path(kind_path, fingerprint, cache_dir):
    kind, path = kind_path
    key = hashlib.sha1(("v%d|%s|%s|%s" % (CACHE_VERSION, kind, path, fingerprint)).encode()).hexdigest()
    stem = os.path.basename(path.rstrip("/")) or "data"
    for ext in (".tar.gz", ".tgz", ".tar"):
        if stem.lower().endswith(ext):
            stem = stem[:-len(ext)]
    return os.path.join(cache_dir or default_cache_dir(), "%s-%s.npz" % (stem, key[:16]))


def _cached(kind_path, fingerprint, cache_dir, build, what):
    cpath = _cache_path(kind_path, fingerprint, cache_dir)
    if os.path.isfile(cpath):
        try:
            with np.load(cpath, allow_pickle=False) as z:
                arrays = (z["train_images"], z["train_labels"], z["test_images"], z["test_labels"],
                          [str(s) for s in z["class_names"]])
            logger.info("Loaded %s from cache %s" % (what, cpath))
            return arrays, "%s (cached: %s)" % (what, cpath)
        except Exception as e:
            logger.warn("Ignoring unreadable cache %s (%s); decoding again" % (cpath, e))
    t0 = time.time()
    arrays = build()
    logger.info("Decoded %s: %d + %d images in %.1f s" % (what, len(arrays[1]), len(arrays[3]),
                                                          time.time() - t0))
    try:
        os.makedirs(os.path.dirname(cpath), exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=os.path.dirname(cpath), suffix=".npz.tmp")
        try:
            with os.fdopen(fd, "wb") as f:
                np.savez(f, train_images=arrays[0], train_labels=arrays[1], test_images=arrays[2],
                         test_labels=arrays[3], class_names=np.asarray(arrays[4], dtype=str))
            os.replace(tmp, cpath)
        finally:
            if os.path.exists(tmp):
                os.remove(tmp)
        logger.info("Cached decoded images in %s" % cpath)
        return arrays, "%s (cache written: %s)" % (what, cpath)
    except OSError as e:
        logger.warn("Could not write the cache %s (%s); set KALMAN_NORM_CACHE to a writable "
                    "directory to avoid decoding again" % (cpath, e))
        return arrays, what
