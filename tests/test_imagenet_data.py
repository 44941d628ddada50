"""Tests of kalman_norm.data.imagenet on a tiny generated ILSVRC-style directory (3 classes x 4
train images of 48x40 px, 2 val images per class; no /work/shared), and of
scripts/cifar_as_ilsvrc.py on a tiny generated CIFAR-style archive."""
import copy
import importlib.util
import os
import shutil
import tarfile
import types

import numpy as np
import pytest

import kalman_norm  # noqa: F401  (before tensorpack / cv2 users)
import cv2
from kalman_norm.data import DataError
from kalman_norm.data import imagenet as I

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# deliberately not in sorted order; each class has one dominant colour (RGB) that survives the
# augmentation, so a sample's label can be checked against its pixels
COLOURS = {"n0300": (210, 40, 40), "n0100": (40, 210, 40), "n0200": (40, 40, 210)}
WNIDS = sorted(COLOURS)                         # label order
H, W = 40, 48


def _image(rng, wnid):
    img = np.empty((H, W, 3), np.float32)
    img[...] = COLOURS[wnid]
    img += rng.normal(0, 6, size=img.shape)
    return np.clip(img, 0, 255).astype(np.uint8)


def _write(path, rgb):
    assert cv2.imwrite(str(path), rgb[:, :, ::-1])


def make_ilsvrc(root, val_layout="flat", n_train=4, n_val=2, seed=0):
    """train/<wnid>/<wnid>_k.JPEG; val/ flat + val.txt (int labels, shuffled lines) or val/<wnid>/.
    Returns {val file name: label} for a flat val."""
    rng = np.random.RandomState(seed)
    root = str(root)
    for wnid in COLOURS:
        d = os.path.join(root, "train", wnid)
        os.makedirs(d)
        for k in range(n_train):
            _write(os.path.join(d, "%s_%d.JPEG" % (wnid, k)), _image(rng, wnid))
    os.makedirs(os.path.join(root, "val"))
    val_labels = {}
    k = 0
    for wnid in COLOURS:
        for _ in range(n_val):
            k += 1
            name = "ILSVRC2012_val_%08d.JPEG" % k
            if val_layout == "flat":
                _write(os.path.join(root, "val", name), _image(rng, wnid))
                val_labels[name] = WNIDS.index(wnid)
            else:
                os.makedirs(os.path.join(root, "val", wnid), exist_ok=True)
                _write(os.path.join(root, "val", wnid, name), _image(rng, wnid))
    if val_layout == "flat":
        names = list(val_labels)
        rng.shuffle(names)
        with open(os.path.join(root, "val.txt"), "w") as f:
            f.writelines("%s %d\n" % (n, val_labels[n]) for n in names)
    return val_labels


@pytest.fixture(scope="module")
def flat_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("ilsvrc") / "imagenet"
    labels = make_ilsvrc(root)
    return str(root), labels


def _dominant_label(img):
    """Label of the class whose colour's dominant channel is the image's brightest channel."""
    ch = int(np.argmax(img.reshape(-1, 3).mean(0)))
    return next(WNIDS.index(w) for w, c in COLOURS.items() if int(np.argmax(c)) == ch)


def _close(df):
    """Stop the worker processes of a multi-process flow started by a test."""
    stack = [df]
    while stack:
        d = stack.pop()
        for p in getattr(d, "_procs", []):
            p.terminate()
            p.join(5)
            assert not p.is_alive()
        if hasattr(d, "ds"):
            stack.append(d.ds)


# --------------------------------------------------------------------------- scanning

def test_load_flat_val_labels_follow_folders_and_label_file(flat_root):
    root, val_labels = flat_root
    data = I.load_imagenet(root)
    assert data.class_names == WNIDS and data.num_classes == 3 and data.val_layout == "flat"
    assert len(data.train) == 12 and len(data.val) == 6
    for path, label in data.train:
        assert os.path.basename(os.path.dirname(path)) == WNIDS[label]
        assert os.path.isabs(path) and os.path.isfile(path)
    assert {os.path.basename(p): lab for p, lab in data.val} == val_labels
    line = I.describe_imagenet(data)
    assert "\n" not in line and "train 12, val 6" in line and "3 classes" in line


