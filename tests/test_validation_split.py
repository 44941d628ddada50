"""The CIFAR trainer's --validation N: the last N training images held out of training and
evaluated on instead of the test set, for choosing a learning rate without the test set."""
import json
import os

import numpy as np
import pytest

import kalman_norm  # noqa: F401  (before tensorflow / tensorpack)
from kalman_norm.train import cifar, core as trainer
from kalman_norm.train.cifar import validation_split
from kalman_norm.train.options import OptionError
from test_cifar_trainer import TINY, memory_dataset, no_grappler_session


def _flow_arrays(flow):
    flow.reset_state()
    images, labels = zip(*[(b[0], b[1]) for b in flow])
    return np.concatenate(images), np.concatenate(labels)


def _rows(images):
    return {img.tobytes() for img in images}


def test_split_sizes_disjoint_deterministic_and_test_set_untouched():
    ds = memory_dataset(n_train=24, n_test=6)
    test_before = ds.test_images.copy(), ds.test_labels.copy()
    split, held = validation_split(ds, 8)
    assert held == 8 and len(split.train_labels) == 16 and len(split.test_labels) == 8
    # the last 8 of the stored order, and the first 16 for training: disjoint, together the whole set
    np.testing.assert_array_equal(split.test_images, ds.train_images[16:])
    np.testing.assert_array_equal(split.train_images, ds.train_images[:16])
    assert not _rows(split.train_images) & _rows(split.test_images)
    again, _ = validation_split(ds, 8)
    np.testing.assert_array_equal(again.test_images, split.test_images)
    np.testing.assert_array_equal(ds.test_images, test_before[0])      # the loaded set is unchanged
    np.testing.assert_array_equal(ds.test_labels, test_before[1])
    assert validation_split(ds, 0) == (ds, 0)
    with pytest.raises(OptionError, match='leaves no training images'):
        validation_split(ds, 24)


def test_trainer_data_evaluates_on_the_held_out_images():
    ds = memory_dataset(n_train=24, n_test=6)
    o = cifar.parse_options(TINY + ['--validation', '8'])
    data = cifar.TASK.data_from(ds, o)
    assert data.train_size == 16
    images, labels = _flow_arrays(data.test(4, 1))
    assert _rows(images) == _rows(ds.train_images[16:]) and len(labels) == 8
    assert not _rows(images) & _rows(ds.test_images)
    # training batches are augmented: label them by index to see which images they come from
    indexed = memory_dataset(n_train=24, n_test=6)
    indexed.train_labels = np.arange(24, dtype=np.int32)
    _, train_labels = _flow_arrays(cifar.TASK.data_from(indexed, o).train_batches(0))
    assert sorted(train_labels) == list(range(16))
    assert 'validation split: the last 8 training images' in data.description
    plain = cifar.TASK.data_from(ds, cifar.parse_options(TINY))
    assert plain.train_size == 24 and _rows(_flow_arrays(plain.test(4, 1))[0]) == _rows(ds.test_images)
    assert plain.content_hash == data.content_hash       # the data set's, whatever the split


def test_identity_holds_validation_only_when_set(tmp_path):
    o = cifar.parse_options(TINY + ['--validation', '5000'])
    assert o['identity']['validation'] == 5000
    plain = cifar.parse_options(TINY)
    assert 'validation' not in plain['identity']      # the identities of earlier runs stay valid
    assert o['logdir'] != plain['logdir']
    with pytest.raises(OptionError):
        cifar.parse_options(TINY + ['--validation', '-1'])


def test_run_records_the_split(tmp_path):
    ds = memory_dataset(n_train=24, n_test=6)
    logdir = str(tmp_path / 'log')
    o = cifar.parse_options(TINY + ['--validation', '8', '--logdir', logdir])
    line, code = trainer.train(cifar.TASK, o, cifar.TASK.data_from(ds, o), session_creator=no_grappler_session())
    assert code == 0, line
    with open(os.path.join(logdir, 'options.json')) as f:
        options = json.load(f)
    assert options['validation'] == 8 and options['identity']['validation'] == 8
