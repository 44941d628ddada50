"""Forward behaviour of the normalization layers, checked against float64 NumPy references.

Covers: training / inference outputs of every layer in NHWC, NCHW and 2-D layouts with
micro-batch groups; group isolation; low-precision dtypes; the moving-average (EMA) update
policies and towers; input validation messages; NaN/Inf behaviour.

Everything is graph mode: ``tf.Graph`` + tensorpack ``TowerContext`` + ``tf.compat.v1.Session``.
"""
import zlib

import kalman_norm as kn  # noqa: I001  (must be imported before tensorflow / tensorpack)
from kalman_norm import flow as F
from kalman_norm.layers import (BatchKalmanNorm, BiasOnly, GroupKalmanNorm, GroupNorm,
                                LayerNormalization, MicroBatchNorm, MicroBatchRenorm)
from kalman_norm.layers.kalman import kn_diagnostics

import numpy as np
import pytest
import tensorflow as tf
from tensorpack.tfutils.tower import TowerContext, TrainTowerContext

from conftest import graph_session

tf1 = tf.compat.v1
EPS = 1e-5
N, C, HW = 8, 4, 3                     # tower batch, channels, spatial size
LAYOUTS = ('NHWC', 'NCHW', '2D')
ATOL = RTOL = 1e-4


# ----------------------------------------------------------------------------------------------
# graph / session helpers
# ----------------------------------------------------------------------------------------------

def _seed(name, seed):
    return zlib.crc32(('%s/%d' % (name, seed)).encode())


def _random_value(name, shape, seed):
    """Deterministic, non-trivial values for the layers' variables (by variable basename)."""
    rng = np.random.RandomState(_seed(name, seed))
    if name.endswith('/gamma'):
        return rng.uniform(0.5, 1.5, shape)
    if name.endswith('/beta'):
        return rng.normal(0.0, 0.5, shape)
    if name.endswith('mean/EMA'):
        return rng.normal(0.0, 0.7, shape)
    if name.endswith('variance/EMA'):
        return rng.uniform(0.3, 3.0, shape)
    if name.endswith('/stddev/EMA'):             # BRN's σ: the state its variance/EMA is σ² - ε of
        return np.sqrt(_random_value(name[:-len('stddev/EMA')] + 'variance/EMA', shape, seed) + EPS)
    if name.endswith('prior_offset/EMA'):
        return rng.normal(0.0, 0.3, shape)
    if name.endswith('prior_log_ratio/EMA'):
        return rng.uniform(-0.5, 0.5, shape)
    if name.endswith('/noise_rho'):
        return rng.uniform(-3.0, -1.0, shape)        # r = softplus(rho) in ~[0.05, 0.31]
    if name.endswith('/gain_logit'):
        return rng.uniform(-1.0, 1.0, shape)         # learned q in ~[0.27, 0.73]
    return None


def init_vars(sess, seed=0, randomize=True):
    """Initialise all variables, overwrite the layers' ones with random values; {name: value}."""
    variables = tf1.global_variables()
    sess.run(tf1.global_variables_initializer())
    assigns = []
    for v in variables:
        val = _random_value(v.op.name, v.shape.as_list(), seed) if randomize else None
        if val is not None:
            assigns.append(v.assign(val.astype(v.dtype.base_dtype.as_numpy_dtype)))
    if assigns:                    # one run: every new fetch set costs a graph optimisation
        sess.run(tf.group(*assigns))
    return dict(zip([v.op.name for v in variables], sess.run(variables)))


def get_var(name):
    matches = [v for v in tf1.global_variables() if v.op.name == name]
    assert len(matches) == 1, (name, [v.op.name for v in tf1.global_variables()])
    return matches[0]


def shape_of(layout, n=N):
    return (n, C) if layout == '2D' else ((n, HW, HW, C) if layout == 'NHWC' else (n, C, HW, HW))


def fmt(layout):
    return 'NCHW' if layout == 'NCHW' else 'NHWC'


def make_x(layout, seed=0, n=N):
    """float32 input with distinct per-channel location and scale."""
    rng = np.random.RandomState(seed)
    canon = (n, C) if layout == '2D' else (n, C, HW, HW)
    xc = rng.normal(size=canon)
    bshape = [1, C] + [1] * (len(canon) - 2)
    xc = xc * rng.uniform(0.7, 2.0, C).reshape(bshape) + rng.normal(0.0, 1.0, C).reshape(bshape)
    return from_nc(xc, layout).astype(np.float32)


def make_prior(groups, seed=1):
    rng = np.random.RandomState(seed)
    return (rng.normal(0.3, 0.6, (groups, C)).astype(np.float32),
            rng.uniform(0.6, 2.5, (groups, C)).astype(np.float32))


def num_groups(gs, n=N):
    return 1 if gs is None else n // gs


# ----------------------------------------------------------------------------------------------
# float64 NumPy references (on the canonical [N, C, ...] layout)
# ----------------------------------------------------------------------------------------------

def to_nc(x, layout):
    x = np.asarray(x, np.float64)
    return x.transpose(0, 3, 1, 2) if layout == 'NHWC' else x


def from_nc(y, layout):
    return y.transpose(0, 2, 3, 1) if layout == 'NHWC' else y


def bc(vec, ndim):
    return np.asarray(vec, np.float64).reshape([1, -1] + [1] * (ndim - 2))


def softplus(v):
    return np.log1p(np.exp(v))


def sigmoid(v):
    return 1.0 / (1.0 + np.exp(-v))


