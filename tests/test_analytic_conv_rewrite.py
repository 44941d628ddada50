"""The analytic conv prior's fast paths (per-tap products with a hand-written gradient in
TensorFlow's ops, and the fused CPU op of kalman_norm/ops) against
the straightforward formula of kalman_norm/transition.py's docstring, values and gradients.

    mean = m (Σ_t f_t W_t),   var = v (Σ_t f_t W_t²) + max(Σ_{t,t'} F_{tt'} a_t a_t' − mean², 0)

written here op by op with TensorFlow's derived gradients (the implementation before the rewrite),
and checked in float64 with NumPy for the values.  Cases: SAME with border spread (stride 1 and
2, odd and even sizes), 1x1 (stride 1 and 2), VALID, 7x7, several groups, a rectified estimate.
"""
import kalman_norm  # noqa: F401  (must come before tensorflow)

import numpy as np
import pytest
import tensorflow as tf

from kalman_norm.estimate import Estimate
from kalman_norm.transition import _analytic_conv, conv_estimate, tap_coverage


def _reference(est, kernel, in_hw, kernel_hw, strides, padding):
    m, v = est.moments()
    cin, cout = int(kernel.shape[2]), int(kernel.shape[3])
    taps = kernel_hw[0] * kernel_hw[1]
    f, pair = tap_coverage(in_hw, kernel_hw, strides, padding)
    w = tf.reshape(kernel, [taps, cin, cout])
    f_t = tf.constant(f, tf.float32)
    mean = tf.matmul(m, tf.tensordot(f_t, w, 1))
    var = tf.matmul(v, tf.tensordot(f_t, tf.square(w), 1))
    a = tf.matmul(tf.expand_dims(m, 0), w)
    fa = tf.tensordot(tf.constant(pair, tf.float32), a, 1)
    spread = tf.reduce_sum(a * fa, 0) - tf.square(mean)
    return mean, var + tf.maximum(spread, 0.)


def _numpy_reference(m, v, kernel, in_hw, strides, padding):
    kh, kw, cin, cout = kernel.shape
    f, pair = tap_coverage(in_hw, (kh, kw), strides, padding)
    w = kernel.astype(np.float64).reshape(kh * kw, cin, cout)
    a = np.einsum('gc,tco->tgo', m, w)
    mean = np.einsum('t,tgo->go', f, a)
    var = np.einsum('t,gc,tco->go', f, v, w ** 2)
    spread = np.einsum('tu,tgo,ugo->go', pair, a, a) - mean ** 2
    return mean, var + np.maximum(spread, 0.)


CASES = [
    # in_hw, kernel (kh, kw, cin, cout), strides, padding
    ((7, 7), (3, 3, 5, 6), 1, 'SAME'),          # border spread
    ((8, 8), (3, 3, 5, 6), 2, 'SAME'),          # stride 2, even size: asymmetric padding
    ((7, 9), (3, 3, 4, 3), 2, 'SAME'),
    ((5, 5), (1, 1, 6, 7), 1, 'SAME'),          # 1x1: f = 1, no spread
    ((6, 6), (1, 1, 6, 7), 2, 'SAME'),          # 1x1 strided
    ((9, 9), (3, 3, 4, 5), 1, 'VALID'),         # every tap everywhere: no spread
    ((9, 8), (3, 2, 4, 5), 2, 'VALID'),
    ((14, 14), (7, 7, 3, 4), 2, 'SAME'),        # a stem-like 7x7
]


def _build(impl, case, groups, rectified, seed):
    in_hw, kshape, strides, padding = case
    rng = np.random.RandomState(seed)
    kernel = tf.constant(rng.randn(*kshape).astype(np.float32) * 0.5)
    m = tf.constant(rng.randn(groups, kshape[2]).astype(np.float32))
    v = tf.constant(rng.uniform(0.2, 2.0, (groups, kshape[2])).astype(np.float32))
    est = Estimate(m, v, rectified=rectified)
    mean, var = impl(est, kernel, in_hw, kshape[:2], strides, padding)
    r1 = tf.constant(rng.randn(groups, kshape[3]).astype(np.float32))
    r2 = tf.constant(rng.randn(groups, kshape[3]).astype(np.float32))
    loss = tf.reduce_sum(mean * r1 + var * r2)
    return [mean, var] + tf.gradients(loss, [kernel, m, v]), est.moments()


def _run(impl, case, groups, rectified, seed=0):
    with tf.Graph().as_default():
        fetches, moments = _build(impl, case, groups, rectified, seed)
        with tf.compat.v1.Session() as sess:
            return sess.run(fetches + list(moments))