def test_load_val_folders(tmp_path):
    make_ilsvrc(tmp_path / "d", val_layout="folders")
    data = I.load_imagenet(str(tmp_path / "d"))
    assert data.val_layout == "folders" and len(data.val) == 6
    for path, label in data.val:
        assert os.path.basename(os.path.dirname(path)) == WNIDS[label]


def test_synsets_file_and_wnid_labels(tmp_path):
    """Caffe's metadata: integers index synsets.txt (in meta_dir); wnids are accepted as labels."""
    labels = make_ilsvrc(tmp_path / "d")
    meta = tmp_path / "meta"
    meta.mkdir()
    synsets = ["n0200", "n0300", "n0100"]
    (meta / "synsets.txt").write_text("".join("%s some words\n" % s for s in synsets))
    names = sorted(labels)
    lines = ["%s %d" % (n, synsets.index(WNIDS[labels[n]])) for n in names[:3]]
    lines += ["%s %s" % (n, WNIDS[labels[n]]) for n in names[3:]]
    (meta / "val.txt").write_text("\n".join(lines) + "\n")
    os.remove(str(tmp_path / "d" / "val.txt"))
    data = I.load_imagenet(str(tmp_path / "d"), meta_dir=str(meta))
    assert {os.path.basename(p): lab for p, lab in data.val} == labels


def _error(root, match, **kw):
    with pytest.raises(DataError, match=match) as e:
        I.load_imagenet(str(root), **kw)
    assert "\n" not in str(e.value)
    return str(e.value)


def test_errors_directories(tmp_path):
    assert str(tmp_path / "nope") in _error(tmp_path / "nope", "does not exist")
    (tmp_path / "file.JPEG").write_bytes(b"x")
    _error(tmp_path / "file.JPEG", "is not a directory")
    (tmp_path / "empty").mkdir()
    _error(tmp_path / "empty", "is empty")
    make_ilsvrc(tmp_path / "d")
    shutil.rmtree(tmp_path / "d" / "val")
    _error(tmp_path / "d", "has no val/")
    shutil.rmtree(tmp_path / "d" / "train")
    _error(tmp_path / "d", "has no train/")
    (tmp_path / "d" / "train").mkdir()
    (tmp_path / "d" / "val").mkdir()
    _error(tmp_path / "d", "has no class folders")


def test_error_class_folder_without_images(tmp_path):
    make_ilsvrc(tmp_path / "d")
    empty = tmp_path / "d" / "train" / "n0250"
    empty.mkdir()
    (empty / "notes.txt").write_text("not an image")
    _error(tmp_path / "d", "class folder train/n0250 has no images")


def test_error_classes_differ_between_train_and_val(tmp_path):
    # val/<wnid>/ layout, in both directions
    make_ilsvrc(tmp_path / "f", val_layout="folders")
    shutil.copytree(tmp_path / "f" / "val" / "n0100", tmp_path / "f" / "val" / "n0999")
    _error(tmp_path / "f", "only in val: n0999; only in train: -")
    shutil.rmtree(tmp_path / "f" / "val" / "n0999")
    shutil.rmtree(tmp_path / "f" / "val" / "n0200")
    _error(tmp_path / "f", "only in val: -; only in train: n0200")
    # flat val: a label naming a class absent from train, or an index beyond the classes
    labels = make_ilsvrc(tmp_path / "d")
    first = sorted(labels)[0]
    txt = tmp_path / "d" / "val.txt"
    good = txt.read_text()
    txt.write_text(good.replace("%s %d" % (first, labels[first]), "%s n0999" % first))
    _error(tmp_path / "d", "names class n0999, which has no folder in train/")
    txt.write_text(good.replace("%s %d" % (first, labels[first]), "%s 7" % first))
    _error(tmp_path / "d", r"label 7 is outside 0\.\.2")
    # flat val: a train class without any val image
    txt.write_text("".join("%s %d\n" % (n, 0 if lab == 2 else lab) for n, lab in labels.items()))
    _error(tmp_path / "d", "train classes absent from val: n0300")


