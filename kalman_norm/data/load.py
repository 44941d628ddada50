""":func:`load_dataset`: find the data a user points at, read it with the right source module, check
it against what its name promises, and return a :class:`~kalman_norm.data.common.Dataset`.

``data`` may be

* ``None``: tensorpack's own loaders and default directory (``$TENSORPACK_DATASET``, else
  ``~/tensorpack_data``); they download the official files when they are missing;
* a directory in the official layout (CIFAR pickles, SVHN ``.mat``; the official directory itself
  or its parent);
* an image folder ``train/<class>/*.{png,jpg,jpeg}`` + ``test/<class>/...`` (or ``val/``), possibly
  under one top-level directory;
* a ``.tar`` / ``.tar.gz`` / ``.tgz`` of such a folder or of the official CIFAR directory.

What the NAME promises: 'cifar10', 'cifar100' and 'svhn' promise the official dataset, so the split
sizes and the number of classes must match the official release (:data:`EXPECTED_COUNTS`) -- a
partial copy is an error, not a silently smaller training set. ``strict_counts=False`` turns that
check into a warning (tests on tiny generated data, deliberate subsets). 'folder' declares the
user's own image folder / archive of 32x32 images: any classes and counts, all stated by
:func:`describe`.

Image folders and archives are decoded once and cached by content (see ``cache.py``).
"""
import os

from tensorpack.utils import logger

from .archive import looks_like_tar, read_archive
from .cache import cached, hash_file, hash_folder
from .cifar import CIFAR10_DIR, CIFAR10_FILES, CIFAR100_DIR, CIFAR100_FILES, TENSORPACK_SUBDIRS, \
    download_cifar, read_cifar
from .common import ACCEPTED_LAYOUTS, DATASETS, OWN_DATASET, DataError, check_counts, make_dataset
from .folder import SPLIT_DIRS, decode_folder, folder_items, folder_root, list_folder, visible
from .svhn import SVHN_FILES, SVHN_SUBDIR, download_svhn, read_svhn

__all__ = ["load_dataset"]


def load_dataset(name, data=None, cache_dir=None, strict_counts=True):
    """Load dataset ``name`` ('cifar10', 'cifar100', 'svhn', or 'folder' for your own image folder
    or archive) from ``data`` (see the module docstring).

    Args:
        cache_dir: where decoded image folders / archives are cached (default
            ``$KALMAN_NORM_CACHE`` or ``~/.cache/kalman_norm``).
        strict_counts: a known dataset whose split sizes differ from the official release is an
            error (True) or a logged warning (False).
    Raises:
        DataError: one line saying what is wrong and what to pass instead.
    """
    key = str(name).lower().replace("-", "")
    if key not in DATASETS:
        raise DataError("unknown dataset name %r: choose one of %s (%s: an image folder or archive "
                        "of your own)" % (name, ", ".join(DATASETS), OWN_DATASET))
    if data is None:
        if key == OWN_DATASET:
            raise DataError("dataset %r means an image folder or archive of your own: pass --data "
                            "with it (train/<class>/*.png|jpg + test/<class>/...)" % OWN_DATASET)
        arrays, source = _load_default(key, strict_counts)
    else:
        path = os.path.abspath(os.path.expanduser(os.fspath(data)))
        if not os.path.exists(path):
            raise DataError("data path %s does not exist: pass --data with an existing directory "
                            "(official %s files or an image folder) or a .tar.gz of an image folder"
                            % (path, key))
        if os.path.isdir(path):
            arrays, source = _load_dir(key, path, cache_dir, strict_counts)
        else:
            arrays, source = _load_file(key, path, cache_dir, strict_counts)
    return make_dataset(key, arrays, source)


class _SizeCheck:
    """What ``name`` promises about the split sizes (:func:`check_counts`), applied once: to a
    listing before decoding when there is one, else to the decoded (or cached) arrays."""

    def __init__(self, name, where, strict):
        self.name, self.where, self.strict, self.done = name, where, strict, False

    def sizes(self, num_train, num_test, num_classes):
        if self.done:
            return
        self.done = True
        warning = check_counts(self.name, num_train, num_test, num_classes, self.where, self.strict)
        if warning:
            logger.warn(warning)

    def __call__(self, arrays):
        self.sizes(len(arrays[1]), len(arrays[3]), len(arrays[4]))


# --------------------------------------------------------------------------- data=None

