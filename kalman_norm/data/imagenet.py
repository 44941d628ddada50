"""ILSVRC-12 (ImageNet) for the ImageNet trainer: the folder layout, its augmentation, its DataFlows,
and fake data for throughput runs.

Layout (the one tensorpack's :class:`~tensorpack.dataflow.dataset.ILSVRC12` reads)::

    root/train/<wnid>/*.JPEG            one folder per class (n01440764, ...)
    root/val/*.JPEG + a label file      'original' layout: flat val/, labels in val.txt
    root/val/<wnid>/*.JPEG              or 'train' layout: the same class folders as train/

The label file is tensorpack's / Caffe's ILSVRC metadata ``val.txt``: one ``<file name> <label>``
line per validation image, found in ``meta_dir`` (default: ``root``). The label is an integer
index into ``synsets.txt`` of the same directory when that file exists (Caffe's metadata), else into
the sorted train wnids -- the same order, since Caffe's ``synsets.txt`` is sorted; a wnid is
accepted in place of the integer. Labels here are always the index of the wnid among the sorted
train folders. Unlike ``ILSVRC12Files`` this never downloads metadata and every problem is a
one-line :class:`DataError` raised before any decoding (tensorpack asserts deep inside instead).

Augmentation (the standard ResNet ImageNet recipe):

* training: random resized crop -- a window covering 8%-100% of the image area with aspect ratio
  in [3/4, 4/3] (log-uniform), resized to ``image_size``; horizontal flip with probability 1/2;
  colour jitter (brightness, contrast, saturation factors in [0.6, 1.4], random order); AlexNet's
  PCA lighting noise (Krizhevsky et al. 2012, Sect. 4.1, std 0.1);
* validation: resize the shorter side to ``image_size * 256 / 224`` then take the centre
  ``image_size`` square.

Batches are ``[uint8 images [B, S, S, 3] RGB, int32 labels [B]]``; the model normalises inside the
graph with :data:`IMAGENET_MEAN` / :data:`IMAGENET_STD` (0..255 units, RGB), so batches cross
process boundaries as uint8. Decoding and augmentation run in ``num_proc`` worker processes
(tensorpack's ``MultiProcessMapData``). An image that cannot be decoded is skipped with a warning
and counted; the count is logged at the end of every epoch of the DataFlow.
"""
import math
import multiprocessing as mp
import os
from dataclasses import dataclass
from typing import List, Tuple

import cv2
import numpy as np

import kalman_norm  # noqa: F401  (environment + NumPy aliases before tensorpack)
from tensorpack.dataflow import BatchData, MapData, MultiProcessMapData, ProxyDataFlow, RNGDataFlow
from tensorpack.utils import logger
from tensorpack.utils.utils import get_tqdm
from .._process import exit_with_parent

from .common import DataError

__all__ = ["IMAGENET_MEAN", "IMAGENET_STD", "PCA_EIGVAL", "PCA_EIGVEC", "IMAGENET_EXTS",
           "ImageNetData", "load_imagenet", "describe_imagenet", "random_resized_crop_box",
           "color_jitter", "pca_lighting", "train_augment", "eval_transform",
           "get_imagenet_dataflow", "fake_imagenet_dataflow"]

# Per-channel mean / std of the ImageNet training images, RGB, 0..255 units (the usual values).
IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], np.float32) * 255
IMAGENET_STD = np.array([0.229, 0.224, 0.225], np.float32) * 255
# Eigen-decomposition of the RGB pixel covariance of ImageNet (pixels in 0..1), for PCA lighting;
# columns of PCA_EIGVEC are the eigenvectors.
PCA_EIGVAL = np.array([0.2175, 0.0188, 0.0045], np.float32)
PCA_EIGVEC = np.array([[-0.5675, 0.7192, 0.4009],
                       [-0.5808, -0.0045, -0.8140],
                       [-0.5836, -0.6948, 0.4203]], np.float32)