@pytest.mark.parametrize("content,match", [
    ("ILSVRC2012_val_00000001.JPEG 0 extra\n", r"val.txt:1: malformed line"),
    ("ILSVRC2012_val_00000001.JPEG\n", r"val.txt:1: malformed line"),
    ("", "the label file is empty"),
    ("ILSVRC2012_val_00000001.JPEG 0\nILSVRC2012_val_00000001.JPEG 1\n", r"val.txt:2: .* labelled twice"),
])
def test_error_malformed_label_file(tmp_path, content, match):
    make_ilsvrc(tmp_path / "d")
    (tmp_path / "d" / "val.txt").write_text(content)
    _error(tmp_path / "d", match)


def test_error_label_file_missing_or_not_matching_val(tmp_path):
    labels = make_ilsvrc(tmp_path / "d")
    txt = tmp_path / "d" / "val.txt"
    good = txt.read_text()
    txt.write_text(good + "ILSVRC2012_val_00009999.JPEG 1\n")
    _error(tmp_path / "d", "lists 1 images that are not in")
    txt.write_text(good)
    shutil.copy(str(tmp_path / "d" / "val" / sorted(labels)[0]), str(tmp_path / "d" / "val" / "x.JPEG"))
    _error(tmp_path / "d", "1 images in .* have no line in")
    os.remove(str(txt))
    _error(tmp_path / "d", "no label file")


# --------------------------------------------------------------------------- augmentation

def test_random_resized_crop_box_ranges():
    rng = np.random.RandomState(0)
    boxes = np.array([I.random_resized_crop_box(300, 400, rng) for _ in range(2000)])
    y, x, h, w = boxes.T
    assert (y >= 0).all() and (x >= 0).all() and (y + h <= 300).all() and (x + w <= 400).all()
    frac, ratio = h * w / 120000.0, w / h
    assert frac.min() >= 0.08 * 0.97 and frac.max() <= 1.0
    assert ratio.min() >= 0.75 * 0.97 and ratio.max() <= 4 / 3 * 1.03
    assert frac.min() < 0.1 and frac.max() > 0.9                  # the whole range is used
    # log-uniform ratio: on a square image (symmetric rejections) r and 1/r are equally likely
    sq = np.array([I.random_resized_crop_box(300, 300, rng) for _ in range(2000)])
    assert (sq[:, 3] > sq[:, 2]).mean() == pytest.approx((sq[:, 3] < sq[:, 2]).mean(), abs=0.05)
    # no window of ratio 3/4..4/3 fits a 4x1000 strip: the centred fallback, ratio clipped to 4/3
    assert I.random_resized_crop_box(4, 1000, np.random.RandomState(1)) == (0, 497, 4, 5)


def test_color_jitter_and_lighting_against_numpy():
    img = np.random.RandomState(0).uniform(0, 255, size=(5, 6, 3)).astype(np.float32)
    out = I.color_jitter(img, np.random.RandomState(7))
    rng = np.random.RandomState(7)
    ref = img.astype(np.float64)
    gray_w = np.array([0.299, 0.587, 0.114])
    for op in rng.permutation(3):
        f = rng.uniform(0.6, 1.4)
        if op == 0:
            ref = ref * f
        elif op == 1:
            ref = ref * f + (1 - f) * (ref @ gray_w).mean()
        else:
            ref = ref * f + (1 - f) * (ref @ gray_w)[..., None]
    np.testing.assert_allclose(out, ref, rtol=1e-4, atol=1e-3)
    np.testing.assert_allclose(I.color_jitter(img, np.random.RandomState(3), strength=0.0), img)
    # lighting: one RGB offset for every pixel, eigvec @ (alpha * eigval) in 0..255 units
    lit = I.pca_lighting(img, np.random.RandomState(5))
    alpha = np.random.RandomState(5).normal(0, 0.1, size=3)
    offset = np.array([[-0.5675, 0.7192, 0.4009], [-0.5808, -0.0045, -0.8140],
                       [-0.5836, -0.6948, 0.4203]]) @ (alpha * [0.2175, 0.0188, 0.0045]) * 255
    np.testing.assert_allclose(lit - img, np.broadcast_to(offset, img.shape), atol=1e-3)


