"""Gradients of the normalization layers, and the Kalman update / prior flow of BKN and GKN.

Gradient checks: for a random projection loss L = sum(out * R), every trainable input of the
layer (x, gamma, beta, and for KN the prior, gain_logit and noise_rho) is compared with central
finite differences, coordinate by coordinate.  The layers compute in float32, so the inputs are
chosen exactly representable in float32, the step is a power of two (x ± h is exact), L is
summed in float64 from the fetched outputs, and the comparison is on the whole gradient vector
(relative to its norm) plus a per-coordinate bound, far above the float32 noise (~1e-5) and
far below any real error.
"""
import kalman_norm  # noqa: F401  (must come before tensorflow)

import numpy as np
import pytest
import tensorflow as tf
from tensorpack.tfutils.tower import TowerContext

from kalman_norm import flow as F
from kalman_norm.estimate import get_estimate
from kalman_norm.layers import (kn_diagnostics, BatchKalmanNorm, BiasOnly, GroupKalmanNorm, GroupNorm,
                                LayerNormalization, MicroBatchNorm, MicroBatchRenorm, kalman_update)
from kalman_norm.transition import conv_estimate

SHAPE = (4, 3, 3, 4)          # NHWC; group_size 2 -> 2 micro-batch groups of 18 values per channel
EPS = 1e-5
H = 2.0 ** -7                 # finite-difference step (exact in float32 for |v| < 2**16)


def f32(a):
    """float64 array with float32-representable values."""
    return np.asarray(a, np.float32).astype(np.float64)


def get_var(name, value, dtype=tf.float32):
    return tf.compat.v1.get_variable(name, initializer=np.asarray(value).astype(dtype.as_numpy_dtype))


# ----------------------------------------------------------------------------------------------
# 1. gradients against finite differences
# ----------------------------------------------------------------------------------------------

class GradientChecker(object):
    """Builds ``layer(x)`` in a fresh graph; x is a float64 variable, every trainable variable is
    checked."""

    def __init__(self, build, seed, x_scale=1.0, x_shift=0.0, nontrainable=None):
        rng = np.random.default_rng(seed)
        self.graph = tf.Graph()
        with self.graph.as_default(), TowerContext('', is_training=True):
            x = get_var('x', f32(x_shift + x_scale * rng.standard_normal(SHAPE)), tf.float64)
            self.out = build(x, rng)
            self.proj = f32(rng.standard_normal(self.out.shape.as_list()))
            loss = tf.reduce_sum(self.out * tf.constant(self.proj, self.out.dtype))
            self.vars = [v for v in tf.compat.v1.trainable_variables() if v.dtype.base_dtype.is_floating]
            self.grads = tf.gradients(loss, self.vars)
            self.placeholders, self.assigns = [], []
            for v in self.vars:
                ph = tf.compat.v1.placeholder(v.dtype.base_dtype, v.shape)
                self.placeholders.append(ph)
                self.assigns.append(v.assign(ph))
            self.sess = tf.compat.v1.Session(graph=self.graph)
            self.sess.run(tf.compat.v1.global_variables_initializer())
            # non-trivial affine parameters (and whatever else the test wants set)
            values = {}
            for v in self.vars:
                name = v.op.name.split('/')[-1]
                if name == 'gamma':
                    values[v] = f32(1.0 + 0.3 * rng.standard_normal(v.shape))
                elif name == 'beta':
                    values[v] = f32(0.3 * rng.standard_normal(v.shape))
            for v, value in values.items():
                self.set(v, value)
            for name, value in (nontrainable or {}).items():
                var = [w for w in tf.compat.v1.global_variables() if w.op.name == name][0]
                var.load(value, self.sess)
        self.feed = {}

    def names(self):
        return sorted(v.op.name for v in self.vars)

    def set(self, var, value):
        i = [id(v) for v in self.vars].index(id(var))     # (== on variables builds ops)
        self.sess.run(self.assigns[i], {self.placeholders[i]: value})

    def loss(self):
        out = self.sess.run(self.out, self.feed)
        return float(np.sum(out.astype(np.float64) * self.proj))

    def check(self, rtol=3e-3):
        analytic = self.sess.run(self.grads, self.feed)
        errors = {}
        for var, grad in zip(self.vars, analytic):
            v0 = self.sess.run(var)
            fd = np.zeros(v0.size)
            for i in range(v0.size):
                for sign in (1, -1):
                    v = v0.copy().reshape(-1)
                    v[i] += sign * H
                    self.set(var, v.reshape(v0.shape))
                    fd[i] += sign * self.loss()
            self.set(var, v0)
            fd /= 2 * H
            grad = np.asarray(grad, np.float64).reshape(-1)
            scale = max(np.linalg.norm(grad), 1e-3)
            errors[var.op.name] = err = np.linalg.norm(fd - grad) / scale
            assert np.all(np.isfinite(grad)), var.op.name
            assert err < rtol, (var.op.name, err, grad, fd)
            assert np.all(np.abs(fd - grad) <= rtol * scale), var.op.name
        return errors

    def close(self):
        self.sess.close()


