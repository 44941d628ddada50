"""The fused CPU op of the analytic conv prior (kalman_norm/ops): values and gradients against
float64 NumPy and finite differences, the same prior as TensorFlow's ops through
``transition._analytic_conv`` (tests/test_analytic_conv_rewrite.py runs its cases both ways), the
choice between the two, the switch, and the build cache."""
import kalman_norm  # noqa: F401  (must come before tensorflow)

import importlib.util
import os
import re
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf
from tensorpack.tfutils.tower import TowerContext

from kalman_norm import ops, transition
from kalman_norm.estimate import Estimate
from kalman_norm.models.resnet_cifar import resnet_cifar

tf1 = tf.compat.v1


def _inputs(groups, taps, cin, cout, seed=0):
    rng = np.random.RandomState(seed)
    return (rng.randn(groups, cin).astype(np.float32), rng.uniform(0.2, 2.0, (groups, cin)).astype(np.float32),
            (rng.randn(taps, cin, cout) * 0.5).astype(np.float32), rng.uniform(0.1, 1.0, taps).astype(np.float32))


def _numpy_prior(m, v, w, f):
    m, v, w, f = (x.astype(np.float64) for x in (m, v, w, f))
    return np.einsum('gc,tco->tgo', m, w), np.einsum('t,gc,tco->go', f, v, w ** 2)


def _numpy_prior_grad(m, v, w, f, da, db):
    m, v, w, f, da, db = (x.astype(np.float64) for x in (m, v, w, f, da, db))
    dm = np.einsum('tgo,tco->gc', da, w)
    dv = np.einsum('t,go,tco->gc', f, db, w ** 2)
    dw = np.einsum('gc,tgo->tco', m, da) + 2 * np.einsum('t,tco,gc,go->tco', f, w, v, db)
    return dm, dv, dw


def _close(x, y, what, rtol=1e-5):
    np.testing.assert_allclose(x, y, rtol=0, atol=rtol * max(np.max(np.abs(y)), 1e-6), err_msg=what)


# groups, taps, C_in, C_out: one and several groups, 1x1 and 3x3, sizes that are not multiples of
# any vector width, more channels than one unit of work (16 rows) and fewer
SHAPES = [(1, 9, 13, 70), (3, 1, 130, 17), (2, 9, 5, 3), (16, 4, 33, 65), (1, 1, 1, 1)]


@pytest.mark.parametrize('shape', SHAPES, ids=lambda s: 'G%d-T%d-C%d-O%d' % s)
def test_values_and_gradients_against_numpy(shape):
    m, v, w, f = _inputs(*shape)
    rng = np.random.RandomState(1)
    with tf.Graph().as_default():
        tm, tv, tw = tf.constant(m), tf.constant(v), tf.constant(w)
        a, b = ops.conv_prior(tm, tv, tw, tf.constant(f))
        ra = tf.constant(rng.randn(*a.shape.as_list()).astype(np.float32))
        rb = tf.constant(rng.randn(*b.shape.as_list()).astype(np.float32))
        grads = tf.gradients(tf.reduce_sum(a * ra) + tf.reduce_sum(b * rb), [tm, tv, tw])
        with tf1.Session() as sess:
            out = sess.run([a, b, ra, rb] + grads)
    ref_a, ref_b = _numpy_prior(m, v, w, f)
    assert out[0].shape == ref_a.shape and out[1].shape == ref_b.shape
    _close(out[0], ref_a, 'a')
    _close(out[1], ref_b, 'b')
    for name, x, y in zip(['dm', 'dv', 'dw'], out[4:], _numpy_prior_grad(m, v, w, f, out[2], out[3])):
        assert x.shape == y.shape, name
        _close(x, y, name)