def test_eval_transform_resize_shorter_side_then_centre_crop():
    img = np.random.RandomState(0).randint(0, 256, size=(40, 48, 3)).astype(np.uint8)
    out = I.eval_transform(img, 28)                    # shorter side -> round(28*256/224) = 32
    ref = cv2.resize(img, (38, 32), interpolation=cv2.INTER_AREA)   # 48*32/40 = 38.4 -> 38
    np.testing.assert_array_equal(out, ref[2:30, 5:33])
    tall = np.ascontiguousarray(img.transpose(1, 0, 2))           # 48x40: the width is shorter
    assert I.eval_transform(tall, 28).shape == (28, 28, 3)
    assert I.eval_transform(img, 64).shape == (64, 64, 3)          # enlarging works too


# --------------------------------------------------------------------------- dataflows

def test_train_batches_shapes_labels_and_determinism(flat_root):
    root, _ = flat_root
    data = I.load_imagenet(root)
    df = I.get_imagenet_dataflow(data, "train", 4, image_size=24, num_proc=0, seed=3)
    assert len(df) == 3
    df.reset_state()
    epochs = [list(df) for _ in range(2)]
    for batches in epochs:
        assert len(batches) == 3
        for imgs, labels in batches:
            assert imgs.shape == (4, 24, 24, 3) and imgs.dtype == np.uint8
            assert labels.shape == (4,) and labels.dtype == np.int32
            for img, label in zip(imgs, labels):
                assert _dominant_label(img) == label
        assert sorted(np.concatenate([b[1] for b in batches]).tolist()) == [0] * 4 + [1] * 4 + [2] * 4
    assert not all(np.array_equal(a[1], b[1]) for a, b in zip(*epochs))       # reshuffled
    again = I.get_imagenet_dataflow(data, "train", 4, image_size=24, num_proc=0, seed=3)
    again.reset_state()
    for a, b in zip(epochs[0], again):
        np.testing.assert_array_equal(a[0], b[0])
        np.testing.assert_array_equal(a[1], b[1])


def test_val_batches_in_file_order_with_remainder(flat_root):
    root, _ = flat_root
    data = I.load_imagenet(root)
    df = I.get_imagenet_dataflow(data, "val", 4, image_size=24, remainder=True)
    assert len(df) == 2
    df.reset_state()
    batches = list(df)
    assert [len(b[1]) for b in batches] == [4, 2]
    imgs = np.concatenate([b[0] for b in batches])
    np.testing.assert_array_equal(np.concatenate([b[1] for b in batches]), [lab for _, lab in data.val])
    for img, (path, _) in zip(imgs, data.val):
        rgb = cv2.imread(path)[:, :, ::-1]
        np.testing.assert_array_equal(img, I.eval_transform(np.ascontiguousarray(rgb), 24))
    no_rem = I.get_imagenet_dataflow(data, "val", 4, image_size=24)
    no_rem.reset_state()
    assert [len(b[1]) for b in no_rem] == [4]


def test_unreadable_image_is_skipped_and_counted(tmp_path, monkeypatch):
    make_ilsvrc(tmp_path / "d")
    bad = tmp_path / "d" / "train" / "n0200" / "n0200_1.JPEG"
    bad.write_bytes(b"\xff\xd8\xff\xe0 not a jpeg")
    data = I.load_imagenet(str(tmp_path / "d"))
    warnings = []
    monkeypatch.setattr(I.logger, "warn", lambda msg: warnings.append(msg))
    df = I.get_imagenet_dataflow(data, "train", 1, image_size=16, seed=0)
    df.reset_state()
    labels = [int(b[1][0]) for b in df]
    assert sorted(labels) == [0] * 4 + [1] * 3 + [2] * 4
    assert sum(str(bad) in w for w in warnings) == 1
    assert any("1 of 12 images were unreadable and skipped this epoch (1 in total)" in w
               for w in warnings)
    list(df)
    assert any("(2 in total)" in w for w in warnings)


