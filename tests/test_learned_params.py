"""KN's learned parameters learn: the process noise R (per channel) and the gain q (per layer).

Synthetic problem: every micro-batch group's features have mean 0 and a known per-channel
variance σ²; the prior has the right mean but a variance off by a known factor k.  The loss asks
the normalised output (no γ, β to compensate) to have unit second moment per channel, which it
has when the posterior variance matches the data's.  A prior variance k = 4 times too small
makes the output too large: the loss asks for more R (relative r → ~3) and for more trust in the
batch (q → 1).  A prior 4 times too large asks for less R (r → 0).
"""
import kalman_norm  # noqa: F401  (before tensorflow / tensorpack)
from kalman_norm.layers import BatchKalmanNorm, GroupKalmanNorm

import numpy as np
import pytest
import tensorflow as tf
from tensorpack.tfutils.tower import TowerContext

tf1 = tf.compat.v1
SHAPE = (8, 4, 4, 4)                   # 4 micro-batch groups of 2 samples, 4 channels
SIGMA2 = np.array([0.5, 1.0, 2.0, 4.0])
H = 2.0 ** -8                          # finite-difference step, exact in float32


def _problem(scale, seed=0):
    rng = np.random.RandomState(seed)
    return (rng.normal(size=SHAPE) * np.sqrt(SIGMA2) * scale).astype(np.float32)


def _build(prior_factor, layer='bkn', scale=1.0, **options):
    """Graph of the synthetic problem with features ``scale`` times larger, R learned (the
    paper's; the layers' default has none) unless ``options`` say otherwise; returns
    (graph, loss, output, {name: variable})."""
    x = _problem(scale)
    graph = tf.Graph()
    with graph.as_default(), TowerContext('', is_training=True):
        prior_var = SIGMA2 * scale ** 2 * prior_factor
        prior = (np.zeros((4, 4), np.float32), np.tile(prior_var, (4, 1)).astype(np.float32))
        kwargs = dict(group_size=2, center=False, scale=False, guard_ratio=None, process_noise=True)
        kwargs.update(options)
        if layer == 'bkn':
            out = BatchKalmanNorm('kn', tf.constant(x), prior=prior, **kwargs)
        else:
            out = GroupKalmanNorm('kn', tf.constant(x), prior=prior, channel_groups=2, **kwargs)
        second_moment = tf.reduce_mean(tf.square(tf.cast(out, tf.float64)), axis=[0, 1, 2])   # per channel
        loss = tf.reduce_sum(tf.square(second_moment - 1.0))
        variables = {v.op.name.split('/')[-1]: v for v in tf1.trainable_variables()}
    return graph, loss, out, variables


def _train(graph, loss, fetch, steps, lr):
    with graph.as_default():
        train = tf1.train.GradientDescentOptimizer(lr).minimize(loss)
        with tf1.Session(graph=graph) as sess:
            sess.run(tf1.global_variables_initializer())
            before = sess.run(fetch)
            losses = []
            for _ in range(steps):
                losses.append(sess.run([loss, train])[0])
            return before, sess.run(fetch), losses


def _tensor(graph, name):
    return graph.get_tensor_by_name('kn/%s:0' % name)


@pytest.mark.parametrize('layer', ['bkn', 'gkn'])
def test_relative_noise_grows_when_the_prior_variance_is_too_small(layer):
    graph, loss, _, _ = _build(0.25, layer=layer)          # relative R (default), r0 = 0.1, q = 0.1
    r0, r1, losses = _train(graph, loss, _tensor(graph, 'process_noise'), steps=40, lr=0.5)
    np.testing.assert_allclose(r0, 0.1, rtol=1e-6)
    assert (r1 > 1.5 * r0).all(), r1                       # every channel's r grew by half at least
    assert losses[-1] < 0.5 * losses[0], losses


def test_relative_noise_shrinks_when_the_prior_variance_is_too_large():
    graph, loss, _, _ = _build(4.0)
    r0, r1, losses = _train(graph, loss, _tensor(graph, 'process_noise'), steps=40, lr=0.5)
    assert (r1 < 0.7 * r0).all() and (r1 >= 0).all(), r1
    assert losses[-1] < losses[0]


