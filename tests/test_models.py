"""Tests of the CIFAR models (kalman_norm/models/resnet_cifar.py, inception_cifar.py) under every norm.

Every graph is small (ResNet n=1, Inception at width 0.25, batches of 8 or 32) and each
(model, norm) training graph is built once and shared by the tests that look at it.
"""
import functools

import numpy as np
import pytest

import kalman_norm  # noqa: F401  (before tensorflow / tensorpack)
import tensorflow as tf
from tensorpack.tfutils.tower import TowerContext

from kalman_norm.layers import kn_diagnostics
from kalman_norm.models import get_model, model_names
from kalman_norm.norms import get_norm, norms_where
from kalman_norm.models.inception_cifar import INCEPTION_BLOCKS, inception_cifar, scaled
from kalman_norm.models.resnet_cifar import resnet_cifar

from conftest import make_session

tf1 = tf.compat.v1
BATCH, GROUP = 8, 2
BATCH_NORMS = norms_where('group_size')          # registry rows: every new norm is tested here
KN_NORMS = norms_where('kalman')
INCEPTION_WIDTH = 0.25


def norm_options(norm, model):
    opts = {'group_size': GROUP} if norm in BATCH_NORMS else {}
    if get_norm(norm).channel_groups and model == 'inception':
        # 208 and 48 (and their scaled versions) are not multiples of GN's default 32 groups
        opts['channel_groups'] = 8
    return opts


# every registered CIFAR model at its smallest (ResNet-8, a quarter-width Inception)
MODELS = {name: (lambda model: lambda image, num_classes=10, **kw: model.make(
    image, num_classes, **dict(model.smallest, **kw)))(get_model(name)) for name in model_names('cifar')}


_session = make_session


def _images(n, seed=0):
    return np.random.RandomState(seed).randn(n, 32, 32, 3).astype(np.float32)


def _loss(logits, labels):
    return tf.reduce_mean(tf1.nn.sparse_softmax_cross_entropy_with_logits(labels=labels, logits=logits))


def _gamma_channels(graph):
    """{norm layer scope: channels}, from the ``gamma`` variable every norm layer but 'wn' and
    'none' owns."""
    with graph.as_default():
        return {v.op.name.rsplit('/', 1)[0]: v.shape[0] for v in tf1.global_variables()
                if v.op.name.endswith('/gamma')}


def _kn_layers(graph):
    """Scopes of all norm layers; under 'bkn' / 'gkn' every one of them is a KN layer."""
    return set(_gamma_channels(graph))


@functools.lru_cache(maxsize=None)
def train_run(model, norm, steps=2, **model_kw):
    """Build ``model`` under ``norm`` on a batch of 8, take ``steps`` SGD steps (with UPDATE_OPS).

    Returns a dict: losses (before and after each step), the graph, and the KN diagnostics
    (layer name, prior mean, prior var) evaluated after the steps.
    """
    graph = tf.Graph()
    with graph.as_default():
        tf1.set_random_seed(0)
        image = tf.constant(_images(BATCH))
        labels = tf.constant(np.arange(BATCH) % 10)
        with TowerContext('', is_training=True), kalman_norm.norm_scope(norm, **norm_options(norm, model)):
            logits = MODELS[model](image, **dict(model_kw))
        loss = _loss(logits, labels)
        trainable = tf1.trainable_variables()
        unused = [v.op.name for v, g in zip(trainable, tf.gradients(loss, trainable)) if g is None]
        updates = tf1.get_collection(tf1.GraphKeys.UPDATE_OPS)
        if steps:
            with tf.control_dependencies(updates):
                train_op = tf1.train.GradientDescentOptimizer(0.01).minimize(loss)
        diags = kn_diagnostics()
        with _session(graph) as sess:
            sess.run(tf1.global_variables_initializer())
            losses = [sess.run(loss)]
            for _ in range(steps):
                losses.append(sess.run([train_op, loss])[1])
            priors = sess.run([(d.prior_mean, d.prior_var) for d in diags])
    return {'graph': graph, 'losses': losses, 'num_updates': len(updates), 'logits_shape': logits.shape.as_list(),
            'unused': unused,
            'priors': {d.layer: p for d, p in zip(diags, priors)}}


# ------------------------------------------------------------------ every model × every norm

