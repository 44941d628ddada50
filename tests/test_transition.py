"""kalman_norm.transition: the prediction step of KN (Eq. 7, first and third lines).

The reference is always the real thing: Gaussian inputs drawn with NumPy, pushed through
TensorFlow's own conv / pooling ops, and their empirical moments.  Tolerances are a few
standard errors of the empirical moments, measured from the samples themselves (samples are
independent, positions within a sample are not, so the standard error is taken over samples).
"""
import kalman_norm  # noqa: F401  (must come before tensorflow)

import math

import numpy as np
import pytest
import tensorflow as tf

from kalman_norm import flow as F
from kalman_norm.estimate import Estimate, rectified_gaussian_moments, set_estimate
from kalman_norm.transition import (METHODS, avg_pool_estimate, conv_estimate, dense_estimate,
                                    global_avg_pool_estimate, tap_coverage)
from tensorpack.tfutils.tower import TowerContext


def run_graph(build, seed=0):
    """Build ``build()`` in a fresh graph and return its evaluated result."""
    g = tf.Graph()
    with g.as_default():
        tf.compat.v1.set_random_seed(seed)
        fetches = build()
        with tf.compat.v1.Session(graph=g) as sess:
            sess.run(tf.compat.v1.global_variables_initializer())
            return sess.run(fetches)


def gaussian_groups(rng, means, variances, n, hw, relu):
    """x [G*n, H, W, C]: group b's samples are N(means[b], variances[b]) i.i.d. per pixel/channel."""
    means, variances = np.asarray(means), np.asarray(variances)
    g, c = means.shape
    x = rng.standard_normal((g, n) + tuple(hw) + (c,))
    bshape = (g, 1) + (1,) * len(hw) + (c,)
    x = means.reshape(bshape) + np.sqrt(variances).reshape(bshape) * x
    if relu:
        x = np.maximum(x, 0.)
    return x.reshape((g * n,) + tuple(hw) + (c,)).astype(np.float32)


def empirical_group_moments(y, groups):
    """Per-group, per-channel mean/var of y [G*n, ..., C] over (samples, positions), and their
    standard errors computed from the per-sample averages (samples are independent)."""
    y = y.astype(np.float64).reshape(groups, -1, int(np.prod(y.shape[1:-1])), y.shape[-1])
    n = y.shape[1]
    mean = y.mean(axis=(1, 2))
    per_sample = y.mean(axis=2)                                       # [G, n, C]
    sq = ((y - mean[:, None, None, :]) ** 2).mean(axis=2)             # [G, n, C]
    var = sq.mean(axis=1)
    return mean, var, per_sample.std(axis=1) / math.sqrt(n), sq.std(axis=1) / math.sqrt(n)


def assert_moments_match(pred_mean, pred_var, y, groups, n_se=5.0, rtol=0.03):
    mean, var, se_mean, se_var = empirical_group_moments(y, groups)
    scale = np.sqrt(var)
    # statistically consistent (a few standard errors) ...
    assert np.all(np.abs(pred_mean - mean) <= n_se * se_mean + 1e-4 * scale), (pred_mean, mean, se_mean)
    assert np.all(np.abs(pred_var - var) <= n_se * se_var + 1e-4 * var), (pred_var, var, se_var)
    # ... and tight in absolute terms
    assert np.all(np.abs(pred_mean - mean) <= rtol * scale), (pred_mean, mean)
    assert np.all(np.abs(pred_var - var) <= rtol * var), (pred_var, var)


# ----------------------------------------------------------------------------------------------
# 1. 'analytic' equals the empirical moments of the real next-layer features
# ----------------------------------------------------------------------------------------------

CONV_CASES = [
    # (in_hw, kernel_hw, stride, padding, relu, bias)
    pytest.param((8, 8), 3, 1, 'SAME', False, False, id='3x3-same-s1'),
    pytest.param((8, 8), 3, 1, 'SAME', True, False, id='3x3-same-s1-relu'),
    pytest.param((8, 8), 3, 2, 'SAME', True, False, id='3x3-same-s2-even'),
    pytest.param((7, 7), 3, 2, 'SAME', False, False, id='3x3-same-s2-odd'),
    pytest.param((7, 9), 3, 2, 'SAME', True, False, id='3x3-same-s2-odd-nonsquare'),
    pytest.param((7, 7), 1, 2, 'SAME', True, False, id='1x1-s2'),
    pytest.param((9, 9), 5, 1, 'VALID', True, False, id='5x5-valid'),
    pytest.param((4, 4), 3, 1, 'SAME', False, False, id='3x3-on-4x4-border'),
    pytest.param((4, 4), 3, 1, 'SAME', True, False, id='3x3-on-4x4-border-relu'),
    pytest.param((8, 8), 3, 1, 'SAME', True, True, id='3x3-same-bias'),
]