IMAGENET_EXTS = (".jpeg", ".jpg", ".png")
CROP_SCALE = (0.08, 1.0)
CROP_RATIO = (3.0 / 4.0, 4.0 / 3.0)
JITTER = 0.4               # brightness / contrast / saturation factors in [1 - JITTER, 1 + JITTER]
LIGHTING_STD = 0.1
EVAL_RESIZE_RATIO = 256.0 / 224.0
LABEL_FILE = "val.txt"
SYNSET_FILE = "synsets.txt"


@dataclass
class ImageNetData:
    """The file lists of one ILSVRC-style directory (no pixels: images are decoded in the flow)."""
    train: List[Tuple[str, int]]      # (absolute path, label)
    val: List[Tuple[str, int]]
    class_names: List[str]            # sorted wnids; label = index
    root: str
    val_layout: str                   # 'flat' (val/ + label file) or 'folders' (val/<wnid>/)

    @property
    def num_classes(self):
        return len(self.class_names)


# --------------------------------------------------------------------------- scanning

def _visible(entries):
    return sorted(e for e in entries if not e.startswith("."))


def _images_in(d):
    # scandir: the file type comes with the listing, no stat per file (1.28M files in train/)
    with os.scandir(d) as it:
        return sorted(e.name for e in it if not e.name.startswith(".")
                      and e.name.lower().endswith(IMAGENET_EXTS) and e.is_file())


def _class_folders(split_dir):
    return [e for e in _visible(os.listdir(split_dir)) if os.path.isdir(os.path.join(split_dir, e))]


def _scan_class_folders(split_dir, classes, split):
    """[(path, label)] of split_dir/<class>/*; a class folder without images is an error."""
    items = []
    for label, wnid in enumerate(get_tqdm(classes, desc="Scanning %s/" % split,
                                          disable=len(classes) < 50)):
        cdir = os.path.join(split_dir, wnid)
        files = _images_in(cdir)
        if not files:
            raise DataError("%s: class folder %s/%s has no images (*.JPEG, *.jpg, *.png): remove it "
                            "or fill it" % (os.path.dirname(split_dir), split, wnid))
        items.extend((os.path.join(cdir, f), label) for f in files)
    return items


def _read_label_file(path, classes, synsets):
    """{file name: label} from a '<file> <label>' file; label: int index (into ``synsets`` when
    given, else into ``classes``) or a wnid."""
    index = {w: i for i, w in enumerate(classes)}
    labels = {}
    with open(path) as f:
        lines = f.read().splitlines()
    for lineno, line in enumerate(lines, 1):
        if not line.strip():
            continue
        fields = line.split()
        if len(fields) != 2:
            raise DataError("%s:%d: malformed line %r: expected '<image file> <label>'"
                            % (path, lineno, line[:80]))
        name, lab = fields
        if lab.lstrip("-").isdigit():
            k = int(lab)
            table = synsets if synsets is not None else classes
            if not 0 <= k < len(table):
                raise DataError("%s:%d: label %d is outside 0..%d (%s)"
                                % (path, lineno, k, len(table) - 1,
                                   "entries of synsets.txt" if synsets is not None else
                                   "the %d train classes" % len(classes)))
            wnid = table[k]
        else:
            wnid = lab
        if wnid not in index:
            raise DataError("%s:%d: %s names class %s, which has no folder in train/: the val labels "
                            "and the train classes must be the same set" % (path, lineno, name, wnid))
        if name in labels:
            raise DataError("%s:%d: %s is labelled twice" % (path, lineno, name))
        labels[name] = index[wnid]
    if not labels:
        raise DataError("%s: the label file is empty: one '<image file> <label>' line per val image"
                        % path)
    return labels


def _read_synsets(path):
    with open(path) as f:
        synsets = [line.split()[0] for line in f.read().splitlines() if line.strip()]
    if not synsets:
        raise DataError("%s is empty: one wnid per line, as in Caffe's ILSVRC metadata" % path)
    return synsets


