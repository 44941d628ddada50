"""The conventions a checkpoint and a record depend on, held against the peers themselves.

* BN's (and BKN's) ``variance/EMA`` is fed the unbiased micro-batch variance, as tensorpack's 4-D
  ``BatchNorm`` (TF's fused kernel) feeds it; the biased form is an option;
* BRN tracks σ as Batch Renormalization's Algorithm 1 and tf-keras ``BatchNormalization(renorm=True)``;
* a tensorpack ``BatchNorm`` checkpoint restores into a ``norm_scope('bn')`` model and back;
* the 'paper' schedule is the authors' list under tensorpack's ``ScheduledHyperParamSetter``;
* ``--seed`` makes a run's initial weights repeatable.
"""
import os

import kalman_norm as kn  # noqa: I001  (before tensorflow / tensorpack)
from kalman_norm import flow as F
from kalman_norm.train import cifar, core as trainer
from kalman_norm.layers import BatchKalmanNorm, MicroBatchNorm, MicroBatchRenorm

import numpy as np
import pytest
import tensorflow as tf
import tf_keras
from tensorpack.callbacks import ScheduledHyperParamSetter
from tensorpack.models import BatchNorm as TensorpackBatchNorm
from tensorpack.tfutils.tower import TowerContext

from test_cifar_trainer import TINY, memory_dataset, no_grappler_session

from conftest import session_config

tf1 = tf.compat.v1
EPS = 1e-5
_CONFIG = session_config()


def _one_step(build, x_value, fetch):
    """Build ``build(x)`` in a training tower, run it once (EMA updates inside the layer), then
    return the named variables' values."""
    with tf.Graph().as_default():
        x = tf1.placeholder(tf.float32, x_value.shape)
        with TowerContext('', is_training=True):
            out = build(x)
        with tf1.Session(config=_CONFIG) as sess:
            sess.run(tf1.global_variables_initializer())
            sess.run(out, {x: x_value})
            names = {v.op.name: v for v in tf1.global_variables()}
            return {k: sess.run(names[k]) for k in fetch}


# ----------------------------------------------------------------------------------------------
# A. BN's moving variance: the unbiased micro-batch variance by default

def test_bn_ema_matches_tensorpack_batchnorm_issue_example():
    """x = [0, 1] as [2,1,1,1], one step from moving variance 1: tensorpack 0.95, not 0.925."""
    x = np.array([0.0, 1.0], np.float32).reshape(2, 1, 1, 1)
    tp = _one_step(lambda t: TensorpackBatchNorm('tp', t, momentum=0.9, epsilon=EPS, ema_update='internal'),
                   x, ['tp/variance/EMA', 'tp/mean/EMA'])
    ours = _one_step(lambda t: MicroBatchNorm('bn', t, momentum=0.9, epsilon=EPS, ema_update='internal'),
                     x, ['bn/variance/EMA', 'bn/mean/EMA'])
    old = _one_step(lambda t: MicroBatchNorm('bn', t, momentum=0.9, epsilon=EPS, ema_update='internal',
                                             unbiased_variance=False), x, ['bn/variance/EMA'])
    np.testing.assert_allclose(tp['tp/variance/EMA'], [0.95], rtol=1e-6)
    np.testing.assert_allclose(ours['bn/variance/EMA'], tp['tp/variance/EMA'], rtol=1e-6)
    np.testing.assert_allclose(ours['bn/mean/EMA'], tp['tp/mean/EMA'], rtol=1e-6)
    np.testing.assert_allclose(old['bn/variance/EMA'], [0.925], rtol=1e-6)


@pytest.mark.parametrize('data_format', ['NHWC', 'NCHW'])
def test_bn_ema_matches_tensorpack_batchnorm_4d(data_format):
    rng = np.random.RandomState(0)
    shape = (4, 3, 5, 5) if data_format == 'NCHW' else (4, 5, 5, 3)
    x = (rng.normal(1.0, 2.0, shape)).astype(np.float32)
    if data_format == 'NCHW' and not tf.test.is_gpu_available():
        # TF's fused CPU kernel takes NHWC only: compare our NCHW layer with tensorpack on the transpose
        tp_x, tp_format = x.transpose(0, 2, 3, 1), 'NHWC'
    else:
        tp_x, tp_format = x, data_format
    tp = _one_step(lambda t: TensorpackBatchNorm('tp', t, momentum=0.9, epsilon=EPS, ema_update='internal',
                                                 data_format=tp_format), tp_x, ['tp/variance/EMA', 'tp/mean/EMA'])
    ours = _one_step(lambda t: MicroBatchNorm('bn', t, momentum=0.9, epsilon=EPS, ema_update='internal',
                                              data_format=data_format), x, ['bn/variance/EMA', 'bn/mean/EMA'])
    np.testing.assert_allclose(ours['bn/variance/EMA'], tp['tp/variance/EMA'], rtol=2e-6)
    np.testing.assert_allclose(ours['bn/mean/EMA'], tp['tp/mean/EMA'], rtol=2e-6, atol=1e-7)


