"""Image folders of 32x32 images: ``train/<class>/*.png|jpg|jpeg`` + ``test/<class>/...`` (``val/`` is
accepted in place of ``test/``), possibly under one top-level directory.

Labels follow the sorted class directory names; train and test must hold the same classes.
:func:`folder_items` (structure, before decoding) and :func:`decode_folder` are shared with the
archive reader, which finds the same tree inside a tar.
"""
import os

import numpy as np

from .common import ACCEPTED_LAYOUTS, IMAGE_EXTS, DataError, decode_images

__all__ = ["SPLIT_DIRS", "visible", "folder_root", "list_folder", "folder_items", "decode_folder"]

SPLIT_DIRS = ("train", "test", "val")


def visible(entries):
    return sorted(e for e in entries if not e.startswith("."))


def folder_root(path):
    """``path`` or its single subdirectory if it holds ``train/`` + ``test/`` (or ``val/``), else None."""
    def is_root(p):
        return os.path.isdir(os.path.join(p, "train")) and (
            os.path.isdir(os.path.join(p, "test")) or os.path.isdir(os.path.join(p, "val")))
    if is_root(path):
        return path
    subdirs = [e for e in visible(os.listdir(path)) if os.path.isdir(os.path.join(path, e))]
    if len(subdirs) == 1 and is_root(os.path.join(path, subdirs[0])):
        return os.path.join(path, subdirs[0])
    return None


def list_folder(root):
    """{split: {class: [(path, path)]}} of the image files under ``root``."""
    splits = {}
    for split in SPLIT_DIRS:
        sdir = os.path.join(root, split)
        if not os.path.isdir(sdir):
            continue
        classes = {}
        for c in visible(os.listdir(sdir)):
            cdir = os.path.join(sdir, c)
            if os.path.isdir(cdir):
                classes[c] = [(os.path.join(cdir, f), os.path.join(cdir, f))
                              for f in visible(os.listdir(cdir)) if f.lower().endswith(IMAGE_EXTS)]
        splits[split] = classes
    return splits


def folder_items(splits, where):
    """``splits``: {split: {class: [(display name, bytes or file path)]}} -> the listing to decode,
    ``(train_items, train_y, test_items, test_y, classes)``. Every structure error is raised here,
    before any image is decoded."""
    if "train" not in splits or not splits["train"]:
        raise DataError("%s: no train/<class>/ directories with images found; %s"
                        % (where, ACCEPTED_LAYOUTS))
    test_split = "test" if splits.get("test") else ("val" if splits.get("val") else None)
    if test_split is None:
        raise DataError("%s: no test/<class>/ (or val/<class>/) directories with images found; %s"
                        % (where, ACCEPTED_LAYOUTS))
    train_c, test_c = set(splits["train"]), set(splits[test_split])
    if train_c != test_c:
        raise DataError("%s: train and %s have different class sets: only in train: %s; only in %s: "
                        "%s. Pass a folder whose train/ and %s/ hold the same class directories"
                        % (where, test_split, sorted(train_c - test_c) or "-", test_split,
                           sorted(test_c - train_c) or "-", test_split))
    classes = sorted(train_c)
    listed = []
    for split in ("train", test_split):
        items, labels = [], []
        for label, c in enumerate(classes):
            files = sorted(splits[split].get(c, []))
            if not files:
                raise DataError("%s: class directory %s/%s has no images (*.png, *.jpg, *.jpeg)"
                                % (where, split, c))
            items.extend(files)
            labels.extend([label] * len(files))
        listed.append((items, np.asarray(labels, np.int32)))
    (tr_items, tr_y), (te_items, te_y) = listed
    return tr_items, tr_y, te_items, te_y, classes


def decode_folder(listing):
    """The listing of :func:`folder_items` -> ``(train_x, train_y, test_x, test_y, classes)``."""
    tr_items, tr_y, te_items, te_y, classes = listing
    return decode_images(tr_items), tr_y, decode_images(te_items), te_y, classes