def load_imagenet(root, meta_dir=None):
    """Scan an ILSVRC-12 style directory (see the module docstring) into an :class:`ImageNetData`.

    Args:
        root: the directory holding ``train/`` and ``val/``.
        meta_dir: where ``val.txt`` (and optionally ``synsets.txt``) are, for a flat ``val/``;
            default ``root``.
    Raises:
        DataError: missing / empty directory, no train/ or val/, a class folder without images,
            val classes that differ from train's, a missing or malformed label file.
    """
    root = os.path.abspath(os.path.expanduser(os.fspath(root)))
    if not os.path.exists(root):
        raise DataError("ImageNet directory %s does not exist: pass --data with the directory "
                        "holding train/<wnid>/*.JPEG and val/" % root)
    if not os.path.isdir(root):
        raise DataError("ImageNet data %s is not a directory: pass the directory holding "
                        "train/<wnid>/*.JPEG and val/ (extract the ILSVRC archives first)" % root)
    if not _visible(os.listdir(root)):
        raise DataError("ImageNet directory %s is empty: it must hold train/<wnid>/*.JPEG and val/"
                        % root)
    train_dir, val_dir = os.path.join(root, "train"), os.path.join(root, "val")
    for split, d in (("train", train_dir), ("val", val_dir)):
        if not os.path.isdir(d):
            raise DataError("ImageNet directory %s has no %s/ (found: %s): expected train/<wnid>/"
                            "*.JPEG and val/ (flat with %s, or val/<wnid>/)"
                            % (root, split, ", ".join(_visible(os.listdir(root))[:10]), LABEL_FILE))
    classes = _class_folders(train_dir)
    if not classes:
        raise DataError("%s has no class folders: expected train/<wnid>/*.JPEG" % train_dir)
    train = _scan_class_folders(train_dir, classes, "train")

    val_classes = _class_folders(val_dir)
    if val_classes:
        only_val = sorted(set(val_classes) - set(classes))
        only_train = sorted(set(classes) - set(val_classes))
        if only_val or only_train:
            raise DataError("%s: val/ and train/ hold different classes: only in val: %s; only in "
                            "train: %s" % (root, _short(only_val), _short(only_train)))
        val = _scan_class_folders(val_dir, classes, "val")
        layout = "folders"
    else:
        meta_dir = os.path.abspath(os.path.expanduser(meta_dir)) if meta_dir else root
        label_path = os.path.join(meta_dir, LABEL_FILE)
        if not os.path.isfile(label_path):
            raise DataError("%s is flat (no val/<wnid>/ folders) but there is no label file %s: "
                            "put tensorpack's/Caffe's ILSVRC val.txt there (or pass its directory as "
                            "meta_dir), or arrange val/ as val/<wnid>/*.JPEG" % (val_dir, label_path))
        synset_path = os.path.join(meta_dir, SYNSET_FILE)
        synsets = _read_synsets(synset_path) if os.path.isfile(synset_path) else None
        labels = _read_label_file(label_path, classes, synsets)
        on_disk = set(_images_in(val_dir))
        missing = sorted(set(labels) - on_disk)
        unlabelled = sorted(on_disk - set(labels))
        if missing:
            raise DataError("%s lists %d images that are not in %s (%s)"
                            % (label_path, len(missing), val_dir, _short(missing)))
        if unlabelled:
            raise DataError("%d images in %s have no line in %s (%s)"
                            % (len(unlabelled), val_dir, label_path, _short(unlabelled)))
        absent = sorted(set(range(len(classes))) - set(labels.values()))
        if absent:
            raise DataError("%s: train classes absent from val: %s; the val labels and the train "
                            "classes must be the same set" % (label_path,
                                                              _short([classes[k] for k in absent])))
        val = [(os.path.join(val_dir, f), labels[f]) for f in sorted(labels)]
        layout = "flat"
    data = ImageNetData(train=train, val=val, class_names=classes, root=root, val_layout=layout)
    logger.info("ImageNet data: " + describe_imagenet(data))
    return data