@pytest.mark.parametrize('in_hw, k, stride, padding, relu, use_bias', CONV_CASES)
def test_analytic_conv_matches_empirical_moments(in_hw, k, stride, padding, relu, use_bias):
    rng = np.random.default_rng(1234)
    groups, cin, cout, n = 2, 3, 4, 3000
    # two groups with clearly different input moments (means of both signs, so that the
    # border "spread" term and the rectification matter)
    m = np.array([[0.8, -0.5, 1.5], [-1.0, 0.3, 0.1]], np.float32)
    v = np.array([[0.5, 2.0, 1.0], [1.5, 0.2, 3.0]], np.float32)
    kernel = rng.standard_normal((k, k, cin, cout)).astype(np.float32) / k
    bias = rng.standard_normal(cout).astype(np.float32) if use_bias else None
    x = gaussian_groups(rng, m, v, n, in_hw, relu)

    def build():
        y = tf.nn.conv2d(tf.constant(x), tf.constant(kernel), strides=[1, stride, stride, 1],
                         padding=padding)
        if use_bias:
            y = tf.nn.bias_add(y, tf.constant(bias))
        est = conv_estimate(Estimate(m, v, rectified=relu), tf.constant(kernel), in_hw, stride, padding,
                            bias=None if bias is None else tf.constant(bias), method='analytic')
        return y, est.mean, est.var

    y, pm, pv = run_graph(build)
    assert pm.shape == pv.shape == (groups, cout)
    assert_moments_match(pm, pv, y, groups)


def test_border_spread_term_is_needed_on_small_inputs():
    """On a 4x4 input with a 3x3 SAME conv, E[y_p] differs between border and interior positions;
    without that spread the predicted variance would be visibly too small."""
    rng = np.random.default_rng(7)
    m = np.array([[2.0, 1.5]], np.float32)
    v = np.array([[0.1, 0.1]], np.float32)
    kernel = np.abs(rng.standard_normal((3, 3, 2, 3))).astype(np.float32)
    x = gaussian_groups(rng, m, v, 4000, (4, 4), relu=False)

    def build():
        y = tf.nn.conv2d(tf.constant(x), tf.constant(kernel), strides=1, padding='SAME')
        est = conv_estimate(Estimate(m, v), tf.constant(kernel), (4, 4), 1, 'SAME')
        return y, est.mean, est.var

    y, pm, pv = run_graph(build)
    _, emp_var, _, _ = empirical_group_moments(y, 1)
    f, _ = tap_coverage((4, 4), 3, 1, 'SAME')
    no_spread = v @ np.tensordot(f, kernel.reshape(9, 2, 3) ** 2, 1)
    assert np.all(no_spread < 0.5 * emp_var)          # the spread dominates here
    assert_moments_match(pm, pv, y, 1)


def test_analytic_conv_gradients_reach_kernel_and_estimate():
    def build():
        kernel = tf.constant(np.random.default_rng(0).standard_normal((3, 3, 2, 3)), tf.float32)
        m = tf.constant([[0.3, -0.2]])
        v = tf.constant([[1.0, 0.5]])
        est = conv_estimate(Estimate(m, v, rectified=True), kernel, (5, 5), 2, 'SAME')
        loss = tf.reduce_sum(est.mean) + tf.reduce_sum(est.var)
        return tf.gradients(loss, [kernel, m, v])

    grads = run_graph(build)
    for gr in grads:
        assert np.all(np.isfinite(gr)) and np.any(gr != 0)


# ----------------------------------------------------------------------------------------------
# 2. 'mc' converges to 'analytic'
# ----------------------------------------------------------------------------------------------