def test_gradients_against_finite_differences():
    """The op's outputs are polynomials of degree <= 2 in its inputs, so central differences are
    exact up to rounding: a check of the registered gradient independent of the formulas above."""
    m, v, w, f = _inputs(2, 4, 3, 5, seed=3)
    rng = np.random.RandomState(4)
    ra, rb = rng.randn(4, 2, 5).astype(np.float32), rng.randn(2, 5).astype(np.float32)
    with tf.Graph().as_default():
        xs = [tf1.placeholder(tf.float32, x.shape) for x in (m, v, w)]
        a, b = ops.conv_prior(*xs, tf.constant(f))
        loss = tf.reduce_sum(a * ra) + tf.reduce_sum(b * rb)
        grads = tf.gradients(loss, xs)
        with tf1.Session() as sess:
            values = [m, v, w]
            feed = dict(zip(xs, values))
            analytic = sess.run(grads, feed)
            eps = 0.05
            for which, x in enumerate(values):
                numeric = np.zeros_like(x)
                for idx in np.ndindex(*x.shape):
                    shifted = [y.copy() for y in values]
                    shifted[which][idx] += eps
                    up = sess.run(loss, dict(zip(xs, shifted)))
                    shifted[which][idx] -= 2 * eps
                    down = sess.run(loss, dict(zip(xs, shifted)))
                    numeric[idx] = (up - down) / (2 * eps)
                _close(analytic[which], numeric, 'input %d' % which, rtol=1e-3)


def test_unused_output_has_a_zero_gradient():
    m, v, w, f = _inputs(1, 9, 4, 6)
    with tf.Graph().as_default():
        tm, tv, tw = tf.constant(m), tf.constant(v), tf.constant(w)
        a, _ = ops.conv_prior(tm, tv, tw, tf.constant(f))
        grads = tf.gradients(tf.reduce_sum(a), [tm, tv, tw])
        with tf1.Session() as sess:
            dm, dv, dw = sess.run(grads)
    ref = _numpy_prior_grad(m, v, w, f, np.ones((9, 1, 6), np.float32), np.zeros((1, 6), np.float32))
    _close(dm, ref[0], 'dm')
    assert np.all(dv == 0)
    _close(dw, ref[2], 'dw')


def test_bad_shapes_are_clear_errors():
    m, v, w, f = _inputs(2, 9, 4, 6)
    with tf.Graph().as_default(), tf1.Session() as sess:
        with pytest.raises(tf.errors.InvalidArgumentError, match=r'w must be \[T, C_in, C_out\] with C_in = 4'):
            sess.run(ops.conv_prior(m, v, w[:, :3], f))
        with pytest.raises(tf.errors.InvalidArgumentError, match=r'f must be \[T\] with T = 9'):
            sess.run(ops.conv_prior(m, v, w, f[:4]))
        with pytest.raises(tf.errors.InvalidArgumentError, match=r'm and v must be \[G, C_in\] of one shape'):
            sess.run(ops.conv_prior(m, v[:1], w, f))


@pytest.fixture
def fresh_state(monkeypatch):
    """Let fused_prior_enabled() decide again (the real decision is restored after the test)."""
    monkeypatch.setattr(ops, '_state', {})
    return monkeypatch


def _op_types(groups, fused=None):
    with tf.Graph().as_default() as graph:
        est = Estimate(tf.zeros([groups, 8]), tf.ones([groups, 8]))
        transition._analytic_conv(est, tf.ones([3, 3, 8, 4]), (6, 6), (3, 3), 1, 'SAME', fused=fused)
        return {op.type for op in graph.get_operations()}


def test_where_the_fused_op_is_used(fresh_state):
    fresh_state.delenv(ops.ENV_SWITCH, raising=False)
    assert ops.fused_prior_enabled(), 'this CPU-only machine with a compiler should build the op'
    assert 'KalmanNormConvPrior' in _op_types(1)
    assert 'KalmanNormConvPrior' in _op_types(transition.FUSED_MAX_GROUPS)
    # many groups: TensorFlow's batched products are faster (scripts/benchmark_prior.py)
    assert 'KalmanNormConvPrior' not in _op_types(transition.FUSED_MAX_GROUPS + 1)
    assert 'KalmanNormConvPrior' not in _op_types(1, fused=False)
    assert 'KalmanNormConvPrior' in _op_types(64, fused=True)