def _short(names, n=5):
    names = list(names)
    return (", ".join(names[:n]) + (", ... (%d in all)" % len(names) if len(names) > n else "")) \
        if names else "-"


def describe_imagenet(data):
    """One line: counts per split, classes, per-class range, layout and root."""
    tr = np.bincount([lab for _, lab in data.train], minlength=data.num_classes)
    va = np.bincount([lab for _, lab in data.val], minlength=data.num_classes)
    return ("train %d, val %d images; %d classes (%s); per class: train %d..%d, val %d..%d; val "
            "layout %s; root %s" % (len(data.train), len(data.val), data.num_classes,
                                    _short(data.class_names, 3), tr.min(), tr.max(), va.min(),
                                    va.max(), data.val_layout, data.root))


# --------------------------------------------------------------------------- augmentation

def random_resized_crop_box(height, width, rng, scale=CROP_SCALE, ratio=CROP_RATIO, attempts=10):
    """A window ``(y, x, h, w)`` covering a fraction in ``scale`` of the image area, aspect ratio
    ``w / h`` in ``ratio`` (sampled log-uniformly, so r and 1/r are equally likely). After
    ``attempts`` windows that do not fit, the largest centred window whose ratio is clipped into
    ``ratio``."""
    area = height * width
    log_lo, log_hi = math.log(ratio[0]), math.log(ratio[1])
    for _ in range(attempts):
        target = area * rng.uniform(scale[0], scale[1])
        r = math.exp(rng.uniform(log_lo, log_hi))
        w = int(round(math.sqrt(target * r)))
        h = int(round(math.sqrt(target / r)))
        if 0 < w <= width and 0 < h <= height:
            return rng.randint(0, height - h + 1), rng.randint(0, width - w + 1), h, w
    r = width / height
    if r < ratio[0]:
        w, h = width, max(1, int(round(width / ratio[0])))
    elif r > ratio[1]:
        h, w = height, max(1, int(round(height * ratio[1])))
    else:
        h, w = height, width
    return (height - h) // 2, (width - w) // 2, h, w


_GRAY = np.array([0.299, 0.587, 0.114], np.float32)     # ITU-R 601 luma, RGB


def color_jitter(img, rng, strength=JITTER):
    """Brightness, contrast and saturation, each scaled by a factor in [1 - s, 1 + s], in random
    order, on a float32 RGB image in 0..255 (not clipped here)."""
    for op in rng.permutation(3):
        f = np.float32(rng.uniform(1 - strength, 1 + strength))
        if op == 0:        # brightness: scale every pixel
            img = img * f
        elif op == 1:      # contrast: blend with the mean grey level
            img = img * f + (1 - f) * np.float32((img @ _GRAY).mean())
        else:              # saturation: blend with the grey image
            img = img * f + (1 - f) * (img @ _GRAY)[..., None]
    return img


def pca_lighting(img, rng, std=LIGHTING_STD):
    """AlexNet lighting noise: add ``eigvec @ (alpha * eigval)``, alpha ~ N(0, std^2) per
    component, to every pixel (float32 RGB, 0..255; the eigenvalues are for 0..1 pixels)."""
    alpha = rng.normal(0.0, std, size=3).astype(np.float32)
    return img + (PCA_EIGVEC @ (alpha * PCA_EIGVAL)) * np.float32(255)