def ref_group_moments(xc, gs):
    n, c = xc.shape[:2]
    g = n if gs is None else gs
    xg = xc.reshape(n // g, g, c, -1)
    return xg.mean(axis=(1, 3)), xg.var(axis=(1, 3))


def ref_normalize_grouped(xc, gs, mean, var, gamma, beta):
    n, c = xc.shape[:2]
    g = n if gs is None else gs
    xg = xc.reshape(n // g, g, c, -1)
    gamma, beta = np.broadcast_to(gamma, mean.shape), np.broadcast_to(beta, mean.shape)   # [C] or [G, C]
    y = (xg - mean[:, None, :, None]) / np.sqrt(var + EPS)[:, None, :, None]
    y = y * gamma[:, None, :, None] + beta[:, None, :, None]
    return y.reshape(xc.shape)


def ref_bn(xc, gs, gamma, beta):
    mean, var = ref_group_moments(xc, gs)
    return ref_normalize_grouped(xc, gs, mean, var, gamma, beta)


def ref_global(xc, mean, var, gamma, beta):
    return (xc - bc(mean, xc.ndim)) / np.sqrt(bc(var, xc.ndim) + EPS) * bc(gamma, xc.ndim) + bc(beta, xc.ndim)


def ref_R(rho, pv):
    """The default (relative) process noise: R = softplus(rho) * prior variance, per channel."""
    return softplus(rho) * pv


def ref_eq7(pm, pv, bm, bv, q, R=None, pooled=True, guard=100.0):
    """Eq. 7 update (R added to the prior variance pv); asserts that the guard (if any) does not
    trigger for the test data."""
    pv = pv + (0.0 if R is None else R)
    mean = (1 - q) * pm + q * bm
    var = (1 - q) * pv + q * bv
    if pooled:
        var = var + q * (1 - q) * (bm - pm) ** 2
    if guard is not None:
        ratio = np.maximum(((pv + EPS) / (bv + EPS)).mean(-1), ((bv + EPS) / (pv + EPS)).mean(-1))
        assert (ratio < guard).all(), 'test setup: the guard would trigger (ratios %s)' % ratio
    return mean, var


def ref_gn_moments(xc, groups):
    n, c = xc.shape[:2]
    xr = xc.reshape(n, groups, c // groups, -1)
    return xr.mean(axis=(2, 3)), xr.var(axis=(2, 3))


def ref_gn_apply(xc, groups, mean, var, gamma, beta):
    n, c = xc.shape[:2]
    xr = xc.reshape(n, groups, c // groups, -1)
    y = ((xr - mean[:, :, None, None]) / np.sqrt(var + EPS)[:, :, None, None]).reshape(xc.shape)
    return y * bc(gamma, xc.ndim) + bc(beta, xc.ndim)


def ref_gkn(xc, gs, groups, pm, pv, q, R, pooled, guard, gamma, beta):
    """GroupKalmanNorm's documented design: the per-channel prior of micro-batch group b is
    pooled into channel groups (mean of means; mean variance + variance of the means; R
    averaged), given to every sample of b and updated with the sample's GN statistics."""
    n, c = xc.shape[:2]
    cg = c // groups
    sm, sv = ref_gn_moments(xc, groups)                                  # [N, groups]
    m, v = pm.reshape(-1, groups, cg), pv.reshape(-1, groups, cg)
    gpm, gpv = m.mean(2), v.mean(2) + m.var(2)                           # [G, groups]
    gR = None if R is None else np.broadcast_to(R, pv.shape).reshape(-1, groups, cg).mean(2)
    reps = n if gs is None else gs
    gpm, gpv = np.repeat(gpm, reps, 0), np.repeat(gpv, reps, 0)         # [N, groups]
    gR = None if gR is None else np.repeat(gR, reps, 0)
    mean, var = ref_eq7(gpm, gpv, sm, sv, q, gR, pooled, guard)
    return ref_gn_apply(xc, groups, mean, var, gamma, beta)


def ref_brn(xc, gs, gamma, beta, ema_mean, ema_var, rmax, dmax, stats=None):
    mean, var = ref_group_moments(xc, gs)
    std, mstd = np.sqrt(var + EPS), np.sqrt(ema_var + EPS)
    r = np.clip(std / mstd, 1.0 / rmax, rmax)
    d = np.clip((mean - ema_mean) / mstd, -dmax, dmax)
    if stats is not None:
        stats.append((std / mstd, r, (mean - ema_mean) / mstd, d))
    return ref_normalize_grouped(xc, gs, mean, var, gamma * r, beta + gamma * d)


def ref_ln(xc, gamma, beta):
    axes = tuple(range(1, xc.ndim))
    m, v = xc.mean(axes, keepdims=True), xc.var(axes, keepdims=True)
    return (xc - m) / np.sqrt(v + EPS) * bc(gamma, xc.ndim) + bc(beta, xc.ndim)


def assert_close(actual, expected_nc, layout, what='', atol=ATOL, rtol=RTOL):
    np.testing.assert_allclose(np.asarray(actual, np.float64), from_nc(expected_nc, layout),
                               atol=atol, rtol=rtol, err_msg=what)


def gs_list(layout):
    # a 2-D group of one sample has zero variance (output = beta); 4-D groups of 1 use positions
    return (None, 2, 4) if layout == '2D' else (None, 1, 2, 4)


def run_layers(layout, build, training, seed=0, x=None):
    """Build layers with ``build(x_tensor) -> {key: tensor}`` in a fresh graph and tower;
    returns (outputs, variable values, input)."""
    x = make_x(layout, seed) if x is None else x
    with graph_session() as sess:
        xt = tf1.placeholder(tf.float32, x.shape, name='x')
        with TowerContext('', is_training=training):
            outs = build(xt)
        vals = init_vars(sess, seed)
        res = sess.run(outs, {xt: x})
    return res, vals, x


# ----------------------------------------------------------------------------------------------
# 1. forward against NumPy
# ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize('layout', LAYOUTS)
def test_micro_batch_norm_forward(layout):
    df = fmt(layout)

    def train(x):
        return {gs: MicroBatchNorm('L%s' % gs, x, group_size=gs, data_format=df) for gs in gs_list(layout)}

    res, vals, x = run_layers(layout, train, True)
    xc = to_nc(x, layout)
    for gs, y in res.items():
        assert y.shape == x.shape and y.dtype == np.float32
        assert_close(y, ref_bn(xc, gs, vals['L%s/gamma' % gs], vals['L%s/beta' % gs]), layout,
                     'train group_size=%s' % gs)

    def infer(x):
        outs = {('batch', gs): MicroBatchNorm('B%s' % gs, x, group_size=gs, eval_stats='batch',
                                             data_format=df) for gs in gs_list(layout)}
        outs['moving'] = MicroBatchNorm('M', x, group_size=2, data_format=df)
        return outs

    res, v, x = run_layers(layout, infer, False, seed=3)
    xc = to_nc(x, layout)
    assert_close(res['moving'], ref_global(xc, v['M/mean/EMA'], v['M/variance/EMA'], v['M/gamma'], v['M/beta']),
                 layout, 'inference moving')
    for gs in gs_list(layout):
        assert_close(res[('batch', gs)], ref_bn(xc, gs, v['B%s/gamma' % gs], v['B%s/beta' % gs]), layout,
                     'inference batch group_size=%s' % gs)


@pytest.mark.parametrize('layout', LAYOUTS)
def test_batch_kalman_norm_without_prior_is_bn(layout):
    df = fmt(layout)

    def train(x):
        outs = {}
        for gs in gs_list(layout):
            outs[('none', gs)] = BatchKalmanNorm('N%s' % gs, x, prior=None, group_size=gs, data_format=df)
            outs[('auto', gs)] = BatchKalmanNorm('A%s' % gs, x, group_size=gs, data_format=df)  # nothing attached
        return outs

    res, vals, x = run_layers(layout, train, True)
    xc = to_nc(x, layout)
    for (kind, gs), y in res.items():
        name = ('N%s' if kind == 'none' else 'A%s') % gs
        assert_close(y, ref_bn(xc, gs, vals[name + '/gamma'], vals[name + '/beta']), layout, name)

    def infer(x):
        return {'moving': BatchKalmanNorm('M', x, prior=None, group_size=2, data_format=df),
                'batch': BatchKalmanNorm('B', x, prior=None, group_size=2, eval_stats='batch', data_format=df)}

    res, v, x = run_layers(layout, infer, False, seed=4)
    xc = to_nc(x, layout)
    assert_close(res['moving'], ref_global(xc, v['M/mean/EMA'], v['M/variance/EMA'], v['M/gamma'], v['M/beta']),
                 layout, 'inference moving')
    assert_close(res['batch'], ref_bn(xc, 2, v['B/gamma'], v['B/beta']), layout, 'inference batch')


def _bkn_prior_layers(x, layout, gs_values, priors, eval_stats='moving'):
    """'P': gain 0.1, pooled variance, guard 100 (defaults), R on and the input hand-on (the
    paper's); 'U': learned gain, R off, no pooled term, no guard.  For group_size=4 the prior is
    one [C] row shared by all groups.  2-D groups of 2 samples can have tiny variances that would
    trip the guard: no guard there."""
    df = fmt(layout)
    guard = None if layout == '2D' else 100.0
    outs = {}
    for gs in gs_values:
        pm, pv = priors[gs]
        if gs == 4:
            pm, pv = pm[0], pv[0]
        p = BatchKalmanNorm('P%s' % gs, x, prior=(pm, pv), group_size=gs, guard_ratio=guard, eval_stats=eval_stats,
                            process_noise=True, propagate='input', data_format=df)
        u = BatchKalmanNorm('U%s' % gs, x, prior=(pm, pv), group_size=gs, gain='learned', process_noise=False,
                            pooled_variance=False, guard_ratio=None, eval_stats=eval_stats, data_format=df)
        outs[('P', gs)], outs[('U', gs)] = p, u
        if p.posterior is not None:
            outs[('P_post', gs)] = (p.posterior.mean, p.posterior.var)
            est = kn.get_estimate(p)
            outs[('P_est', gs)] = est.moments()
    return outs


def _bkn_prior_ref(xc, gs, kind, vals, priors):
    guard = None if xc.ndim == 2 else 100.0
    pm, pv = [np.asarray(a, np.float64) for a in priors[gs]]
    if gs == 4:
        pm, pv = np.broadcast_to(pm[:1], pm.shape), np.broadcast_to(pv[:1], pv.shape)
    bm, bv = ref_group_moments(xc, gs)
    name = '%s%s' % (kind, gs)
    if kind == 'P':
        mean, var = ref_eq7(pm, pv, bm, bv, 0.1, ref_R(vals[name + '/noise_rho'], pv), pooled=True, guard=guard)
    else:
        mean, var = ref_eq7(pm, pv, bm, bv, sigmoid(vals[name + '/gain_logit']), None, pooled=False, guard=None)
    return ref_normalize_grouped(xc, gs, mean, var, vals[name + '/gamma'], vals[name + '/beta']), (mean, var)


@pytest.mark.parametrize('layout', LAYOUTS)
def test_batch_kalman_norm_with_prior_eq7(layout):
    gsl = gs_list(layout)
    priors = {gs: make_prior(num_groups(gs), seed=10 + (gs or 0)) for gs in gsl}
    res, vals, x = run_layers(layout, lambda x: _bkn_prior_layers(x, layout, gsl, priors), True)
    xc = to_nc(x, layout)
    for gs in gsl:
        for kind in 'PU':
            expected, (mean, var) = _bkn_prior_ref(xc, gs, kind, vals, priors)
            assert_close(res[(kind, gs)], expected, layout, '%s group_size=%s' % (kind, gs))
        # the posterior (Eq. 7) is attached and handed on with propagate='input'
        _, (mean, var) = _bkn_prior_ref(xc, gs, 'P', vals, priors)
        for key in ('P_post', 'P_est'):
            np.testing.assert_allclose(res[(key, gs)][0], mean, atol=ATOL, rtol=RTOL)
            np.testing.assert_allclose(res[(key, gs)][1], var, atol=ATOL, rtol=RTOL)

    # inference: option B (batch) runs Eq. 7 online; option A (moving) uses the EMA only
    gsl_inf = (2, 4)
    res, vals, x = run_layers(layout, lambda x: _bkn_prior_layers(x, layout, gsl_inf, priors, 'batch'), False, 5)
    xc = to_nc(x, layout)
    for gs in gsl_inf:
        for kind in 'PU':
            expected, _ = _bkn_prior_ref(xc, gs, kind, vals, priors)
            assert_close(res[(kind, gs)], expected, layout, 'inference batch %s group_size=%s' % (kind, gs))
    res, v, x = run_layers(layout, lambda x: _bkn_prior_layers(x, layout, (2,), priors, 'moving'), False, 6)
    xc = to_nc(x, layout)
    for kind in 'PU':
        nm = '%s2' % kind
        assert_close(res[(kind, 2)], ref_global(xc, v[nm + '/mean/EMA'], v[nm + '/variance/EMA'],
                                                v[nm + '/gamma'], v[nm + '/beta']), layout, 'inference moving')


@pytest.mark.parametrize('layout', ('NHWC', 'NCHW'))
def test_batch_kalman_norm_moving_prior_source(layout):
    """prior_source='moving' (a study's control): where a layer has a prior, its moving averages
    replace it in Eq. 7 (read before this step's EMA update), without gradient; without a prior
    the layer stays BN; and the flow's prior no longer reaches the output."""
    df = fmt(layout)
    priors = make_prior(num_groups(2), seed=21)
    no_grad = []

    def build(x):
        m = BatchKalmanNorm('M', x, prior=priors, group_size=2, prior_source='moving', ema_update='internal',
                            data_format=df)
        n = BatchKalmanNorm('N', x, prior=None, group_size=2, prior_source='moving', data_format=df)
        ema = [get_var('M/mean/EMA'), get_var('M/variance/EMA')]
        with tf.control_dependencies([m]):
            after = [tf.identity(v) for v in ema]
        grads = tf1.gradients(tf.reduce_sum(m * m), ema + [x])
        no_grad.extend(g is None for g in grads[:2])
        return {'M': m, 'N': n, 'post': (m.posterior.mean, m.posterior.var), 'after': after, 'grad_x': grads[2]}

    res, vals, x = run_layers(layout, build, True, seed=7)
    xc = to_nc(x, layout)
    bm, bv = ref_group_moments(xc, 2)
    pm, pv = [np.broadcast_to(vals['M/' + k + '/EMA'].astype(np.float64), bm.shape) for k in ('mean', 'variance')]
    mean, var = ref_eq7(pm, pv, bm, bv, 0.1, None, pooled=True, guard=100.0)
    assert_close(res['M'], ref_normalize_grouped(xc, 2, mean, var, vals['M/gamma'], vals['M/beta']), layout, 'moving prior')
    np.testing.assert_allclose(res['post'][0], mean, atol=ATOL, rtol=RTOL)
    np.testing.assert_allclose(res['post'][1], var, atol=ATOL, rtol=RTOL)
    # the EMA did move in this step (so the prior above is the value before the update)
    np.testing.assert_allclose(res['after'][0], 0.9 * vals['M/mean/EMA'] + 0.1 * mean.mean(0), atol=ATOL, rtol=RTOL)
    assert no_grad == [True, True] and np.isfinite(res['grad_x']).all()
    assert_close(res['N'], ref_bn(xc, 2, vals['N/gamma'], vals['N/beta']), layout, 'no prior: BN')
    with pytest.raises(ValueError, match='prior_source must be one of'):
        kn.NormSpec('bkn', group_size=2, prior_source='ema')
    with pytest.raises(ValueError, match='prior_source do not apply to .gkn.'):
        kn.NormSpec('gkn', group_size=2, prior_source='moving')


def _check_calibrated_output(y, x, vals, pm, pv, layout, what):
    """Assert layer 'K' (groups of 2, q = 0.1) normalised with Eq. 7 on the prior N(pm + d, pv·e^l),
    d and l its calibration's values; returns (posterior), (group moments), (d, l)."""
    xc = to_nc(x, layout)
    bm, bv = ref_group_moments(xc, 2)
    d, l = vals['K/prior_offset/EMA'], vals['K/prior_log_ratio/EMA']
    mean, var = ref_eq7(pm + d, pv * np.exp(l), bm, bv, 0.1, None, pooled=True, guard=100.0)
    assert_close(y, ref_normalize_grouped(xc, 2, mean, var, vals['K/gamma'], vals['K/beta']), layout, what)
    return (mean, var), (bm, bv), (d, l)


@pytest.mark.parametrize('layout', ('NHWC', 'NCHW'))
def test_batch_kalman_norm_calibrated_prior_source(layout):
    """prior_source='calibrated': Eq. 7 weighs N(µ̂ + d, Σ̂·e^l) with d, l the running bias of the
    prediction (before this step's update); the step then folds mean_g(x̄_g − µ̂_g) and
    log(mean_g S_g / mean_g Σ̂_g) into d and l with the layer's momentum; the gradient reaches the
    prediction, not d or l; at inference with online statistics d and l are used, not updated."""
    df = fmt(layout)
    pm, pv = make_prior(num_groups(2), seed=22)
    no_grad = []

    def build(x):
        pmt, pvt = tf.constant(pm), tf.constant(pv)
        y = BatchKalmanNorm('K', x, prior=(pmt, pvt), group_size=2, prior_source='calibrated',
                            ema_update='internal', data_format=df)
        cal = [get_var('K/prior_offset/EMA'), get_var('K/prior_log_ratio/EMA')]
        with tf.control_dependencies([y]):
            after = [tf.identity(v) for v in cal]
        grads = tf1.gradients(tf.reduce_sum(y * y), cal + [pmt, pvt])
        no_grad.extend(g is None for g in grads)
        return {'y': y, 'post': (y.posterior.mean, y.posterior.var), 'after': after,
                'grad_prior': [g for g in grads[2:] if g is not None]}

    res, vals, x = run_layers(layout, build, True, seed=8)
    (mean, var), (bm, bv), (d, l) = _check_calibrated_output(res['y'], x, vals, pm, pv, layout, 'calibrated prior')
    np.testing.assert_allclose(res['post'][0], mean, atol=ATOL, rtol=RTOL)
    np.testing.assert_allclose(res['post'][1], var, atol=ATOL, rtol=RTOL)
    np.testing.assert_allclose(res['after'][0], 0.9 * d + 0.1 * (bm - pm).mean(0), atol=ATOL, rtol=RTOL)
    np.testing.assert_allclose(res['after'][1], 0.9 * l + 0.1 * np.log((bv.mean(0) + EPS) / (pv.mean(0) + EPS)),
                               atol=ATOL, rtol=RTOL)
    assert no_grad == [True, True, False, False]
    assert all(np.isfinite(g).all() and np.abs(g).max() > 0 for g in res['grad_prior'])

    def infer(x):
        y = BatchKalmanNorm('K', x, prior=(pm, pv), group_size=2, prior_source='calibrated', eval_stats='batch',
                            data_format=df)
        return {'y': y, 'cal': [get_var('K/prior_offset/EMA'), get_var('K/prior_log_ratio/EMA')]}

    res, vals, x = run_layers(layout, infer, False, seed=9)
    _, _, (d, _) = _check_calibrated_output(res['y'], x, vals, pm, pv, layout, 'inference, online statistics')
    np.testing.assert_allclose(res['cal'][0], d)


def test_batch_kalman_norm_prior_gradient_switch():
    """prior_gradient=False (a study's control): the same output, no gradient into the prior."""
    pm, pv = make_prior(num_groups(2), seed=24)
    reached = {}

    def build(x):
        outs = {}
        for flag in (True, False):
            pmt, pvt = tf.constant(pm), tf.constant(pv)
            y = BatchKalmanNorm('K%d' % flag, x, prior=(pmt, pvt), group_size=2, prior_gradient=flag,
                                data_format='NHWC')
            reached[flag] = [g is not None for g in tf1.gradients(tf.reduce_sum(y * y), [pmt, pvt])]
            outs[flag] = y
        return outs

    res, vals, x = run_layers('NHWC', build, True, seed=11, x=None)
    assert reached == {True: [True, True], False: [False, False]}
    xc = to_nc(x, 'NHWC')
    bm, bv = ref_group_moments(xc, 2)
    mean, var = ref_eq7(pm, pv, bm, bv, 0.1, None, pooled=True, guard=100.0)
    for flag in (True, False):
        name = 'K%d' % flag
        assert_close(res[flag], ref_normalize_grouped(xc, 2, mean, var, vals[name + '/gamma'], vals[name + '/beta']),
                     'NHWC', name)
    with pytest.raises(ValueError, match='prior_gradient'):
        kn.NormSpec('bkn', group_size=2, prior_gradient='no')


def test_calibrated_prior_leaves_out_non_finite_prior_rows():
    """A group whose prediction is not finite (the guard hands it its batch statistics) does not
    enter the running bias: the others' innovations do."""
    pm, pv = make_prior(num_groups(2), seed=23)
    pm[0, 1], pv[1, 2] = np.nan, np.inf

    def build(x):
        y = BatchKalmanNorm('K', x, prior=(pm, pv), group_size=2, prior_source='calibrated',
                            ema_update='internal', data_format='NHWC')
        cal = [get_var('K/prior_offset/EMA'), get_var('K/prior_log_ratio/EMA')]
        with tf.control_dependencies([y]):
            return {'y': y, 'after': [tf.identity(v) for v in cal]}

    res, vals, x = run_layers('NHWC', build, True, seed=10)
    bm, bv = ref_group_moments(to_nc(x, 'NHWC'), 2)
    valid = np.isfinite(pm).all(-1, keepdims=True) & np.isfinite(pv).all(-1, keepdims=True)
    assert np.isfinite(res['y']).all() and np.isfinite(res['after']).all()
    d, l = vals['K/prior_offset/EMA'], vals['K/prior_log_ratio/EMA']
    # validity is per entry: channel 1 loses group 0, channel 2 loses group 1
    ok = np.isfinite(pm) & np.isfinite(pv)
    offset = np.array([(bm - np.where(ok, pm, 0))[ok[:, c], c].mean() for c in range(C)])
    ratio = np.array([(bv[ok[:, c], c].mean() + EPS) / (pv[ok[:, c], c].mean() + EPS) for c in range(C)])
    np.testing.assert_allclose(res['after'][0], 0.9 * d + 0.1 * offset, atol=ATOL, rtol=RTOL)
    np.testing.assert_allclose(res['after'][1], 0.9 * l + 0.1 * np.log(ratio), atol=ATOL, rtol=RTOL)
    assert not valid.all()


@pytest.mark.parametrize('layout', LAYOUTS)
def test_group_norm_forward(layout):
    df = fmt(layout)
    cgs = (1, 2, 32)            # 32 is capped to C=4 groups of one channel

    def build(x):
        return {cg: GroupNorm('G%d' % cg, x, channel_groups=cg, data_format=df) for cg in cgs}

    for training in (True, False):
        res, vals, x = run_layers(layout, build, training, seed=7 + training)
        xc = to_nc(x, layout)
        for cg, y in res.items():
            groups = min(cg, C)
            m, v = ref_gn_moments(xc, groups)
            assert_close(y, ref_gn_apply(xc, groups, m, v, vals['G%d/gamma' % cg], vals['G%d/beta' % cg]),
                         layout, 'training=%s channel_groups=%d' % (training, cg))


@pytest.mark.parametrize('layout', LAYOUTS)
def test_group_kalman_norm_forward(layout):
    df = fmt(layout)
    gsl = gs_list(layout)
    groups = 2
    guard = None if layout == '2D' else 100.0   # 2-D: GN sets of 2 values, tiny variances trip the guard
    priors = {gs: make_prior(num_groups(gs), seed=20 + (gs or 0)) for gs in gsl}

    def build(x):
        outs = {}
        for gs in gsl:
            pm, pv = priors[gs]
            outs[('none', gs)] = GroupKalmanNorm('N%s' % gs, x, prior=None, group_size=gs, channel_groups=groups,
                                                 data_format=df)
            outs[('P', gs)] = GroupKalmanNorm('P%s' % gs, x, prior=(pm, pv), group_size=gs, guard_ratio=guard,
                                              channel_groups=groups, process_noise=True, data_format=df)
            outs[('U', gs)] = GroupKalmanNorm('U%s' % gs, x, prior=(pm, pv), group_size=gs,
                                              channel_groups=groups, gain='learned', process_noise=False,
                                              pooled_variance=False, guard_ratio=None, data_format=df)
        outs['gain1'] = GroupKalmanNorm('Q', x, prior=priors[2], group_size=2, channel_groups=groups, gain=1.0,
                                        data_format=df)
        return outs

    for training in (True, False):           # GKN has no moving averages: both are the same computation
        res, v, x = run_layers(layout, build, training, seed=9)
        xc = to_nc(x, layout)
        sm, sv = ref_gn_moments(xc, groups)
        ctx = 'training=%s ' % training
        for gs in gsl:
            pm, pv = [np.asarray(a, np.float64) for a in priors[gs]]
            n = 'N%s' % gs
            assert_close(res[('none', gs)], ref_gn_apply(xc, groups, sm, sv, v[n + '/gamma'], v[n + '/beta']),
                         layout, ctx + 'no prior = GN, group_size=%s' % gs)
            n = 'P%s' % gs
            exp = ref_gkn(xc, gs, groups, pm, pv, 0.1, ref_R(v[n + '/noise_rho'], pv), True, guard,
                          v[n + '/gamma'], v[n + '/beta'])
            assert_close(res[('P', gs)], exp, layout, ctx + 'P group_size=%s' % gs)
            n = 'U%s' % gs
            exp = ref_gkn(xc, gs, groups, pm, pv, sigmoid(v[n + '/gain_logit']), None, False, None,
                          v[n + '/gamma'], v[n + '/beta'])
            assert_close(res[('U', gs)], exp, layout, ctx + 'U group_size=%s' % gs)
        # gain = 1: GKN is GN
        assert_close(res['gain1'], ref_gn_apply(xc, groups, sm, sv, v['Q/gamma'], v['Q/beta']), layout,
                     ctx + 'gain=1 is GN')


@pytest.mark.parametrize('layout', LAYOUTS)
def test_micro_batch_renorm_forward(layout):
    df = fmt(layout)
    rmax, dmax = 1.4, 0.5

    def train(x):
        return {gs: MicroBatchRenorm('R%s' % gs, x, group_size=gs, rmax=rmax, dmax=dmax, warmup=None,
                                     data_format=df) for gs in gs_list(layout)}

    res, v, x = run_layers(layout, train, True, seed=11)
    xc = to_nc(x, layout)
    stats = []
    for gs, y in res.items():
        n = 'R%s' % gs
        exp = ref_brn(xc, gs, v[n + '/gamma'], v[n + '/beta'], v[n + '/mean/EMA'], v[n + '/variance/EMA'],
                      rmax, dmax, stats)
        assert_close(y, exp, layout, 'train group_size=%s' % gs)
    # the test data exercise both sides of both clips, and the unclipped range
    raw_r = np.concatenate([s[0].ravel() for s in stats])
    raw_d = np.concatenate([s[2].ravel() for s in stats])
    assert (raw_r > rmax).any() and (raw_r < 1 / rmax).any() and ((raw_r > 1 / rmax) & (raw_r < rmax)).any()
    assert (raw_d > dmax).any() and (raw_d < -dmax).any() and (np.abs(raw_d) < dmax).any()

    def infer(x):
        return {'moving': MicroBatchRenorm('M', x, group_size=2, data_format=df),
                'batch': MicroBatchRenorm('B', x, group_size=2, eval_stats='batch', data_format=df)}

    res, v, x = run_layers(layout, infer, False, seed=12)
    xc = to_nc(x, layout)
    assert_close(res['moving'], ref_global(xc, v['M/mean/EMA'], v['M/variance/EMA'], v['M/gamma'], v['M/beta']),
                 layout, 'inference moving')
    assert_close(res['batch'], ref_bn(xc, 2, v['B/gamma'], v['B/beta']), layout, 'inference batch')


def test_renorm_warmup_start_is_bn():
    """With the default warmup at global step 0, r_max = 1 and d_max = 0: BRN is BN."""
    def build(x):
        return {'brn': MicroBatchRenorm('R', x, group_size=2), 'bn': MicroBatchNorm('B', x, group_size=2)}

    res, v, x = run_layers('NHWC', build, True, seed=13)
    xc = to_nc(x, 'NHWC')
    assert_close(res['brn'], ref_bn(xc, 2, v['R/gamma'], v['R/beta']), 'NHWC')


@pytest.mark.parametrize('layout', LAYOUTS)
def test_layer_norm_and_bias_only_forward(layout):
    df = fmt(layout)

    def build(x):
        return {'ln': LayerNormalization('LN', x, data_format=df), 'bias': BiasOnly('BO', x, data_format=df)}

    for training in (True, False):
        res, v, x = run_layers(layout, build, training, seed=14)
        xc = to_nc(x, layout)
        assert_close(res['ln'], ref_ln(xc, v['LN/gamma'], v['LN/beta']), layout, 'LN training=%s' % training)
        assert_close(res['bias'], xc + bc(v['BO/beta'], xc.ndim), layout, 'bias training=%s' % training)


def test_dynamic_batch_matches_static():
    """A placeholder with an unknown batch size gives the same numbers (BN and BKN with prior)."""
    x = make_x('NHWC', seed=15)
    pm, pv = make_prior(4, seed=16)
    with graph_session() as sess:
        xt = tf1.placeholder(tf.float32, [None, HW, HW, C])
        with TowerContext('', is_training=True):
            bn = MicroBatchNorm('B', xt, group_size=2)
            bkn = BatchKalmanNorm('K', xt, prior=(pm, pv), group_size=2, process_noise=True)
        v = init_vars(sess, 15)
        y_bn, y_bkn = sess.run([bn, bkn], {xt: x})
    xc = to_nc(x, 'NHWC')
    assert_close(y_bn, ref_bn(xc, 2, v['B/gamma'], v['B/beta']), 'NHWC')
    bm, bv = ref_group_moments(xc, 2)
    mean, var = ref_eq7(pm.astype(np.float64), pv.astype(np.float64), bm, bv, 0.1,
                        ref_R(v['K/noise_rho'], pv.astype(np.float64)))
    assert_close(y_bkn, ref_normalize_grouped(xc, 2, mean, var, v['K/gamma'], v['K/beta']), 'NHWC')


def test_kn_defaults_have_no_process_noise_and_hand_on_the_output():
    """The defaults (KN_RECIPES['library'], the KN study's winner): no R variable, Eq. 7 with R = 0,
    and the estimate handed on is the normalised output's, N(β, γ²Σ̂/(Σ̂ + ε)) for BKN (its
    normalising statistics are the posterior), not the posterior of the input."""
    x = make_x('NHWC', seed=17)
    pm, pv = make_prior(4, seed=18)
    with graph_session() as sess:
        xt = tf1.placeholder(tf.float32, x.shape)
        with TowerContext('', is_training=True):
            bkn = BatchKalmanNorm('K', xt, prior=(pm, pv), group_size=2)
            gkn = GroupKalmanNorm('G', xt, prior=(pm, pv), group_size=2, channel_groups=2)
        names = {v.op.name for v in tf1.global_variables()}
        assert names == {'K/gamma', 'K/beta', 'K/mean/EMA', 'K/variance/EMA', 'G/gamma', 'G/beta'}
        v = init_vars(sess, 17)
        y, (est_m, est_v), (post_m, post_v), (g_est_m, g_est_v), (g_post_m, g_post_v) = sess.run(
            [bkn, kn.get_estimate(bkn).moments(), (bkn.posterior.mean, bkn.posterior.var),
             kn.get_estimate(gkn).moments(), (gkn.posterior.mean, gkn.posterior.var)], {xt: x})
    xc = to_nc(x, 'NHWC')
    bm, bv = ref_group_moments(xc, 2)
    mean, var = ref_eq7(pm.astype(np.float64), pv.astype(np.float64), bm, bv, 0.1, None)
    assert_close(y, ref_normalize_grouped(xc, 2, mean, var, v['K/gamma'], v['K/beta']), 'NHWC')
    np.testing.assert_allclose(post_m, mean, atol=ATOL, rtol=RTOL)
    np.testing.assert_allclose(est_m, np.broadcast_to(v['K/beta'], est_m.shape), atol=ATOL, rtol=RTOL)
    np.testing.assert_allclose(est_v, v['K/gamma'] ** 2 * var / (var + EPS), atol=ATOL, rtol=RTOL)
    # GKN hands on its output's distribution too, not its per-channel posterior
    assert not np.allclose(g_est_m, g_post_m, atol=1e-2) and not np.allclose(g_est_v, g_post_v, atol=1e-2)


# ----------------------------------------------------------------------------------------------
# 2. group semantics
# ----------------------------------------------------------------------------------------------

def _iso_layer(kind, x):
    if kind == 'bn':
        return MicroBatchNorm('L', x, group_size=2)
    if kind == 'bkn':
        return BatchKalmanNorm('L', x, prior=make_prior(N // 2, seed=30), group_size=2)
    if kind == 'brn':
        return MicroBatchRenorm('L', x, group_size=2, warmup=None)
    if kind == 'gkn':
        return GroupKalmanNorm('L', x, prior=make_prior(N // 2, seed=31), group_size=2, channel_groups=2)
    if kind == 'gn':
        return GroupNorm('L', x, channel_groups=2)
    return LayerNormalization('L', x)


@pytest.mark.parametrize('kind', ['bn', 'bkn', 'brn', 'gkn', 'gn', 'ln'])
def test_group_output_depends_only_on_its_group(kind):
    """Perturbing the samples of micro-batch group 1 (samples 2, 3) leaves every other group's
    output unchanged (per-sample norms: every other sample's output)."""
    x = make_x('NHWC', seed=32)
    x2 = x.copy()
    x2[2:4] = make_x('NHWC', seed=33)[2:4] ** 2        # not an affine map (BN/GN/LN are invariant to those)
    with graph_session() as sess:
        xt = tf1.placeholder(tf.float32, x.shape)
        with TowerContext('', is_training=True):
            y = _iso_layer(kind, xt)
        init_vars(sess, 32)
        a, b = sess.run(y, {xt: x}), sess.run(y, {xt: x2})
    changed = [2, 3]
    others = [i for i in range(N) if i not in changed]
    np.testing.assert_allclose(a[others], b[others], rtol=1e-6, atol=1e-6)
    assert not np.allclose(a[changed], b[changed], atol=1e-3)
    assert np.isfinite(b).all()


# ----------------------------------------------------------------------------------------------
# 3. dtypes
# ----------------------------------------------------------------------------------------------

_DTYPE_KINDS = ['bn', 'bkn', 'brn', 'gn', 'gkn', 'ln', 'bias']


def _dtype_layer(kind, x):
    if kind == 'bias':
        return BiasOnly('L', x)
    if kind == 'brn':
        return MicroBatchRenorm('L', x, group_size=2, warmup=None, rmax=1.5, dmax=0.5)
    return _iso_layer(kind, x)


@pytest.mark.parametrize('kind', _DTYPE_KINDS)
def test_low_precision_dtypes(kind):
    """float16 / bfloat16 (and float64) inputs: output of the input dtype, close to float32."""
    x = make_x('NHWC', seed=40)
    dtypes = {tf.float16: 1e-2, tf.bfloat16: 6e-2, tf.float64: 1e-5}
    with graph_session() as sess:
        xt = tf1.placeholder(tf.float32, x.shape)
        with TowerContext('', is_training=True):
            y32 = _dtype_layer(kind, xt)
            low = {}
            with tf1.variable_scope(tf1.get_variable_scope(), reuse=True):
                for dt in dtypes:
                    low[dt] = _dtype_layer(kind, tf.cast(xt, dt))
        init_vars(sess, 40)
        for dt, y in low.items():
            assert y.dtype == dt, (kind, dt, y.dtype)
        ref, lows = sess.run([y32, {dt.name: tf.cast(y, tf.float32) for dt, y in low.items()}], {xt: x})
    assert ref.dtype == np.float32
    for dt, tol in dtypes.items():
        assert np.isfinite(lows[dt.name]).all()
        np.testing.assert_allclose(lows[dt.name], ref, atol=tol, rtol=tol, err_msg=dt.name)


# ----------------------------------------------------------------------------------------------
# 4. moving averages
# ----------------------------------------------------------------------------------------------

MOM = 0.8
_EMA_PRIOR = make_prior(N // 2, seed=50)


def _ema_layer(kind, name, x, **kw):
    if kind == 'bn':
        return MicroBatchNorm(name, x, group_size=2, momentum=MOM, **kw)
    if kind == 'bkn':
        return BatchKalmanNorm(name, x, prior=_EMA_PRIOR, group_size=2, momentum=MOM, process_noise=False,
                               **kw)
    return MicroBatchRenorm(name, x, group_size=2, momentum=MOM, warmup=None, **kw)


def _ema_target(kind, x):
    """The statistics folded into the EMA: the mean over groups of the group statistics, the
    variance unbiased (n/(n-1)·S, n = g·H·W); BKN: of the Eq. 7 posterior, its q·S unbiased."""
    xc = to_nc(x, 'NHWC')
    mean, var = ref_group_moments(xc, 2)
    n = 2.0 * HW * HW
    unbiased = var * n / (n - 1.0)
    if kind == 'bkn':
        pm, pv = [np.asarray(a, np.float64) for a in _EMA_PRIOR]
        mean, posterior = ref_eq7(pm, pv, mean, var, 0.1)
        return mean.mean(0), (posterior + 0.1 * (unbiased - var)).mean(0)
    return mean.mean(0), unbiased.mean(0)


def _expected_ema(kind, x, m0, v0):
    tm, tv = _ema_target(kind, x)
    if kind == 'brn':
        # Algorithm 1: the EMA of σ_B = sqrt(S + ε), S biased; variance/EMA = σ² - ε
        _, var = ref_group_moments(to_nc(x, 'NHWC'), 2)
        sigma = MOM * np.sqrt(v0 + EPS) + (1 - MOM) * np.sqrt(var + EPS).mean(0)
        return MOM * m0 + (1 - MOM) * tm, sigma ** 2 - EPS
    return MOM * m0 + (1 - MOM) * tm, MOM * v0 + (1 - MOM) * tv


def _ema_values(sess, name='L'):
    return sess.run([get_var(name + '/mean/EMA'), get_var(name + '/variance/EMA')])


@pytest.mark.parametrize('mode', ['collection', 'internal', 'skip'])
@pytest.mark.parametrize('kind', ['bn', 'bkn', 'brn'])
def test_ema_update_modes(kind, mode):
    x = make_x('NHWC', seed=51)
    with graph_session() as sess:
        xt = tf1.placeholder(tf.float32, x.shape)
        with TowerContext('', is_training=True):
            y = _ema_layer(kind, 'L', xt, ema_update=mode)
        update_ops = tf1.get_collection(tf1.GraphKeys.UPDATE_OPS)
        v = init_vars(sess, 51)
        m0, v0 = v['L/mean/EMA'], v['L/variance/EMA']
        em, ev = _expected_ema(kind, x, m0, v0)
        assert len(update_ops) == (2 if mode == 'collection' else 0)
        sess.run(y, {xt: x})
        m1, v1 = _ema_values(sess)
        if mode == 'internal':
            np.testing.assert_allclose(m1, em, rtol=1e-5, atol=1e-6)
            np.testing.assert_allclose(v1, ev, rtol=1e-5, atol=1e-6)
        else:                          # the output alone never updates in 'collection' / 'skip'
            np.testing.assert_array_equal(m1, m0)
            np.testing.assert_array_equal(v1, v0)
        if mode == 'collection':
            sess.run(update_ops, {xt: x})
            m1, v1 = _ema_values(sess)
            np.testing.assert_allclose(m1, em, rtol=1e-5, atol=1e-6)
            np.testing.assert_allclose(v1, ev, rtol=1e-5, atol=1e-6)
            # a second step keeps following the recursion
            sess.run(update_ops, {xt: x})
            m2, _ = _ema_values(sess)
            tm, _ = _ema_target(kind, x)
            np.testing.assert_allclose(m2, MOM * m1 + (1 - MOM) * tm, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize('mode', ['collection', 'internal'])
@pytest.mark.parametrize('kind', ['bn', 'bkn', 'brn'])
def test_ema_only_first_training_tower_updates(kind, mode):
    """Two training towers sharing variables (as tensorpack's multi-GPU trainers build them):
    only tower0 creates update ops, and the EMA follows tower0's input only."""
    x0, x1 = make_x('NHWC', seed=52), make_x('NHWC', seed=53) * 2.0 + 1.0
    with graph_session() as sess:
        xt0 = tf1.placeholder(tf.float32, x0.shape)
        xt1 = tf1.placeholder(tf.float32, x1.shape)
        with TrainTowerContext('tower0', vs_name='', index=0, total=2):
            y0 = _ema_layer(kind, 'L', xt0, ema_update=mode)
        n0 = len(tf1.get_collection(tf1.GraphKeys.UPDATE_OPS))
        with tf1.variable_scope(tf1.get_variable_scope(), reuse=True), \
                TrainTowerContext('tower1', vs_name='', index=1, total=2):
            y1 = _ema_layer(kind, 'L', xt1, ema_update=mode)
        update_ops = tf1.get_collection(tf1.GraphKeys.UPDATE_OPS)
        assert n0 == (2 if mode == 'collection' else 0)
        assert len(update_ops) == n0
        assert all(op.name.startswith('tower0/') for op in update_ops)
        assert len(tf1.global_variables()) == len(set(v.op.name for v in tf1.global_variables()))
        v = init_vars(sess, 52)
        m0, v0 = v['L/mean/EMA'], v['L/variance/EMA']
        sess.run(y1, {xt1: x1})                       # tower1 never updates
        np.testing.assert_array_equal(_ema_values(sess)[0], m0)
        if mode == 'collection':
            sess.run(update_ops, {xt0: x0, xt1: x1})
        else:
            sess.run([y0, y1], {xt0: x0, xt1: x1})
        em, ev = _expected_ema(kind, x0, m0, v0)
        m1, v1 = _ema_values(sess)
        np.testing.assert_allclose(m1, em, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(v1, ev, rtol=1e-5, atol=1e-6)


def _ancestors(op):
    seen, stack = set(), [op]
    while stack:
        o = stack.pop()
        for dep in [t.op for t in o.inputs] + list(o.control_inputs):
            if dep not in seen:
                seen.add(dep)
                stack.append(dep)
    return seen


@pytest.mark.parametrize('mode', ['collection', 'internal'])
@pytest.mark.parametrize('kind', ['bn', 'bkn', 'brn'])
def test_ema_update_runs_after_the_output(kind, mode):
    """The EMA assignment waits for the layer's output.  Batch Renorm reads the moving
    statistics in training (r, d): without this ordering, an update run in the same step (as
    tensorpack trainers run UPDATE_OPS) raced with those reads and the output randomly used
    the new moving statistics (regression test)."""
    x = make_x('NHWC', seed=55)
    with graph_session() as sess:
        xt = tf1.placeholder(tf.float32, x.shape)
        with TowerContext('', is_training=True):
            y = _ema_layer(kind, 'L', xt, ema_update=mode)
        assign_ops = [op for op in tf1.get_default_graph().get_operations()
                      if op.type in ('AssignSubVariableOp', 'AssignSub', 'AssignVariableOp')
                      and 'ema_op' in op.name]
        assert len(assign_ops) == (3 if kind == 'brn' else 2)     # BRN: mean, σ, and variance = σ² - ε
        pre_output = y.op.inputs[0].op            # y = identity(output)
        for op in assign_ops:
            assert pre_output in _ancestors(op), op.name
        if kind != 'brn':
            return
        update_ops = tf1.get_collection(tf1.GraphKeys.UPDATE_OPS)
        v = init_vars(sess, 55)
        xc = to_nc(x, 'NHWC')
        exp = ref_brn(xc, 2, v['L/gamma'], v['L/beta'], v['L/mean/EMA'], v['L/variance/EMA'], 3.0, 5.0)
        init = tf.group(*[get_var('L/' + n).assign(v['L/' + n]) for n in ('mean/EMA', 'variance/EMA', 'stddev/EMA')])
        for _ in range(15):
            sess.run(init)
            out = sess.run([y] + update_ops, {xt: x})[0]
            assert_close(out, exp, 'NHWC')


@pytest.mark.parametrize('kind', ['bn', 'bkn', 'brn'])
def test_inference_tower_uses_ema_and_never_updates(kind):
    x = make_x('NHWC', seed=54)
    with graph_session() as sess:
        xt = tf1.placeholder(tf.float32, x.shape)
        with TowerContext('', is_training=True):
            _ema_layer(kind, 'L', xt, ema_update='internal')
        with tf1.variable_scope(tf1.get_variable_scope(), reuse=True), TowerContext('infer', is_training=False):
            y_moving = _ema_layer(kind, 'L', xt, ema_update='internal')
            y_batch = _ema_layer(kind, 'L', xt, ema_update='collection', eval_stats='batch')
        assert tf1.get_collection(tf1.GraphKeys.UPDATE_OPS) == []
        v = init_vars(sess, 54)
        ym, yb = sess.run([y_moving, y_batch], {xt: x})
        m1, v1 = _ema_values(sess)
    np.testing.assert_array_equal(m1, v['L/mean/EMA'])
    np.testing.assert_array_equal(v1, v['L/variance/EMA'])
    xc = to_nc(x, 'NHWC')
    assert_close(ym, ref_global(xc, v['L/mean/EMA'], v['L/variance/EMA'], v['L/gamma'], v['L/beta']), 'NHWC')
    mean, var = ref_group_moments(xc, 2)
    if kind == 'bkn':
        mean, var = ref_eq7(*[np.asarray(a, np.float64) for a in _EMA_PRIOR], mean, var, 0.1)
    assert_close(yb, ref_normalize_grouped(xc, 2, mean, var, v['L/gamma'], v['L/beta']), 'NHWC')


# ----------------------------------------------------------------------------------------------
# 5. bad inputs
# ----------------------------------------------------------------------------------------------

def _x(shape=(N, HW, HW, C), dtype=tf.float32):
    return tf1.placeholder(dtype, shape)


_BAD = {
    'unknown norm': (lambda: kn.NormSpec('batchnorm'), ValueError, r"Unknown normalization 'batchnorm'.*bkn"),
    'unknown norm in scope': (lambda: kn.norm_scope('kalman'), ValueError, r"Unknown normalization 'kalman'"),
    'unknown option': (lambda: kn.NormSpec('bn', gain=0.5), ValueError, r"gain do not apply to 'bn'"),
    'unknown option gn': (lambda: kn.norm_scope('gn', momentum=0.5), ValueError, r"momentum do not apply to 'gn'"),
    'batch not divisible': (lambda: MicroBatchNorm('L', _x(), group_size=3), ValueError,
                            r'batch of 8 samples is not divisible by group_size=3'),
    'batch not divisible bkn': (lambda: BatchKalmanNorm('L', _x(), group_size=5), ValueError,
                                r'not divisible by group_size=5'),
    'bad group_size': (lambda: MicroBatchNorm('L', _x(), group_size=0), ValueError, r'group_size must be'),
    'gn channels': (lambda: GroupNorm('L', _x((N, HW, HW, 6)), channel_groups=4), ValueError,
                    r'6 channels are not divisible by channel_groups=4'),
    'gkn channels': (lambda: GroupKalmanNorm('L', _x((N, HW, HW, 6)), channel_groups=4), ValueError,
                     r'6 channels are not divisible by channel_groups=4'),
    'prior channels': (lambda: BatchKalmanNorm('L', _x(), prior=(np.zeros((4, 3), np.float32),
                                                                  np.ones((4, 3), np.float32)), group_size=2),
                       ValueError, r'prior mean has shape \[4, 3\]; expected \[groups, 4\]'),
    'prior groups': (lambda: BatchKalmanNorm('L', _x(), prior=make_prior(3, 1), group_size=2), ValueError,
                     r'prior has 3 groups but the input has 4 micro-batch groups'),
    'gkn prior groups': (lambda: GroupKalmanNorm('L', _x(), prior=make_prior(2, 1), group_size=2,
                                                 channel_groups=2), ValueError, r'prior has 2 groups .* 4 micro'),
    'prior not a pair': (lambda: BatchKalmanNorm('L', _x(), prior=3.0, group_size=2), ValueError,
                         r'prior must be an Estimate or a \(mean, var\) pair'),
    'data_format': (lambda: MicroBatchNorm('L', _x(), data_format='NWHC'), ValueError, r"Unknown data_format 'NWHC'"),
    '3-D input': (lambda: MicroBatchNorm('L', _x((N, 5, C))), ValueError, r'2-D \[N, C\] or 4-D'),
    '3-D input gn': (lambda: GroupNorm('L', _x((N, 5, C))), ValueError, r'2-D \[N, C\] or 4-D'),
    'integer input': (lambda: MicroBatchNorm('L', _x(dtype=tf.int32)), TypeError, r'floating-point inputs'),
    'gain > 1': (lambda: BatchKalmanNorm('L', _x(), gain=1.5), ValueError, r'gain must be in \[0, 1\], got 1.5'),
    'gain < 0': (lambda: GroupKalmanNorm('L', _x(), gain=-0.1, channel_groups=2), ValueError,
                 r'gain must be in \[0, 1\]'),
    'gain not a number': (lambda: BatchKalmanNorm('L', _x(), gain='fixed'), ValueError,
                          r"gain must be a number in \[0, 1\] or 'learned', got 'fixed'"),
    'gain None': (lambda: BatchKalmanNorm('L', _x(), gain=None), ValueError, r'gain must be a number'),
    'eval_stats bn': (lambda: MicroBatchNorm('L', _x(), eval_stats='online'), ValueError,
                      r"eval_stats must be one of .*'online'"),
    'eval_stats bkn': (lambda: BatchKalmanNorm('L', _x(), eval_stats='ema'), ValueError, r'eval_stats must be one of'),
    'eval_stats brn': (lambda: MicroBatchRenorm('L', _x(), eval_stats=None), ValueError, r'eval_stats must be one of'),
    'propagate bkn': (lambda: BatchKalmanNorm('L', _x(), propagate='posterior'), ValueError,
                      r"propagate must be one of .*'posterior'"),
    'propagate gkn': (lambda: GroupKalmanNorm('L', _x(), propagate='both', channel_groups=2), ValueError,
                      r'propagate must be one of'),
    'ema_update': (lambda: MicroBatchNorm('L', _x(), ema_update='always'), ValueError,
                   r"ema_update must be .*'always'"),
    'ema_update bkn': (lambda: BatchKalmanNorm('L', _x(), ema_update=False), ValueError, r'ema_update must be'),
    'norm outside scope': (lambda: F.norm('bn1', _x()), RuntimeError, r'outside a norm scope'),
}


@pytest.mark.parametrize('case', sorted(_BAD))
def test_bad_inputs_raise_clear_errors(case):
    build, exc, match = _BAD[case]
    with tf.Graph().as_default(), TowerContext('', is_training=True):
        with pytest.raises(exc, match=match):
            build()


def test_dynamic_batch_not_divisible_fails_at_run_time():
    with graph_session() as sess:
        xt = tf1.placeholder(tf.float32, [None, HW, HW, C])
        with TowerContext('', is_training=True):
            y = MicroBatchNorm('L', xt, group_size=4)
            k = BatchKalmanNorm('K', xt, prior=make_prior(2, 1), group_size=4)
        init_vars(sess)
        assert sess.run(y, {xt: make_x('NHWC', n=8)}).shape == (8, HW, HW, C)
        with pytest.raises(tf.errors.InvalidArgumentError, match=r'not divisible by group_size=4'):
            sess.run(y, {xt: make_x('NHWC', n=6)})
        # 12 samples = 3 groups, but the prior has 2 rows
        with pytest.raises(tf.errors.InvalidArgumentError, match=r'one row per micro-batch group'):
            sess.run(k, {xt: make_x('NHWC', n=12)})


# ----------------------------------------------------------------------------------------------
# 6. NaN / Inf
# ----------------------------------------------------------------------------------------------

def test_nan_input_bn_stays_in_its_group_and_channel():
    """Observed: a NaN in sample 2 (group 1), channel 0 makes group 1's channel-0 mean and
    variance NaN, so the whole (group 1, channel 0) slice of the output is NaN; group 1's other
    channels and all other groups are finite and exact.  The EMA update averages the group
    statistics, so the moving mean/variance of channel 0 become NaN (as in BN)."""
    x = make_x('NHWC', seed=60)
    x[2, 1, 1, 0] = np.nan
    with graph_session() as sess:
        xt = tf1.placeholder(tf.float32, x.shape)
        with TowerContext('', is_training=True):
            y = MicroBatchNorm('L', xt, group_size=2)
        v = init_vars(sess, 60)
        out = sess.run(y, {xt: x})
        sess.run(tf1.get_collection(tf1.GraphKeys.UPDATE_OPS), {xt: x})
        m1, v1 = _ema_values(sess)
    nan = np.isnan(out)
    assert nan[2:4, :, :, 0].all()
    assert nan.sum() == 2 * HW * HW
    xc = to_nc(x, 'NHWC')
    exp = from_nc(ref_bn(xc, 2, v['L/gamma'], v['L/beta']), 'NHWC')
    np.testing.assert_allclose(out[~nan], exp[~nan], atol=ATOL, rtol=RTOL)
    assert np.isnan(m1[0]) and np.isnan(v1[0]) and np.isfinite(m1[1:]).all() and np.isfinite(v1[1:]).all()


@pytest.mark.parametrize('layout', ['NHWC', '2D'])
def test_nonfinite_prior_bkn_falls_back_to_bn(layout):
    """A prior row with NaN (group 1) or Inf (group 2) is never used: those groups are plain BN
    (finite); the other groups follow Eq. 7; the diagnostics mark the rows untrusted."""
    x = make_x(layout, seed=61)
    pm, pv = make_prior(4, seed=62)
    pm[1, 0] = np.nan
    pv[2, 3] = np.inf
    with graph_session() as sess:
        xt = tf1.placeholder(tf.float32, x.shape)
        with TowerContext('', is_training=True):
            y = BatchKalmanNorm('L', xt, prior=(pm, pv), group_size=2, process_noise=True)
        diag = kn_diagnostics()
        assert len(diag) == 1
        v = init_vars(sess, 61)
        out, trusted, post = sess.run([y, diag[0].trusted, (y.posterior.mean, y.posterior.var)], {xt: x})
    assert np.isfinite(out).all() and np.isfinite(post[0]).all() and np.isfinite(post[1]).all()
    np.testing.assert_array_equal(trusted.ravel(), [True, False, False, True])
    xc = to_nc(x, layout)
    bm, bv = ref_group_moments(xc, 2)
    mean, var = bm.copy(), bv.copy()
    for g in (0, 3):
        R = ref_R(v['L/noise_rho'], pv[g].astype(np.float64))
        mean[g], var[g] = ref_eq7(pm[g].astype(np.float64), pv[g].astype(np.float64), bm[g], bv[g], 0.1, R)
    assert_close(out, ref_normalize_grouped(xc, 2, mean, var, v['L/gamma'], v['L/beta']), layout)
    bn = ref_bn(xc, 2, v['L/gamma'], v['L/beta'])
    out_nc = to_nc(out, layout)
    np.testing.assert_allclose(out_nc[2:6], bn[2:6], atol=ATOL, rtol=RTOL)
    np.testing.assert_allclose(post[0], mean, atol=ATOL, rtol=RTOL)


def test_nonfinite_prior_gkn_falls_back_to_gn():
    """GKN: the samples of a micro-batch group whose prior has a NaN are plain GN (finite)."""
    x = make_x('NHWC', seed=63)
    pm, pv = make_prior(4, seed=64)
    pm[3, 1] = np.nan
    with graph_session() as sess:
        xt = tf1.placeholder(tf.float32, x.shape)
        with TowerContext('', is_training=True):
            y = GroupKalmanNorm('L', xt, prior=(pm, pv), group_size=2, channel_groups=2, process_noise=True)
        v = init_vars(sess, 63)
        out = sess.run(y, {xt: x})
    assert np.isfinite(out).all()
    xc = to_nc(x, 'NHWC')
    sm, sv = ref_gn_moments(xc, 2)
    gn = ref_gn_apply(xc, 2, sm, sv, v['L/gamma'], v['L/beta'])
    gkn = ref_gkn(xc[:6], 2, 2, pm[:3].astype(np.float64), pv[:3].astype(np.float64), 0.1,
                  ref_R(v['L/noise_rho'], pv[:3].astype(np.float64)), True, 100.0, v['L/gamma'], v['L/beta'])
    out_nc = to_nc(out, 'NHWC')
    np.testing.assert_allclose(out_nc[6:], gn[6:], atol=ATOL, rtol=RTOL)
    np.testing.assert_allclose(out_nc[:6], gkn, atol=ATOL, rtol=RTOL)


@pytest.mark.parametrize('bad', ['negative', 'minus_inf', 'nan_var'])
def test_negative_prior_variance_bkn_falls_back_to_bn(bad):
    """A prior row with a negative (or -Inf / NaN) variance is rejected like a non-finite one:
    that group is exactly plain BN (no NaN from rsqrt of a negative variance), the others follow
    Eq. 7, and the diagnostics mark the row untrusted."""
    x = make_x('NHWC', seed=65)
    pm, pv = make_prior(4, seed=66)
    pv[1, 2] = {'negative': -0.5, 'minus_inf': -np.inf, 'nan_var': np.nan}[bad]
    with graph_session() as sess:
        xt = tf1.placeholder(tf.float32, x.shape)
        with TowerContext('', is_training=True):
            y = BatchKalmanNorm('L', xt, prior=(pm, pv), group_size=2, process_noise=True)
            bn = MicroBatchNorm('B', xt, group_size=2)
        diag = kn_diagnostics()
        v = init_vars(sess, 65)
        # same affine parameters for the BN reference layer
        sess.run([get_var('B/gamma').assign(v['L/gamma']), get_var('B/beta').assign(v['L/beta'])])
        out, out_bn, trusted = sess.run([y, bn, diag[0].trusted], {xt: x})
    assert np.isfinite(out).all()
    np.testing.assert_array_equal(trusted.ravel(), [True, False, True, True])
    np.testing.assert_allclose(out[2:4], out_bn[2:4], atol=1e-5, rtol=1e-5)   # group 1 is BN
    xc = to_nc(x, 'NHWC')
    bm, bv = ref_group_moments(xc, 2)
    mean, var = bm.copy(), bv.copy()
    for g in (0, 2, 3):
        p_m, p_v = pm[g].astype(np.float64), pv[g].astype(np.float64)
        mean[g], var[g] = ref_eq7(p_m, p_v, bm[g], bv[g], 0.1, ref_R(v['L/noise_rho'], p_v))
    assert_close(out, ref_normalize_grouped(xc, 2, mean, var, v['L/gamma'], v['L/beta']), 'NHWC')


def test_negative_prior_variance_gkn_falls_back_to_gn():
    """GKN: one channel's negative prior variance rejects its micro-batch group's prior, even
    though pooling it with the other channels of its GN group would give a positive variance."""
    x = make_x('NHWC', seed=67)
    pm, pv = make_prior(4, seed=68)
    pv[0, 1] = -0.1                       # channel group 0 = channels 0, 1: pooled variance stays > 0
    with graph_session() as sess:
        xt = tf1.placeholder(tf.float32, x.shape)
        with TowerContext('', is_training=True):
            y = GroupKalmanNorm('L', xt, prior=(pm, pv), group_size=2, channel_groups=2, process_noise=True)
        v = init_vars(sess, 67)
        out, post_var = sess.run([y, y.posterior.var], {xt: x})
    assert np.isfinite(out).all() and (post_var >= 0).all()
    xc = to_nc(x, 'NHWC')
    sm, sv = ref_gn_moments(xc, 2)
    gn = ref_gn_apply(xc, 2, sm, sv, v['L/gamma'], v['L/beta'])
    gkn = ref_gkn(xc[2:], 2, 2, pm[1:].astype(np.float64), pv[1:].astype(np.float64), 0.1,
                  ref_R(v['L/noise_rho'], pv[1:].astype(np.float64)), True, 100.0, v['L/gamma'], v['L/beta'])
    out_nc = to_nc(out, 'NHWC')
    np.testing.assert_allclose(out_nc[:2], gn[:2], atol=ATOL, rtol=RTOL)
    np.testing.assert_allclose(out_nc[2:], gkn, atol=ATOL, rtol=RTOL)


@pytest.mark.parametrize('kind', ['bkn', 'gkn'])
@pytest.mark.parametrize('prior_dtype', [np.float16, np.float64, 'tf.float16', 'tf.bfloat16'])
def test_prior_of_any_float_dtype(kind, prior_dtype):
    """A float16 prior on a float16 input (and float64 / bfloat16 priors, NumPy or tensors) works:
    the statistics are float32 inside, the output keeps the input dtype, and the numbers equal
    those of the float32 prior rounded the same way."""
    x = make_x('NHWC', seed=69)
    pm, pv = make_prior(4, seed=70)
    if isinstance(prior_dtype, str):
        dtype = {'tf.float16': tf.float16, 'tf.bfloat16': tf.bfloat16}[prior_dtype]
        as_given = lambda a: tf.constant(a, dtype)  # noqa: E731
        rounded = lambda a: a.astype(dtype.as_numpy_dtype).astype(np.float32)  # noqa: E731
    else:
        as_given = lambda a: a.astype(prior_dtype)  # noqa: E731
        rounded = lambda a: a.astype(prior_dtype).astype(np.float32)  # noqa: E731
    opts = dict(group_size=2, **({'channel_groups': 2} if kind == 'gkn' else {}))
    layer = BatchKalmanNorm if kind == 'bkn' else GroupKalmanNorm
    with graph_session() as sess:
        xt = tf1.placeholder(tf.float16, x.shape)
        with TowerContext('', is_training=True):
            y16 = layer('L', xt, prior=(as_given(pm), as_given(pv)), **opts)
            with tf1.variable_scope(tf1.get_variable_scope(), reuse=True):
                y32 = layer('L', tf.cast(xt, tf.float32), prior=(rounded(pm), rounded(pv)), **opts)
        init_vars(sess, 69)
        assert y16.dtype == tf.float16 and y16.posterior.mean.dtype == tf.float32
        out16, out32 = sess.run([tf.cast(y16, tf.float32), y32], {xt: x.astype(np.float16)})
    assert np.isfinite(out16).all()
    np.testing.assert_allclose(out16, out32, atol=1e-2, rtol=1e-2)