def _load_default(name, strict):
    # tensorpack's default location (tensorpack.utils.fs.get_dataset_path), created if missing
    base = os.environ.get("TENSORPACK_DATASET") or os.path.join(os.path.expanduser("~"),
                                                                "tensorpack_data")
    root = os.path.join(base, SVHN_SUBDIR if name == "svhn" else TENSORPACK_SUBDIRS[name])
    try:
        os.makedirs(root, exist_ok=True)
    except OSError as e:
        raise DataError("cannot create tensorpack's dataset directory %s (%s): set TENSORPACK_DATASET "
                        "to a writable directory, or pass --data DIR with the %s files" % (root, e, name))
    if not _official_present(name, root):
        logger.info("%s not found in %s; downloading it with tensorpack ..." % (name, root))
        try:
            if name == "svhn":
                download_svhn(root)
            else:
                download_cifar(name, root)
        except DataError:
            raise
        except Exception as e:  # URLError, socket errors, broken downloads, ...
            raise DataError("could not download %s into %s (%s: %s). There is probably no network: "
                            "pass --data DIR with the official %s files, or an image folder / .tar.gz "
                            "(train/<class>/*.png|jpg, test/<class>/...)"
                            % (name, root, type(e).__name__, e, name))
    arrays, source = _load_dir(name, root, None, strict)
    return arrays, "tensorpack default dir: " + source


def _official_present(name, root):
    if name == "cifar10":
        return os.path.isdir(os.path.join(root, CIFAR10_DIR))
    if name == "cifar100":
        return os.path.isdir(os.path.join(root, CIFAR100_DIR))
    return all(os.path.isfile(os.path.join(root, f)) for f in SVHN_FILES)


# --------------------------------------------------------------------------- directories

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
    root = folder_root(path)
    if root is not None:
        found[OWN_DATASET] = root
    return found


def _pick_layout(name, found, path):
    if name in found:
        return name
    if OWN_DATASET in found:
        return OWN_DATASET
    if found:
        others = ", ".join("%s (%s)" % (k, v) for k, v in sorted(found.items()))
        raise DataError("dataset %r was requested but %s holds %s data: pass --dataset %s, or --data "
                        "pointing at the %s files" % (name, path, others, sorted(found)[0], name))
    listing = visible(os.listdir(path))
    shown = ", ".join(listing[:10]) + (", ..." if len(listing) > 10 else "") if listing else "nothing"
    raise DataError("%s is in none of the known layouts (found: %s); %s"
                    % (path, shown, ACCEPTED_LAYOUTS))


def _load_dir(name, path, cache_dir, strict):
    found = _detect_dir_layouts(path)
    layout = _pick_layout(name, found, path)
    where = found[layout]
    check = _SizeCheck(name, where, strict)
    if layout == OWN_DATASET:
        listing = folder_items(list_folder(where), where)        # structure and sizes first
        check.sizes(len(listing[1]), len(listing[3]), len(listing[4]))
        return cached("folder", hash_folder(where, SPLIT_DIRS), cache_dir,
                      lambda: decode_folder(listing), "image folder " + where)
    names = {"cifar10": CIFAR10_FILES + ["batches.meta"], "cifar100": CIFAR100_FILES + ["meta"],
             "svhn": SVHN_FILES}[layout]
    files = {n: os.path.join(where, n) for n in names if os.path.isfile(os.path.join(where, n))}
    arrays = read_svhn(files, where) if layout == "svhn" else read_cifar(layout, files, where)
    check(arrays)
    return arrays, "official %s files in %s" % (layout, where)


# --------------------------------------------------------------------------- single files

def _load_file(name, path, cache_dir, strict):
    base = os.path.basename(path)
    if base in SVHN_FILES or base in CIFAR10_FILES or base in CIFAR100_FILES:
        raise DataError("%s is a single file of the official layout: pass --data with the directory "
                        "that contains it (%s)" % (path, os.path.dirname(path)))
    if not looks_like_tar(path):
        raise DataError("%s is neither a directory nor a .tar/.tar.gz/.tgz archive; %s"
                        % (path, ACCEPTED_LAYOUTS))
    check = _SizeCheck(name, path, strict)
    return cached("archive", hash_file(path), cache_dir,
                  lambda: read_archive(name, path, check_sizes=check.sizes), "archive " + path,
                  check=check)
