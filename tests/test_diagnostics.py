"""kalman_norm.diagnostics: per-layer prior quality against large-batch statistics."""
import kalman_norm as kn
import numpy as np
import pytest
import tensorflow as tf
from tensorpack.tfutils.tower import TowerContext

from kalman_norm import flow as F
from kalman_norm.diagnostics import diagnostic_records, format_report, prior_report


def _net(norm, propagate='input'):
    graph = tf.Graph()
    with graph.as_default():
        x = tf.compat.v1.placeholder(tf.float32, [16, 8, 8, 3])
        opts = dict(propagate=propagate) if norm in ('bkn', 'gkn') else {}
        with TowerContext('', is_training=True), kn.norm_scope(norm, group_size=2, **opts):
            y = F.relu(F.norm('n1', F.conv2d('c1', x, 8, 3)))
            y = F.relu(F.norm('n2', F.conv2d('c2', y, 8, 3)))
            y = F.norm('n3', F.conv2d('c3', y, 8, 3, strides=2))
    return graph, x


@pytest.mark.parametrize('propagate', ['input', 'output'])
def test_report_has_one_row_per_kn_layer_with_prior(propagate):
    graph, x = _net('bkn', propagate)
    with graph.as_default(), tf.compat.v1.Session() as sess:
        sess.run(tf.compat.v1.global_variables_initializer())
        rows = prior_report(sess, {x: np.random.RandomState(0).randn(16, 8, 8, 3)})
    assert [r['layer'] for r in rows] == ['n2', 'n3']          # n1 is first: no prior
    for r in rows:
        for k in ('prior_mean_err', 'prior_var_err', 'batch_mean_err', 'batch_var_err'):
            assert np.isfinite(r[k]) and r[k] >= 0
        assert 0.0 <= r['trusted'] <= 1.0
    text = format_report(rows, 'title')
    assert 'n2' in text and '(mean)' in text


def test_errors_are_zero_when_estimates_equal_large_batch():
    from kalman_norm.diagnostics import _errors
    m, v = np.array([1.0, -2.0]), np.array([4.0, 0.5])
    assert _errors(m, v, m, v) == (0.0, 0.0)
    mean_err, var_err = _errors(m + 2.0, v * np.e, m, v, eps=0.0)
    assert mean_err == pytest.approx(np.mean(2.0 / np.sqrt(v)))
    assert var_err == pytest.approx(1.0)


def test_report_without_kn_layers_says_what_to_do():
    graph, x = _net('bn')
    with graph.as_default(), tf.compat.v1.Session() as sess:
        assert diagnostic_records() == []
        with pytest.raises(ValueError, match='norm_scope'):
            prior_report(sess, {x: np.zeros([16, 8, 8, 3])})


@pytest.mark.parametrize('kind', ['bkn', 'gkn'])
def test_records_carry_the_layers_gain_and_process_noise(kind):
    graph = tf.Graph()
    with graph.as_default():
        x = tf.compat.v1.placeholder(tf.float32, [4, 6, 6, 3])
        opts = dict(gain='learned', gain_init=0.3, process_noise=True, noise_init=0.02)
        if kind == 'gkn':
            opts['channel_groups'] = 2
        with TowerContext('', is_training=True), kn.norm_scope(kind, group_size=2, **opts):
            y = F.relu(F.norm('n1', F.conv2d('c1', x, 4, 3)))
            F.norm('n2', F.conv2d('c2', y, 4, 3))
        with kn.norm_scope(kind, group_size=2, process_noise=False, **({'channel_groups': 2} if kind == 'gkn' else {})), \
                TowerContext('t2', is_training=True):
            y = F.relu(F.norm('m1', F.conv2d('d1', x, 4, 3)))
            F.norm('m2', F.conv2d('d2', y, 4, 3))
        recs = diagnostic_records()
        assert [r.layer for r in recs] == ['n2', 'm2']
        assert recs[0].gain.name == 'n2/gain:0' and recs[0].process_noise.name == 'n2/process_noise:0'
        assert recs[1].process_noise is None and recs[1].gain.name == 't2/m2/gain:0'
        with tf.compat.v1.Session() as sess:
            sess.run(tf.compat.v1.global_variables_initializer())
            q, r, q2 = sess.run([recs[0].gain, recs[0].process_noise, recs[1].gain])
    assert q == pytest.approx(0.3, rel=1e-5) and q2 == pytest.approx(0.1, rel=1e-5)   # fixed default
    np.testing.assert_allclose(r, np.full(4, 0.02), rtol=1e-4)
