"""The KN prior through max pooling (kalman_norm.transition.max_pool_estimate, flow.max_pool).

The reference is Monte-Carlo in NumPy: Gaussian feature maps (i.i.d. per pixel, as the prior
assumes), rectified where a ReLU lies in between, max-pooled with TensorFlow's conventions
(padded positions never win), and their empirical moments.  Tolerances: the mean within
5 standard errors + 0.5% of the std, the variance within 5 standard errors + 2% (standard errors
from the per-sample averages: samples are independent, positions within a sample are not).
"""
import kalman_norm  # noqa: F401  (must come before tensorflow)

import math

import numpy as np
import pytest
import tensorflow as tf
from scipy import integrate, stats

from kalman_norm import flow as F
from kalman_norm.estimate import Estimate, get_estimate, set_estimate
from kalman_norm.transition import max_of_normals_moments, max_pool_estimate

tf1 = tf.compat.v1

MEANS = np.array([[-2.0, -0.5, 0.0, 1.5], [0.7, 3.0, -1.0, 0.2]])       # [G=2, C=4]
VARS = np.array([[0.25, 1.0, 2.0, 4.0], [1.5, 0.5, 3.0, 0.01]])


def run(build, seed=0):
    g = tf.Graph()
    with g.as_default():
        tf1.set_random_seed(seed)
        fetches = build()
        with tf1.Session(graph=g) as sess:
            return sess.run(fetches)