def _close(x, y, what, rtol=2e-5):
    scale = max(np.max(np.abs(y)), 1e-6)
    np.testing.assert_allclose(x, y, rtol=0, atol=rtol * scale, err_msg=what)


def _tf_ops(*args):
    return _analytic_conv(*args, fused=False)


def _fused_op(*args):
    return _analytic_conv(*args, fused=True)


@pytest.mark.parametrize('impl', [_tf_ops, _fused_op], ids=['tf-ops', 'fused-op'])
@pytest.mark.parametrize('rectified', [False, True])
@pytest.mark.parametrize('groups', [1, 3])
@pytest.mark.parametrize('case', CASES, ids=lambda c: '%s-k%dx%d-s%d-%s' % (c[0], c[1][0], c[1][1], c[2], c[3]))
def test_values_and_gradients_equal_the_plain_formula(case, groups, rectified, impl):
    fast = _run(impl, case, groups, rectified)
    plain = _run(_reference, case, groups, rectified)
    for name, x, y in zip(['mean', 'var', 'd kernel', 'd m', 'd v'], fast[:5], plain[:5]):
        assert x.shape == y.shape, name
        _close(x, y, name)
    # and the values against float64 NumPy (the estimate's moments as TensorFlow computed them)
    in_hw, kshape, strides, padding = case
    rng = np.random.RandomState(0)
    kernel = (rng.randn(*kshape).astype(np.float32) * 0.5)
    mean, var = _numpy_reference(fast[5].astype(np.float64), fast[6].astype(np.float64), kernel, in_hw,
                                 strides, padding)
    _close(fast[0], mean, 'mean vs float64', 1e-5)
    _close(fast[1], var, 'var vs float64', 1e-5)


def test_spread_term_is_active_in_the_cases():
    """The SAME 3x3 cases do exercise the border spread (else the test above would not cover it)."""
    assert not np.allclose(tap_coverage((7, 7), (3, 3), 1, 'SAME')[1], 1.0)
    assert np.allclose(tap_coverage((9, 9), (3, 3), 1, 'VALID')[1], 1.0)
    assert np.allclose(tap_coverage((6, 6), (1, 1), 2, 'SAME')[1], 1.0)


@pytest.mark.parametrize('impl', [_tf_ops, _fused_op], ids=['tf-ops', 'fused-op'])
def test_unused_output_gradient(impl):
    """Only the mean used: the variance's upstream gradient is absent, the kernel's still right."""
    case = CASES[0]
    results = []
    for impl in (impl, _reference):
        with tf.Graph().as_default():
            rng = np.random.RandomState(1)
            kernel = tf.constant(rng.randn(*case[1]).astype(np.float32))
            m = tf.constant(rng.randn(2, case[1][2]).astype(np.float32))
            v = tf.constant(rng.uniform(0.2, 2.0, (2, case[1][2])).astype(np.float32))
            mean, _ = impl(Estimate(m, v), kernel, case[0], case[1][:2], case[2], case[3])
            grads = tf.gradients(tf.reduce_sum(mean), [kernel, m, v])
            with tf.compat.v1.Session() as sess:
                results.append(sess.run([g if g is not None else tf.zeros_like(x)
                                         for g, x in zip(grads, [kernel, m, v])]))
    for x, y in zip(*results):
        _close(x, y, 'gradient')


def test_dynamic_group_count():
    """The estimate's group dimension may be unknown when the graph is built."""
    case = CASES[1]
    rng = np.random.RandomState(2)
    with tf.Graph().as_default():
        m = tf.compat.v1.placeholder(tf.float32, [None, case[1][2]])
        v = tf.compat.v1.placeholder(tf.float32, [None, case[1][2]])
        kernel = tf.constant(rng.randn(*case[1]).astype(np.float32))
        est = conv_estimate(Estimate(m, v), kernel, case[0], case[2], case[3])
        ref = _reference(Estimate(m, v), kernel, case[0], case[1][:2], case[2], case[3])
        loss = tf.reduce_sum(est.mean) + tf.reduce_sum(est.var)
        loss_ref = tf.reduce_sum(ref[0]) + tf.reduce_sum(ref[1])
        grads = tf.gradients(loss, [kernel, m, v]) + tf.gradients(loss_ref, [kernel, m, v])
        feed = {m: rng.randn(3, case[1][2]), v: rng.uniform(0.2, 2.0, (3, case[1][2]))}
        with tf.compat.v1.Session() as sess:
            out = sess.run([est.mean, est.var, ref[0], ref[1]] + grads, feed)
    _close(out[0], out[2], 'mean')
    _close(out[1], out[3], 'var')
    for x, y in zip(out[4:7], out[7:10]):
        _close(x, y, 'gradient')