def test_mc_converges_to_analytic():
    rng = np.random.default_rng(3)
    m = np.array([[0.5, -0.3, 1.0], [-0.2, 0.8, 0.0]], np.float32)
    v = np.array([[1.0, 0.5, 2.0], [0.3, 1.2, 0.7]], np.float32)
    kernel = (rng.standard_normal((3, 3, 3, 4)) / 3).astype(np.float32)
    seeds, sample_counts = 8, (1, 16, 256)

    def build():
        est = Estimate(m, v, rectified=True)
        k = tf.constant(kernel)
        ana = conv_estimate(est, k, (6, 6), 1, 'SAME', method='analytic')
        mcs = {s: [conv_estimate(est, k, (6, 6), 1, 'SAME', method='mc', num_samples=s)
                   for _ in range(seeds)] for s in sample_counts}
        return (ana.mean, ana.var), {s: [(e.mean, e.var) for e in es] for s, es in mcs.items()}

    (am, av), mcs = run_graph(build, seed=11)

    def error(mean, var):
        return float(np.mean(np.abs(mean - am) / np.sqrt(av)) + np.mean(np.abs(var - av) / av))

    errs = {s: np.mean([error(mm, mv) for mm, mv in runs]) for s, runs in mcs.items()}
    assert errs[1] > errs[16] > errs[256], errs
    # roughly the 1/sqrt(samples) law: 16x more samples, about 4x less error
    assert errs[256] < 0.5 * errs[16] < 0.25 * errs[1], errs
    assert errs[256] < 0.05, errs


@pytest.mark.parametrize('in_hw, padding, expected_ratio', [
    (8, 'SAME', (0.93, 1.01)),       # 64 output positions: a few per cent at most (seen: 1-4 %)
    (4, 'VALID', (0.50, 0.95)),      # 2x2 output: the mean of 4 correlated values (seen: 14-38 %)
    (3, 'VALID', (0.0, 0.0)),        # 1x1 output: one value has no spatial variance at all
])
def test_one_sample_mc_variance_is_lower_than_the_analytic_limit(in_hw, padding, expected_ratio):
    """'analytic' is the many-samples limit of 'mc', not the expectation of the one-sample
    estimate: averaged over many groups, the one-sample MC mean is unbiased, but its variance
    (the spatial variance of one sampled image) is lower by the variance of that image's spatial
    mean, which grows as the output shrinks."""
    groups = 4000
    rng = np.random.default_rng(5)
    m = np.array([0.5, -0.3, 1.0], np.float32)
    v = np.array([1.0, 0.5, 2.0], np.float32)
    kernel = (rng.standard_normal((3, 3, 3, 4)) / 3).astype(np.float32)

    def build():
        est = Estimate(np.tile(m, (groups, 1)), np.tile(v, (groups, 1)), rectified=True)
        ana = conv_estimate(est, tf.constant(kernel), (in_hw, in_hw), 1, padding, method='analytic')
        mc = conv_estimate(est, tf.constant(kernel), (in_hw, in_hw), 1, padding, method='mc', num_samples=1)
        return ana.mean[0], ana.var[0], mc.mean, mc.var

    am, av, mm, mv = run_graph(build, seed=12)
    # the mean: unbiased, within 5 standard errors of the group-to-group spread
    se = mm.std(0) / math.sqrt(groups)
    assert (np.abs(mm.mean(0) - am) < 5 * se + 1e-6).all(), (mm.mean(0), am, se)
    ratio = mv.mean(0) / av
    low, high = expected_ratio
    assert ((ratio >= low - 1e-6) & (ratio <= high + 1e-6)).all(), ratio


def test_mc_dense_converges_to_analytic():
    rng = np.random.default_rng(4)
    m = np.array([[0.5, -0.3, 1.0]], np.float32)
    v = np.array([[1.0, 0.5, 2.0]], np.float32)
    kernel = rng.standard_normal((3, 5)).astype(np.float32)
    bias = rng.standard_normal(5).astype(np.float32)

    def build():
        est = Estimate(m, v, rectified=True)
        ana = dense_estimate(est, tf.constant(kernel), tf.constant(bias))
        mc = dense_estimate(est, tf.constant(kernel), tf.constant(bias), method='mc', num_samples=40000)
        return ana.mean, ana.var, mc.mean, mc.var

    am, av, mm, mv = run_graph(build, seed=5)
    np.testing.assert_allclose(mm, am, atol=0.03 * np.sqrt(av).max())
    np.testing.assert_allclose(mv, av, rtol=0.03)


# ----------------------------------------------------------------------------------------------
# 3. rectified_gaussian_moments
# ----------------------------------------------------------------------------------------------

