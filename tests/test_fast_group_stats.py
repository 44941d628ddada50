"""The group statistics of ``Layout.group_moments`` (written-out gradient) against the derived ones.

``group_moments`` computes the per-group mean and variance with a hand-written gradient, for
speed (scripts/benchmark_speed.py).  Here it must give the values and gradients of
``tf.nn.moments`` on the grouped view, of a float64 NumPy reference and of central finite
differences, in every layout and grouping, and the layers built on it (BN, BKN) must train
exactly as before: outputs and gradients equal to those with the reference statistics.
"""
import kalman_norm as kn  # noqa: F401,I001  (must be imported before tensorflow / tensorpack)
from kalman_norm.layers import BatchKalmanNorm, MicroBatchNorm
from kalman_norm.layers._common import Layout

import numpy as np
import pytest
import tensorflow as tf
from tensorpack.tfutils.tower import TowerContext

from conftest import session_config

tf1 = tf.compat.v1
_CONFIG = session_config()
N, C, HW = 8, 3, 4


def reference_group_moments(layout, x, group_size):
    """What group_moments computed before: tf.nn.moments on the grouped view."""
    grouped, axes = layout.group(x, group_size)
    mean, var = tf.nn.moments(grouped, axes=axes)
    return grouped, mean, var


def shape_of(kind, n=N):
    return {'NHWC': (n, HW, HW + 1, C), 'NCHW': (n, C, HW, HW + 1), '2D': (n, C)}[kind]