@pytest.mark.parametrize('shape', [(8, 4, 4, 3), (8, 3)])
def test_bn_ema_micro_batch_groups_numpy(shape):
    """The EMA moves towards the mean over groups of n/(n-1)·S, n = g·H·W (g·1 on 2-D)."""
    rng = np.random.RandomState(1)
    x = rng.normal(0.5, 1.5, shape).astype(np.float32)
    got = _one_step(lambda t: MicroBatchNorm('bn', t, group_size=2, momentum=0.8, ema_update='internal'),
                    x, ['bn/variance/EMA', 'bn/mean/EMA'])
    grouped = x.astype(np.float64).reshape((4, 2) + shape[1:])
    axes = tuple(range(1, grouped.ndim - 1))
    unbiased = grouped.var(axis=axes, ddof=1).mean(0)
    np.testing.assert_allclose(got['bn/variance/EMA'], 0.8 + 0.2 * unbiased, rtol=1e-5)
    np.testing.assert_allclose(got['bn/mean/EMA'], 0.2 * grouped.mean(axis=axes).mean(0), rtol=1e-5, atol=1e-7)


def test_bkn_ema_with_gain_one_is_bn_ema_and_weighs_the_batch_share():
    rng = np.random.RandomState(2)
    x = rng.normal(0.3, 1.2, (4, 3, 3, 2)).astype(np.float32)
    prior_mean = rng.normal(0.0, 0.5, (2, 2)).astype(np.float32)
    prior_var = rng.uniform(0.8, 1.5, (2, 2)).astype(np.float32)
    bn = _one_step(lambda t: MicroBatchNorm('n', t, group_size=2, ema_update='internal'), x, ['n/variance/EMA'])
    for q in (1.0, 0.3):
        got = _one_step(lambda t: BatchKalmanNorm('n', t, prior=(prior_mean, prior_var), group_size=2, gain=q,
                                                  ema_update='internal'), x, ['n/variance/EMA'])
        g = x.astype(np.float64).reshape(2, 2, 3, 3, 2)
        s, m = g.var(axis=(1, 2, 3)), g.mean(axis=(1, 2, 3))
        n = 2 * 3 * 3
        posterior = (1 - q) * prior_var + q * s + q * (1 - q) * (m - prior_mean) ** 2
        expected = posterior + q * (n / (n - 1.0) - 1.0) * s         # q·S taken unbiased
        np.testing.assert_allclose(got['n/variance/EMA'], 0.9 + 0.1 * expected.mean(0), rtol=1e-5)
        if q == 1.0:
            np.testing.assert_allclose(got['n/variance/EMA'], bn['n/variance/EMA'], rtol=1e-6)


# ----------------------------------------------------------------------------------------------
# B. BRN tracks σ (Ioffe 2017, Algorithm 1), as tf-keras does

def test_brn_tracks_sigma_issue_example():
    """x = [0, 4] (variance 4), momentum 0.9, from variance 1: keras 1.21, the variance EMA 1.30."""
    x = np.array([0.0, 4.0], np.float32).reshape(2, 1)
    kw = dict(momentum=0.9, warmup=None, epsilon=EPS, ema_update='internal')
    new = _one_step(lambda t: MicroBatchRenorm('brn', t, **kw), x, ['brn/variance/EMA', 'brn/stddev/EMA'])
    old = _one_step(lambda t: MicroBatchRenorm('brn', t, moving_stddev=False, **kw), x, ['brn/variance/EMA'])
    sigma = 0.9 * np.sqrt(1 + EPS) + 0.1 * np.sqrt(4 + EPS)
    np.testing.assert_allclose(new['brn/stddev/EMA'], [sigma], rtol=1e-6)
    np.testing.assert_allclose(new['brn/variance/EMA'], [sigma ** 2 - EPS], rtol=1e-6)
    np.testing.assert_allclose(new['brn/variance/EMA'], [1.21], rtol=1e-4)
    np.testing.assert_allclose(old['brn/variance/EMA'], [1.30], rtol=1e-6)


