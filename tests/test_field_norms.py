"""The micro-batch field beside KN (issue 22): WS, FRN + TLU, EvoNorm-S0/B0, MABN.

Each layer against a float64 NumPy reference written from its paper's equations (training and
inference, moving averages after a step; MABN's forward and backward over several steps in both
history modes), gradients against central differences, GN+WS against tf-keras's
GroupNormalization after a standardised kernel, the flow's hooks (the conv's kernel, KN's prior,
fused activations) and one-line errors for bad options.
"""
import kalman_norm as kn  # noqa: I001  (before tensorflow / tensorpack)
from kalman_norm import flow as F
from kalman_norm.estimate import get_estimate
from kalman_norm.layers import (EvoNormB0, EvoNormS0, FilterResponseNorm, MovingAverageBatchNorm,
                                fused_activation_linear, weight_standardize)
from kalman_norm.transition import conv_estimate

import numpy as np
import pytest
import tensorflow as tf
from tensorpack.tfutils.tower import TowerContext, TrainTowerContext

from test_gradients_kalman import GradientChecker
from test_layers_forward import C, EPS, HW, LAYOUTS, N, bc, fmt, from_nc, graph_session, make_x, sigmoid, to_nc

tf1 = tf.compat.v1
TOL = dict(atol=2e-5, rtol=2e-5)


def _values(sess, seed=0):
    """Initialise, then set every layer variable to a non-trivial value; {basename: value}."""
    sess.run(tf1.global_variables_initializer())
    rng = np.random.RandomState(seed)
    draw = {'gamma': lambda s: rng.uniform(0.5, 1.5, s), 'beta': lambda s: rng.normal(0, 0.5, s),
            'tau': lambda s: rng.normal(-0.2, 0.4, s), 'v': lambda s: rng.uniform(0.3, 1.5, s),
            'epsilon_l': lambda s: rng.uniform(-0.3, 0.3, s), 'EMA': lambda s: rng.uniform(0.3, 3.0, s),
            'device_moment': lambda s: rng.uniform(0.3, 3.0, s)}
    values = {}
    for var in tf1.global_variables():
        base = var.op.name.split('/')[-1]
        if base in draw:
            value = draw[base](var.shape.as_list()).astype(np.float32)
            var.load(value, sess)
            values[var.op.name] = value.astype(np.float64)
    return values


def _run(layout, build, training, x=None, fetch_updates=False):
    """Build ``build(x) -> {key: tensor}`` in one tower, randomise its variables, run once."""
    x = make_x(layout) if x is None else x
    with graph_session() as sess:
        xt = tf1.placeholder(tf.float32, x.shape)
        with TowerContext('', is_training=training):
            outs = build(xt)
        vals = _values(sess)
        updates = tf1.get_collection(tf1.GraphKeys.UPDATE_OPS) if fetch_updates else []
        res = sess.run([outs, updates], {xt: x})[0]
        after = {v.op.name: sess.run(v) for v in tf1.global_variables()}
    return res, vals, to_nc(x, layout), after


def _var(name):
    return [v for v in tf1.global_variables() if v.op.name == name][0]


def _close(actual, expected_nc, layout, what=''):
    np.testing.assert_allclose(np.asarray(actual, np.float64), from_nc(expected_nc, layout), err_msg=what, **TOL)


def _spatial(xc):
    return tuple(range(2, xc.ndim))


# ----------------------------------------------------------------------------------------------
# NumPy references (canonical [N, C, ...] layout)

def ref_frn(xc, gamma, beta, tau=None, eps=1e-6, eps_l=None):
    """Singh & Krishnan 2020, Eqs. 1-2 and 4: ν² = mean over positions of x²."""
    nu2 = (xc ** 2).mean(axis=_spatial(xc), keepdims=True) if xc.ndim == 4 else xc ** 2
    eps = eps if eps_l is None else eps + np.abs(bc(eps_l, xc.ndim))
    y = xc / np.sqrt(nu2 + eps) * bc(gamma, xc.ndim) + bc(beta, xc.ndim)
    return y if tau is None else np.maximum(y, bc(tau, xc.ndim))