def numpy_moments(x, kind, group_size):
    """float64 per-group, per-channel mean and biased variance [G, C]."""
    x = np.asarray(x, np.float64)
    if kind == 'NHWC':
        x = x.transpose(0, 3, 1, 2)
    g = x.shape[0] if group_size is None else group_size
    x = x.reshape((x.shape[0] // g, g, C, -1)).transpose(0, 2, 1, 3).reshape(x.shape[0] // g, C, -1)
    return x.mean(-1), x.var(-1)


class MomentsGraph(object):
    """mean, var and d/dx of L = sum(mean * A + var * B) (random A, B), from the library's
    group_moments and from the reference, in one graph; call it with an x value."""

    def __init__(self, shape, dtype, kind, group_size, dynamic_batch=False):
        rng = np.random.RandomState(7)
        self.graph = tf.Graph()
        with self.graph.as_default():
            self.x = tf1.placeholder(dtype, [None] + list(shape[1:]) if dynamic_batch else shape)
            layout = Layout(self.x, 'NCHW' if kind == 'NCHW' else 'NHWC')
            groups = 1 if group_size is None else shape[0] // group_size
            a = tf.constant(rng.normal(size=(groups, C)).astype(dtype))
            b = tf.constant(rng.normal(size=(groups, C)).astype(dtype))
            self.fetches = {}
            for name, fn in (('fast', Layout.group_moments), ('ref', reference_group_moments)):
                _, mean, var = fn(layout, self.x, group_size)
                loss = tf.reduce_sum(mean * a) + tf.reduce_sum(var * b)
                self.fetches[name] = [mean, var] + tf.gradients(loss, [self.x]) + [loss]
            self.sess = tf1.Session(graph=self.graph, config=_CONFIG)

    def __call__(self, x_value, which='fast'):
        return self.sess.run(self.fetches[which], {self.x: x_value})

    def both(self, x_value):
        out = self.sess.run(self.fetches, {self.x: x_value})
        return out['fast'], out['ref']


def make_x(kind, seed=0, dtype=np.float32, n=N):
    rng = np.random.RandomState(seed)
    return (rng.normal(size=shape_of(kind, n)) * 1.7 + 0.6).astype(dtype)


@pytest.mark.parametrize('kind', ['NHWC', 'NCHW', '2D'])
@pytest.mark.parametrize('group_size', [1, 2, 4, None])
def test_values_and_gradients_equal_tf_nn_moments(kind, group_size):
    if kind == '2D' and group_size == 1:
        group_size = 2          # a 2-D group of one has zero variance everywhere: nothing to compare
    x = make_x(kind)
    fast, ref = MomentsGraph(x.shape, x.dtype, kind, group_size).both(x)
    np_mean, np_var = numpy_moments(x, kind, group_size)
    assert fast[0].shape == fast[1].shape == np_mean.shape
    np.testing.assert_allclose(fast[0], np_mean, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(fast[1], np_var, rtol=1e-5, atol=1e-6)
    for got, want in zip(fast[:3], ref[:3]):
        assert got.shape == want.shape
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def test_dynamic_batch_and_one_group():
    """An unknown batch size (group_size=None counts the batch at run time) and groups of 2."""
    x = make_x('NHWC', seed=3)
    for group_size in (None, 2):
        fast, ref = MomentsGraph(x.shape, x.dtype, 'NHWC', group_size, dynamic_batch=True).both(x)
        for got, want in zip(fast[:3], ref[:3]):
            np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def test_gradient_against_finite_differences_float64():
    """The written-out gradient is the derivative: central differences in float64."""
    x = make_x('NHWC', seed=5, dtype=np.float64, n=4)
    moments = MomentsGraph(x.shape, x.dtype, 'NHWC', 2)
    _, _, grad, _ = moments(x)
    h = 1e-6
    rng = np.random.RandomState(0)
    for index in [tuple(rng.randint(0, s) for s in x.shape) for _ in range(12)]:
        up, down = x.copy(), x.copy()
        up[index] += h
        down[index] -= h
        numeric = (moments(up)[3] - moments(down)[3]) / (2 * h)
        assert abs(grad[index] - numeric) < 1e-6 * max(1.0, abs(numeric)), (index, grad[index], numeric)


def test_only_the_mean_or_only_the_variance_used():
    """A loss on one statistic alone: the other one's gradient is absent, not an error."""
    x = make_x('NHWC', seed=2)
    graph = tf.Graph()
    with graph.as_default(), tf1.Session(graph=graph, config=_CONFIG) as sess:
        t = tf.constant(x)
        layout = Layout(t, 'NHWC')
        _, mean, var = layout.group_moments(t, 2)
        _, rmean, rvar = reference_group_moments(layout, t, 2)
        grads = tf.gradients(tf.reduce_sum(mean ** 2), [t]) + tf.gradients(tf.reduce_sum(var ** 2), [t])
        refs = tf.gradients(tf.reduce_sum(rmean ** 2), [t]) + tf.gradients(tf.reduce_sum(rvar ** 2), [t])
        for got, want in zip(sess.run(grads), sess.run(refs)):
            np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def layer_outputs_and_gradients(layer, kind, monkeypatch=None, reference=False):
    """Output and gradients (x, gamma, beta, prior) of one training-mode layer, fixed variables."""
    if reference:
        monkeypatch.setattr(Layout, 'group_moments', reference_group_moments)
    rng = np.random.RandomState(11)
    x_value = make_x(kind, seed=4)
    graph = tf.Graph()
    with graph.as_default(), tf1.Session(graph=graph, config=_CONFIG) as sess:
        x = tf.constant(x_value)
        fmt = 'NCHW' if kind == 'NCHW' else 'NHWC'
        prior_mean = tf.constant(rng.normal(0.3, 0.5, (N // 2, C)).astype(np.float32))
        prior_var = tf.constant(rng.uniform(1.0, 4.0, (N // 2, C)).astype(np.float32))
        with TowerContext('', is_training=True):
            if layer == 'bn':
                out = MicroBatchNorm('norm', x, group_size=2, data_format=fmt)
                wrt = [x]
            else:
                out = BatchKalmanNorm('norm', x, prior=(prior_mean, prior_var), group_size=2,
                                      gain=0.3, data_format=fmt)
                wrt = [x, prior_mean, prior_var]
        projection = tf.constant(rng.normal(size=x_value.shape).astype(np.float32))
        variables = tf1.trainable_variables()
        grads = tf.gradients(tf.reduce_sum(out * projection), wrt + variables)
        sess.run(tf1.global_variables_initializer())
        for v in variables:   # non-trivial gamma, beta, noise
            sess.run(v.assign(rng.uniform(0.5, 1.5, v.shape.as_list()).astype(np.float32)))
        return sess.run([out] + grads)


@pytest.mark.parametrize('layer', ['bn', 'bkn'])
@pytest.mark.parametrize('kind', ['NHWC', 'NCHW', '2D'])
def test_layers_train_as_with_the_reference_statistics(layer, kind, monkeypatch):
    fast = layer_outputs_and_gradients(layer, kind)
    ref = layer_outputs_and_gradients(layer, kind, monkeypatch, reference=True)
    assert len(fast) == len(ref) >= 4
    for got, want in zip(fast, ref):
        assert got.shape == want.shape
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)
