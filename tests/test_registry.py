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
    assert row.fused_activation == ('nonlinearity' in params)
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


def _inference_outputs(name, inputs, seed=0):
    """One ``name`` layer built for inference (moving statistics where it keeps them) with every
    variable set to a random positive value (a stand-in for trained γ, β, τ, v and moving
    statistics), run on each of ``inputs`` as a separate batch."""
    with tf.Graph().as_default():
        x = tf1.placeholder(tf.float32, inputs[0].shape)
        with TowerContext('', is_training=False), kn.norm_scope(name, group_size=2):
            y = F.norm('n', x)
        rng = np.random.RandomState(seed)
        with tf1.Session() as sess:
            for v in tf1.global_variables():
                v.load(rng.uniform(0.5, 1.5, v.shape.as_list()).astype(np.float32), sess)
            return [sess.run(y, {x: batch}) for batch in inputs]


def _per_channel_affine_residual(xs, ys):
    """The largest relative residual, over channels, of the least-squares fit y = a·x + b with one
    (a, b) per channel over every position of every batch (NHWC)."""
    x = np.concatenate([b.reshape(-1, b.shape[-1]) for b in xs]).astype(np.float64)
    y = np.concatenate([b.reshape(-1, b.shape[-1]) for b in ys]).astype(np.float64)
    worst = 0.0
    for c in range(x.shape[1]):
        design = np.stack([x[:, c], np.ones_like(x[:, c])], axis=1)
        coef = np.linalg.lstsq(design, y[:, c], rcond=None)[0]
        worst = max(worst, np.linalg.norm(design @ coef - y[:, c]) / np.linalg.norm(y[:, c] - y[:, c].mean()))
    return worst


@pytest.mark.parametrize('name', kn.norm_names())
def test_folds_at_inference_trait_matches_the_layer(name):
    """A norm that folds into the conv is y = a·x + b per channel at inference, with the same a, b
    for any input: fitted over two different random batches at once, the residual is round-off.
    The samples differ in scale and offset, so per-sample statistics (GN, LN, FRN, EvoNorm) or a
    nonlinearity show up as a residual far above round-off."""
    rng = np.random.RandomState(1)
    scales = rng.uniform(0.3, 3.0, (4, 1, 1, 1))
    offsets = rng.uniform(-2.0, 2.0, (4, 1, 1, 1))
    inputs = [(rng.randn(4, 5, 5, 8) * scales + offsets).astype(np.float32) for _ in range(2)]
    residual = _per_channel_affine_residual(inputs, _inference_outputs(name, inputs))
    if kn.get_norm(name).folds_at_inference:
        assert residual < 1e-5, (name, residual)
    else:
        assert residual > 1e-2, (name, residual)