def ref_group_var(xc, groups):
    n, c = xc.shape[:2]
    view = xc.reshape(n, groups, c // groups, -1)
    var = view.var(axis=(2, 3), keepdims=True)
    return np.broadcast_to(var, view.shape).reshape(xc.shape)


def ref_s0(xc, groups, v, gamma, beta):
    """Liu et al. 2020, Table 1: x σ(v x) / sqrt(s²_{w,h,c/g} + ε) γ + β."""
    d = xc.ndim
    return xc * sigmoid(bc(v, d) * xc) / np.sqrt(ref_group_var(xc, groups) + EPS) * bc(gamma, d) + bc(beta, d)


def ref_batch_var(xc, gs):
    """Per micro-batch group and channel, broadcast back to x; and the [G, C] values, n."""
    n, c = xc.shape[:2]
    g = n if gs is None else gs
    xg = xc.reshape(n // g, g, c, -1)
    var = xg.var(axis=(1, 3))
    full = np.broadcast_to(var[:, None, :, None], xg.shape).reshape(xc.shape)
    return full, var, g * xg.shape[3]


def ref_b0(xc, batch_var_full, v, gamma, beta):
    """Liu et al. 2020, Table 1: x / max(sqrt(s²_{b,w,h} + ε), v x + sqrt(s²_{w,h} + ε)) γ + β."""
    d = xc.ndim
    inst = xc.var(axis=_spatial(xc), keepdims=True) if d == 4 else np.zeros_like(xc)
    den = np.maximum(np.sqrt(batch_var_full + EPS), bc(v, d) * xc + np.sqrt(inst + EPS))
    return xc / den * bc(gamma, d) + bc(beta, d)


# ----------------------------------------------------------------------------------------------
# Weight Standardization and the conv hooks

def _np_standardize(w, eps=1e-5):
    axes = tuple(range(w.ndim - 1))
    return (w - w.mean(axis=axes)) / np.sqrt(w.var(axis=axes) + eps)


@pytest.mark.parametrize('shape', [(3, 3, 5, 4), (6, 3)])
def test_weight_standardize_is_eq_5_6(shape):
    w = np.random.RandomState(1).normal(0.3, 2.0, shape)
    with graph_session() as sess:
        out = sess.run(weight_standardize(tf.constant(w, tf.float32)))
    np.testing.assert_allclose(out, _np_standardize(w), **TOL)
    np.testing.assert_allclose(out.reshape(-1, shape[-1]).mean(0), 0.0, atol=1e-6)


def _conv_under(spec, x, filters=4, kernel=None):
    """F.conv2d under ``spec`` with its W set to ``kernel``; returns (output, W value)."""
    with graph_session() as sess:
        with TowerContext('', is_training=True), spec:
            y = F.conv2d('conv', tf.constant(x), filters, 3)
        w = _var('conv/W')
        sess.run(tf1.global_variables_initializer())
        if kernel is not None:
            w.load(kernel, sess)
        return sess.run([y, w])


def _np_conv(x, w):
    with graph_session() as sess:
        return sess.run(tf.nn.conv2d(tf.constant(x, tf.float64), tf.constant(w, tf.float64), 1, 'SAME'))


@pytest.mark.parametrize('kind, transform', [('bn', lambda w: w), ('mabn', lambda w: w - w.mean(axis=(0, 1, 2))),
                                             ('gn+ws', _np_standardize), ('bkn+ws', _np_standardize)])
def test_conv_uses_the_kernel_of_its_norm(kind, transform):
    name, ws = kind.split('+')[0], kind.endswith('+ws')
    x = make_x('NHWC').astype(np.float32)
    kernel = np.random.RandomState(2).normal(0.2, 1.0, (3, 3, C, 4)).astype(np.float32)
    y, w = _conv_under(kn.norm_scope(name, weight_standardization=ws), x, kernel=kernel)
    np.testing.assert_allclose(y, _np_conv(x, transform(w.astype(np.float64))), atol=1e-4, rtol=1e-4)


def test_gn_ws_matches_tf_keras_group_normalization_after_a_standardised_kernel():
    import tf_keras
    x = make_x('NHWC').astype(np.float32)
    kernel = np.random.RandomState(3).normal(0.1, 0.5, (3, 3, C, 8)).astype(np.float32)
    rng = np.random.RandomState(4)
    gamma, beta = rng.uniform(0.5, 1.5, 8).astype(np.float32), rng.normal(0, 0.5, 8).astype(np.float32)
    with graph_session() as sess:
        with TowerContext('', is_training=True), kn.norm_scope('gn', channel_groups=2, weight_standardization=True):
            y = F.norm('gn', F.conv2d('conv', tf.constant(x), 8, 3))
        sess.run(tf1.global_variables_initializer())
        for name, value in (('conv/W', kernel), ('gn/gamma', gamma), ('gn/beta', beta)):
            _var(name).load(value, sess)
        ours = sess.run(y)
    standardised = tf.nn.conv2d(x, _np_standardize(kernel.astype(np.float64)).astype(np.float32), 1, 'SAME')
    keras_gn = tf_keras.layers.GroupNormalization(groups=2, epsilon=1e-5)
    keras_gn.build(standardised.shape)
    keras_gn.set_weights([gamma, beta])
    np.testing.assert_allclose(ours, keras_gn(standardised).numpy(), atol=1e-4, rtol=1e-4)


def test_kn_prior_is_predicted_through_the_standardised_kernel():
    x = make_x('NHWC')
    with graph_session() as sess:
        with TowerContext('', is_training=True), kn.norm_scope('bkn', group_size=2, weight_standardization=True):
            h = F.relu(F.norm('bkn0', tf.constant(x)))
            y = F.conv2d('conv', h, 4, 3)
        w = _var('conv/W')
        est_in = get_estimate(h)
        expected = conv_estimate(est_in, weight_standardize(w), (HW, HW), (1, 1), 'SAME', None)
        raw = conv_estimate(est_in, w, (HW, HW), (1, 1), 'SAME', None)
        sess.run(tf1.global_variables_initializer())
        got, want, unstandardised = sess.run([get_estimate(y).moments(), expected.moments(), raw.moments()])
    for a, b in zip(got, want):
        np.testing.assert_allclose(a, b, atol=1e-5, rtol=1e-5)
    assert not np.allclose(got[1], unstandardised[1], rtol=1e-2)       # the kernel used is not W itself


def test_weight_standardization_is_a_spec_option():
    spec = kn.NormSpec('bkn', group_size=2, weight_standardization=True)
    assert spec.weight_standardization and 'weight_standardization=True' in repr(spec)
    assert spec.replace(gain=0.3).weight_standardization
    assert not kn.NormSpec('gn').weight_standardization
    with pytest.raises(ValueError, match=r"weight_standardization does not apply to 'wn'"):
        kn.NormSpec('wn', weight_standardization=True)
    with pytest.raises(ValueError, match=r"weight_standardization must be True or False, got 'yes'"):
        kn.NormSpec('gn', weight_standardization='yes')
    with graph_session(), TowerContext('', is_training=True), spec:         # the layer never sees it
        F.norm('n', tf.zeros([4, 3, 3, 2]))


# ----------------------------------------------------------------------------------------------
# FRN + TLU

@pytest.mark.parametrize('layout', LAYOUTS)
@pytest.mark.parametrize('learned', [False, True])
def test_frn_tlu_forward(layout, learned):
    def build(x):
        return {'train': FilterResponseNorm('frn', x, learned_epsilon=learned, data_format=fmt(layout)),
                'plain': FilterResponseNorm('plain', x, learned_epsilon=learned, nonlinearity=False,
                                            data_format=fmt(layout))}
    for training in (True, False):                 # batch-independent: one computation
        res, vals, xc, _ = _run(layout, build, training)
        eps_l = vals['frn/epsilon_l'] if learned else None
        _close(res['train'], ref_frn(xc, vals['frn/gamma'], vals['frn/beta'], vals['frn/tau'], eps_l=eps_l), layout)
        eps_l = vals['plain/epsilon_l'] if learned else None
        _close(res['plain'], ref_frn(xc, vals['plain/gamma'], vals['plain/beta'], eps_l=eps_l), layout, 'no TLU')


def test_frn_learns_epsilon_by_default_only_on_single_position_maps():
    def names(shape):
        with graph_session(), TowerContext('', is_training=True):
            FilterResponseNorm('frn', tf.zeros(shape))
            return {v.op.name for v in tf1.global_variables()}
    assert names((2, 3, 3, 4)) == {'frn/gamma', 'frn/beta', 'frn/tau'}
    assert 'frn/epsilon_l' in names((2, 4)) and 'frn/epsilon_l' in names((2, 1, 1, 4))


def test_frn_is_per_sample():
    x = make_x('NHWC')
    y = _run('NHWC', lambda t: FilterResponseNorm('frn', t), True, x)[0]
    x2 = x.copy()
    x2[1:] *= 7.0
    y2 = _run('NHWC', lambda t: FilterResponseNorm('frn', t), True, x2)[0]
    np.testing.assert_allclose(y[0], y2[0], **TOL)


# ----------------------------------------------------------------------------------------------
# EvoNorm-S0

@pytest.mark.parametrize('layout', LAYOUTS)
@pytest.mark.parametrize('groups', [1, 2, 32])
def test_evonorm_s0_forward(layout, groups):
    def build(x):
        return {'s0': EvoNormS0('s0', x, channel_groups=groups, data_format=fmt(layout)),
                'affine': EvoNormS0('affine', x, nonlinearity=False, data_format=fmt(layout))}
    for training in (True, False):
        res, vals, xc, _ = _run(layout, build, training)
        _close(res['s0'], ref_s0(xc, min(groups, C), vals['s0/v'], vals['s0/gamma'], vals['s0/beta']), layout)
        affine = xc * bc(vals['affine/gamma'], xc.ndim) + bc(vals['affine/beta'], xc.ndim)
        _close(res['affine'], affine, layout, 'nonlinearity=False is gamma x + beta')


# ----------------------------------------------------------------------------------------------
# EvoNorm-B0

@pytest.mark.parametrize('layout', LAYOUTS)
@pytest.mark.parametrize('gs', [None, 2, 4])
def test_evonorm_b0_training_and_its_moving_variance(layout, gs):
    for unbiased in (True, False):
        res, vals, xc, after = _run(layout, lambda x: EvoNormB0('b0', x, group_size=gs, unbiased_variance=unbiased,
                                                                 data_format=fmt(layout)),
                                    True, fetch_updates=True)
        full, var, n = ref_batch_var(xc, gs)
        _close(res, ref_b0(xc, full, vals['b0/v'], vals['b0/gamma'], vals['b0/beta']), layout)
        fresh = (var * (n / (n - 1.0) if unbiased else 1.0)).mean(axis=0)
        np.testing.assert_allclose(after['b0/variance/EMA'], 0.9 * vals['b0/variance/EMA'] + 0.1 * fresh, **TOL)
        assert 'b0/mean/EMA' not in after


@pytest.mark.parametrize('layout', LAYOUTS)
def test_evonorm_b0_inference(layout):
    def build(x):
        with tf1.variable_scope(tf1.get_variable_scope(), reuse=tf1.AUTO_REUSE):     # one layer, two fetches
            return {'moving': EvoNormB0('b0', x, group_size=2, data_format=fmt(layout)),
                    'batch': EvoNormB0('b0', x, group_size=2, eval_stats='batch', data_format=fmt(layout))}
    res, vals, xc, after = _run(layout, build, False, fetch_updates=True)
    v, gamma, beta = vals['b0/v'], vals['b0/gamma'], vals['b0/beta']
    moving = np.broadcast_to(bc(vals['b0/variance/EMA'], xc.ndim), xc.shape)
    _close(res['moving'], ref_b0(xc, moving, v, gamma, beta), layout, 'moving')
    _close(res['batch'], ref_b0(xc, ref_batch_var(xc, 2)[0], v, gamma, beta), layout, 'batch')
    np.testing.assert_array_equal(after['b0/variance/EMA'], vals['b0/variance/EMA'].astype(np.float32))


# ----------------------------------------------------------------------------------------------
# MABN: forward and backward over several steps against a NumPy model of Algorithm 1

class RefMABN(object):
    """Yan et al. 2020, Algorithm 1 per micro-batch group, with the layer's schedules."""

    def __init__(self, m, mode, groups, channels, batch_steps, renorm_start, rmax, momentum, ema0, device0=None):
        self.m, self.mode, self.groups = m, mode, groups
        self.batch_steps, self.renorm_start, self.rmax, self.momentum = batch_steps, renorm_start, rmax, momentum
        rows = (m - 1, groups, channels) if mode == 'per_device' else (m - 1, channels)
        self.x2h, self.gzh = np.zeros(rows), np.zeros(rows)
        self.ema, self.t = np.array(ema0, np.float64), 0
        # per device, r compares χ̄ with the device's own running χ (a GPU keeps its own running_var)
        self.device = None if mode != 'per_device' else \
            np.ones((groups, channels)) if device0 is None else np.array(device0, np.float64)

    def _window(self, hist, cur):
        if self.m == 1:
            return cur, hist
        if self.mode == 'per_device':
            count = min(self.m, self.t + 1)
            return (hist.sum(0) + cur) / count, np.concatenate([hist[1:], cur[None]])
        seq = np.concatenate([hist, cur])
        means = np.stack([seq[i:i + self.m].sum(0) / min(self.m, self.t * self.groups + i + 1)
                          for i in range(self.groups)])
        return means, seq[-(self.m - 1):]

    def step(self, xc, gs, dy, gamma, beta):
        """Output, dL/dx for upstream ``dy``; then the updates.  xc, dy [N, C, ...]."""
        n, c = xc.shape[:2]
        xg = xc.reshape(n // gs, gs, c, -1)
        dyg = dy.reshape(xg.shape)
        x2 = (xg ** 2).mean(axis=(1, 3))
        window, x2_next = self._window(self.x2h, x2)
        chi = x2 if self.t < self.batch_steps else window
        std = np.sqrt(chi + EPS)[:, None, :, None]
        z = xg / std
        running = self.ema if self.device is None else self.device
        r = np.clip(np.sqrt(chi + EPS) / np.sqrt(running + EPS), 1 / self.rmax, self.rmax)
        r = np.ones_like(r) if self.t < self.renorm_start else r
        y = z * (r * gamma)[:, None, :, None] + beta[None, None, :, None]
        dz = dyg * (r * gamma)[:, None, :, None]
        gz = (dz * z).mean(axis=(1, 3))
        g_window, gz_next = self._window(self.gzh, gz)
        g_bar = gz if self.t < self.batch_steps else g_window
        dx = (dz - z * g_bar[:, None, :, None]) / std
        self.ema = self.momentum * self.ema + (1 - self.momentum) * chi.mean(0)
        if self.device is not None:
            self.device = self.momentum * self.device + (1 - self.momentum) * chi
        self.x2h, self.gzh, self.t = x2_next, gz_next, self.t + 1
        return y.reshape(xc.shape), dx.reshape(xc.shape)


@pytest.mark.parametrize('layout', LAYOUTS)
@pytest.mark.parametrize('mode, m, gs', [('per_device', 3, 2), ('per_device', 1, 4),
                                         ('official_simulation', 3, 2), ('official_simulation', 6, 2)])
def test_mabn_steps_match_algorithm_1(layout, mode, m, gs):
    steps, batch_steps, renorm_start, rmax = 5, 1, 2, 1.3
    rng = np.random.RandomState(5)
    xs = [make_x(layout, seed=s) * rng.uniform(0.5, 2.0) for s in range(steps)]
    proj = from_nc(rng.normal(size=to_nc(xs[0], layout).shape), layout).astype(np.float32)
    with graph_session() as sess:
        xt = tf1.placeholder(tf.float32, xs[0].shape)
        with TowerContext('', is_training=True):
            y = MovingAverageBatchNorm('mabn', xt, group_size=gs, history=m, history_mode=mode, momentum=0.8,
                                       batch_stats_steps=batch_steps, renorm_start=renorm_start, rmax=rmax,
                                       data_format=fmt(layout))
        dx = tf.gradients(tf.reduce_sum(y * proj), xt)[0]
        vals = _values(sess)
        updates = tf1.get_collection(tf1.GraphKeys.UPDATE_OPS)
        ref = RefMABN(m, mode, N // gs, C, batch_steps, renorm_start, rmax, 0.8, vals['mabn/variance/EMA'],
                      vals.get('mabn/device_moment'))
        for step, x in enumerate(xs):
            got_y, got_dx, _ = sess.run([y, dx, updates], {xt: x})
            want_y, want_dx = ref.step(to_nc(x, layout), gs, to_nc(proj, layout), vals['mabn/gamma'],
                                       vals['mabn/beta'])
            _close(got_y, want_y, layout, 'output, step %d' % step)
            _close(got_dx, want_dx, layout, 'dL/dx, step %d' % step)
            np.testing.assert_allclose(sess.run(_var('mabn/variance/EMA')), ref.ema, **TOL)
            if mode == 'per_device':
                np.testing.assert_allclose(sess.run(_var('mabn/device_moment')), ref.device, **TOL)
        if m > 1:
            np.testing.assert_allclose(sess.run(_var('mabn/x2_history')), ref.x2h, **TOL)
            np.testing.assert_allclose(sess.run(_var('mabn/gz_history')), ref.gzh, **TOL)
        assert sess.run(_var('mabn/step_count')) == steps


@pytest.mark.parametrize('renorm_start', [1000, 0])
def test_mabn_per_device_group_uses_only_its_own_history(renorm_start):
    """Changing one group's inputs at step 1 changes only that group's outputs at step 2: its
    window (χ̄) and, once r is on (``renorm_start=0``), the running χ that r divides by."""
    def two_steps(x1):
        with graph_session() as sess:
            xt = tf1.placeholder(tf.float32, x1.shape)
            with TowerContext('', is_training=True):
                y = MovingAverageBatchNorm('mabn', xt, group_size=2, history=4, batch_stats_steps=0,
                                           renorm_start=renorm_start)
            sess.run(tf1.global_variables_initializer())
            updates = tf1.get_collection(tf1.GraphKeys.UPDATE_OPS)
            sess.run(updates, {xt: x1})
            return sess.run(y, {xt: make_x('NHWC', seed=9)})
    x1 = make_x('NHWC', seed=8)
    base = two_steps(x1)
    x1[2:4] *= 5.0                                   # group 1
    moved = two_steps(x1)
    assert not np.allclose(base[2:4], moved[2:4])
    np.testing.assert_allclose(np.delete(base, [2, 3], 0), np.delete(moved, [2, 3], 0), **TOL)


@pytest.mark.parametrize('layout', LAYOUTS)
def test_mabn_inference(layout):
    def build(x):
        with tf1.variable_scope(tf1.get_variable_scope(), reuse=tf1.AUTO_REUSE):
            return {'moving': MovingAverageBatchNorm('m', x, group_size=2, data_format=fmt(layout)),
                    'batch': MovingAverageBatchNorm('m', x, group_size=2, eval_stats='batch',
                                                    data_format=fmt(layout))}
    res, vals, xc, _ = _run(layout, build, False)
    d, gamma, beta = xc.ndim, bc(vals['m/gamma'], xc.ndim), bc(vals['m/beta'], xc.ndim)
    moving = xc / np.sqrt(bc(vals['m/variance/EMA'], d) + EPS) * gamma + beta
    _close(res['moving'], moving, layout)
    xg = xc.reshape(N // 2, 2, C, -1)
    x2 = (xg ** 2).mean(axis=(1, 3))[:, None, :, None]
    batch = (xg / np.sqrt(x2 + EPS)).reshape(xc.shape) * gamma + beta
    _close(res['batch'], batch, layout)


def test_mabn_refuses_a_second_training_tower():
    with graph_session():
        with TrainTowerContext('tower0', vs_name='', index=0, total=2):
            MovingAverageBatchNorm('m', tf.zeros([4, 3, 3, 2]), group_size=2)
        with tf1.variable_scope(tf1.get_variable_scope(), reuse=True), \
                TrainTowerContext('tower1', vs_name='', index=1, total=2):
            with pytest.raises(ValueError, match='per-device histories in one training tower'):
                MovingAverageBatchNorm('m', tf.zeros([4, 3, 3, 2]), group_size=2)


# ----------------------------------------------------------------------------------------------
# gradients against central differences

GRADIENT_LAYERS = {
    # TLU's kink max(y, τ) is checked on its own below (central differences straddle it)
    'frn': lambda x, rng: FilterResponseNorm('norm', x, nonlinearity=False),
    'frn-learned-eps': lambda x, rng: FilterResponseNorm('norm', x, learned_epsilon=True, epsilon_init=0.3,
                                                         nonlinearity=False),
    'evonorm_s0': lambda x, rng: EvoNormS0('norm', x, channel_groups=2),
    'evonorm_b0': lambda x, rng: EvoNormB0('norm', x, group_size=2),
    # in its first batch_stats_steps MABN's custom backward pass is the exact gradient
    'mabn': lambda x, rng: MovingAverageBatchNorm('norm', x, group_size=2, history=4),
    'mabn-simulation': lambda x, rng: MovingAverageBatchNorm('norm', x, group_size=2, history=4,
                                                             history_mode='official_simulation'),
}


@pytest.mark.parametrize('kind', sorted(GRADIENT_LAYERS))
def test_gradients_match_finite_differences(kind):
    checker = GradientChecker(GRADIENT_LAYERS[kind], seed=sorted(GRADIENT_LAYERS).index(kind), x_shift=0.5)
    try:
        errors = checker.check()
        assert 'x' in errors and 'norm/gamma' in errors and 'norm/beta' in errors
        if kind.startswith('evonorm'):
            assert 'norm/v' in errors
    finally:
        checker.close()


def test_tlu_gradient_is_the_threshold_where_it_wins():
    x = make_x('NHWC')
    proj = np.random.RandomState(6).normal(size=x.shape)
    with graph_session() as sess:
        xt = tf.constant(x)
        with TowerContext('', is_training=True):
            z = FilterResponseNorm('frn', xt)
            y = fused_activation_linear(z)
        tau = _var('frn/tau')
        grads = tf.gradients(tf.reduce_sum(z * proj), [tau, _var('frn/beta')])
        sess.run(tf1.global_variables_initializer())
        tau.load([-0.5, 0.0, 0.4, 1.0], sess)
        got_tau, got_beta, y_val = sess.run(grads + [y])
    wins = y_val < np.array([-0.5, 0.0, 0.4, 1.0])          # z = max(y, τ): dz/dτ = [τ wins], dz/dy the rest
    assert wins.any() and not wins.all()
    np.testing.assert_allclose(got_tau, (proj * wins).sum(axis=(0, 1, 2)), **TOL)
    np.testing.assert_allclose(got_beta, (proj * ~wins).sum(axis=(0, 1, 2)), **TOL)


# ----------------------------------------------------------------------------------------------
# dtypes, the flow's fused activations, bad options

_DTYPE_LAYERS = {
    'frn': lambda x: FilterResponseNorm('n', x),
    'evonorm_s0': lambda x: EvoNormS0('n', x, channel_groups=2),
    'evonorm_b0': lambda x: EvoNormB0('n', x, group_size=2),
    'mabn': lambda x: MovingAverageBatchNorm('n', x, group_size=2),
}


@pytest.mark.parametrize('kind', sorted(_DTYPE_LAYERS))
@pytest.mark.parametrize('dtype', [tf.float16, tf.bfloat16])
def test_low_precision_inputs_keep_float32_statistics(kind, dtype):
    x = make_x('NHWC')
    outs = []
    for dt in (tf.float32, dtype):
        with graph_session() as sess:
            with TowerContext('', is_training=True):
                y = _DTYPE_LAYERS[kind](tf.cast(tf.constant(x), dt))
            assert y.dtype == dt
            assert all(v.dtype.base_dtype == tf.float32 for v in tf1.global_variables()
                       if v.op.name != 'n/step_count')
            sess.run(tf1.global_variables_initializer())
            outs.append(sess.run(tf.cast(y, tf.float32)))
    np.testing.assert_allclose(outs[1], outs[0], atol=0.05 if dtype == tf.bfloat16 else 0.01, rtol=0.02)


@pytest.mark.parametrize('name', ['frn', 'evonorm_s0', 'evonorm_b0'])
def test_flow_relu_is_the_layer_activation_and_add_takes_its_affine_output(name):
    x = make_x('NHWC')
    with graph_session() as sess:
        options = {'evonorm_s0': dict(channel_groups=2), 'evonorm_b0': dict(group_size=2)}.get(name, {})
        with TowerContext('', is_training=True), kn.norm_scope(name, **options):
            y = F.norm('n', tf.constant(x))
            activated, added = F.relu(y), F.add(y, tf.zeros_like(y))
        sess.run(tf1.global_variables_initializer())
        got_y, got_act, got_add, affine = sess.run([y, activated, added, fused_activation_linear(y)])
    np.testing.assert_array_equal(got_act, got_y)          # no second ReLU after the layer's own
    np.testing.assert_array_equal(got_add, affine)
    assert (got_y < 0).any() or name == 'frn'             # EvoNorm's outputs go negative; a ReLU's would not


def test_norm_scope_options_of_the_new_rows():
    kn.NormSpec('evonorm_b0', group_size=2, eval_stats='batch', momentum=0.99)
    kn.NormSpec('mabn', group_size=2, history=8, history_mode='official_simulation')
    kn.NormSpec('frn', learned_epsilon=True, weight_standardization=True)


_BAD = {
    'frn epsilon': (lambda: FilterResponseNorm('L', tf.zeros([4, 3, 3, 4]), epsilon=0.0),
                    'epsilon must be a number > 0'),
    'frn learned_epsilon': (lambda: kn.NormSpec('frn', learned_epsilon='yes'), r'learned_epsilon .* True or False'),
    's0 channels': (lambda: EvoNormS0('L', tf.zeros([4, 3, 3, 6]), channel_groups=4),
                    '6 channels are not divisible by channel_groups=4'),
    's0 groups': (lambda: kn.NormSpec('evonorm_s0', channel_groups=0), 'channel_groups must be a positive integer'),
    'b0 epsilon': (lambda: EvoNormB0('L', tf.zeros([4, 3, 3, 4]), epsilon=-1e-5), 'epsilon must be a number > 0'),
    'b0 group_size': (lambda: EvoNormB0('L', tf.zeros([4, 3, 3, 4]), group_size=3),
                      'batch of 4 samples is not divisible by group_size=3'),
    'b0 eval_stats': (lambda: kn.NormSpec('evonorm_b0', eval_stats='precise'), 'eval_stats must be one of'),
    'mabn history': (lambda: kn.NormSpec('mabn', history=0), r'history \(steps in the moving window\) must be an '
                                                             r'integer >= 1, got 0'),
    'mabn mode': (lambda: MovingAverageBatchNorm('L', tf.zeros([4, 4]), history_mode='simulated'),
                  "history_mode must be one of .*'simulated'"),
    'mabn rmax': (lambda: kn.NormSpec('mabn', rmax=0.5), 'MABN needs rmax >= 1'),
    'mabn schedule': (lambda: kn.NormSpec('mabn', batch_stats_steps=-1), 'batch_stats_steps must be an integer'),
    'mabn unbiased': (lambda: kn.NormSpec('mabn', unbiased_variance=True), 'unbiased_variance do not apply'),
    'mabn dynamic batch': (lambda: MovingAverageBatchNorm('L', tf1.placeholder(tf.float32, [None, 4]),
                                                          group_size=2), 'needs a static tower batch'),
}


@pytest.mark.parametrize('case', sorted(_BAD))
def test_bad_options_raise_one_clear_line(case):
    build, match = _BAD[case]
    with graph_session(), TowerContext('', is_training=True):
        with pytest.raises(ValueError, match=match) as err:
            build()
    assert '\n' not in str(err.value)
