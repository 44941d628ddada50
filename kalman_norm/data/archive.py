"""``.tar`` / ``.tar.gz`` / ``.tgz`` (also bzip2 / xz) archives of an image folder or of the official
CIFAR directory, read in one streaming pass, nothing extracted to disk -- and verified completely.

Python's ``tarfile`` treats a header that is cut off (or garbage) after the first member as the end
of the archive and stops reading there, so the rest of the compressed stream -- where gzip would
notice the cut -- is never read: a truncated download used to load as a smaller dataset (48,246
of CIFAR-10's 50,000 training images, silently). Here an archive is accepted only if

* the compressed stream ends properly: the gzip / bzip2 / xz reader is drained to its end, which
  checks the end-of-stream marker and the CRC / length trailer;
* the tar stream ends properly: after the last member comes the end-of-archive marker (POSIX: two
  512-byte blocks of zeros) and nothing but zeros (record padding) follows;
* every member read is complete (``tarfile`` raises on short member data).

Anything else is a :class:`DataError` "<path> is truncated or corrupt: <reason>", whatever the cut.
"""
import bz2
import gzip
import io
import lzma
import tarfile
import zlib

from .cifar import CIFAR10_DIR, CIFAR10_FILES, CIFAR100_DIR, CIFAR100_FILES, read_cifar
from .common import ACCEPTED_LAYOUTS, IMAGE_EXTS, DataError
from .folder import SPLIT_DIRS, decode_folder, folder_items
from .svhn import SVHN_FILES, read_svhn

__all__ = ["is_tar_name", "looks_like_tar", "iter_verified_tar", "read_archive", "TAR_END_BYTES"]

TAR_END_BYTES = 2 * tarfile.BLOCKSIZE       # the end-of-archive marker
_READ_ERRORS = (tarfile.TarError, EOFError, zlib.error, lzma.LZMAError, OSError, ValueError)


def is_tar_name(path):
    return path.lower().endswith((".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tbz2", ".tar.xz", ".txz"))


class _TailWatcher(io.RawIOBase):
    """Pass-through reader of the uncompressed tar stream that remembers its length and where its
    last non-zero byte ends: after ``tarfile`` stops, these tell whether it stopped at a real
    end-of-archive marker."""

    def __init__(self, raw):
        super().__init__()
        self.raw = raw
        self.length = 0
        self.nonzero_end = 0

    def readable(self):
        return True

    def read(self, size=-1):
        data = self.raw.read(size)
        if data:
            kept = len(data.rstrip(b"\0"))
            if kept:
                self.nonzero_end = self.length + kept
            self.length += len(data)
        return data

    def drain(self):
        while self.read(1 << 20):
            pass


def _decompressor(f):
    magic = f.read(6)
    f.seek(0)
    if magic.startswith(b"\x1f\x8b"):
        return gzip.GzipFile(fileobj=f, mode="rb")
    if magic.startswith(b"BZh"):
        return bz2.BZ2File(f, "rb")
    if magic.startswith(b"\xfd7zXZ"):
        return lzma.LZMAFile(f, "rb")
    return f


class _Truncated(Exception):
    pass


def iter_verified_tar(path, want):
    """Read ``path`` once, yielding ``(member name parts, bytes)`` of each regular file for which
    ``want(parts)`` holds (``parts``: the member's path split on '/', without '.' and ''); every
    other member is skipped without being read. When the members are exhausted, both stream ends
    are verified as described in the module docstring. Every failure is a :class:`DataError`
    naming the archive and the last member read.

    Also yields ``(parts, None)`` for every member (files and directories) not wanted, so that a
    caller can describe the archive's content in an error message.
    """
    last = None
    try:
        with open(path, "rb") as f:
            watcher = _TailWatcher(_decompressor(f))
            with tarfile.open(fileobj=watcher, mode="r|") as tf:
                for m in tf:
                    last = m.name
                    parts = [p for p in m.name.replace("\\", "/").split("/") if p not in ("", ".")]
                    if m.isfile() and parts and want(parts):
                        yield parts, tf.extractfile(m).read()
                    else:
                        yield parts + ([""] if m.isdir() else []), None
                end = tf.offset                 # where the end-of-archive marker should start
                watcher.drain()                 # checks the compressed stream's end and trailer
            if watcher.nonzero_end > end:
                raise _Truncated("data that is not a tar header at byte %d of the uncompressed "
                                 "stream (a member header cut short or damaged)" % end)
            if watcher.length - end < TAR_END_BYTES:
                raise _Truncated("the tar stream stops at byte %d without its end-of-archive marker"
                                 % watcher.length)
    except (_Truncated,) + _READ_ERRORS as e:
        reason = str(e) if isinstance(e, _Truncated) else "%s: %s" % (type(e).__name__, e)
        raise DataError("%s is truncated or corrupt: %s%s; re-download or re-create it, or pass "
                        "--data with an extracted directory"
                        % (path, reason, " (last member read: %s)" % last if last else ""))