def train_augment(img, image_size, rng):
    """uint8 RGB image of any size -> uint8 ``[image_size, image_size, 3]`` training sample."""
    y, x, h, w = random_resized_crop_box(img.shape[0], img.shape[1], rng)
    out = cv2.resize(img[y:y + h, x:x + w], (image_size, image_size), interpolation=cv2.INTER_LINEAR)
    if rng.rand() < 0.5:
        out = out[:, ::-1]
    out = pca_lighting(color_jitter(out.astype(np.float32), rng), rng)
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def eval_transform(img, image_size):
    """Resize the shorter side to ``round(image_size * 256 / 224)``, take the centre square."""
    h, w = img.shape[:2]
    short = int(round(image_size * EVAL_RESIZE_RATIO))
    if h <= w:
        nh, nw = short, max(short, int(round(w * short / h)))
    else:
        nh, nw = max(short, int(round(h * short / w))), short
    interp = cv2.INTER_AREA if nh < h else cv2.INTER_LINEAR      # area averaging when shrinking
    img = cv2.resize(img, (nw, nh), interpolation=interp)
    y, x = (nh - image_size) // 2, (nw - image_size) // 2
    return np.ascontiguousarray(img[y:y + image_size, x:x + image_size])


# --------------------------------------------------------------------------- dataflows

class _FileList(RNGDataFlow):
    """[path, label] of every image, reshuffled every epoch when ``shuffle``."""

    def __init__(self, items, shuffle, seed=None):
        self.items, self.shuffle, self.seed = items, shuffle, seed

    def reset_state(self):
        super().reset_state()
        if self.seed is not None:
            self.rng = np.random.RandomState(int(self.seed))

    def __len__(self):
        return len(self.items)

    def __iter__(self):
        order = self.rng.permutation(len(self.items)) if self.shuffle else range(len(self.items))
        for k in order:
            yield list(self.items[k])


class _DecodeAugment:
    """Map function: [path, label] -> [uint8 image, label, ''] or, for an unreadable file,
    [empty array, -1, path] (counted and dropped by :class:`_DropUnreadable` in the main process,
    since workers cannot report to it).

    Each process draws its own random stream: from ``(seed, worker index)`` when a seed is given,
    else from OS entropy. The generator is created lazily, after the fork."""

    def __init__(self, train, image_size, seed):
        self.train, self.image_size, self.seed = train, image_size, seed
        self._rng, self._pid = None, None

    def _get_rng(self):
        if self._rng is None or self._pid != os.getpid():
            if self._pid is not None or mp.current_process().name != 'MainProcess':
                exit_with_parent()  # a decoding worker: no orphan when the trainer is SIGKILLed
            identity = getattr(mp.current_process(), "identity", None)
            worker = int(identity) + 1 if isinstance(identity, bytes) else 0
            entropy = [int(self.seed), worker] if self.seed is not None else None
            state = np.random.SeedSequence(entropy).generate_state(1)[0]
            self._rng, self._pid = np.random.RandomState(int(state)), os.getpid()
        return self._rng

    def __call__(self, dp):
        path, label = dp
        try:
            img = cv2.imread(path, cv2.IMREAD_COLOR)
        except cv2.error:
            img = None
        if img is None or img.size == 0:
            return [np.zeros((0,), np.uint8), -1, path]
        img = img[:, :, ::-1]                                     # BGR -> RGB
        out = train_augment(img, self.image_size, self._get_rng()) if self.train \
            else eval_transform(np.ascontiguousarray(img), self.image_size)
        return [out, int(label), ""]


class _DropUnreadable(ProxyDataFlow):
    """Drops the images the workers could not decode: one warning each, and a count at the end of
    every epoch (``skipped_last_epoch``, ``skipped_total``)."""

    def __init__(self, ds, split):
        super().__init__(ds)
        self.split = split
        self.skipped_total = 0
        self.skipped_last_epoch = 0

    def __iter__(self):
        skipped = seen = 0
        for img, label, path in self.ds:
            seen += 1
            if label < 0:
                skipped += 1
                logger.warn("ImageNet %s: skipping unreadable image %s" % (self.split, path))
                continue
            yield [img, label]
        self.skipped_last_epoch = skipped
        self.skipped_total += skipped
        if skipped:
            logger.warn("ImageNet %s: %d of %d images were unreadable and skipped this epoch "
                        "(%d in total)" % (self.split, skipped, seen, self.skipped_total))