def test_multiprocess_val_flow_is_one_exact_pass_and_skips(tmp_path, monkeypatch):
    make_ilsvrc(tmp_path / "d")
    data = I.load_imagenet(str(tmp_path / "d"))
    broken = data.val[2][0]
    with open(broken, "wb") as f:
        f.write(b"truncated")
    warnings = []
    monkeypatch.setattr(I.logger, "warn", lambda msg: warnings.append(msg))
    df = I.get_imagenet_dataflow(data, "val", 2, image_size=16, num_proc=2, remainder=True)
    try:
        df.reset_state()
        for _ in range(2):
            got = sorted(int(lab) for b in df for lab in b[1])
            assert got == sorted(lab for p, lab in data.val if p != broken)
    finally:
        _close(df)
    assert any("1 of 6 images were unreadable" in w for w in warnings)


def test_multiprocess_train_flow(flat_root):
    root, _ = flat_root
    data = I.load_imagenet(root)
    df = I.get_imagenet_dataflow(data, "train", 3, image_size=20, num_proc=2, seed=1)
    try:
        df.reset_state()
        batches = list(df)
    finally:
        _close(df)
    assert len(batches) == 4
    for imgs, labels in batches:
        assert imgs.shape == (3, 20, 20, 3) and imgs.dtype == np.uint8 and labels.dtype == np.int32
        assert [_dominant_label(i) for i in imgs] == labels.tolist()


def test_each_worker_draws_its_own_stream(monkeypatch):
    """Forked workers inherit the map function's state; each must re-seed from (seed, worker index)
    -- or from OS entropy without a seed -- or two workers would augment in lockstep."""
    parent = I._DecodeAugment(True, 16, seed=5)
    parent._get_rng()                                      # the parent drew before forking

    def draws(identity, seed=5):
        monkeypatch.setattr(I.mp, "current_process", lambda: types.SimpleNamespace(identity=identity))
        worker = copy.deepcopy(parent)                     # what fork gives a worker ...
        worker._pid = -1                                   # ... in another process
        worker.seed = seed
        return tuple(worker._get_rng().randint(1 << 30, size=4))
    assert len({draws(None), draws(b"0"), draws(b"1")}) == 3
    assert draws(b"1") == draws(b"1")                      # reproducible with a seed
    assert draws(b"1", seed=None) != draws(b"1", seed=None)


def test_dataflow_bad_arguments(flat_root):
    data = I.load_imagenet(flat_root[0])
    for kw, match in ((dict(split="test"), "split"), (dict(batch_size=0), "batch_size"),
                      (dict(batch_size=13), "larger than the training set"),
                      (dict(image_size=4), "image_size"), (dict(num_proc=-1), "num_proc")):
        args = dict(split="train", batch_size=2)
        args.update(kw)
        with pytest.raises(ValueError, match=match):
            I.get_imagenet_dataflow(data, **args)
    with pytest.raises(ValueError, match="ImageNetData"):
        I.get_imagenet_dataflow(flat_root[0], "train", 2)


def test_fake_data():
    df = I.fake_imagenet_dataflow(5, image_size=32, num_classes=7, num_batches=6, seed=0)
    assert len(df) == 6
    df.reset_state()
    batches = list(df)
    assert len(batches) == 6
    for imgs, labels in batches:
        assert imgs.shape == (5, 32, 32, 3) and imgs.dtype == np.uint8
        assert labels.shape == (5,) and labels.dtype == np.int32
        assert labels.min() >= 0 and labels.max() < 7
    assert imgs.min() == 0 and imgs.max() == 255
    with pytest.raises(ValueError, match="num_classes"):
        I.fake_imagenet_dataflow(2, num_classes=0)


# --------------------------------------------------------------------------- scripts/cifar_as_ilsvrc.py

def _cifar_archive(tmp_path, classes=("cat", "airplane"), n_train=3, n_test=2):
    rng = np.random.RandomState(0)
    src = tmp_path / "src"
    for split, n in (("train", n_train), ("test", n_test)):
        for c in classes:
            (src / split / c).mkdir(parents=True)
            for k in range(n):
                _write(src / split / c / ("%04d.jpg" % k), rng.randint(0, 256, (32, 32, 3)).astype(np.uint8))
    tar = tmp_path / "cifar.tar.gz"
    with tarfile.open(str(tar), "w:gz") as tf:
        tf.add(str(src / "train"), arcname="train")
        tf.add(str(src / "test"), arcname="test")
    return str(tar)