def _prior(rng, name='prior'):
    mean = get_var(name + '_mean', f32(0.5 * rng.standard_normal((2, SHAPE[-1]))))
    var = get_var(name + '_var', f32(rng.uniform(0.5, 2.0, (2, SHAPE[-1]))))
    return mean, var


LAYERS = {
    'bn': (lambda x, rng: MicroBatchNorm('norm', x, group_size=2), ['gamma', 'beta']),
    'bn-tower': (lambda x, rng: MicroBatchNorm('norm', x), ['gamma', 'beta']),
    'bkn-pooled': (lambda x, rng: BatchKalmanNorm('norm', x, _prior(rng), group_size=2, gain='learned',
                                                  gain_init=0.3, process_noise=True, noise_init=0.5,
                                                  pooled_variance=True),
                   ['gamma', 'beta', 'gain_logit', 'noise_rho', 'prior_mean', 'prior_var']),
    'bkn-unpooled': (lambda x, rng: BatchKalmanNorm('norm', x, _prior(rng), group_size=2, gain='learned',
                                                    gain_init=0.6, process_noise=True, noise_init=0.5,
                                                    pooled_variance=False),
                     ['gamma', 'beta', 'gain_logit', 'noise_rho', 'prior_mean', 'prior_var']),
    'bkn-fixed-gain-one-prior-row': (
        lambda x, rng: BatchKalmanNorm('norm', x, (get_var('prior_mean', f32(rng.standard_normal(4))),
                                                   get_var('prior_var', f32(rng.uniform(0.5, 2, 4)))),
                                       group_size=2, gain=0.4, process_noise=False),
        ['gamma', 'beta', 'prior_mean', 'prior_var']),
    'gn': (lambda x, rng: GroupNorm('norm', x, channel_groups=2), ['gamma', 'beta']),
    'gkn': (lambda x, rng: GroupKalmanNorm('norm', x, _prior(rng), group_size=2, channel_groups=2,
                                           gain='learned', gain_init=0.3, process_noise=True, noise_init=0.5,
                                           propagate='input'),
            ['gamma', 'beta', 'gain_logit', 'noise_rho', 'prior_mean', 'prior_var']),
    'gkn-output': (lambda x, rng: GroupKalmanNorm('norm', x, _prior(rng), group_size=2, channel_groups=2,
                                                  gain=0.5, process_noise=True, noise_init=0.5,
                                                  pooled_variance=False, propagate='output'),
                   ['gamma', 'beta', 'noise_rho', 'prior_mean', 'prior_var']),
    'brn': (lambda x, rng: MicroBatchRenorm('norm', x, group_size=2), ['gamma', 'beta']),
    'ln': (lambda x, rng: LayerNormalization('norm', x), ['gamma', 'beta']),
    'bias': (lambda x, rng: BiasOnly('norm', x), ['beta']),
}


