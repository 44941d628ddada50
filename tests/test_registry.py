"""The norm and model registries: each row's traits agree with its layer or builder, and a new row
is usable everywhere without editing any other file (the norm by ``norm_scope`` and the trainers,
the model by the trainers' dispatch)."""
import inspect

import kalman_norm as kn  # noqa: I001  (before tensorflow / tensorpack)
from kalman_norm import flow as F, norms
from kalman_norm.train import cifar
from kalman_norm import models
from kalman_norm.models import registry as model_registry

import numpy as np
import pytest
import tensorflow as tf
from tensorpack.models import layer_register
from tensorpack.tfutils.tower import TowerContext

tf1 = tf.compat.v1


def _built_variables(name, shape=(4, 3, 3, 8)):
    """The variables one layer of ``name`` creates, and the update ops it adds in a training tower."""
    with tf.Graph().as_default():
        x = tf.random.normal(shape)
        with TowerContext('', is_training=True), kn.norm_scope(name, group_size=2):
            F.norm('n', x)
        return {v.op.name for v in tf1.global_variables()}, len(tf1.get_collection(tf1.GraphKeys.UPDATE_OPS))


@pytest.mark.parametrize('name', kn.norm_names())
def test_norm_row_traits_match_its_layer(name):
    row = kn.get_norm(name)
    params = inspect.signature(row.layer).parameters
    assert row.group_size == ('group_size' in params)
    assert row.channel_groups == ('channel_groups' in params)
    assert row.moving_averages == ('eval_stats' in params and 'momentum' in params)
    assert row.kalman == ('prior' in params)
    assert row.step_warmup == ('warmup' in params)
    built, updates = _built_variables(name)
    assert updates == row.updates_per_layer and (updates > 0) == row.moving_averages
    assert row.affine == ('n/gamma' in built)
    # every moving-average norm keeps variance/EMA; those that subtract a mean (BN, BRN, BKN) mean/EMA
    assert row.moving_averages == ('n/variance/EMA' in built)
    assert (name in cifar.EMA_NORMS) == row.moving_averages
    assert (name in cifar.KALMAN_NORMS) == row.kalman


@layer_register()
def _ScaleOnly(x, *, scale_init=1.0, data_format=None):
    s = tf1.get_variable('scale', [x.shape[-1]], initializer=tf1.constant_initializer(scale_init))
    return tf.identity(x * s, name='output')


def _check_scale_only(**options):
    if 'scale_init' in options and not options['scale_init'] > 0:
        raise ValueError('scale_init must be > 0, got %r' % (options['scale_init'],))


def test_a_new_norm_is_one_row(monkeypatch):
    monkeypatch.setattr(norms._REGISTRY, 'rows', dict(norms._REGISTRY.rows))
    kn.register_norm(kn.Norm('scale_only', _ScaleOnly, _check_scale_only, 'a per-channel scale', 'test'))
    assert 'scale_only' in kn.norm_names()
    with pytest.raises(ValueError, match='scale_init must be > 0, got 0'):
        kn.NormSpec('scale_only', scale_init=0)
    with pytest.raises(ValueError, match='do not apply to .scale_only.'):
        kn.NormSpec('scale_only', momentum=0.9)
    with tf.Graph().as_default():
        x = tf.ones([2, 3, 3, 4])
        with TowerContext('', is_training=True), kn.norm_scope('scale_only', scale_init=2.0):
            y = F.norm('n', x)
        with tf1.Session() as sess:
            sess.run(tf1.global_variables_initializer())
            np.testing.assert_allclose(sess.run(y), 2.0)
    with pytest.raises(ValueError, match='registered already'):
        kn.register_norm(kn.Norm('bn', _ScaleOnly, _check_scale_only, 'x', 'x'))


def test_unknown_norm_names_the_registered_ones():
    with pytest.raises(ValueError, match=r"Unknown normalization 'bm'; choose one of: bn, bkn, gn"):
        kn.get_norm('bm')


@pytest.mark.parametrize('name', models.model_names())
def test_model_row_builds_its_smallest_instance(name):
    row = models.get_model(name)
    params = inspect.signature(row.builder).parameters
    assert 'num_classes' in params
    for arg in list(row.fixed) + list(row.trainer_arguments) + list(row.smallest):
        assert arg in params, (name, arg)
    size = 32 if row.family == 'cifar' else 64
    with tf.Graph().as_default():
        with TowerContext('', is_training=True), kn.norm_scope('bn', group_size=2):
            logits = row.make(tf.zeros([2, size, size, 3]), 7, **row.smallest)
        assert logits.shape.as_list() == [2, 7]


def _tiny_model(image, num_classes=10, width=4):
    x = F.relu(F.norm('bn0', F.conv2d('conv0', image, width, 3)))
    return F.fully_connected('linear', F.global_avg_pool(x), num_classes)


def test_a_new_model_is_one_row(monkeypatch):
    monkeypatch.setattr(model_registry._REGISTRY, 'rows', dict(model_registry._REGISTRY.rows))
    models.register_model(models.Model('tiny', _tiny_model, 'cifar', 'tiny', 'Tiny', smallest={'width': 2}))
    assert 'tiny' in models.model_names('cifar') and 'tiny' not in models.model_names('imagenet')
    o = {'model': 'tiny', 'model_options': {'width': 3}, 'depth': 3}
    assert cifar.TASK.model_name(o) == 'tiny'
    with tf.Graph().as_default():
        with TowerContext('', is_training=True), kn.norm_scope('gn', channel_groups=1):
            logits = cifar.TASK.build_logits(o, tf.zeros([2, 8, 8, 3]), 5)
        assert logits.shape.as_list() == [2, 5]
        assert 'conv0/W' in {v.op.name for v in tf1.global_variables()}
    with pytest.raises(ValueError, match='registered already'):
        models.register_model(models.Model('resnet', _tiny_model, 'cifar', 'x', 'x'))
    with pytest.raises(ValueError, match='family is one of'):
        models.register_model(models.Model('other', _tiny_model, 'video', 'x', 'x'))


def test_resnet_cifar_display_name_follows_its_depth():
    assert cifar.TASK.model_name({'model': 'resnet', 'depth': 3, 'model_options': {}}) == 'resnet20'
    assert cifar.TASK.model_name({'model': 'resnet', 'depth': 18, 'model_options': {}}) == 'resnet110'


@pytest.mark.parametrize('name', kn.norm_names())
def test_layer_output_carries_its_variables_as_tensorpack_does(name):
    from tensorpack.models import BatchNorm
    row = kn.get_norm(name)
    with tf.Graph().as_default():
        x = tf.random.normal([4, 3, 3, 8])
        with TowerContext('', is_training=True):
            with kn.norm_scope(name, group_size=2):
                y = F.norm('n', x)
            reference = BatchNorm('tp', x)
        held = {k: v.op.name for k, v in y.variables._vars.items()}
        assert set(held.values()) == {v.op.name for v in tf1.global_variables() if v.op.name.startswith('n/')}
        if row.affine:
            assert held['gamma'] == 'n/gamma' and held['beta'] == 'n/beta'
        if row.moving_averages:
            # the keys tensorpack's BatchNorm returns ('mean' where the layer subtracts one: EvoNorm-B0
            # and MABN keep a moving variance / second moment alone)
            assert {'gamma', 'beta', 'variance'} <= set(held)
            assert ('mean' in held) == ('n/mean/EMA' in held.values())
            assert {"gamma", "beta", "mean", "variance"} <= set(reference.variables._vars)
