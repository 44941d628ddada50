#!/usr/bin/env python
"""Arrange a CIFAR-style JPEG archive as an ILSVRC-12 style directory, so that the ImageNet data
layer (kalman_norm.data.imagenet) and trainer can learn on real photographs on a small machine.

    python scripts/cifar_as_ilsvrc.py --data ../shared/data/cifar10-jpeg.tar.gz --out /tmp/cifar_ilsvrc

Input: a .tar(.gz) holding train/<class>/*.jpg|png + test/<class>/... (optionally under one
top-level directory), verified completely (a truncated or corrupt archive, or an image that does
not decode, is an error naming it). Output (a new directory; an existing one is never touched)::

    OUT/train/<wnid>/<wnid>_<k>.JPEG      wnid = 'n%08d' % (index of the class among the sorted names)
    OUT/val/ILSVRC2012_val_<k>.JPEG       the archive's test split, numbered in a random order
                                          ('--val-layout folders': OUT/val/<wnid>/...)
    OUT/val.txt                           '<file> <label>' per val image (flat layout)
    OUT/synsets.txt, OUT/synset_words.txt  wnids in label order; '<wnid> <class name>'

Image bytes are copied unchanged (CIFAR images stay 32x32; the ImageNet augmentation resizes them).
The directory is built under a temporary name next to OUT and renamed into place when complete.
"""
import argparse
import os
import shutil
import sys
import tempfile


import kalman_norm  # noqa: E402,F401  (before tensorpack / cv2)
import cv2  # noqa: E402
import numpy as np  # noqa: E402
from kalman_norm.data import DataError  # noqa: E402
from kalman_norm.data.archive import iter_verified_tar, looks_like_tar  # noqa: E402
from kalman_norm.data.imagenet import LABEL_FILE, SYNSET_FILE  # noqa: E402

IMAGE_EXTS = (".jpg", ".jpeg", ".png")
SPLITS = {"train": "train", "test": "val", "val": "val"}     # archive split -> ILSVRC split


def _image_member(parts):
    return parts[-1].lower().endswith(IMAGE_EXTS) and not parts[-1].startswith(".")


def read_members(path):
    """{split: {class: [(member name, bytes)]}} of the archive's images, each checked to decode."""
    found, prefixes = {}, set()
    for parts, data in iter_verified_tar(path, _image_member):
        if data is None:
            continue
        name = "/".join(parts)
        if len(parts) == 4:
            prefixes.add(parts[0])
            parts = parts[1:]
        if len(parts) != 3 or parts[0] not in SPLITS:
            continue
        if cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR) is None:
            raise DataError("%s: member %s is corrupt or not a JPEG/PNG" % (path, name))
        found.setdefault(SPLITS[parts[0]], {}).setdefault(parts[1], []).append((name, data))
    if len(prefixes) > 1:
        raise DataError("%s holds image folders under several top-level directories (%s)"
                        % (path, ", ".join(sorted(prefixes))))
    if not found.get("train") or not found.get("val"):
        raise DataError("%s has no train/<class>/*.jpg and test/<class>/*.jpg (or val/) images"
                        % path)
    if set(found["train"]) != set(found["val"]):
        raise DataError("%s: train and test hold different classes: only in train: %s; only in "
                        "test: %s" % (path, sorted(set(found["train"]) - set(found["val"])) or "-",
                                      sorted(set(found["val"]) - set(found["train"])) or "-"))
    return found


def write_ilsvrc(found, out, val_layout, seed=0):
    classes = sorted(found["train"])
    wnids = ["n%08d" % k for k in range(len(classes))]
    for wnid, cls in zip(wnids, classes):
        d = os.path.join(out, "train", wnid)
        os.makedirs(d)
        for k, (_, data) in enumerate(sorted(found["train"][cls])):
            with open(os.path.join(d, "%s_%d.JPEG" % (wnid, k)), "wb") as f:
                f.write(data)
    os.makedirs(os.path.join(out, "val"))
    # val images are numbered in a seeded random order, as ILSVRC's are (so the first val batches
    # are a fair sample, not one class)
    val = [(label, data) for label, cls in enumerate(classes) for _, data in sorted(found["val"][cls])]
    order = np.random.RandomState(seed).permutation(len(val))
    lines = []
    for k, i in enumerate(order, 1):
        label, data = val[i]
        name = "ILSVRC2012_val_%08d.JPEG" % k
        d = os.path.join(out, "val", wnids[label]) if val_layout == "folders" else os.path.join(out, "val")
        os.makedirs(d, exist_ok=True)
        with open(os.path.join(d, name), "wb") as f:
            f.write(data)
        lines.append("%s %d\n" % (name, label))
    if val_layout == "flat":
        with open(os.path.join(out, LABEL_FILE), "w") as f:
            f.writelines(lines)
    with open(os.path.join(out, SYNSET_FILE), "w") as f:
        f.writelines(w + "\n" for w in wnids)
    with open(os.path.join(out, "synset_words.txt"), "w") as f:
        f.writelines("%s %s\n" % (w, c) for w, c in zip(wnids, classes))
    return len(classes), sum(map(len, found["train"].values())), len(val)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", required=True, help="CIFAR-style .tar/.tar.gz of train/<class>/ + test/<class>/")
    p.add_argument("--out", required=True, help="new directory to create (must not exist)")
    p.add_argument("--val-layout", choices=("flat", "folders"), default="flat",
                   help="val/ flat with val.txt (ILSVRC's original layout, default) or val/<wnid>/")
    p.add_argument("--seed", type=int, default=0, help="seed of the random numbering of the val images")
    a = p.parse_args(argv)
    data = os.path.abspath(os.path.expanduser(a.data))
    out = os.path.abspath(os.path.expanduser(a.out))
    try:
        if not os.path.exists(data):
            raise DataError("--data %s does not exist" % data)
        if not os.path.isfile(data) or not looks_like_tar(data):
            raise DataError("--data %s is not a .tar/.tar.gz archive" % data)
        if os.path.exists(out):
            raise DataError("--out %s already exists: pass a new directory (nothing is overwritten)" % out)
        parent = os.path.dirname(out)
        if not os.path.isdir(parent):
            raise DataError("the parent directory of --out, %s, does not exist" % parent)
        found = read_members(data)
        tmp = tempfile.mkdtemp(dir=parent, prefix=".%s.partial-" % os.path.basename(out))
        try:
            counts = write_ilsvrc(found, tmp, a.val_layout, a.seed)
            os.rename(tmp, out)
        finally:
            if os.path.exists(tmp):
                shutil.rmtree(tmp)
    except (DataError, OSError) as e:
        print("error: %s" % e, file=sys.stderr)
        return 2
    print("%s: %d classes, %d train and %d val images (val layout %s) from %s"
          % (out, counts[0], counts[1], counts[2], a.val_layout, data))
    return 0


if __name__ == "__main__":
    sys.exit(main())