@pytest.mark.parametrize('kind', sorted(LAYERS))
def test_gradients_match_finite_differences(kind):
    build, params = LAYERS[kind]
    checker = GradientChecker(build, seed=sorted(LAYERS).index(kind), x_shift=0.5)
    try:
        expected = sorted(['x'] + [p if p.startswith('prior') else 'norm/' + p for p in params])
        assert checker.names() == expected
        errors = checker.check()
        assert set(errors) == set(expected)
    finally:
        checker.close()


def test_renorm_gradients_treat_r_and_d_as_constants():
    """With r, d inside their clipping range they depend on x, but Batch Renorm's gradient treats
    them as constants: compare with finite differences of y taken at fixed r, d."""
    checker = GradientChecker(
        lambda x, rng: MicroBatchRenorm('norm', x, group_size=2, rmax=3.0, dmax=5.0, warmup=None),
        seed=3, x_scale=1.5, x_shift=0.5,
        nontrainable={'norm/mean/EMA': np.full(4, 0.2, np.float32),
                      'norm/variance/EMA': np.full(4, 1.5, np.float32)})
    try:
        # r and d: the stop_gradients of clipped values (the others feed the EMA update), in order
        stops = [op.outputs[0] for op in checker.graph.get_operations()
                 if op.type == 'StopGradient' and op.name.startswith('norm/')
                 and 'clip_by_value' in op.inputs[0].op.name]
        assert [t.shape.as_list() for t in stops] == [[2, 4], [2, 4]]
        r, d = checker.sess.run(stops)
        assert np.all((r > 1 / 3.0) & (r < 3.0)) and np.any(np.abs(r - 1) > 0.05)  # not clipped, not trivial
        assert np.all(np.abs(d) < 5.0) and np.any(np.abs(d) > 0.05)
        checker.feed = dict(zip(stops, (r, d)))
        checker.check()
    finally:
        checker.close()


# ----------------------------------------------------------------------------------------------
# 2. the Kalman update
# ----------------------------------------------------------------------------------------------

def np_batch_moments(x, group_size):
    g = x.reshape((-1, group_size) + x.shape[1:]).astype(np.float64)
    return g.mean(axis=(1, 2, 3)), g.var(axis=(1, 2, 3))


def np_eq7(prior_mean, prior_var, batch_mean, batch_var, q, noise=0.0, pooled=False):
    p = 1.0 - q
    mean = p * prior_mean + q * batch_mean
    var = p * (prior_var + noise) + q * batch_var
    if pooled:
        var = var + q * (1.0 - q) * (batch_mean - prior_mean) ** 2
    return mean, var


def np_normalize(x, group_size, mean, var, gamma=1.0, beta=0.0, eps=EPS):
    g = x.reshape((-1, group_size) + x.shape[1:]).astype(np.float64)
    out = (g - mean[:, None, None, None, :]) / np.sqrt(var[:, None, None, None, :] + eps) * gamma + beta
    return out.reshape(x.shape)


def run(build):
    g = tf.Graph()
    with g.as_default(), TowerContext('', is_training=True):
        fetches = build()
        with tf.compat.v1.Session(graph=g) as sess:
            sess.run(tf.compat.v1.global_variables_initializer())
            return sess.run(fetches)