@pytest.mark.parametrize('norm', kalman_norm.NORMS)
@pytest.mark.parametrize('model', sorted(MODELS))
def test_trains_two_steps_with_finite_loss(model, norm):
    run = train_run(model, norm)
    assert run['logits_shape'] == [BATCH, 10]
    assert np.all(np.isfinite(run['losses'])), run['losses']
    assert run['losses'][-1] != run['losses'][0]              # the steps changed the weights
    # norms with moving averages register their updates: mean and variance per layer; EvoNorm-B0
    # keeps a variance alone; MABN its second moment, step counter and window of statistics
    row = get_norm(norm)
    layers = set(_gamma_channels(run['graph']))
    with run['graph'].as_default():
        ema_layers = {v.op.name[:-len('/variance/EMA')] for v in tf1.global_variables()
                      if v.op.name.endswith('/variance/EMA')}
    assert run['num_updates'] == row.updates_per_layer * len(ema_layers)
    if row.fused_activation:
        # the layers before a residual sum are built without their nonlinearity (B0: no statistics)
        assert ema_layers < layers if row.moving_averages and model == 'resnet' else ema_layers <= layers
    else:
        assert ema_layers == (layers if row.moving_averages else set())
    # every trainable variable reaches the loss: none is created for a nonlinearity nothing uses
    assert run['unused'] == []


# ------------------------------------------------------------------ KN priors flow through the models

@pytest.mark.parametrize('norm', KN_NORMS)
def test_resnet_every_kn_layer_but_the_first_has_a_prior(norm):
    run = train_run('resnet', norm)
    layers = _kn_layers(run['graph'])
    # n=1: bn0 + 3 blocks × 2
    assert layers == {'bn0'} | {'res%d.0/bn%d' % (s, i) for s in (1, 2, 3) for i in (1, 2)}
    assert set(run['priors']) == layers - {'bn0'}
    # the first layers after each strided, channel-doubling (subsample + zero-pad) shortcut
    assert {'res2.0/bn1', 'res2.0/bn2', 'res3.0/bn1', 'res3.0/bn2'} <= set(run['priors'])
    _check_prior_values(run)


@pytest.mark.parametrize('norm', KN_NORMS)
def test_inception_every_kn_layer_but_the_first_has_a_prior(norm):
    run = train_run('inception', norm)
    layers = _kn_layers(run['graph'])
    assert len(layers) == 1 + 6 * len(INCEPTION_BLOCKS)
    assert 'bn0' in layers
    assert set(run['priors']) == layers - {'bn0'}
    _check_prior_values(run)