def test_relative_noise_learns_the_same_at_any_feature_scale():
    """Features (and prior) 10 times larger: the relative r follows the same path, so R matters
    in every layer whatever its feature variance."""
    paths = []
    for scale in (1.0, 10.0):
        graph, loss, _, _ = _build(0.25, scale=scale)
        paths.append(_train(graph, loss, _tensor(graph, 'process_noise'), steps=40, lr=0.5)[1])
    np.testing.assert_allclose(paths[1], paths[0], rtol=1e-3)


def test_old_softplus_noise_learns_only_at_small_feature_variances():
    """Why the default changed.  R = softplus(ρ) from 1e-3 has dR/dρ ≈ 1e-3 and the loss sees R
    only relative to the feature variance: at variances ~0.1 it moves, at variances ~50-400
    (the same problem 10 times larger) the same 40 steps leave R's share of the prior variance
    where it was (< 0.1 %), where the relative r above grows by more than half."""
    graph, loss, _, _ = _build(0.25, noise_param='softplus')
    r0, r1, _ = _train(graph, loss, _tensor(graph, 'process_noise'), steps=40, lr=0.5)
    np.testing.assert_allclose(r0, 1e-3, rtol=1e-5)
    assert r1[0] > 10 * r0[0]                         # channel 0: prior variance 0.125
    graph, loss, _, _ = _build(0.25, noise_param='softplus', scale=10.0)
    r0, r1, _ = _train(graph, loss, _tensor(graph, 'process_noise'), steps=40, lr=0.5)
    share = (r1 - r0) / (SIGMA2 * 100 * 0.25)         # change of R / AΣAᵀ
    assert (np.abs(share) < 1e-3).all(), share


@pytest.mark.parametrize('prior_factor', [0.25, 4.0])
def test_learned_gain_moves_towards_the_batch_when_the_prior_is_off(prior_factor):
    """q grows from 0.1 (trust the batch more) whether the prior's variance is too small or too large."""
    graph, loss, _, _ = _build(prior_factor, gain='learned', gain_init=0.1, process_noise=False)
    q0, q1, losses = _train(graph, loss, _tensor(graph, 'gain'), steps=40, lr=0.5)
    np.testing.assert_allclose(q0, 0.1, rtol=1e-5)
    assert q1 > 1.5 * q0, q1
    assert losses[-1] < 0.5 * losses[0], losses


@pytest.mark.parametrize('layer', ['bkn', 'gkn'])
@pytest.mark.parametrize('noise_param', ['relative', 'softplus'])
def test_gradients_of_noise_rho_and_gain_logit_match_finite_differences(layer, noise_param):
    graph, loss, _, variables = _build(0.25, layer=layer, gain='learned', gain_init=0.3,
                                       noise_param=noise_param, noise_init=0.4)
    with graph.as_default(), tf1.Session(graph=graph) as sess:
        sess.run(tf1.global_variables_initializer())
        for name in ('noise_rho', 'gain_logit'):
            var = variables[name]
            grad = np.asarray(sess.run(tf.gradients(loss, var)[0]), np.float64).reshape(-1)
            v0 = sess.run(var)
            fd = np.zeros(v0.size)
            for i in range(v0.size):
                for sign in (1, -1):
                    v = np.array(v0, np.float32).reshape(-1)
                    v[i] += sign * H
                    var.load(v.reshape(np.shape(v0)), sess)
                    fd[i] += sign * sess.run(loss)
            var.load(v0, sess)
            fd /= 2 * H
            assert np.linalg.norm(grad) > 1e-3, (name, grad)            # the parameter matters
            err = np.linalg.norm(fd - grad) / np.linalg.norm(grad)
            assert err < 1e-2, (name, err, grad, fd)


def test_q_and_r_are_the_only_extra_parameters():
    """Table 2's count: one R vector per KN layer with a prior, one q logit when learned."""
    _, _, _, variables = _build(0.25, gain='learned')
    assert sorted(variables) == ['gain_logit', 'noise_rho']            # (no γ, β here)
    assert variables['noise_rho'].shape.as_list() == [4] and variables['gain_logit'].shape.as_list() == []
