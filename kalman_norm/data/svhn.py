"""SVHN cropped digits: the official ``train_32x32.mat`` / ``test_32x32.mat`` (read with scipy), and
tensorpack's :class:`~tensorpack.dataflow.dataset.SVHNDigit` to download them.

Labels: SVHN stores the digit 0 as label 10; here it is 0, so label == digit.
"""
import numpy as np

from tensorpack.dataflow import dataset as tp_dataset

from .common import IMAGE_SHAPE, DataError

__all__ = ["SVHN_FILES", "SVHN_SUBDIR", "require_scipy", "read_svhn", "download_svhn"]

SVHN_FILES = ["train_32x32.mat", "test_32x32.mat"]
SVHN_SUBDIR = "svhn_data"          # tensorpack's default directory name


def require_scipy(where):
    # scipy is optional (pip install -e ".[svhn]"): imported only when a .mat file is read
    try:
        import scipy.io  # noqa: F401
    except ImportError:
        raise DataError("reading SVHN .mat files (%s) needs scipy: pip install scipy, or pass an "
                        "image folder / .tar.gz instead" % where)


def read_svhn(files, where):
    """``files``: {basename: path or binary file object} with both :data:`SVHN_FILES`.
    Returns ``(train_x, train_y, test_x, test_y, class_names)``."""
    missing = [f for f in SVHN_FILES if f not in files]
    if missing:
        raise DataError("%s: incomplete official svhn data, missing %s: pass the complete directory "
                        "(%s)" % (where, ", ".join(missing), ", ".join(SVHN_FILES)))
    require_scipy(where)
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


def download_svhn(root):
    """Let tensorpack fetch both .mat files into ``root`` (its SVHNDigit loader downloads them)."""
    require_scipy(root)
    tp_dataset.SVHNDigit("train", data_dir=root)
    tp_dataset.SVHNDigit("test", data_dir=root)