def _check_prior_values(run):
    channels = _gamma_channels(run['graph'])
    for layer, (mean, var) in run['priors'].items():
        assert mean.shape == var.shape == (BATCH // GROUP, channels[layer]), (layer, mean.shape)
        assert np.all(np.isfinite(mean)) and np.all(np.isfinite(var)), layer
        assert np.all(var >= 0), layer


def test_inception_max_pool_carries_the_prior_into_the_pool_branch():
    """With pool='max' the pool-branch norms (inceptionK/pool_proj/bn) get their prior through
    the max pooling's moment transition, like every other layer but the stem's."""
    run = train_run('inception', 'bkn', steps=0, pool='max')
    layers = _kn_layers(run['graph'])
    pool_branch = {'inception%d/pool_proj/bn' % (i + 1) for i in range(len(INCEPTION_BLOCKS))}
    assert pool_branch <= layers
    assert set(run['priors']) == layers - {'bn0'}
    _check_prior_values(run)


def test_inception_full_width_structure_and_hidden_fc():
    """width=1 has the paper's widths (256, 480, 512 out); fc_units=1000 adds FC → norm → ReLU,
    whose KN layer gets its prior through the global average pool and the FC layer."""
    graph = tf.Graph()
    with graph.as_default(), TowerContext('', is_training=True), \
            kalman_norm.norm_scope('bkn', group_size=GROUP):
        logits = inception_cifar(tf.constant(_images(BATCH)), num_classes=7, fc_units=1000)
        outs = [graph.get_tensor_by_name('inception%d/output:0' % (i + 1)) for i in range(3)]
        assert [o.shape.as_list() for o in outs] == [[BATCH, 16, 16, c] for c in (256, 480, 512)]
        assert logits.shape.as_list() == [BATCH, 7]
        diags = {d.layer for d in kn_diagnostics()}
        assert 'bn_fc' in diags and 'bn0' not in diags
        assert len(diags) == 6 * 3 + 1
        kernels = {v.op.name: v.shape.as_list() for v in tf1.trainable_variables() if v.op.name.endswith('/W')}
    assert kernels['conv0/W'] == [3, 3, 3, 32]
    assert kernels['inception3/b3x3/conv/W'] == [3, 3, 96, 208]
    assert kernels['inception2/b5x5/conv/W'] == [5, 5, 32, 96]
    assert kernels['fc/W'] == [512, 1000] and kernels['linear/W'] == [1000, 7]


def test_inception_width_multiplier_rounds_to_multiples_of_8():
    assert [scaled(c, 1.0) for c in INCEPTION_BLOCKS[2]] == list(INCEPTION_BLOCKS[2])
    assert [scaled(c, 0.25) for c in INCEPTION_BLOCKS[0]] == [16, 24, 32, 8, 8, 8]
    assert all(scaled(c, w) % 8 == 0 for blk in INCEPTION_BLOCKS for c in blk for w in (0.1, 0.25, 0.5, 2.0))


# ------------------------------------------------------------------ learning works

# GN's ResNet needs a larger step than BN's for the same progress in 30 steps.
LEARNING_RATES = {'bn': 0.02, 'bkn': 0.02, 'gn': 0.05}


@pytest.mark.parametrize('norm,opts', [('bn', {}), ('bkn', {'group_size': 2}), ('gn', {})])
def test_resnet_learns_a_small_batch(norm, opts):
    """ResNet (n=1) fits 32 images (a class template plus noise; 10 classes) in 30 momentum steps."""
    rng = np.random.RandomState(0)
    labels = np.arange(32) % 10
    images = (rng.randn(10, 32, 32, 3)[labels] + rng.randn(32, 32, 32, 3)).astype(np.float32)
    graph = tf.Graph()
    with graph.as_default():
        tf1.set_random_seed(1)
        with TowerContext('', is_training=True), kalman_norm.norm_scope(norm, **opts):
            logits = resnet_cifar(tf.constant(images), n=1)
        loss = _loss(logits, tf.constant(labels))
        with tf.control_dependencies(tf1.get_collection(tf1.GraphKeys.UPDATE_OPS)):
            train_op = tf1.train.MomentumOptimizer(LEARNING_RATES[norm], 0.9).minimize(loss)
        with _session() as sess:
            sess.run(tf1.global_variables_initializer())
            initial = sess.run(loss)
            for _ in range(30):
                sess.run(train_op)
            final = sess.run(loss)
    assert np.isfinite(final)
    assert final < 0.5 * initial, (initial, final)


# ------------------------------------------------------------------ NCHW

def _nchw_conv_runs_here():
    graph = tf.Graph()
    with graph.as_default():
        y = tf.nn.conv2d(tf.ones([1, 2, 4, 4]), tf.ones([3, 3, 2, 2]), [1, 1, 1, 1], 'SAME', data_format='NCHW')
        try:
            with tf1.Session() as sess:
                sess.run(y)
            return True
        except (tf.errors.UnimplementedError, tf.errors.InvalidArgumentError):
            return False


@pytest.mark.parametrize('norm,opts', [('bkn', {'group_size': 2}), ('gkn', {'group_size': 2, 'channel_groups': 8})])
def test_resnet_nchw_equals_nhwc(norm, opts):
    """The same weights give the same logits in both layouts (training mode: group statistics,
    and for KN the priors, are computed along the right axes in NCHW)."""
    graph = tf.Graph()
    with graph.as_default():
        image = tf.constant(_images(BATCH, seed=3))
        with TowerContext('', is_training=True), kalman_norm.norm_scope(norm, **opts):
            nhwc = resnet_cifar(image, n=1, data_format='NHWC')
            n_vars = len(tf1.global_variables())
            with tf1.variable_scope(tf1.get_variable_scope(), reuse=True):
                nchw = resnet_cifar(image, n=1, data_format='NCHW')
            diags = kn_diagnostics()
        assert len(tf1.global_variables()) == n_vars          # the NCHW net shares every weight
        assert nchw.shape.as_list() == [BATCH, 10]
        assert len(diags) == 2 * 6                            # both towers carry their priors
        assert [d.layer for d in diags[:6]] == [d.layer for d in diags[6:]]
        if not _nchw_conv_runs_here():
            pytest.skip('tf.nn.conv2d with data_format=NCHW is not implemented on this CPU '
                        '(the NCHW graph builds; its forward pass needs a GPU)')
        with tf1.Session() as sess:
            sess.run(tf1.global_variables_initializer())
            a, b, priors = sess.run([nhwc, nchw, [(d.prior_mean, d.prior_var) for d in diags]])
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)
    for (m1, v1), (m2, v2), d in zip(priors[:6], priors[6:], diags):
        np.testing.assert_allclose(m1, m2, rtol=1e-4, atol=1e-5, err_msg=d.layer)
        np.testing.assert_allclose(v1, v2, rtol=1e-4, atol=1e-5, err_msg=d.layer)


# ------------------------------------------------------------------ bad input

@pytest.mark.parametrize('n', [0, -1, 2.0, None])
def test_resnet_rejects_bad_depth(n):
    with tf.Graph().as_default(), kalman_norm.norm_scope('bn'):
        with pytest.raises(ValueError, match='n >= 1'):
            resnet_cifar(tf.zeros([2, 32, 32, 3]), n=n)


@pytest.mark.parametrize('kw,match', [({'pool': 'median'}, 'pool'), ({'width': 0}, 'width'),
                                      ({'fc_units': 0}, 'fc_units')])
def test_inception_rejects_bad_options(kw, match):
    with tf.Graph().as_default(), kalman_norm.norm_scope('bn'):
        with pytest.raises(ValueError, match=match):
            inception_cifar(tf.zeros([2, 32, 32, 3]), **kw)