_OFFICIAL_NAMES = {CIFAR10_DIR: set(CIFAR10_FILES + ["batches.meta"]),
                   CIFAR100_DIR: set(CIFAR100_FILES + ["meta"])}


def _official_layout(parts):
    """'cifar10' / 'cifar100' / 'svhn' if the member is one of the official files, else None."""
    parent = parts[-2] if len(parts) >= 2 else ""
    if parent in _OFFICIAL_NAMES and parts[-1] in _OFFICIAL_NAMES[parent]:
        return "cifar10" if parent == CIFAR10_DIR else "cifar100"
    return "svhn" if parts[-1] in SVHN_FILES else None


def _folder_key(parts):
    """(top-level prefix, split, class) of an image in an image-folder tree, else None."""
    if parts[-1].startswith(".") or not parts[-1].lower().endswith(IMAGE_EXTS):
        return None
    if len(parts) == 3 and parts[0] in SPLIT_DIRS:
        return "", parts[0], parts[1]
    if len(parts) == 4 and parts[1] in SPLIT_DIRS:
        return parts[0], parts[1], parts[2]
    return None


def read_archive(name, path, check_sizes=None):
    """Read the archive completely; return decoded ``(train_x, train_y, test_x, test_y, classes)``
    of its image folder, or of its official CIFAR / SVHN files. ``check_sizes(num_train, num_test,
    num_classes)`` runs on an image folder's listing, before anything is decoded."""
    images = {}       # (prefix, split, class) -> [(display name, bytes)]
    official = {}     # (layout, basename) -> bytes
    first_entries = []

    def wanted(parts):
        return _official_layout(parts) is not None or _folder_key(parts) is not None

    for parts, data in iter_verified_tar(path, wanted):
        if len(first_entries) < 10 and parts:
            first_entries.append("/".join(parts))
        if data is None:
            continue
        layout = _official_layout(parts)
        if layout is not None:
            official[(layout, parts[-1])] = data
        else:
            images.setdefault(_folder_key(parts), []).append(("%s!/%s" % (path, "/".join(parts)), data))

    if not images and any(k[0] == name for k in official):
        files = {base: io.BytesIO(b) for (layout, base), b in official.items() if layout == name}
        if name == "svhn":
            return read_svhn(files, path)
        return read_cifar(name, files, path)
    if not images:
        have = sorted({k[0] for k in official})
        if have:
            raise DataError("dataset %r was requested but the archive %s holds official %s files: pass "
                            "--dataset %s, or an archive of the %s data"
                            % (name, path, ", ".join(have), have[0], name))
        raise DataError("archive %s is in none of the known layouts (first entries: %s); %s"
                        % (path, ", ".join(first_entries) or "empty archive", ACCEPTED_LAYOUTS))
    prefixes = sorted({k[0] for k in images})
    if len(prefixes) > 1:
        raise DataError("archive %s has image folders under several top-level directories (%s): "
                        "pass an archive with a single train/ + test/ tree"
                        % (path, ", ".join(p or "<root>" for p in prefixes)))
    splits = {}
    for (_, split, cls), items in images.items():
        splits.setdefault(split, {})[cls] = items
    where = path + ("!/" + prefixes[0] if prefixes[0] else "")
    listing = folder_items(splits, where)
    if check_sizes is not None:
        check_sizes(len(listing[1]), len(listing[3]), len(listing[4]))
    return decode_folder(listing)


def looks_like_tar(path):
    """A file named like an archive, or one ``tarfile`` recognises (any compression)."""
    if is_tar_name(path):
        return True
    try:
        return tarfile.is_tarfile(path)
    except OSError:
        return False