def _rectified_quadrature(mean, var):
    s = math.sqrt(var)
    z = np.linspace(-12.0, 12.0, 400001)
    pdf = np.exp(-0.5 * z * z) / math.sqrt(2 * math.pi)
    r = np.maximum(mean + s * z, 0.0)
    dz = z[1] - z[0]
    m1 = np.sum(r * pdf) * dz
    m2 = np.sum(r * r * pdf) * dz
    return m1, m2 - m1 * m1


RECT_CASES = [(0.0, 1.0), (1.0, 1.0), (-1.0, 1.0), (0.5, 0.25), (-2.0, 0.5), (3.0, 4.0), (-0.3, 9.0)]


def test_rectified_gaussian_moments_known_values():
    def build():
        return rectified_gaussian_moments(tf.constant([0.0, 0.0, 8.0]), tf.constant([1.0, 4.0, 1.0]))

    mean, var = run_graph(build)
    np.testing.assert_allclose(mean[0], 1 / math.sqrt(2 * math.pi), rtol=1e-6)
    np.testing.assert_allclose(var[0], 0.5 - 1 / (2 * math.pi), rtol=1e-5)
    # scaling: relu(2z) = 2 relu(z)
    np.testing.assert_allclose(mean[1], 2 / math.sqrt(2 * math.pi), rtol=1e-6)
    np.testing.assert_allclose(var[1], 4 * (0.5 - 1 / (2 * math.pi)), rtol=1e-5)
    # far from the kink the ReLU is the identity (var = E[r^2] - E[r]^2 loses ~ulp(64) to cancellation)
    np.testing.assert_allclose([mean[2], var[2]], [8.0, 1.0], rtol=1e-4)


def test_rectified_gaussian_moments_vs_quadrature_and_monte_carlo():
    means = np.array([c[0] for c in RECT_CASES], np.float32)
    variances = np.array([c[1] for c in RECT_CASES], np.float32)
    mean, var = run_graph(lambda: rectified_gaussian_moments(tf.constant(means), tf.constant(variances)))
    rng = np.random.default_rng(0)
    n = 1_000_000
    for i, (mu, v) in enumerate(RECT_CASES):
        qm, qv = _rectified_quadrature(mu, v)
        np.testing.assert_allclose(mean[i], qm, rtol=2e-5, atol=1e-6)
        np.testing.assert_allclose(var[i], qv, rtol=2e-5, atol=1e-6)
        r = np.maximum(mu + math.sqrt(v) * rng.standard_normal(n), 0.0)
        se_m = r.std() / math.sqrt(n)
        se_v = ((r - r.mean()) ** 2).std() / math.sqrt(n)
        assert abs(mean[i] - r.mean()) < 5 * se_m + 1e-6
        assert abs(var[i] - r.var()) < 5 * se_v + 1e-6


def test_rectified_gaussian_moments_zero_variance_is_finite():
    def build():
        means = tf.constant([0.0, 0.7, -0.7, 0.0])
        variances = tf.constant([0.0, 0.0, 0.0, -1e-9])     # tiny negative variance from round-off
        mean, var = rectified_gaussian_moments(means, variances)
        return mean, var, tf.gradients(tf.reduce_sum(mean) + tf.reduce_sum(var), [means, variances])

    mean, var, grads = run_graph(build)
    assert np.all(np.isfinite(mean)) and np.all(np.isfinite(var)) and np.all(var >= 0)
    np.testing.assert_allclose(mean, [0.0, 0.7, 0.0, 0.0], atol=1e-5)
    np.testing.assert_allclose(var, [0.0, 0.0, 0.0, 0.0], atol=1e-6)
    for gr in grads:
        assert np.all(np.isfinite(gr))


# ----------------------------------------------------------------------------------------------
# 4. tap_coverage
# ----------------------------------------------------------------------------------------------

