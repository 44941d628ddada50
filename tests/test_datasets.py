"""Tests of the 32x32 data layer (kalman_norm.data) on tiny generated datasets (no network, no
/work/shared): every source, the count checks, archive verification, the content-keyed cache and the
dataflows. ImageNet data: tests/test_imagenet_data.py."""
import gzip
import io
import os
import pickle
import shutil
import tarfile
import urllib.error

import numpy as np
import pytest
import scipy.io as scipy_io

import kalman_norm  # noqa: F401  (before tensorpack / cv2 users)
import cv2
from kalman_norm import data as D
from kalman_norm.data import DataError, cache as data_cache, common as data_common, folder as data_folder

# deliberately not in sorted order: labels must follow the sorted names
CLASSES = ["zebra", "ant", "moth", "cat", "eel", "bee", "yak", "dog", "fox", "gnu"]
SORTED = sorted(CLASSES)


# --------------------------------------------------------------------------- generators

def _rand_images(rng, n):
    return rng.randint(0, 256, size=(n, 32, 32, 3)).astype(np.uint8)


def _smooth_image(rng):
    """Low-frequency image: survives JPEG with small error."""
    base = rng.randint(40, 216, size=(1, 1, 3)).astype(np.float32)
    ramp = np.linspace(-30, 30, 32, dtype=np.float32)
    img = base + ramp[:, None, None] * np.array([1, 0, -1], np.float32) + ramp[None, :, None] * 0.5
    return np.clip(img, 0, 255).astype(np.uint8)


def write_cifar10(root, n=3, seed=0, with_meta=True, subdir=True):
    """Official layout (bytes keys, uint8 [N,3072] channel-major). Returns expected arrays."""
    rng = np.random.RandomState(seed)
    d = os.path.join(root, D.CIFAR10_DIR) if subdir else root
    os.makedirs(d, exist_ok=True)
    xs, ys = {}, {}
    for f in D.CIFAR10_FILES:
        x = _rand_images(rng, n)
        y = rng.randint(0, 10, size=n).tolist()
        with open(os.path.join(d, f), "wb") as fo:
            pickle.dump({b"batch_label": f.encode(), b"labels": y,
                         b"data": x.transpose(0, 3, 1, 2).reshape(n, 3072),
                         b"filenames": [b"img%d.png" % i for i in range(n)]}, fo, protocol=2)
        xs[f], ys[f] = x, np.array(y)
    if with_meta:
        with open(os.path.join(d, "batches.meta"), "wb") as fo:
            pickle.dump({b"label_names": [c.encode() for c in D.CIFAR10_NAMES],
                         b"num_cases_per_batch": n, b"num_vis": 3072}, fo, protocol=2)
    train_x = np.concatenate([xs[f] for f in D.CIFAR10_TRAIN])
    train_y = np.concatenate([ys[f] for f in D.CIFAR10_TRAIN])
    return d, train_x, train_y, xs["test_batch"], ys["test_batch"]