def numpy_max_pool(x, pool, stride, padding):
    """x [N, H, W, C] → TensorFlow's max_pool2d (padding with -inf, TF's SAME split)."""
    n, h, w, c = x.shape
    pads = []
    for size in (h, w):
        if padding == 'SAME':
            out = -(-size // stride)
            total = max((out - 1) * stride + pool - size, 0)
            pads.append((total // 2, total - total // 2))
        else:
            pads.append((0, 0))
    x = np.pad(x, [(0, 0), pads[0], pads[1], (0, 0)], constant_values=-np.inf)
    win = np.lib.stride_tricks.sliding_window_view(x, (pool, pool), axis=(1, 2))
    return win[:, ::stride, ::stride].max(axis=(-2, -1))


def monte_carlo(hw, pool, stride, padding, rectified, samples=3000, seed=0):
    """Per group/channel mean, var of the pooled maps, and their standard errors."""
    rng = np.random.RandomState(seed)
    g, c = MEANS.shape
    z = MEANS[:, None, None, None, :] + np.sqrt(VARS)[:, None, None, None, :] * rng.randn(g, samples, hw[0], hw[1], c)
    if rectified:
        z = np.maximum(z, 0.)
    y = numpy_max_pool(z.reshape((g * samples,) + hw + (c,)), pool, stride, padding)
    y = y.reshape(g, samples, -1, c)
    mean = y.mean(axis=(1, 2))
    sq = ((y - mean[:, None, None, :]) ** 2).mean(axis=2)
    return (mean, sq.mean(axis=1), y.mean(axis=2).std(axis=1) / math.sqrt(samples),
            sq.std(axis=1) / math.sqrt(samples))


def predicted(hw, pool, stride, padding, rectified, method='analytic', num_samples=1):
    def build():
        est = Estimate(tf.constant(MEANS, tf.float32), tf.constant(VARS, tf.float32), rectified=rectified)
        out = max_pool_estimate(est, hw, pool, stride, padding, method=method, num_samples=num_samples)
        assert not out.rectified and out.mean.shape.as_list() == list(MEANS.shape)
        return out.mean, out.var
    return run(build)


def assert_close_to_mc(pred_mean, pred_var, mc, mean_rtol=0.005, var_rtol=0.02, n_se=5.0):
    mean, var, se_mean, se_var = mc
    std = np.sqrt(var)
    assert np.all(np.abs(pred_mean - mean) <= n_se * se_mean + mean_rtol * std + 1e-6), (pred_mean, mean)
    assert np.all(np.abs(pred_var - var) <= n_se * se_var + var_rtol * var + 1e-6), (pred_var, var)


# ------------------------------------------------------------------ the max of n standard normals

@pytest.mark.parametrize('n', [1, 2, 3, 4, 9, 49])
def test_max_of_normals_moments_against_quadrature(n):
    pdf = lambda x: n * stats.norm.pdf(x) * stats.norm.cdf(x) ** (n - 1)   # noqa: E731
    mean = integrate.quad(lambda x: x * pdf(x), -12, 12)[0]
    var = integrate.quad(lambda x: x * x * pdf(x), -12, 12)[0] - mean ** 2
    mu_n, var_n = max_of_normals_moments(n)
    assert mu_n == pytest.approx(mean, abs=1e-6)
    assert var_n == pytest.approx(var, abs=1e-6)


def test_max_of_two_normals_closed_form():
    # E max(Z1, Z2) = 1/√π, Var = 1 - 1/π
    mu, var = max_of_normals_moments(2)
    assert mu == pytest.approx(1 / math.sqrt(math.pi), abs=1e-7)
    assert var == pytest.approx(1 - 1 / math.pi, abs=1e-7)


# ------------------------------------------------------------------ analytic vs Monte-Carlo

CASES = [
    # (hw, pool, stride, padding, rectified)
    pytest.param((8, 8), 2, 2, 'VALID', False, id='2x2-s2-valid'),
    pytest.param((8, 8), 2, 2, 'VALID', True, id='2x2-s2-valid-relu'),
    pytest.param((9, 9), 3, 2, 'VALID', True, id='3x3-s2-valid-relu'),
    pytest.param((8, 8), 3, 2, 'SAME', True, id='3x3-s2-same-even-relu'),        # ResNet's stem pool
    pytest.param((7, 7), 3, 2, 'SAME', False, id='3x3-s2-same-odd'),
    pytest.param((6, 6), 3, 1, 'SAME', True, id='3x3-s1-same-relu'),             # Inception's pool branch
    pytest.param((6, 6), 3, 1, 'SAME', False, id='3x3-s1-same'),
    pytest.param((5, 5), 5, 1, 'VALID', True, id='5x5-global-relu'),
]


@pytest.mark.parametrize('hw,pool,stride,padding,rectified', CASES)
def test_analytic_matches_monte_carlo(hw, pool, stride, padding, rectified):
    mc = monte_carlo(hw, pool, stride, padding, rectified)
    assert_close_to_mc(*predicted(hw, pool, stride, padding, rectified), mc)


@pytest.mark.parametrize('hw,pool,stride,padding,rectified', [CASES[3], CASES[4]])
def test_mc_method_matches_monte_carlo(hw, pool, stride, padding, rectified):
    """The 'mc' prior (sampled in the graph, tf.nn.max_pool2d) agrees with NumPy's Monte-Carlo
    (both noisy: 400 maps per group in the graph, hence a looser bound)."""
    mc = monte_carlo(hw, pool, stride, padding, rectified)
    mean, var = predicted(hw, pool, stride, padding, rectified, method='mc', num_samples=400)
    assert_close_to_mc(mean, var, mc, mean_rtol=0.03, var_rtol=0.08)


def test_gradients_match_finite_differences():
    """The analytic prior (with ReLU, SAME borders: the interpolated tables) is differentiable
    in the input estimate; its gradient agrees with central differences."""
    means, variances = MEANS[:1, :3], VARS[:1, :3]

    def build():
        m = tf.constant(means, tf.float64)
        v = tf.constant(variances, tf.float64)

        def f(m, v):
            est = Estimate(tf.cast(m, tf.float32), tf.cast(v, tf.float32), rectified=True)
            out = max_pool_estimate(est, (8, 8), 3, 2, 'SAME')
            return tf.cast(tf.reduce_sum(out.mean * [1., 2., 3.]) + tf.reduce_sum(out.var * [3., 1., 2.]), tf.float64)
        y = f(m, v)
        return y, tf.gradients(y, [m, v]), m, v, f

    g = tf.Graph()
    with g.as_default():
        y, grads, m, v, f = build()
        eps = 1e-2
        with tf1.Session() as sess:
            analytic = sess.run(grads)
            for which, base in ((0, means), (1, variances)):
                numeric = np.zeros_like(base)
                for j in range(base.shape[1]):
                    d = np.zeros_like(base)
                    d[0, j] = eps
                    plus = sess.run(y, {(m, v)[which]: base + d})
                    minus = sess.run(y, {(m, v)[which]: base - d})
                    numeric[0, j] = (plus - minus) / (2 * eps)
                np.testing.assert_allclose(analytic[which], numeric, rtol=2e-2, atol=2e-3)


# ------------------------------------------------------------------ through the flow ops

def test_flow_max_pool_carries_the_estimate_and_concat_keeps_the_relu():
    def build():
        x = tf.zeros([2, 8, 8, 4])
        set_estimate(x, Estimate(MEANS, VARS))
        r = F.relu(x)
        both = F.concat([r, F.relu(x)])
        assert get_estimate(both).rectified and get_estimate(both).num_channels == 8
        y = F.max_pool(both, 3, strides=2, padding='SAME')
        assert y.shape.as_list() == [2, 4, 4, 8]
        est = get_estimate(y)
        assert est is not None
        mixed = F.concat([r, x])                          # not all rectified: moments materialised
        assert not get_estimate(mixed).rectified
        return est.mean, est.var

    mean, var = run(build)
    mc = monte_carlo((8, 8), 3, 2, 'SAME', True)
    assert_close_to_mc(mean[:, :4], var[:, :4], mc)
    np.testing.assert_allclose(mean[:, 4:], mean[:, :4], rtol=1e-6)


def test_flow_max_pool_nchw_same_estimate():
    def build():
        outs = []
        for fmt, shape in (('NHWC', [2, 7, 7, 4]), ('NCHW', [2, 4, 7, 7])):
            x = tf.zeros(shape)
            set_estimate(x, Estimate(MEANS, VARS, rectified=True))
            y = F.max_pool(x, 3, strides=2, padding='SAME', data_format=fmt)
            outs.append((get_estimate(y).mean, get_estimate(y).var))
        return outs

    (m1, v1), (m2, v2) = run(build)
    np.testing.assert_allclose(m1, m2)
    np.testing.assert_allclose(v1, v2)


def test_flow_max_pool_uses_the_specs_prior_method():
    def build():
        with kalman_norm.norm_scope('bkn', prior_method='mc', prior_samples=200):
            x = tf.zeros([2, 6, 6, 4])
            set_estimate(x, Estimate(MEANS, VARS, rectified=True))
            est = get_estimate(F.max_pool(x, 3, strides=1, padding='SAME'))
        ops = {op.type for op in tf1.get_default_graph().get_operations()}
        assert 'RandomStandardNormal' in ops and 'MaxPool' in ops
        return est.mean, est.var

    mean, var = run(build)
    assert_close_to_mc(mean, var, monte_carlo((6, 6), 3, 1, 'SAME', True), mean_rtol=0.04, var_rtol=0.1)


def test_flow_max_pool_without_estimate_is_plain_max_pool():
    def build():
        x = tf.constant(np.arange(32, dtype=np.float32).reshape(1, 4, 4, 2))
        y = F.max_pool(x, 2)
        assert get_estimate(y) is None
        return y
    np.testing.assert_array_equal(run(build)[0, :, :, 0], [[10, 14], [26, 30]])


# ------------------------------------------------------------------ bad input

@pytest.mark.parametrize('kwargs,match', [
    (dict(in_hw=(8, 8), pool=3, strides=2, padding='FULL'), 'padding'),
    (dict(in_hw=(8, 8), pool=3, strides=2, method='exact'), 'prior method'),
    (dict(in_hw=(2, 2), pool=3, strides=1, padding='VALID'), 'smaller than the kernel'),
    (dict(in_hw=(None, 8), pool=3, strides=1), 'static spatial shape'),
])
def test_bad_arguments_are_rejected(kwargs, match):
    with tf.Graph().as_default():
        est = Estimate(MEANS, VARS)
        with pytest.raises(ValueError, match=match):
            max_pool_estimate(est, **kwargs)