def _brute_coverage(in_hw, k, stride, padding):
    """Tap validity per output position from TensorFlow's own conv: convolve an all-ones image
    with one-hot kernels, one per tap."""
    kh, kw = k if isinstance(k, tuple) else (k, k)
    taps = kh * kw
    kernel = np.zeros((kh, kw, 1, taps), np.float32)
    for t in range(taps):
        kernel[t // kw, t % kw, 0, t] = 1.0

    def build():
        ones = tf.ones([1, in_hw[0], in_hw[1], 1])
        return tf.nn.conv2d(ones, tf.constant(kernel), strides=stride, padding=padding)

    valid = run_graph(build).reshape(-1, taps)          # [positions, T]
    return valid.mean(0), valid.T @ valid / valid.shape[0]


def test_tap_coverage_hand_checked():
    f, pair = tap_coverage((4, 4), 3, 1, 'SAME')
    f = f.reshape(3, 3)
    np.testing.assert_allclose(f[[0, 0, 2, 2], [0, 2, 0, 2]], 9 / 16)   # corners
    np.testing.assert_allclose(f[[0, 1, 1, 2], [1, 0, 2, 1]], 12 / 16)  # edges
    assert f[1, 1] == 1.0                                               # centre
    # taps (0,0) and (2,2) are both valid only where 1 <= oy, ox <= 2: 4 of 16 positions
    assert pair[0, 8] == pytest.approx(4 / 16)
    assert pair[0, 0] == pytest.approx(9 / 16)
    np.testing.assert_allclose(pair, pair.T)

    # stride 2 on an even input: TensorFlow pads only at the end (pad_before = 0)
    f, _ = tap_coverage((4, 4), 3, 2, 'SAME')
    np.testing.assert_allclose(f.reshape(3, 3), np.outer([1, 1, 0.5], [1, 1, 0.5]))

    # VALID: every tap is valid everywhere
    for hw, k, s in [((5, 5), 3, 1), ((9, 7), 3, 2), ((6, 6), 1, 2), ((7, 7), 5, 1)]:
        f, pair = tap_coverage(hw, k, s, 'VALID')
        assert np.all(f == 1.0) and np.all(pair == 1.0)
    # a 1x1 kernel is always valid
    f, pair = tap_coverage((7, 7), 1, 2, 'SAME')
    assert np.all(f == 1.0) and np.all(pair == 1.0)


@pytest.mark.parametrize('in_hw, k, stride, padding', [
    ((4, 4), 3, 1, 'SAME'), ((7, 7), 3, 2, 'SAME'), ((8, 8), 3, 2, 'SAME'), ((5, 6), (3, 5), (2, 1), 'SAME'),
    ((9, 9), 5, 1, 'SAME'), ((9, 9), 5, 2, 'VALID'), ((3, 3), 5, 1, 'SAME'), ((6, 6), 4, 3, 'SAME'),
])
def test_tap_coverage_matches_tensorflow_padding(in_hw, k, stride, padding):
    f, pair = tap_coverage(in_hw, k, stride, padding)
    bf, bpair = _brute_coverage(in_hw, k, stride, padding)
    np.testing.assert_allclose(f, bf, atol=1e-12)
    np.testing.assert_allclose(pair, bpair, atol=1e-12)


# ----------------------------------------------------------------------------------------------
# 5. dense, average pooling, global average pooling
# ----------------------------------------------------------------------------------------------

def test_dense_estimate_matches_empirical():
    rng = np.random.default_rng(21)
    m = np.array([[0.5, -1.0, 0.2], [1.0, 0.0, -0.4]], np.float32)
    v = np.array([[1.0, 0.5, 2.0], [0.3, 1.5, 0.8]], np.float32)
    kernel = rng.standard_normal((3, 4)).astype(np.float32)
    bias = rng.standard_normal(4).astype(np.float32)
    for relu in (False, True):
        x = gaussian_groups(rng, m, v, 200000, (), relu)      # [G*n, C]

        def build():
            y = tf.matmul(tf.constant(x), tf.constant(kernel)) + bias
            est = dense_estimate(Estimate(m, v, rectified=relu), tf.constant(kernel), tf.constant(bias))
            return y, est.mean, est.var

        y, pm, pv = run_graph(build)
        assert_moments_match(pm, pv, y, 2, rtol=0.02)


@pytest.mark.parametrize('in_hw, pool, stride, padding', [
    ((8, 8), 2, 2, 'VALID'), ((7, 7), 2, 2, 'VALID'), ((5, 5), 2, 2, 'SAME'), ((4, 4), 3, 1, 'SAME'),
    ((6, 5), 3, 2, 'SAME'),
])
def test_avg_pool_estimate_matches_empirical(in_hw, pool, stride, padding):
    rng = np.random.default_rng(5)
    m = np.array([[0.5, -1.0], [1.0, 0.3]], np.float32)
    v = np.array([[1.0, 0.5], [0.3, 2.0]], np.float32)
    x = gaussian_groups(rng, m, v, 4000, in_hw, relu=True)

    def build():
        y = tf.nn.avg_pool2d(tf.constant(x), pool, stride, padding)
        est = avg_pool_estimate(Estimate(m, v, rectified=True), in_hw, pool, stride, padding)
        return y, est.mean, est.var

    y, pm, pv = run_graph(build)
    assert_moments_match(pm, pv, y, 2)


def test_avg_pool_estimate_exact_factors():
    m = np.array([[0.5, -1.0]], np.float32)
    v = np.array([[1.0, 0.5]], np.float32)

    def build():
        est = Estimate(m, v)
        return [(e.mean, e.var) for e in (avg_pool_estimate(est, (8, 8), 2, 2, 'VALID'),
                                          avg_pool_estimate(est, (5, 5), 2, 2, 'SAME'),
                                          global_avg_pool_estimate(est, (4, 6)))]

    (m1, v1), (m2, v2), (m3, v3) = run_graph(build)
    for mm in (m1, m2, m3):
        np.testing.assert_allclose(mm, m)
    np.testing.assert_allclose(v1, v / 4, rtol=1e-6)
    # 5x5, 2x2 windows, stride 2, SAME: per axis windows of 2, 2, 1 valid inputs
    np.testing.assert_allclose(v2, v * np.mean(1 / np.outer([2, 2, 1], [2, 2, 1])), rtol=1e-6)
    np.testing.assert_allclose(v2, v * 4 / 9, rtol=1e-6)
    np.testing.assert_allclose(v3, v / 24, rtol=1e-6)


def test_global_avg_pool_estimate_matches_empirical():
    rng = np.random.default_rng(6)
    m = np.array([[0.5, -1.0, 0.1], [1.0, 0.3, -0.2]], np.float32)
    v = np.array([[1.0, 0.5, 2.0], [0.3, 2.0, 1.0]], np.float32)
    x = gaussian_groups(rng, m, v, 20000, (4, 6), relu=True)

    def build():
        y = tf.reduce_mean(tf.constant(x), axis=[1, 2])
        est = global_avg_pool_estimate(Estimate(m, v, rectified=True), (4, 6))
        return y, est.mean, est.var

    y, pm, pv = run_graph(build)
    assert_moments_match(pm, pv, y, 2)


# ----------------------------------------------------------------------------------------------
# 6. errors
# ----------------------------------------------------------------------------------------------

def test_unknown_spatial_dims_raise_clear_error():
    g = tf.Graph()
    with g.as_default():
        est = Estimate(tf.zeros([1, 3]), tf.ones([1, 3]))
        kernel = tf.ones([3, 3, 3, 4])
        for hw in [(None, 8), (8, None), None]:
            with pytest.raises(ValueError, match='static spatial shape'):
                conv_estimate(est, kernel, hw)
        with pytest.raises(ValueError, match='static spatial shape'):
            avg_pool_estimate(est, (None, None), 2, 2)
        with pytest.raises(ValueError, match='static spatial shape'):
            global_avg_pool_estimate(est, (4, None))


def test_flow_conv_with_unknown_spatial_dims_raises():
    g = tf.Graph()
    with g.as_default(), TowerContext('', is_training=True):
        x = tf.compat.v1.placeholder(tf.float32, [None, None, None, 3])
        set_estimate(x, Estimate(tf.zeros([1, 3]), tf.ones([1, 3])))
        with pytest.raises(ValueError, match='static spatial shape'):
            F.conv2d('conv', x, 4, 3)


def test_unknown_method_raises():
    assert set(METHODS) == {'analytic', 'mc'}
    g = tf.Graph()
    with g.as_default():
        est = Estimate(tf.zeros([1, 3]), tf.ones([1, 3]))
        with pytest.raises(ValueError, match="Unknown prior method 'sampled'"):
            conv_estimate(est, tf.ones([3, 3, 3, 4]), (8, 8), method='sampled')
        with pytest.raises(ValueError, match='Unknown prior method'):
            dense_estimate(est, tf.ones([3, 4]), method='exact')


def test_valid_conv_larger_than_input_raises():
    g = tf.Graph()
    with g.as_default():
        est = Estimate(tf.zeros([1, 3]), tf.ones([1, 3]))
        with pytest.raises(ValueError, match='smaller than the kernel'):
            conv_estimate(est, tf.ones([5, 5, 3, 4]), (3, 3), padding='VALID')