def write_cifar100(root, n=4, seed=1):
    rng = np.random.RandomState(seed)
    d = os.path.join(root, D.CIFAR100_DIR)
    os.makedirs(d, exist_ok=True)
    out = []
    for f in ("train", "test"):
        x = _rand_images(rng, n)
        y = rng.randint(0, 100, size=n)
        with open(os.path.join(d, f), "wb") as fo:
            pickle.dump({b"filenames": [], b"batch_label": f.encode(), b"fine_labels": y.tolist(),
                         b"coarse_labels": (y // 5).tolist(),
                         b"data": x.transpose(0, 3, 1, 2).reshape(n, 3072)}, fo, protocol=2)
        out += [x, y]
    with open(os.path.join(d, "meta"), "wb") as fo:
        pickle.dump({b"fine_label_names": [b"fine%03d" % i for i in range(100)],
                     b"coarse_label_names": [b"coarse%02d" % i for i in range(20)]}, fo, protocol=2)
    return d, out


def write_folder(root, classes=CLASSES, n_train=2, n_test=1, test_name="test", seed=2):
    """Image folder; even sorted-index classes as PNG (exact), odd ones as JPG.

    Returns {split: {class: [rgb images in file-name order]}}."""
    rng = np.random.RandomState(seed)
    expected = {}
    for split, n in (("train", n_train), (test_name, n_test)):
        expected[split] = {}
        for c in classes:
            d = os.path.join(root, split, c)
            os.makedirs(d, exist_ok=True)
            png = SORTED.index(c) % 2 == 0 if c in SORTED else True
            imgs = []
            for i in range(n):
                img = _rand_images(rng, 1)[0] if png else _smooth_image(rng)
                name = "%04d.%s" % (i, "png" if png else ("jpg" if i % 2 == 0 else "jpeg"))
                assert cv2.imwrite(os.path.join(d, name), img[:, :, ::-1])  # RGB -> BGR on disk
                imgs.append(img)
            expected[split][c] = imgs
    return expected


def make_tar(src_dir, tar_path, top=None, mode="w:gz"):
    with tarfile.open(tar_path, mode) as tf:
        for e in sorted(os.listdir(src_dir)):
            tf.add(os.path.join(src_dir, e), arcname=os.path.join(top, e) if top else e)
    return str(tar_path)


def load(name, data=None, **kw):
    """Tiny generated data is far from the official sizes: format tests switch the count check to
    a warning (the checks themselves are tested below with strict_counts=True)."""
    kw.setdefault("strict_counts", False)
    return D.load_dataset(name, data, **kw)


@pytest.fixture(autouse=True)
def _isolated_env(tmp_path, monkeypatch):
    monkeypatch.setenv("KALMAN_NORM_CACHE", str(tmp_path / "default_cache"))
    monkeypatch.setenv("TENSORPACK_DATASET", str(tmp_path / "tp_data"))


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("folder") / "imgs"
    expected = write_folder(str(root))
    return str(root), expected


def check_folder_dataset(ds, expected, test_name="test"):
    assert ds.train_images.dtype == np.uint8 and ds.train_images.shape == (20, 32, 32, 3)
    assert ds.test_images.shape == (10, 32, 32, 3)
    assert ds.train_labels.dtype == np.int32 and ds.test_labels.dtype == np.int32
    assert ds.class_names == SORTED and ds.num_classes == 10
    for split, x, y in (("train", ds.train_images, ds.train_labels),
                        (test_name, ds.test_images, ds.test_labels)):
        k = 0
        for label, c in enumerate(SORTED):
            for img in expected[split][c]:
                assert y[k] == label
                if label % 2 == 0:      # PNG: exact, RGB order
                    np.testing.assert_array_equal(x[k], img)
                else:                   # JPEG: close
                    assert np.abs(x[k].astype(int) - img).mean() < 6
                k += 1
    assert ds.channel_mean.dtype == np.float32 and ds.channel_mean.shape == (3,)
    flat = ds.train_images.reshape(-1, 3).astype(np.float64)
    np.testing.assert_allclose(ds.channel_mean, flat.mean(0), rtol=1e-5)
    np.testing.assert_allclose(ds.channel_std, flat.std(0), rtol=1e-4)


# --------------------------------------------------------------------------- package

def test_package_imports():
    """kalman_norm.data never imports the legacy kalman_norm/datasets.py, and imports at module
    level only (no function-level import hiding a cycle), except the optional scipy."""
    import ast
    pkg = os.path.dirname(D.__file__)
    for fname in sorted(os.listdir(pkg)):
        if not fname.endswith(".py"):
            continue
        tree = ast.parse(open(os.path.join(pkg, fname)).read())
        for node in ast.walk(tree):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                names = [a.name for a in node.names] + [getattr(node, "module", None) or ""]
                assert not any("datasets" in n.split(".") for n in names), (fname, node.lineno)
        for func in ast.walk(tree):
            if isinstance(func, (ast.FunctionDef, ast.AsyncFunctionDef)):
                for node in ast.walk(func):
                    if isinstance(node, (ast.Import, ast.ImportFrom)):
                        assert [a.name for a in node.names] == ["scipy.io"], (fname, node.lineno)
    assert set(D.__all__) <= set(dir(D))


# --------------------------------------------------------------------------- loading

@pytest.mark.parametrize("subdir,give_parent", [(True, True), (True, False), (False, False)])
def test_cifar10_official(tmp_path, subdir, give_parent):
    d, tx, ty, vx, vy = write_cifar10(str(tmp_path / "c10"), subdir=subdir)
    ds = load("cifar10", str(tmp_path / "c10") if give_parent else d)
    assert ds.train_images.shape == (15, 32, 32, 3) and ds.train_images.dtype == np.uint8
    np.testing.assert_array_equal(ds.train_images, tx)     # channel-major -> NHWC RGB
    np.testing.assert_array_equal(ds.train_labels, ty)
    np.testing.assert_array_equal(ds.test_images, vx)
    np.testing.assert_array_equal(ds.test_labels, vy)
    assert ds.class_names == D.CIFAR10_NAMES and ds.num_classes == 10
    assert ds.train_labels.dtype == np.int32
    assert "official" in ds.source
    line = D.describe(ds)
    assert "\n" not in line and "15" in line and "airplane" in line and d in line


def test_cifar10_without_meta_uses_official_names(tmp_path):
    d = write_cifar10(str(tmp_path), with_meta=False)[0]
    assert load("cifar10", d).class_names == D.CIFAR10_NAMES


def test_cifar100_official(tmp_path):
    d, (tx, ty, vx, vy) = write_cifar100(str(tmp_path))
    ds = load("cifar100", str(tmp_path))
    np.testing.assert_array_equal(ds.train_images, tx)
    np.testing.assert_array_equal(ds.train_labels, ty)
    np.testing.assert_array_equal(ds.test_images, vx)
    np.testing.assert_array_equal(ds.test_labels, vy)
    assert ds.num_classes == 100 and ds.class_names[3] == "fine003"


def test_svhn_mat(tmp_path):
    rng = np.random.RandomState(3)
    exp = {}
    for f, n in (("train_32x32.mat", 5), ("test_32x32.mat", 3)):
        x = _rand_images(rng, n)
        y = np.array([10, 1, 2, 10, 9][:n], np.uint8).reshape(-1, 1)
        scipy_io.savemat(str(tmp_path / f), {"X": x.transpose(1, 2, 3, 0), "y": y})
        exp[f] = (x, np.where(y.ravel() == 10, 0, y.ravel()))
    ds = load("svhn", str(tmp_path))
    np.testing.assert_array_equal(ds.train_images, exp["train_32x32.mat"][0])
    np.testing.assert_array_equal(ds.train_labels, exp["train_32x32.mat"][1])
    np.testing.assert_array_equal(ds.test_images, exp["test_32x32.mat"][0])
    np.testing.assert_array_equal(ds.test_labels, exp["test_32x32.mat"][1])
    assert ds.class_names == [str(i) for i in range(10)]


def test_image_folder(folder, tmp_path):
    root, expected = folder
    ds = load("folder", root, cache_dir=str(tmp_path / "cache"), strict_counts=True)
    check_folder_dataset(ds, expected)
    # nested one level under a single top-level directory
    ds2 = load("cifar10", os.path.dirname(root), cache_dir=str(tmp_path / "cache"))
    np.testing.assert_array_equal(ds2.train_images, ds.train_images)


def test_image_folder_val_split(tmp_path):
    expected = write_folder(str(tmp_path / "f"), test_name="val")
    ds = load("cifar10", str(tmp_path / "f"), cache_dir=str(tmp_path / "cache"))
    check_folder_dataset(ds, expected, test_name="val")


@pytest.mark.parametrize("top,mode,suffix", [(None, "w:gz", ".tar.gz"), ("cifar10", "w:gz", ".tgz"),
                                             ("cifar10", "w", ".tar")])
def test_tar(folder, tmp_path, top, mode, suffix):
    root, expected = folder
    tar = make_tar(root, tmp_path / ("data" + suffix), top=top, mode=mode)
    ds = load("folder", tar, cache_dir=str(tmp_path / "cache"), strict_counts=True)
    check_folder_dataset(ds, expected)
    assert tar in ds.source and ds.name == "folder"


def test_tar_of_official_cifar10(tmp_path):
    _, tx, ty, vx, vy = write_cifar10(str(tmp_path / "src"))
    tar = make_tar(str(tmp_path / "src"), tmp_path / "cifar-10-python.tar.gz")
    ds = load("cifar10", tar, cache_dir=str(tmp_path / "cache"))
    np.testing.assert_array_equal(ds.train_images, tx)
    np.testing.assert_array_equal(ds.test_labels, vy)


def _no_decoding(monkeypatch):
    def boom(*a, **k):
        raise AssertionError("decoder called although the cache is valid")
    monkeypatch.setattr(data_folder, "decode_images", boom)


def test_cache_serves_second_load(folder, tmp_path, monkeypatch):
    root, expected = folder
    tar = make_tar(root, tmp_path / "data.tar.gz")
    cache = tmp_path / "cache"
    first = load("folder", tar, cache_dir=str(cache))
    files = os.listdir(cache)
    assert len(files) == 1 and files[0].startswith("archive-") and files[0].endswith(".npz")
    assert "cache written" in first.source
    with monkeypatch.context() as m:
        _no_decoding(m)
        second = load("folder", tar, cache_dir=str(cache))
    assert "cached" in second.source and str(cache) in second.source
    np.testing.assert_array_equal(second.train_images, first.train_images)
    np.testing.assert_array_equal(second.test_labels, first.test_labels)
    assert second.class_names == first.class_names
    # the default cache dir comes from $KALMAN_NORM_CACHE
    monkeypatch.setenv("KALMAN_NORM_CACHE", str(tmp_path / "envcache"))
    load("folder", tar)
    assert len(os.listdir(tmp_path / "envcache")) == 1


def test_cache_keyed_by_content_not_path(folder, tmp_path, monkeypatch):
    """Two clones (different absolute paths, same bytes) share one entry; a touched file keeps its
    entry; different bytes get their own."""
    root, _ = folder
    cache = str(tmp_path / "cache")
    (tmp_path / "a").mkdir()
    tar = make_tar(root, tmp_path / "a" / "data.tar.gz")
    load("folder", tar, cache_dir=cache)
    shutil.copytree(root, tmp_path / "clone1" / "imgs")
    load("folder", str(tmp_path / "clone1" / "imgs"), cache_dir=cache)
    assert len(os.listdir(cache)) == 2                       # one archive entry, one folder entry
    (tmp_path / "b").mkdir()
    other_tar = str(tmp_path / "b" / "renamed.tgz")
    shutil.copy(tar, other_tar)
    st = os.stat(other_tar)
    os.utime(other_tar, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    shutil.copytree(root, tmp_path / "clone2" / "elsewhere")
    with monkeypatch.context() as m:
        _no_decoding(m)
        ds_tar = load("folder", other_tar, cache_dir=cache)
        ds_dir = load("folder", str(tmp_path / "clone2" / "elsewhere"), cache_dir=cache)
    assert "cached" in ds_tar.source and other_tar in ds_tar.source
    assert "cached" in ds_dir.source
    assert len(os.listdir(cache)) == 2
    # one changed image: another key, decoded again
    img = tmp_path / "clone2" / "elsewhere" / "train" / "ant" / "0000.png"
    assert cv2.imwrite(str(img), np.full((32, 32, 3), 7, np.uint8))
    ds = load("folder", str(tmp_path / "clone2" / "elsewhere"), cache_dir=cache)
    assert "cache written" in ds.source and len(os.listdir(cache)) == 3
    assert (ds.train_images[0] == 7).all()


def test_cache_written_atomically(folder, tmp_path, monkeypatch):
    """A write killed half-way leaves no entry (and no temp file); the entry appears only by an
    os.replace from the cache directory."""
    root, _ = folder
    cache = tmp_path / "cache"
    real_savez = np.savez

    def killed(f, **arrays):
        f.write(b"PK\x03\x04 half an npz")
        raise KeyboardInterrupt("killed while writing the cache")
    monkeypatch.setattr(data_cache.np, "savez", killed)
    with pytest.raises(KeyboardInterrupt):
        load("folder", root, cache_dir=str(cache))
    assert os.listdir(cache) == []
    monkeypatch.setattr(data_cache.np, "savez", real_savez)
    replaced = []
    real_replace = os.replace

    def spy(src, dst):
        replaced.append((os.path.dirname(src), dst))
        real_replace(src, dst)
    monkeypatch.setattr(data_cache.os, "replace", spy)
    load("folder", root, cache_dir=str(cache))
    (entry,) = os.listdir(cache)
    assert replaced == [(str(cache), str(cache / entry))]


def test_unloadable_cache_is_rebuilt_with_warning(folder, tmp_path, monkeypatch):
    root, _ = folder
    cache = tmp_path / "cache"
    good = load("folder", root, cache_dir=str(cache))
    (entry,) = os.listdir(cache)
    (cache / entry).write_bytes(b"not an npz at all")
    warnings = []
    monkeypatch.setattr(data_cache.logger, "warn", lambda msg: warnings.append(msg))
    again = load("folder", root, cache_dir=str(cache))
    assert len(warnings) == 1 and entry in warnings[0] and "decoding" in warnings[0]
    np.testing.assert_array_equal(again.train_images, good.train_images)
    with np.load(str(cache / entry)) as z:          # rewritten, loadable
        np.testing.assert_array_equal(z["train_images"], good.train_images)


# --------------------------------------------------------------------------- expected counts

def test_known_dataset_with_wrong_counts_is_an_error(folder, tmp_path):
    root, _ = folder
    cache = tmp_path / "cache"
    with pytest.raises(DataError) as e:
        D.load_dataset("cifar10", root, cache_dir=str(cache))
    msg = str(e.value)
    assert "50000 train / 10000 test images in 10 classes" in msg and "20 / 10 in 10" in msg
    assert root in msg and "--dataset folder" in msg and "\n" not in msg
    assert not cache.exists() or os.listdir(cache) == []     # a wrong set is never cached
    d = write_cifar10(str(tmp_path / "pickles"))[0]
    with pytest.raises(DataError, match="15 / 3 in 10"):
        D.load_dataset("cifar10", d)
    with pytest.raises(DataError, match="73257 train / 26032 test"):
        D.load_dataset("svhn", root, cache_dir=str(cache))


def test_wrong_counts_found_before_decoding(folder, tmp_path, monkeypatch):
    root, _ = folder
    tar = make_tar(root, tmp_path / "data.tar.gz")
    _no_decoding(monkeypatch)
    for data in (root, tar):
        with pytest.raises(DataError, match="20 / 10 in 10"):
            D.load_dataset("cifar10", data, cache_dir=str(tmp_path / "c"))


def test_known_dataset_with_official_counts_loads(folder, tmp_path, monkeypatch):
    root, expected = folder
    monkeypatch.setitem(data_common.EXPECTED_COUNTS, "cifar10", (20, 10))
    ds = D.load_dataset("cifar10", root, cache_dir=str(tmp_path / "cache"))
    check_folder_dataset(ds, expected)
    assert ds.name == "cifar10" and "per class" not in D.describe(ds)
    monkeypatch.setitem(data_common.EXPECTED_COUNTS, "cifar10", (20, 11))     # cached now: checked
    with pytest.raises(DataError, match="20 / 10 in 10"):
        D.load_dataset("cifar10", root, cache_dir=str(tmp_path / "cache"))


def test_non_strict_counts_warn(folder, tmp_path, monkeypatch):
    root, _ = folder
    warnings = []
    monkeypatch.setattr(D.load.logger, "warn", lambda msg: warnings.append(msg))
    ds = D.load_dataset("cifar10", root, cache_dir=str(tmp_path / "c"), strict_counts=False)
    assert len(ds.train_labels) == 20
    assert len(warnings) == 1 and "50000" in warnings[0] and "20 / 10" in warnings[0]


def test_own_dataset_counts_are_stated(tmp_path):
    write_folder(str(tmp_path / "f"), classes=["b", "a", "c"], n_train=3, n_test=2)
    os.remove(str(tmp_path / "f" / "train" / "c" / "0002.png"))
    ds = D.load_dataset("folder", str(tmp_path / "f"), cache_dir=str(tmp_path / "c"))
    assert ds.num_classes == 3 and ds.class_names == ["a", "b", "c"]
    line = D.describe(ds)
    assert "\n" not in line and "train 8, test 6" in line
    assert "per class (train/test): a 3/2, b 3/2, c 2/2" in line
    with pytest.raises(DataError, match="needs|means an image folder"):
        D.load_dataset("folder")
    d = write_cifar10(str(tmp_path / "pickles"))[0]
    with pytest.raises(DataError, match="--dataset cifar10"):
        D.load_dataset("folder", d)


# --------------------------------------------------------------------------- archive verification

def _tiny_archive_source(tmp_path):
    src = tmp_path / "src"
    write_folder(str(src), classes=["a", "b"], n_train=3, n_test=1)
    return src


def _tar_bytes(src, mode):
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode=mode) as tf:
        for e in sorted(os.listdir(src)):
            tf.add(os.path.join(src, e), arcname=e)
    return buf.getvalue()


def _member_offsets(raw_tar):
    """(header offset, data offset, end of data) of each member of an uncompressed tar."""
    with tarfile.open(fileobj=io.BytesIO(raw_tar), mode="r:") as tf:
        return [(m.offset, m.offset_data, m.offset_data + m.size) for m in tf.getmembers()]


def _assert_truncated(path, cache):
    with pytest.raises(DataError, match="is truncated or corrupt: ") as e:
        D.load_dataset("folder", str(path), cache_dir=str(cache))
    assert str(path) in str(e.value) and "\n" not in str(e.value)


def test_truncated_gzip_stream_is_an_error_wherever_cut(tmp_path):
    src = _tiny_archive_source(tmp_path)
    data = _tar_bytes(src, "w:gz")
    good = tmp_path / "good.tar.gz"
    good.write_bytes(data)
    assert len(D.load_dataset("folder", str(good), cache_dir=str(tmp_path / "c")).train_labels) == 6
    # inside the gzip header, early (the "3 MB cut"), middle, late (the "18.8 MB cut"), in the trailer
    cuts = [5, 40, len(data) // 3, len(data) // 2, len(data) - 200, len(data) - 9, len(data) - 1]
    for cut in cuts:
        bad = tmp_path / ("cut%d.tar.gz" % cut)
        bad.write_bytes(data[:cut])
        _assert_truncated(bad, tmp_path / "c")
    assert len(os.listdir(tmp_path / "c")) == 1          # only the good archive was cached


def test_truncated_tar_stream_is_an_error_wherever_cut(tmp_path):
    """The tar stream itself cut short -- plain, and inside a gzip stream that is itself complete
    (the gzip layer cannot notice): in a header, in member data, exactly at a member boundary,
    before or inside the end-of-archive marker."""
    src = _tiny_archive_source(tmp_path)
    raw = _tar_bytes(src, "w:")
    members = _member_offsets(raw)
    last_end = -(-members[-1][2] // 512) * 512          # end of the last member's padded data
    cuts = {"in the first header": members[0][0] + 100,
            "in a middle header": members[len(members) // 2][0] + 300,
            "in member data": (members[-2][1] + members[-2][2]) // 2,
            "at a member boundary": members[-1][0],
            "before the end marker": last_end,
            "inside the end marker": last_end + 512}
    for where, cut in cuts.items():
        for suffix in (".tar", ".tar.gz"):
            bad = tmp_path / ("cut%d%s" % (cut, suffix))
            if suffix == ".tar":
                bad.write_bytes(raw[:cut])
            else:
                with gzip.open(str(bad), "wb") as g:      # a complete gzip of a truncated tar
                    g.write(raw[:cut])
            _assert_truncated(bad, tmp_path / "c")
    # garbage after a complete archive is corrupt too; zero padding after the marker is fine
    (tmp_path / "junk.tar").write_bytes(raw + b"junk")
    _assert_truncated(tmp_path / "junk.tar", tmp_path / "c")
    (tmp_path / "padded.tar").write_bytes(raw[:last_end + 1024])
    assert len(D.load_dataset("folder", str(tmp_path / "padded.tar"),
                              cache_dir=str(tmp_path / "c")).train_labels) == 6


def test_corrupt_member_data_in_gzip(tmp_path):
    src = _tiny_archive_source(tmp_path)
    data = bytearray(_tar_bytes(src, "w:gz"))
    data[len(data) // 2] ^= 0xFF                          # one flipped byte: CRC or deflate error
    bad = tmp_path / "flipped.tar.gz"
    bad.write_bytes(bytes(data))
    _assert_truncated(bad, tmp_path / "c")


def test_download_failure_without_network(tmp_path, monkeypatch):
    import tensorpack.dataflow.dataset.cifar as tp_cifar

    def no_net(url, *a, **k):
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")
    monkeypatch.setattr(tp_cifar, "download", no_net)
    with pytest.raises(DataError, match="no network") as e:
        load("cifar10", None)
    assert "--data" in str(e.value) and str(tmp_path / "tp_data") in str(e.value)


def test_default_dir_with_files_present(tmp_path):
    _, tx, *_ = write_cifar10(str(tmp_path / "tp_data" / "cifar10_data"))
    ds = load("cifar10")
    np.testing.assert_array_equal(ds.train_images, tx)
    assert "tensorpack default dir" in ds.source


# --------------------------------------------------------------------------- errors

def test_error_missing_path(tmp_path):
    p = str(tmp_path / "nope")
    with pytest.raises(DataError, match="does not exist") as e:
        load("cifar10", p)
    assert p in str(e.value) and "--data" in str(e.value)


def test_error_unknown_name(tmp_path):
    with pytest.raises(DataError, match="imagenet"):
        load("imagenet", str(tmp_path))


def test_error_unknown_layout(tmp_path):
    (tmp_path / "foo.txt").write_text("x")
    (tmp_path / "bar").mkdir()
    with pytest.raises(DataError) as e:
        load("cifar10", str(tmp_path))
    msg = str(e.value)
    assert str(tmp_path) in msg and "foo.txt" in msg and "bar" in msg and "accepted layouts" in msg
    other = tmp_path / "notes.zip"
    other.write_bytes(b"PK\x03\x04junk")
    with pytest.raises(DataError, match="notes.zip"):
        load("cifar10", str(other))


def test_error_tar_unknown_layout(tmp_path):
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "readme.txt").write_text("hi")
    tar = make_tar(str(tmp_path / "src"), tmp_path / "x.tar.gz")
    with pytest.raises(DataError, match="readme.txt") as e:
        load("cifar10", tar, cache_dir=str(tmp_path / "c"))
    assert tar in str(e.value)


def test_error_empty_class_dir(tmp_path):
    write_folder(str(tmp_path / "f"))
    d = tmp_path / "f" / "train" / "cat"
    shutil.rmtree(d)
    d.mkdir()
    with pytest.raises(DataError, match="train/cat") as e:
        load("cifar10", str(tmp_path / "f"), cache_dir=str(tmp_path / "c"))
    assert str(tmp_path / "f") in str(e.value)


def test_error_no_test_split(tmp_path):
    write_folder(str(tmp_path / "f"))
    shutil.rmtree(tmp_path / "f" / "test")
    (tmp_path / "f" / "test").mkdir()
    with pytest.raises(DataError, match="test") as e:
        load("cifar10", str(tmp_path / "f"), cache_dir=str(tmp_path / "c"))
    assert str(tmp_path / "f") in str(e.value)


def test_error_corrupt_image_in_tar(folder, tmp_path):
    root, _ = folder
    src = tmp_path / "src"
    shutil.copytree(root, src)
    (src / "train" / "dog" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    tar = make_tar(str(src), tmp_path / "bad.tar.gz")
    with pytest.raises(DataError, match="train/dog/broken.jpg.*corrupt") as e:
        load("folder", tar, cache_dir=str(tmp_path / "c"))
    assert tar in str(e.value)
    assert not os.path.exists(tmp_path / "c") or os.listdir(tmp_path / "c") == []


@pytest.mark.parametrize("how", ["truncated", "garbage"])
def test_error_corrupt_tar(folder, tmp_path, how):
    root, _ = folder
    good = make_tar(root, tmp_path / "good.tar.gz")
    data = open(good, "rb").read()
    bad = tmp_path / "bad.tar.gz"
    bad.write_bytes(data[:len(data) // 2] if how == "truncated" else os.urandom(2000))
    with pytest.raises(DataError, match="is truncated or corrupt") as e:
        load("cifar10", str(bad), cache_dir=str(tmp_path / "c"))
    assert str(bad) in str(e.value)


def test_error_corrupt_pickle(tmp_path):
    d = write_cifar10(str(tmp_path))[0]
    with open(os.path.join(d, "data_batch_3"), "wb") as f:
        f.write(b"\x80\x02}q\x00(garbage")
    with pytest.raises(DataError, match="data_batch_3") as e:
        load("cifar10", str(tmp_path))
    assert d in str(e.value)


def test_error_incomplete_official(tmp_path):
    d = write_cifar10(str(tmp_path))[0]
    os.remove(os.path.join(d, "test_batch"))
    with pytest.raises(DataError, match="test_batch"):
        load("cifar10", d)


def test_error_wrong_image_size(tmp_path):
    write_folder(str(tmp_path / "f"))
    p = tmp_path / "f" / "test" / "ant" / "big.png"
    cv2.imwrite(str(p), np.zeros((30, 31, 3), np.uint8))
    with pytest.raises(DataError, match="30x31x3") as e:
        load("cifar10", str(tmp_path / "f"), cache_dir=str(tmp_path / "c"))
    assert str(p) in str(e.value)


def test_error_class_set_mismatch(tmp_path):
    write_folder(str(tmp_path / "f"))
    shutil.copytree(tmp_path / "f" / "test" / "ant", tmp_path / "f" / "test" / "zzz_extra")
    with pytest.raises(DataError, match="zzz_extra") as e:
        load("cifar10", str(tmp_path / "f"), cache_dir=str(tmp_path / "c"))
    assert str(tmp_path / "f") in str(e.value)


def test_error_name_inconsistent_with_files(tmp_path):
    write_cifar10(str(tmp_path / "c10"))
    for name in ("cifar100", "svhn"):
        with pytest.raises(DataError, match="cifar10") as e:
            load(name, str(tmp_path / "c10"))
        assert str(tmp_path / "c10") in str(e.value) and name in str(e.value)
    write_cifar100(str(tmp_path / "c100"))
    with pytest.raises(DataError, match="cifar100"):
        load("cifar10", str(tmp_path / "c100"))
    # a cifar100 pickle placed where cifar-10 batches are expected
    d = write_cifar10(str(tmp_path / "mixed"))[0]
    shutil.copy(os.path.join(str(tmp_path / "c100"), D.CIFAR100_DIR, "train"),
                os.path.join(d, "data_batch_1"))
    with pytest.raises(DataError, match="fine_labels"):
        load("cifar10", d)
    # image folder with 3 classes is not cifar10 / cifar100
    write_folder(str(tmp_path / "f3"), classes=["a", "b", "c"])
    with pytest.raises(DataError, match="100 classes but the data has 6 / 3 in 3") as e:
        load("cifar100", str(tmp_path / "f3"), cache_dir=str(tmp_path / "c"), strict_counts=True)
    assert str(tmp_path / "f3") in str(e.value)
    # tar of official cifar10 asked as cifar100
    tar = make_tar(str(tmp_path / "c10"), tmp_path / "c10.tar.gz")
    with pytest.raises(DataError, match="cifar10") as e:
        load("cifar100", tar, cache_dir=str(tmp_path / "c"))
    assert tar in str(e.value)


# --------------------------------------------------------------------------- augmentation / dataflow

def _padded(img):
    return np.pad(img, ((4, 4), (4, 4), (0, 0)))


def test_augment_batch_windows_and_flips():
    rng = np.random.RandomState(0)
    x = _rand_images(rng, 400)
    out, offs, flip = D.augment_batch(x, np.random.RandomState(1))
    assert out.shape == x.shape and out.dtype == np.uint8
    for i in range(len(x)):
        oy, ox = offs[i]
        win = _padded(x[i])[oy:oy + 32, ox:ox + 32]
        np.testing.assert_array_equal(out[i], win[:, ::-1] if flip[i] else win)
    assert 0.4 < flip.mean() < 0.6
    assert set(offs[:, 0]) == set(range(9)) and set(offs[:, 1]) == set(range(9))
    out2, _, _ = D.augment_batch(x, np.random.RandomState(1))
    np.testing.assert_array_equal(out, out2)


def _is_window(out, src):
    p = _padded(src)
    for oy in range(9):
        for ox in range(9):
            w = p[oy:oy + 32, ox:ox + 32]
            if np.array_equal(out, w) or np.array_equal(out, w[:, ::-1]):
                return True
    return False


def _take(df, n):
    it = iter(df)
    return [next(it) for _ in range(n)]


def test_train_dataflow_in_process():
    rng = np.random.RandomState(0)
    x = _rand_images(rng, 50)
    y = np.arange(50, dtype=np.int32)          # label = index: identifies the source image
    df = D.get_dataflow(x, y, 8, train=True, num_proc=0, seed=3)
    assert len(df) == 6
    df.reset_state()
    epochs = [list(df) for _ in range(2)]
    for ep in epochs:
        assert len(ep) == 6
        labels = np.concatenate([b[1] for b in ep])
        assert len(set(labels.tolist())) == 48     # no repeats within an epoch
        for imgs, labs in ep:
            assert imgs.shape == (8, 32, 32, 3) and imgs.dtype == np.uint8 and labs.dtype == np.int32
            for img, lab in zip(imgs, labs):
                assert _is_window(img, x[lab])
    assert not np.array_equal(epochs[0][0][1], epochs[1][0][1])   # reshuffled
    # deterministic given the seed, different for another seed
    df2 = D.get_dataflow(x, y, 8, train=True, num_proc=0, seed=3)
    df2.reset_state()
    for a, b in zip(epochs[0], list(df2)):
        np.testing.assert_array_equal(a[0], b[0])
        np.testing.assert_array_equal(a[1], b[1])
    df3 = D.get_dataflow(x, y, 8, train=True, num_proc=0, seed=4)
    df3.reset_state()
    assert not np.array_equal(next(iter(df3))[0], epochs[0][0][0])


@pytest.mark.parametrize("remainder,n_batches,last", [(False, 3, 8), (True, 4, 2)])
def test_test_dataflow_ordered_unaugmented(remainder, n_batches, last):
    rng = np.random.RandomState(0)
    x = _rand_images(rng, 26)
    y = rng.randint(0, 10, 26).astype(np.int32)
    df = D.get_dataflow(x, y, 8, train=False, num_proc=2, remainder=remainder)
    assert len(df) == n_batches
    df.reset_state()
    for _ in range(2):
        batches = list(df)
        assert len(batches) == n_batches and len(batches[-1][1]) == last
        got_x = np.concatenate([b[0] for b in batches])
        got_y = np.concatenate([b[1] for b in batches])
        np.testing.assert_array_equal(got_x, x[:len(got_x)])
        np.testing.assert_array_equal(got_y, y[:len(got_y)])


def test_dataflow_bad_inputs():
    x = np.zeros((4, 32, 32, 3), np.uint8)
    with pytest.raises(ValueError):
        D.get_dataflow(x.astype(np.float32), np.zeros(4), 2, train=True)
    with pytest.raises(ValueError):
        D.get_dataflow(x, np.zeros(3), 2, train=True)
    with pytest.raises(ValueError):
        D.get_dataflow(x, np.zeros(4), 8, train=True)


def _close(df):
    for p in getattr(df, "_procs", []):
        p.terminate()
    for p in getattr(df, "_procs", []):
        p.join(5)
        assert not p.is_alive()
    if getattr(df, "_reset_done", False):
        df.socket.close(0)
        df.context.destroy(0)


def test_multiprocess_dataflow():
    rng = np.random.RandomState(0)
    x = _rand_images(rng, 64)
    y = np.arange(64, dtype=np.int32)
    df = D.get_dataflow(x, y, 8, train=True, num_proc=2, seed=0)
    assert len(df) == 8
    try:
        df.reset_state()
        batches = _take(df, 6)
    finally:
        _close(df)
    for imgs, labs in batches:
        assert imgs.shape == (8, 32, 32, 3) and imgs.dtype == np.uint8
        assert labs.dtype == np.int32 and labs.shape == (8,)
        for img, lab in zip(imgs, labs):
            assert _is_window(img, x[lab])
    # workers are seeded differently: no two batches are the same
    assert len({tuple(b[1].tolist()) for b in batches}) == 6


def test_single_worker_matches_in_process():
    rng = np.random.RandomState(0)
    x = _rand_images(rng, 32)
    y = np.arange(32, dtype=np.int32)
    ref = D.get_dataflow(x, y, 8, train=True, num_proc=0, seed=5)
    ref.reset_state()
    want = _take(ref, 3)
    df = D.get_dataflow(x, y, 8, train=True, num_proc=1, seed=5)
    try:
        df.reset_state()
        got = _take(df, 3)
    finally:
        _close(df)
    for a, b in zip(want, got):
        np.testing.assert_array_equal(a[0], b[0])
        np.testing.assert_array_equal(a[1], b[1])