def _keras_renorm_step(x, state, momentum, rmax, dmax):
    """tf-keras BatchNormalization(renorm=True), one training step from ``state``; its moving and
    renorm averages share the momentum (Algorithm 1 keeps one pair)."""
    with tf.Graph().as_default():
        layer = tf_keras.layers.BatchNormalization(
            axis=-1, momentum=momentum, epsilon=EPS, renorm=True, renorm_momentum=momentum,
            renorm_clipping={'rmax': rmax, 'rmin': 1.0 / rmax, 'dmax': dmax})
        t = tf.constant(x)
        y = layer(t, training=True)
        with tf1.Session(config=_CONFIG) as sess:
            sess.run(tf1.global_variables_initializer())
            for v in (layer.moving_mean, layer.renorm_mean):
                sess.run(v.assign(state['mean']))
            for v in (layer.moving_stddev, layer.renorm_stddev):
                sess.run(v.assign(state['std']))
            sess.run(layer.moving_variance.assign(state['std'] ** 2 - EPS))
            out = sess.run(y)
            sess.run(layer.updates)
            return out, sess.run([layer.moving_mean, layer.moving_variance, layer.moving_stddev])


def test_brn_step_matches_tf_keras_renorm():
    rng = np.random.RandomState(3)
    x = rng.normal(0.7, 2.0, (6, 5)).astype(np.float32)
    state = dict(mean=rng.normal(0, 0.5, 5).astype(np.float32), std=rng.uniform(0.6, 1.6, 5).astype(np.float32))
    k_out, (k_mean, k_var, k_std) = _keras_renorm_step(x, state, 0.9, rmax=1.5, dmax=0.5)
    with tf.Graph().as_default():
        t = tf.constant(x)
        with TowerContext('', is_training=True):
            y = MicroBatchRenorm('brn', t, momentum=0.9, warmup=None, rmax=1.5, dmax=0.5, epsilon=EPS,
                                 ema_update='internal')
        with tf1.Session(config=_CONFIG) as sess:
            sess.run(tf1.global_variables_initializer())
            vs = {v.op.name: v for v in tf1.global_variables()}
            sess.run([vs['brn/mean/EMA'].assign(state['mean']), vs['brn/stddev/EMA'].assign(state['std']),
                      vs['brn/variance/EMA'].assign(state['std'] ** 2 - EPS)])
            out = sess.run(y)
            mean, var, std = sess.run([vs['brn/mean/EMA'], vs['brn/variance/EMA'], vs['brn/stddev/EMA']])
    np.testing.assert_allclose(out, k_out, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(mean, k_mean, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(std, k_std, rtol=1e-6)
    np.testing.assert_allclose(var, k_var, rtol=1e-5)


# ----------------------------------------------------------------------------------------------
# a tensorpack BatchNorm checkpoint restores into norm_scope('bn'), and back

def _model(image, use_tensorpack):
    x = tf1.layers.conv2d(image, 4, 3, padding='same', use_bias=False, name='conv')
    if use_tensorpack:
        x = TensorpackBatchNorm('bn', x)
    else:
        with kn.norm_scope('bn'):
            x = F.norm('bn', x)
    return tf.nn.relu(x)


@pytest.mark.parametrize('writer', ['tensorpack', 'kalman_norm'])
def test_checkpoint_round_trip_with_tensorpack(writer, tmp_path):
    rng = np.random.RandomState(4)
    image = rng.normal(size=(3, 6, 6, 2)).astype(np.float32)
    outputs, path = {}, str(tmp_path / 'model')
    for name in [writer, 'kalman_norm' if writer == 'tensorpack' else 'tensorpack']:
        with tf.Graph().as_default():
            x = tf.constant(image)
            with TowerContext('', is_training=False):
                y = _model(x, use_tensorpack=(name == 'tensorpack'))
            with tf1.Session(config=_CONFIG) as sess:
                variables = tf1.global_variables()
                assert sorted(v.op.name for v in variables) == ['bn/beta', 'bn/gamma', 'bn/mean/EMA',
                                                                'bn/variance/EMA', 'conv/kernel']
                if name == writer:
                    for v in variables:
                        value = rng.uniform(0.5, 2.0, v.shape.as_list()).astype(np.float32)
                        sess.run(v.assign(value))
                    tf1.train.Saver().save(sess, path)
                else:
                    tf1.train.Saver().restore(sess, path)
                outputs[name] = sess.run(y)
    np.testing.assert_allclose(outputs['kalman_norm'], outputs['tensorpack'], rtol=1e-5, atol=1e-6)


# ----------------------------------------------------------------------------------------------
# C. the authors' schedule to the epoch, as the trainer sets it

def _lr_during_epochs(o, epochs):
    """The learning rate the trainer's own ScheduledHyperParamSetter sets for each epoch in
    ``epochs`` (tensorpack's loop: before_train at epoch_num 0, trigger_epoch after each epoch)."""
    ds = memory_dataset(n_train=16, n_test=4)
    with tf.Graph().as_default():
        config = trainer.make_config(cifar.TASK, o, cifar.TASK.data_from(ds, o), None)
        setter = next(cb for cb in config.callbacks if isinstance(cb, ScheduledHyperParamSetter))

    class Loop(object):
        epoch_num, global_step = 0, 0

    class Param(object):
        value = 0.01                     # the trainer's initial learning rate, overwritten at point 0

        def setup_graph(self):
            pass

        def set_value(self, v):
            self.value = v

        def get_value(self):
            return self.value

        readable_name = 'learning_rate'

    setter.param, loop = Param(), Loop()
    setter.trainer = loop
    setter.before_train()
    lrs = {}
    for epoch in range(1, max(epochs) + 1):
        if epoch in epochs:
            lrs[epoch] = setter.param.value
        loop.epoch_num = epoch
        setter.trigger_epoch()
    return lrs


def test_paper_schedule_is_the_authors_to_the_epoch():
    o = cifar.parse_options(['--schedule', 'paper', '--epochs', '400', '--num-proc', '0', '--total-batch', '8',
                             '--batch', '2', '--logdir', 'unused'])
    lrs = _lr_during_epochs(o, [1, 2, 82, 83, 123, 124, 300, 301])
    expected = {1: 0.01, 2: 0.1, 82: 0.1, 83: 0.01, 123: 0.01, 124: 0.001, 300: 0.001, 301: 0.0002}
    assert lrs == pytest.approx(expected)


# ----------------------------------------------------------------------------------------------
# --seed seeds the weights, and the run's identity names the conventions

def _initial_kernel(seed, tmp_path):
    o = cifar.parse_options(TINY + ['--norm', 'bn', '--seed', str(seed), '--lr', '1e-12',
                                    '--logdir', str(tmp_path)])
    ds = memory_dataset()
    line, code = trainer.train(cifar.TASK, o, cifar.TASK.data_from(ds, o), session_creator=no_grappler_session())
    assert code == 0, line
    return tf.train.load_variable(os.path.join(str(tmp_path), 'model-2'), 'conv0/W')


def test_seed_fixes_the_initial_weights(tmp_path):
    a = _initial_kernel(1, tmp_path / 'a')
    b = _initial_kernel(1, tmp_path / 'b')
    c = _initial_kernel(2, tmp_path / 'c')
    np.testing.assert_array_equal(a, b)
    assert not np.allclose(a, c)


def test_identity_names_the_conventions():
    o = cifar.parse_options(['--num-proc', '0', '--logdir', 'unused'])
    assert o['identity']['conventions'] == trainer.CONVENTIONS == 2


# ----------------------------------------------------------------------------------------------
# what the BN convention does to a recorded accuracy: a checkpoint evaluated under either one

def test_evaluate_checkpoint_converts_bn_variance_exactly(tmp_path):
    import importlib.util
    from test_cifar_trainer import write_cifar10
    spec = importlib.util.spec_from_file_location(
        'evaluate_checkpoint', os.path.join(os.path.dirname(__file__), '..', 'scripts', 'evaluate_checkpoint.py'))
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    data = write_cifar10(tmp_path / 'data', n=8)
    logdir = str(tmp_path / 'run')
    o = cifar.parse_options(TINY + ['--norm', 'bn', '--data', data, '--logdir', logdir, '--epochs', '2'])
    line, code = trainer.train(cifar.TASK, o, cifar.TASK.load_data(o), session_creator=no_grappler_session())
    assert code == 0, line
    result = script.evaluate(script.build_parser().parse_args([logdir, '--variance-ema', 'unbiased', 'biased']))
    assert result['saved_convention'] == 'unbiased'
    # ResNet-8 on 32x32: its smallest statistic is a group of 2 on the last stage's 8x8
    assert result['min_values_per_statistic'] == 2 * 8 * 8
    with open(os.path.join(logdir, 'stats.json')) as f:
        moving_error = __import__('json').load(f)[-1]['val-error-moving']
    assert result['accuracy']['unbiased'] == pytest.approx(100 * (1 - moving_error))
    # the evaluation reads the rescaled EMA: a 2-D layer-free check of the factor itself
    assert script.run_convention({'identity': {'conventions': 2}}) == 'unbiased'
    assert script.run_convention({'identity': {}}) == 'biased'
    with pytest.raises(SystemExit):
        script.main([str(tmp_path), '--variance-ema', 'biased'])
    table = script.markdown([result], ('unbiased', 'biased'))
    assert '| %s | %s | unbiased | %.2f | %.2f | %+.2f |' % (
        logdir, os.path.basename(result['checkpoint']), result['accuracy']['unbiased'], result['accuracy']['biased'],
        result['accuracy']['unbiased'] - result['accuracy']['biased']) in table