def get_imagenet_dataflow(data, split, batch_size, image_size=224, num_proc=0, seed=None,
                          remainder=False):
    """A DataFlow of ``[uint8 images [B, S, S, 3] RGB, int32 labels [B]]`` from :func:`load_imagenet`.

    Args:
        split: 'train' (reshuffled every epoch, training augmentation, partial batch dropped) or
            'val' (file order, resize + centre crop; exactly one pass per epoch).
        image_size: S, the side of the square samples (224 for the paper's ResNets).
        num_proc: decode + augment in that many worker processes (``MultiProcessMapData``, strict:
            each epoch is exactly one pass over the files, in a worker-dependent order); 0: in
            the calling process, in order.
        seed: seeds the shuffling and every worker's augmentation stream (``num_proc=0`` with a
            seed is fully deterministic). ``None``: from the clock / OS entropy.
        remainder: val only: also produce the last partial batch.
    """
    if not isinstance(data, ImageNetData):
        raise ValueError("data must be the ImageNetData of load_imagenet(), got %s"
                         % type(data).__name__)
    if split not in ("train", "val"):
        raise ValueError("split must be 'train' or 'val', got %r" % (split,))
    batch_size, image_size, num_proc = int(batch_size), int(image_size), int(num_proc)
    if batch_size <= 0:
        raise ValueError("batch_size must be positive, got %d" % batch_size)
    if image_size < 8:
        raise ValueError("image_size must be at least 8 pixels, got %d" % image_size)
    if num_proc < 0:
        raise ValueError("num_proc must be >= 0, got %d" % num_proc)
    train = split == "train"
    items = data.train if train else data.val
    if train and len(items) < batch_size:
        raise ValueError("batch_size %d is larger than the training set (%d images)"
                         % (batch_size, len(items)))
    files = _FileList(items, shuffle=train, seed=seed)
    decode = _DecodeAugment(train, image_size, seed)
    if num_proc == 0:
        df = MapData(files, decode)
    else:
        df = MultiProcessMapData(files, num_proc, decode, buffer_size=min(200, 4 * batch_size),
                                 strict=True)
    df = _DropUnreadable(df, split)
    return BatchData(df, batch_size, remainder=bool(remainder) and not train, use_list=False)


class _FakeBatches(RNGDataFlow):
    def __init__(self, batch_size, image_size, num_classes, num_batches, distinct, seed):
        self.shape = (batch_size, image_size, image_size, 3)
        self.num_classes, self.num_batches, self.distinct = num_classes, num_batches, distinct
        self.seed = seed
        self.pool = None

    def reset_state(self):
        super().reset_state()
        if self.seed is not None:
            self.rng = np.random.RandomState(int(self.seed))
        self.pool = None

    def __len__(self):
        return self.num_batches

    def __iter__(self):
        if self.pool is None:
            self.pool = [[self.rng.randint(0, 256, size=self.shape, dtype=np.uint8),
                          self.rng.randint(0, self.num_classes, size=self.shape[0]).astype(np.int32)]
                         for _ in range(self.distinct)]
        for k in range(self.num_batches):
            yield self.pool[k % self.distinct]


def fake_imagenet_dataflow(batch_size, image_size=224, num_classes=1000, num_batches=1000,
                           distinct_batches=4, seed=None):
    """Random uint8 images and int32 labels of the shapes of :func:`get_imagenet_dataflow`, for
    throughput runs: no disk, no decoding. ``distinct_batches`` random batches are drawn once and
    cycled, so producing a batch costs nothing measurable."""
    for name, v in (("batch_size", batch_size), ("image_size", image_size),
                    ("num_classes", num_classes), ("num_batches", num_batches),
                    ("distinct_batches", distinct_batches)):
        if int(v) <= 0:
            raise ValueError("%s must be positive, got %s" % (name, v))
    return _FakeBatches(int(batch_size), int(image_size), int(num_classes), int(num_batches),
                        int(distinct_batches), seed)
