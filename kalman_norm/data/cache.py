"""The decode cache: decoded image folders / archives stored as ``.npz``, keyed by CONTENT.

The key is a SHA-256 of the bytes (an archive's file, or every file of an image folder with its
relative path), never the path: two clones of the data share one cache entry, a moved or touched
archive is not decoded again, and an archive that differs by one byte (a truncated download) can
never be served the decoded images of the complete one. Entries are written to a temporary file
in the cache directory and renamed into place (``os.replace`` is atomic on POSIX), so a killed run
leaves either no entry or a complete one. An entry that fails to load is decoded again, with a
warning, and replaced.

Cache directory: ``cache_dir`` argument, else ``$KALMAN_NORM_CACHE``, else ``~/.cache/kalman_norm``.
"""
import hashlib
import os
import tempfile
import time

import numpy as np

from tensorpack.utils import logger

from .common import IMAGE_EXTS

__all__ = ["CACHE_VERSION", "default_cache_dir", "hash_file", "hash_folder", "cache_path", "cached"]

CACHE_VERSION = 2          # 1 was keyed by path+mtime
_CHUNK = 1 << 20


def default_cache_dir():
    return os.environ.get("KALMAN_NORM_CACHE") or os.path.join(os.path.expanduser("~"), ".cache",
                                                                 "kalman_norm")


def hash_file(path, digest=None):
    """SHA-256 of a file's bytes, streamed in 1 MB chunks."""
    h = digest or hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(_CHUNK), b""):
            h.update(chunk)
    return h.hexdigest()


def hash_folder(root, split_dirs):
    """SHA-256 over the image files under ``root/<split>/`` for each split directory: relative path,
    size and bytes of each, in sorted order (renaming a class changes the key; moving the folder
    does not)."""
    h = hashlib.sha256()
    for split in split_dirs:
        sdir = os.path.join(root, split)
        if not os.path.isdir(sdir):
            continue
        for dirpath, dirnames, filenames in os.walk(sdir):
            dirnames.sort()
            for f in sorted(filenames):
                if f.startswith(".") or not f.lower().endswith(IMAGE_EXTS):
                    continue
                p = os.path.join(dirpath, f)
                rel = os.path.relpath(p, root).replace(os.sep, "/")
                h.update(("%s|%d\n" % (rel, os.path.getsize(p))).encode())
                with open(p, "rb") as fo:
                    h.update(fo.read())
    return h.hexdigest()


def cache_path(kind, content_hash, cache_dir=None):
    return os.path.join(cache_dir or default_cache_dir(),
                        "%s-%s-v%d.npz" % (kind, content_hash[:32], CACHE_VERSION))


def _load(cpath):
    with np.load(cpath, allow_pickle=False) as z:
        return (z["train_images"], z["train_labels"], z["test_images"], z["test_labels"],
                [str(s) for s in z["class_names"]])


def _write_atomically(cpath, arrays):
    os.makedirs(os.path.dirname(cpath), exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(cpath), prefix=".partial-", suffix=".npz")
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, train_images=arrays[0], train_labels=arrays[1], test_images=arrays[2],
                     test_labels=arrays[3], class_names=np.asarray(arrays[4], dtype=str))
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, cpath)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def cached(kind, content_hash, cache_dir, build, what, check=None):
    """Return ``(arrays, source text)`` from the cache entry of ``content_hash``, or from ``build()``.

    ``check(arrays)`` runs on the arrays either way, and on freshly built ones before they are
    written: a dataset that fails it (wrong counts, ...) raises and is never cached.
    """
    cpath = cache_path(kind, content_hash, cache_dir)
    if os.path.isfile(cpath):
        try:
            arrays = _load(cpath)
        except Exception as e:  # truncated by a full disk, another numpy, ...: decode again
            logger.warn("Cache %s cannot be loaded (%s: %s); decoding %s again and rewriting it"
                        % (cpath, type(e).__name__, e, what))
        else:
            logger.info("Loaded %s from cache %s" % (what, cpath))
            if check is not None:
                check(arrays)
            return arrays, "%s (cached: %s)" % (what, cpath)
    t0 = time.time()
    arrays = build()
    logger.info("Decoded %s: %d + %d images in %.1f s" % (what, len(arrays[1]), len(arrays[3]),
                                                          time.time() - t0))
    if check is not None:
        check(arrays)
    try:
        _write_atomically(cpath, arrays)
    except OSError as e:
        logger.warn("Could not write the cache %s (%s); set KALMAN_NORM_CACHE to a writable "
                    "directory to avoid decoding again" % (cpath, e))
        return arrays, what
    logger.info("Cached decoded images in %s" % cpath)
    return arrays, "%s (cache written: %s)" % (what, cpath)