@pytest.mark.parametrize('pooled', [False, True])
@pytest.mark.parametrize('with_noise', [False, 'absolute', 'relative'])
def test_kalman_update_is_eq7(pooled, with_noise):
    rng = np.random.default_rng(0)
    pm, bm = rng.standard_normal((2, 3, 5))
    pv, bv = rng.uniform(0.5, 2.0, (2, 3, 5))
    noise = rng.uniform(0.0, 0.3, 5) if with_noise else None
    q = 0.3

    def build():
        c = lambda a: tf.constant(a, tf.float32)  # noqa: E731
        return kalman_update(c(pm), c(pv), c(bm), c(bv), tf.constant(q), None if noise is None else c(noise),
                             pooled_variance=pooled, relative_noise=with_noise == 'relative')

    mean, var, trusted = run(build)
    if with_noise == 'relative':          # R = r * prior variance
        noise = noise * pv
    em, ev = np_eq7(pm, pv, bm, bv, q, 0.0 if noise is None else noise, pooled)
    np.testing.assert_allclose(mean, em, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(var, ev, rtol=1e-6, atol=1e-6)
    assert trusted.shape == (3, 1) and trusted.all()
    if pooled:   # the pooled term is exactly q(1-q)(x̄ - µ)^2 on top of Eq. 7
        _, ev0 = np_eq7(pm, pv, bm, bv, q, 0.0 if noise is None else noise, False)
        np.testing.assert_allclose(var - ev0, q * (1 - q) * (bm - pm) ** 2, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize('pooled', [False, True])
@pytest.mark.parametrize('noise_param', ['relative', 'softplus'])
def test_bkn_layer_is_eq7(pooled, noise_param):
    rng = np.random.default_rng(1)
    x = f32(0.3 + 1.2 * rng.standard_normal(SHAPE))
    pm = f32(0.5 * rng.standard_normal((2, 4)))
    pv = f32(rng.uniform(0.5, 2.0, (2, 4)))
    noise, q = 0.25, 0.3

    def build():
        out = BatchKalmanNorm('bkn', tf.constant(x, tf.float32), (pm, pv), group_size=2, gain=q,
                              process_noise=True, noise_param=noise_param, noise_init=noise,
                              pooled_variance=pooled)
        diag = kn_diagnostics()
        assert len(diag) == 1 and diag[0].layer == 'bkn'
        return out, out.posterior.mean, out.posterior.var, diag[0].trusted

    out, mean, var, trusted = run(build)
    bm, bv = np_batch_moments(x, 2)
    # relative (default): Σ_{k|k-1} = (1 + r) AΣAᵀ; softplus: Σ_{k|k-1} = AΣAᵀ + R
    em, ev = np_eq7(pm, pv, bm, bv, q, noise * pv if noise_param == 'relative' else noise, pooled)
    assert trusted.all()
    np.testing.assert_allclose(mean, em, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(var, ev, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(out, np_normalize(x, 2, em, ev), rtol=1e-4, atol=1e-5)


def test_gkn_layer_with_gain_one_is_group_norm_and_posterior_is_eq7():
    rng = np.random.default_rng(2)
    x = f32(rng.standard_normal(SHAPE))
    pm = f32(0.5 * rng.standard_normal((2, 4)))
    pv = f32(rng.uniform(0.5, 2.0, (2, 4)))

    def build():
        xt = tf.constant(x, tf.float32)
        gkn1 = GroupKalmanNorm('gkn1', xt, (pm, pv), group_size=2, channel_groups=2, gain=1.0)
        gn = GroupNorm('gn', xt, channel_groups=2)
        gkn = GroupKalmanNorm('gkn', xt, (pm, pv), group_size=2, channel_groups=2, gain=0.3,
                              process_noise=False, pooled_variance=True)
        return gkn1, gn, gkn.posterior.mean, gkn.posterior.var

    gkn1, gn, mean, var = run(build)
    np.testing.assert_allclose(gkn1, gn, rtol=1e-6, atol=1e-6)
    bm, bv = np_batch_moments(x, 2)
    em, ev = np_eq7(pm, pv, bm, bv, 0.3, 0.0, True)
    np.testing.assert_allclose(mean, em, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(var, ev, rtol=1e-5, atol=1e-6)


def _train(loss_fn, optimizer, steps, fetch):
    g = tf.Graph()
    with g.as_default(), TowerContext('', is_training=True):
        x = tf.constant(np.random.default_rng(0).standard_normal(SHAPE), tf.float32)
        prior = (tf.zeros([2, 4]), tf.ones([2, 4]))
        out = BatchKalmanNorm('bkn', x, prior, group_size=2, gain='learned', gain_init=0.5, process_noise=True,
                              noise_init=0.1)
        loss = loss_fn(g, out)
        train = optimizer.minimize(loss)
        fetches = [g.get_tensor_by_name(name) if ':' in name else _var(name) for name in fetch]
        fetches += [out, out.posterior.var]
        with tf.compat.v1.Session(graph=g) as sess:
            sess.run(tf.compat.v1.global_variables_initializer())
            for _ in range(steps):
                sess.run(train)
            return sess.run(fetches)


@pytest.mark.parametrize('direction', [1.0, -1.0])
def test_learned_gain_stays_in_unit_interval(direction):
    # many large gradient steps (the first moves the logit by 12.5): the sigmoid keeps q strictly
    # inside (0, 1); the logit then only creeps like log(steps) because the sigmoid's slope vanishes.
    # (In float32 sigmoid(θ) rounds to exactly 1 for θ > ~17 and to 0 for θ < ~-104.)
    q, logit, out, var = _train(lambda g, out: -direction * 50.0 * g.get_tensor_by_name('bkn/gain:0'),
                                tf.compat.v1.train.GradientDescentOptimizer(1.0), 300,
                                ['bkn/gain:0', 'bkn/gain_logit'])
    assert 0.0 < q < 1.0 and abs(logit) > 12
    assert (q > 0.9999) if direction > 0 else (q < 1e-4)
    assert np.all(np.isfinite(out)) and np.all(var > 0)
    assert np.all(np.isfinite(out)) and np.all(var > 0)
    # Adam, whose steps do not shrink with the gradient at first (~lr each)
    q, logit, out, var = _train(lambda g, out: -direction * g.get_tensor_by_name('bkn/gain:0'),
                                tf.compat.v1.train.AdamOptimizer(1.0), 200,
                                ['bkn/gain:0', 'bkn/gain_logit'])
    assert 0.0 < q < 1.0 and np.isfinite(logit) and abs(logit) > 8
    assert np.all(np.isfinite(out)) and np.all(var > 0)


def test_process_noise_stays_non_negative():
    for opt, steps in ((tf.compat.v1.train.GradientDescentOptimizer(1e3), 300),
                       (tf.compat.v1.train.AdamOptimizer(2.0), 200)):
        r, rho, out, var = _train(
            lambda g, out: 1e3 * tf.reduce_sum(g.get_tensor_by_name('bkn/process_noise:0')), opt, steps,
            ['bkn/process_noise:0', 'bkn/noise_rho'])
        assert np.all(rho < -5)                  # really pushed far negative
        assert np.all(r >= 0) and np.all(np.isfinite(r)) and np.all(r < 1e-2)
        assert np.all(np.isfinite(out)) and np.all(var > 0)


@pytest.mark.parametrize('direction', ['prior_larger', 'batch_larger'])
def test_guard_threshold_in_kalman_update(direction):
    guard = 100.0
    rng = np.random.default_rng(3)
    base = rng.uniform(0.5, 2.0, 4)
    # per-channel ratios whose channel mean is just below / at / just above the threshold;
    # single channels exceed it, but the guard looks at the mean
    ratios = np.array([[60.0, 139.0, 100.0, 100.0],     # mean 99.75 -> trusted
                       [60.0, 141.0, 100.0, 100.0],     # mean 100.25 -> falls back
                       [100.0, 100.0, 100.0, 100.0],    # mean exactly 100 -> falls back (>=)
                       [1.0, 1.0, 1.0, 1.0]])           # agreement -> trusted
    small = np.tile(base, (4, 1))
    big = small * ratios
    pv, bv = (big, small) if direction == 'prior_larger' else (small, big)
    pm, bm = rng.standard_normal((2, 4, 4))

    def build():
        c = lambda a: tf.constant(a, tf.float64)  # noqa: E731
        return kalman_update(c(pm), c(pv), c(bm), c(bv), tf.constant(0.2, tf.float64), None,
                             guard_ratio=guard, epsilon=0.0)

    mean, var, trusted = run(build)
    np.testing.assert_array_equal(trusted[:, 0], [True, False, False, True])
    em, ev = np_eq7(pm, pv, bm, bv, 0.2, 0.0, True)
    for row, ok in enumerate(trusted[:, 0]):
        np.testing.assert_allclose(mean[row], em[row] if ok else bm[row], rtol=1e-12)
        np.testing.assert_allclose(var[row], ev[row] if ok else bv[row], rtol=1e-12)


def test_guard_ratio_none_disables_the_test_but_not_the_finiteness_check():
    def build():
        pm = tf.constant([[0.0, 0.0], [np.nan, 0.0]])
        pv = tf.constant([[1e4, 1e4], [1.0, 1.0]])
        return kalman_update(pm, pv, tf.ones([2, 2]), tf.ones([2, 2]), 0.5, None, guard_ratio=None)

    _, _, trusted = run(build)
    np.testing.assert_array_equal(trusted[:, 0], [True, False])


@pytest.mark.parametrize('direction', ['prior_larger', 'batch_larger'])
def test_guard_in_layer(direction):
    """In the layer: group 0's prior variance is 0.99x/1.01x the guard ratio times its batch
    variance, group 1's 1.01x/0.99x; the diagnostics' ``trusted`` and the output follow."""
    rng = np.random.default_rng(4)
    x = f32(rng.standard_normal(SHAPE))
    bm, bv = np_batch_moments(x, 2)
    factors = np.array([[99.0], [101.0]]) if direction == 'prior_larger' else np.array([[1 / 99.0], [1 / 101.0]])
    pv = f32(bv * factors)
    pm = f32(bm + 0.5)
    q = 0.2

    def build():
        out = BatchKalmanNorm('bkn', tf.constant(x, tf.float32), (pm, pv), group_size=2, gain=q,
                              process_noise=False, pooled_variance=False, guard_ratio=100.0)
        return out, kn_diagnostics()[0].trusted, out.posterior.var

    out, trusted, var = run(build)
    np.testing.assert_array_equal(trusted[:, 0], [True, False])
    em, ev = np_eq7(pm, pv, bm, bv, q)
    np.testing.assert_allclose(var[0], ev[0], rtol=1e-5)
    np.testing.assert_allclose(var[1], bv[1], rtol=1e-5)
    mean = np.stack([em[0], bm[1]])
    np.testing.assert_allclose(out, np_normalize(x, 2, mean, np.stack([ev[0], bv[1]])), rtol=1e-4, atol=1e-4)


def test_non_finite_prior_falls_back_to_batch_statistics():
    rng = np.random.default_rng(5)
    x = f32(rng.standard_normal(SHAPE))

    def build():
        xt = tf.constant(x, tf.float32)
        pm = get_var('pm', np.array([[np.nan, 0, 0, 0], [0, 0, 0, 0]], np.float32))
        pv = get_var('pv', np.array([[1, 1, 1, 1], [1, np.inf, 1, 1]], np.float32))
        out = BatchKalmanNorm('bkn', xt, (pm, pv), group_size=2, gain='learned', process_noise=True)
        bn = MicroBatchNorm('bn', xt, group_size=2)
        loss = tf.reduce_sum(out * tf.constant(rng.standard_normal(SHAPE), tf.float32))
        grads = tf.gradients(loss, [xt, pm, pv, _var('bkn/gain_logit'), _var('bkn/noise_rho')])
        return out, bn, kn_diagnostics()[0].trusted, grads

    out, bn, trusted, grads = run(build)
    assert not trusted.any()
    np.testing.assert_allclose(out, bn, rtol=1e-6, atol=1e-6)
    for gr in grads:
        assert np.all(np.isfinite(gr))
    for gr in grads[1:]:          # nothing depends on the rejected prior, q or R
        assert np.all(gr == 0)


@pytest.mark.parametrize('prior', [None, 'auto'])
def test_no_prior_is_exactly_micro_batch_norm(prior):
    rng = np.random.default_rng(6)
    x = f32(0.7 + rng.standard_normal(SHAPE))

    def build():
        xt = tf.constant(x, tf.float32)
        bkn = BatchKalmanNorm('bkn', xt, prior, group_size=2, gain='learned')
        bkn_in = BatchKalmanNorm('bkn_in', xt, prior, group_size=2, gain='learned', propagate='input')
        bn = MicroBatchNorm('bn', xt, group_size=2)
        assert kn_diagnostics() == []
        return (bkn, bn, bkn.posterior.mean, bkn.posterior.var, get_estimate(bkn).mean,
                get_estimate(bkn_in).mean)

    bkn, bn, mean, var, handed_on, handed_on_input = run(build)
    np.testing.assert_array_equal(bkn, bn)
    bm, bv = np_batch_moments(x, 2)
    np.testing.assert_allclose(mean, bm, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(var, bv, rtol=1e-5)
    # the chain starts here: the output's distribution (centred on β = 0), or with 'input' the batch moments
    np.testing.assert_allclose(handed_on, np.zeros_like(mean), atol=1e-6)
    np.testing.assert_array_equal(handed_on_input, mean)


def test_gain_one_is_bn_and_gain_zero_uses_the_prior():
    rng = np.random.default_rng(7)
    x = f32(rng.standard_normal(SHAPE))
    pm = f32(0.5 * rng.standard_normal((2, 4)))
    pv = f32(rng.uniform(0.5, 2.0, (2, 4)))

    def build():
        xt = tf.constant(x, tf.float32)
        one = BatchKalmanNorm('one', xt, (pm, pv), group_size=2, gain=1.0, process_noise=True, noise_init=0.3)
        bn = MicroBatchNorm('bn', xt, group_size=2)
        zero = BatchKalmanNorm('zero', xt, (pm, pv), group_size=2, gain=0.0, process_noise=False)
        zero_r = BatchKalmanNorm('zero_r', xt, (pm, pv), group_size=2, gain=0.0, process_noise=True,
                                 noise_init=0.3)
        return one, bn, zero, zero.posterior.mean, zero.posterior.var, zero_r.posterior.var

    one, bn, zero, mean0, var0, var0_r = run(build)
    np.testing.assert_allclose(one, bn, rtol=1e-6, atol=1e-6)
    np.testing.assert_array_equal(mean0, pm.astype(np.float32))
    np.testing.assert_array_equal(var0, pv.astype(np.float32))
    np.testing.assert_allclose(var0_r, pv * 1.3, rtol=1e-6)     # relative R: (1 + r) · prior variance
    np.testing.assert_allclose(zero, np_normalize(x, 2, pm, pv), rtol=1e-5, atol=1e-5)


# ----------------------------------------------------------------------------------------------
# 3. the prior flow
# ----------------------------------------------------------------------------------------------

def _two_layer_net(kind, **options):
    rng = np.random.default_rng(8)
    x = tf.constant(rng.standard_normal((4, 6, 6, 3)), tf.float32)
    with kalman_norm.norm_scope(kind, group_size=2, **options):
        n1 = F.norm('bn1', F.conv2d('conv1', x, 4, 3))
        h = F.relu(n1)
        n2 = F.norm('bn2', F.conv2d('conv2', h, 6, 3, strides=2))
    kernel = [v for v in tf.compat.v1.global_variables() if v.op.name == 'conv2/W'][0]
    return n1, n2, kernel


@pytest.mark.parametrize('kind, channel_groups', [('bkn', None), ('gkn', 2)])
def test_flow_hands_the_posterior_through_relu_and_conv(kind, channel_groups):
    """propagate='input' (the paper's) hands on the posterior of the layer's input."""
    options = dict(propagate='input', **({} if channel_groups is None else {'channel_groups': channel_groups}))

    def build():
        n1, n2, kernel = _two_layer_net(kind, **options)
        diags = kn_diagnostics()
        assert [d.layer for d in diags] == ['bn2']          # the first KN layer has no prior
        expected = conv_estimate(n1.posterior.relu(), kernel, (6, 6), 2, 'SAME')
        return diags[0].prior_mean, diags[0].prior_var, expected.mean, expected.var, diags[0].trusted

    pm, pv, em, ev, trusted = run(build)
    assert pm.shape == (2, 6)
    np.testing.assert_allclose(pm, em, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(pv, ev, rtol=1e-6, atol=1e-6)
    assert np.all(pv > 0)


@pytest.mark.parametrize('kind, channel_groups', [('bkn', None), ('gkn', 2)])
def test_flow_propagate_output(kind, channel_groups):
    """propagate='output' hands on the distribution of the normalised output under the
    posterior: N(γ(µ̂ - µ_n)/σ_n + β, γ²Σ̂/σ_n²) with σ_n² = var_n + ε the normalising statistics."""
    options = {} if channel_groups is None else {'channel_groups': channel_groups}
    rng = np.random.default_rng(9)
    gamma, beta = f32(1 + 0.3 * rng.standard_normal(4)), f32(0.3 * rng.standard_normal(4))
    g = tf.Graph()
    with g.as_default(), TowerContext('', is_training=True):
        n1, n2, kernel = _two_layer_net(kind, propagate='output', **options)
        est = get_estimate(n1)
        diags = kn_diagnostics()
        assert [d.layer for d in diags] == ['bn2']
        expected = conv_estimate(est.relu(), kernel, (6, 6), 2, 'SAME')
        y1 = g.get_tensor_by_name('conv1/output:0')
        with tf.compat.v1.Session(graph=g) as sess:
            sess.run(tf.compat.v1.global_variables_initializer())
            _var('bn1/gamma').load(gamma.astype(np.float32), sess)
            _var('bn1/beta').load(beta.astype(np.float32), sess)
            y, m, v, pm, pv, em, ev = sess.run(
                [y1, est.mean, est.var, diags[0].prior_mean, diags[0].prior_var, expected.mean, expected.var])
    bm, bv = np_batch_moments(y, 2)                       # bn1 has no prior: posterior = batch moments
    if kind == 'bkn':
        norm_mean, norm_var = bm, bv                      # normalised with the posterior itself
    else:
        # GKN normalises each sample with its channel-group statistics; the hand-on uses their
        # average over the micro-batch group, per channel
        view = y.astype(np.float64).reshape(4, 6, 6, 2, 2)
        gm, gv = view.mean(axis=(1, 2, 4)), view.var(axis=(1, 2, 4))          # [N, groups]
        norm_mean = np.repeat(gm.reshape(2, 2, 2).mean(1), 2, axis=1)
        norm_var = np.repeat(gv.reshape(2, 2, 2).mean(1), 2, axis=1)
    scale = gamma / np.sqrt(norm_var + EPS)
    np.testing.assert_allclose(m, (bm - norm_mean) * scale + beta, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(v, bv * scale ** 2, rtol=1e-4)
    if kind == 'bkn':   # centred exactly on β, variance γ²σ²/(σ² + ε)
        np.testing.assert_allclose(m, np.tile(beta, (2, 1)), rtol=1e-6, atol=1e-6)
        np.testing.assert_allclose(v, gamma ** 2 * bv / (bv + EPS), rtol=1e-4)
    # and the next layer's prior is the prediction from that hand-on
    np.testing.assert_allclose(pm, em, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(pv, ev, rtol=1e-6, atol=1e-6)


def _var(name):
    return [v for v in tf.compat.v1.global_variables() if v.op.name == name][0]