@pytest.fixture(scope="module")
def script():
    """The script as a module, run in-process (a subprocess would spend ~30 s importing TF)."""
    spec = importlib.util.spec_from_file_location("cifar_as_ilsvrc",
                                                  os.path.join(REPO, "scripts", "cifar_as_ilsvrc.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _run_script(script, capsys, args):
    code = script.main(args)
    out, err = capsys.readouterr()
    return code, out, err


def test_cifar_as_ilsvrc_script(tmp_path, script, capsys):
    tar = _cifar_archive(tmp_path)
    out = tmp_path / "ilsvrc"
    code, stdout, err = _run_script(script, capsys, ["--data", tar, "--out", str(out)])
    assert code == 0, err
    assert "2 classes, 6 train and 4 val images" in stdout
    data = I.load_imagenet(str(out))
    assert data.val_layout == "flat" and len(data.train) == 6 and len(data.val) == 4
    names = dict(line.split(" ", 1) for line in (out / "synset_words.txt").read_text().splitlines())
    assert [names[w] for w in data.class_names] == ["airplane", "cat"]      # sorted class names
    # every image is the archive's JPEG, byte for byte, under its class
    with tarfile.open(tar) as tf:
        members = {m.name: tf.extractfile(m).read() for m in tf.getmembers() if m.isfile()}
    train_bytes = {(names[data.class_names[lab]], open(p, "rb").read()) for p, lab in data.train}
    assert train_bytes == {(n.split("/")[1], b) for n, b in members.items() if n.startswith("train/")}
    val_bytes = {(names[data.class_names[lab]], open(p, "rb").read()) for p, lab in data.val}
    assert val_bytes == {(n.split("/")[1], b) for n, b in members.items() if n.startswith("test/")}
    # nothing recorded is overwritten
    code, _, err = _run_script(script, capsys, ["--data", tar, "--out", str(out)])
    assert code == 2 and "already exists" in err
    # the val/<wnid>/ layout
    code, _, err = _run_script(script, capsys, ["--data", tar, "--out", str(tmp_path / "folders"),
                                                "--val-layout", "folders"])
    assert code == 0, err
    assert I.load_imagenet(str(tmp_path / "folders")).val_layout == "folders"
    # val images are numbered in a seeded random order, not class by class
    code, _, err = _run_script(script, capsys, ["--data", tar, "--out", str(tmp_path / "s3"), "--seed", "3"])
    assert code == 0, err
    labels = [int(line.split()[1]) for line in (tmp_path / "s3" / "val.txt").read_text().splitlines()]
    assert labels == [[0, 0, 1, 1][i] for i in np.random.RandomState(3).permutation(4)] == [1, 0, 0, 1]


def test_cifar_as_ilsvrc_script_errors(tmp_path, script, capsys):
    tar = _cifar_archive(tmp_path)
    data = open(tar, "rb").read()
    cut = tmp_path / "cut.tar.gz"
    cut.write_bytes(data[:len(data) // 2])
    code, _, err = _run_script(script, capsys, ["--data", str(cut), "--out", str(tmp_path / "o1")])
    assert code == 2 and err.startswith("error: ") and "is truncated or corrupt" in err
    assert err.count("\n") == 1 and not (tmp_path / "o1").exists()
    assert not [e for e in os.listdir(tmp_path) if e.startswith(".o1")]      # no partial output
    # a JPEG that does not decode: named; the partial output directory is removed
    broken = tmp_path / "src" / "test" / "cat" / "0001.jpg"
    broken.write_bytes(b"\xff\xd8\xff garbage")
    with tarfile.open(str(tmp_path / "bad.tar.gz"), "w:gz") as tf:
        tf.add(str(tmp_path / "src" / "train"), arcname="train")
        tf.add(str(tmp_path / "src" / "test"), arcname="test")
    code, _, err = _run_script(script, capsys, ["--data", str(tmp_path / "bad.tar.gz"),
                                                "--out", str(tmp_path / "o2")])
    assert code == 2 and "member test/cat/0001.jpg is corrupt" in err
    assert not (tmp_path / "o2").exists()
    code, _, err = _run_script(script, capsys, ["--data", str(tmp_path / "missing.tar.gz"),
                                                "--out", str(tmp_path / "o3")])
    assert code == 2 and "does not exist" in err