def test_a_kn_training_step_matches_with_and_without_the_fused_op():
    """A KN model's loss and every gradient are the same whichever implementation the prior uses."""
    results = []
    rng = np.random.RandomState(5)
    images = rng.rand(4, 16, 16, 3).astype(np.float32)
    for fused in (False, True):
        original = transition._analytic_conv
        transition._analytic_conv = lambda *args, **kw: original(*args, fused=fused)
        try:
            with tf.Graph().as_default():
                tf1.set_random_seed(0)
                with TowerContext('', is_training=True), kalman_norm.norm_scope('bkn', group_size=4):
                    logits = resnet_cifar(tf.constant(images), n=1)
                loss = tf.reduce_mean(tf.square(logits))
                variables = tf1.trainable_variables()
                grads = tf.gradients(loss, variables)
                with tf1.Session() as sess:
                    sess.run(tf1.global_variables_initializer())
                    results.append(sess.run([loss] + grads))
        finally:
            transition._analytic_conv = original
    for i, (x, y) in enumerate(zip(*results)):
        _close(x, y, 'fetch %d' % i, rtol=1e-4)


def test_switch_off(fresh_state):
    fresh_state.setenv(ops.ENV_SWITCH, '0')
    assert ops.fused_prior_enabled() is False
    assert 'KalmanNormConvPrior' not in _op_types(1)


def test_switch_rejects_other_values(fresh_state):
    fresh_state.setenv(ops.ENV_SWITCH, 'yes')
    with pytest.raises(ValueError, match='KALMAN_NORM_FUSED_PRIOR must be 0, 1 or unset'):
        ops.fused_prior_enabled()


def test_no_compiler_falls_back_or_fails_when_required(fresh_state, tmp_path, caplog):
    fresh_state.setenv('KALMAN_NORM_CACHE', str(tmp_path))
    fresh_state.setenv('CXX', str(tmp_path / 'no-such-compiler'))
    fresh_state.delenv(ops.ENV_SWITCH, raising=False)
    assert ops.fused_prior_enabled() is False              # unset: fall back, with a warning
    assert 'using TensorFlow ops' in caplog.text and 'no C++ compiler' in caplog.text
    fresh_state.setattr(ops, '_state', {})
    fresh_state.setenv(ops.ENV_SWITCH, '1')
    with pytest.raises(ops.FusedOpUnavailable, match='KALMAN_NORM_FUSED_PRIOR=1 but .* no C\\+\\+ compiler'):
        ops.fused_prior_enabled()


def test_build_is_cached_and_atomic(fresh_state, tmp_path):
    fresh_state.setenv('KALMAN_NORM_CACHE', str(tmp_path))
    path = ops.build()
    assert os.path.dirname(path) == str(tmp_path) and os.path.basename(path).startswith('conv_prior-')
    mtime = os.path.getmtime(path)
    assert ops.build() == path and os.path.getmtime(path) == mtime        # found, not rebuilt
    # no temporary left behind: the library and its size and hash (checked before each load)
    assert sorted(os.listdir(tmp_path)) == [os.path.basename(path), os.path.basename(ops.checksum_path(path))]
    assert os.path.getsize(path) > 0


def test_build_from_the_command_line():
    """`python -m kalman_norm.ops` builds (here: finds) the library and prints its path."""
    out = subprocess.run([sys.executable, '-m', 'kalman_norm.ops'], capture_output=True, text=True,
                         timeout=600, cwd=os.path.dirname(os.path.dirname(kalman_norm.__file__)))
    assert out.returncode == 0, out.stderr[-2000:]
    path = out.stdout.strip().splitlines()[-1]
    assert path == ops.build() and os.path.exists(path)


def test_prior_benchmark_times_every_implementation(capsys):
    """scripts/benchmark_prior.py runs end to end (a small model, few rounds) and reports the
    prior's own cost for the TensorFlow ops and the fused op side by side."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    spec = importlib.util.spec_from_file_location('benchmark_prior', os.path.join(root, 'scripts', 'benchmark_prior.py'))
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    assert list(bench.IMPLEMENTATIONS) == ['base', 'old', 'new', 'fused']
    bench.main(['--archs', 'ResNet-20-CIFAR', '--rounds', '3', '--warmup', '1', '--groups', '2'])
    out = capsys.readouterr().out
    assert 'ResNet-20-CIFAR: 18 conv priors' in out
    assert re.search(r'prior alone: old [-\d.]+ ms, new [-\d.]+ ms, fused [-\d.]+ ms', out), out
