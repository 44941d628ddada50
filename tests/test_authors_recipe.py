"""The authors' CIFAR recipe is expressible exactly, and each of its properties holds.

Recipe (paper + the authors' public code, see shared/paper-tables.md): Monte-Carlo prior with one
sampled image per micro-batch group, gradients through the prior into the conv kernel, no process
noise R, fixed gain q = 0.1, the pooled-variance term, guard 100, the previous layer's *input*
estimate handed on, residual branches' moments added.  Where the authors' code has a bug (the
option-A shortcut pads a group-by-group vector at its two ends; the moving averages follow group
0 only), the tests check that this implementation does not.

Tiny graphs only: 4-8 samples of at most 8x8 pixels.
"""
import kalman_norm as kn  # noqa: I001  (before tensorflow / tensorpack)
from kalman_norm import flow as F
from kalman_norm.estimate import Estimate, get_estimate, rectified_gaussian_moments, set_estimate
from kalman_norm.layers import BatchKalmanNorm, MicroBatchNorm, kn_diagnostics
from kalman_norm.models.resnet_cifar import residual_block, resnet_cifar

import os

import numpy as np
import pytest
import tensorflow as tf
from tensorpack.tfutils.tower import TowerContext

from conftest import make_session

tf1 = tf.compat.v1
EPS = 1e-5
H = 2.0 ** -7                 # finite-difference step, exact in float32

#: the authors' CIFAR recipe at 2 samples per normalisation: kn.KN_RECIPES['authors']
RECIPE = dict(group_size=2, prior_method='mc', prior_samples=1, gain=0.1, process_noise=False,
              pooled_variance=True, guard_ratio=100.0, propagate='input')
CONFIG = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                      'configs', 'cpu', 'kn_study', 'bkn_authors.toml')
#: the config's lines that the recipe states (the rest is the study's budget)
_RECIPE_KEYS = ('prior', 'prior_samples', 'gain')


_session = make_session      # tiny graphs run a few times: no Grappler rewrites


# ----------------------------------------------------------------------------------------------
# the recipe by name: the library's KN_RECIPES['authors'], the trainer's --kn-recipe authors
# ----------------------------------------------------------------------------------------------

def test_named_recipe_is_this_recipe():
    assert dict(group_size=2, **kn.KN_RECIPES['authors']) == RECIPE


def test_trainer_recipe_builds_the_kn_study_config(tmp_path):
    """``--kn-recipe authors`` on the study's budget resolves to exactly the options of
    configs/cpu/kn_study/bkn_authors.toml, which states every KN option by hand."""
    from kalman_norm.train.cifar import parse_options
    kept = []
    with open(CONFIG) as f:
        for line in f:
            if line.startswith('[norm_options]'):
                break                                      # the table holds only KN options
            if line.split('=')[0].strip() not in _RECIPE_KEYS:
                kept.append(line)
    budget = tmp_path / 'budget.toml'
    budget.write_text(''.join(kept))
    by_hand = parse_options(['--config', CONFIG, '--seed', '1'])
    by_name = parse_options(['--config', str(budget), '--kn-recipe', 'authors', '--seed', '1'])
    assert by_hand['norm_options'] == dict(process_noise=False, pooled_variance=True, guard_ratio=100.0,
                                           propagate='input')
    for key in ('prior', 'prior_samples', 'gain', 'norm_options', 'identity', 'logdir'):
        assert by_name[key] == by_hand[key], key
    assert repr(by_name['spec']) == repr(by_hand['spec'])


# ----------------------------------------------------------------------------------------------
# the recipe as a spec, on a real (tiny) ResNet
# ----------------------------------------------------------------------------------------------

def test_recipe_builds_a_resnet_with_mc_priors_and_no_extra_parameters_and_trains():
    rng = np.random.RandomState(0)
    images = rng.normal(size=(8, 8, 8, 3)).astype(np.float32)
    labels = rng.randint(0, 10, 8).astype(np.int32)
    spec = kn.NormSpec('bkn', **RECIPE)
    graph = tf.Graph()
    with graph.as_default(), TowerContext('', is_training=True):
        with kn.norm_scope(spec):
            logits = resnet_cifar(tf.constant(images), n=1)
        loss = tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(labels=labels, logits=logits))
        train = tf1.train.MomentumOptimizer(0.05, 0.9).minimize(loss)
        names = [v.op.name for v in tf1.global_variables()]
        diags = kn_diagnostics()
        # no R, no learned q: the recipe adds no parameter to BN's
        assert not [n for n in names if n.endswith('noise_rho') or n.endswith('gain_logit')]
        # every norm layer but the first has a prior (7 norms in ResNet-8)
        assert len(diags) == 6
        # the prediction samples one image per group in every conv that carries a prior
        # (every conv but the first: 6 block convs; the linear layer's input estimate too)
        sampling = [op for op in graph.get_operations() if op.type == 'RandomStandardNormal'
                    and 'Initializer' not in op.name]
        assert len(sampling) == 7, [op.name for op in sampling]
        with _session(graph) as sess:
            sess.run(tf1.global_variables_initializer())
            trusted = sess.run([d.trusted for d in diags])
            losses = [sess.run([loss, train])[0] for _ in range(10)]
    assert all(t.shape == (4, 1) for t in trusted)
    assert np.isfinite(losses).all()
    assert losses[-1] < 0.7 * losses[0], losses


# ----------------------------------------------------------------------------------------------
# gradients flow through the prior into the conv kernel
# ----------------------------------------------------------------------------------------------

def _prior_gradient_graph(method):
    """conv1 → BKN (no prior) → ReLU → conv2 → BKN twice: 'full' with the flow's prior, 'stopped'
    with the same prior under stop_gradient.  Returns (graph, losses, conv2 kernel, grads, feeds)."""
    rng = np.random.RandomState(1)
    x = rng.normal(0.3, 1.0, (4, 5, 5, 3)).astype(np.float32)
    proj = rng.normal(size=(4, 5, 5, 4)).astype(np.float32)
    graph = tf.Graph()
    with graph.as_default(), TowerContext('', is_training=True):
        with kn.norm_scope('bkn', **dict(RECIPE, prior_method=method)):
            h = F.relu(F.norm('n1', F.conv2d('conv1', tf.constant(x), 4, 3)))
            y = F.conv2d('conv2', h, 4, 3)
            prior = get_estimate(y)
            full = F.norm('full', y)
            stopped = F.norm('stopped', y, prior=Estimate(tf.stop_gradient(prior.mean),
                                                          tf.stop_gradient(prior.var)))
        kernel = [v for v in tf1.global_variables() if v.op.name == 'conv2/W'][0]
        losses = {k: tf.reduce_sum(tf.cast(out, tf.float64) * proj) for k, out in
                  (('full', full), ('stopped', stopped))}
        grads = {k: tf.gradients(loss, kernel)[0] for k, loss in losses.items()}
        trusted = [d.trusted for d in kn_diagnostics()]
    return graph, losses, kernel, grads, trusted


@pytest.mark.parametrize('method', ['mc', 'analytic'])
def test_gradient_reaches_the_conv_kernel_through_the_prior(method):
    graph, losses, kernel, grads, trusted = _prior_gradient_graph(method)
    with graph.as_default(), _session(graph) as sess:
        sess.run(tf1.global_variables_initializer())
        feed = {}
        if method == 'mc':
            # freeze the sampled image: feeding the sampler's output makes every run use the
            # same draw, so that finite differences see a smooth function of the kernel
            samplers = [op.outputs[0] for op in graph.get_operations()
                        if op.type == 'RandomStandardNormal' and 'Initializer' not in op.name]
            assert len(samplers) == 1
            feed = {samplers[0]: sess.run(samplers[0])}
        assert all(t.all() for t in sess.run(trusted, feed))         # the guard does not fire
        g_full, g_stop = sess.run([grads['full'], grads['stopped']], feed)
        # The prior's path is a large part of the gradient, not a rounding difference.
        assert np.linalg.norm(g_full - g_stop) > 0.1 * np.linalg.norm(g_full)
        # Central finite differences on a few kernel entries agree with the full gradient.
        w0 = sess.run(kernel)
        coords = np.random.RandomState(2).choice(w0.size, 16, replace=False)
        fd = np.zeros(len(coords))
        for i, c in enumerate(coords):
            for sign in (1, -1):
                w = w0.copy().reshape(-1)
                w[c] += sign * H
                kernel.load(w.reshape(w0.shape), sess)
                fd[i] += sign * sess.run(losses['full'], feed)
        kernel.load(w0, sess)
    fd /= 2 * H
    full, stop = g_full.reshape(-1)[coords], g_stop.reshape(-1)[coords]
    err = np.linalg.norm(fd - full) / np.linalg.norm(full)
    assert err < 1e-2, (err, fd, full)
    assert np.linalg.norm(fd - stop) > 10 * np.linalg.norm(fd - full)


# ----------------------------------------------------------------------------------------------
# residual additions, option-A shortcuts
# ----------------------------------------------------------------------------------------------

def test_add_sums_the_branch_means_and_variances():
    """flow.add of two branches with estimates: mean sum and variance sum (the authors' rule for
    a residual block's branch + shortcut); a pending ReLU is resolved first."""
    rng = np.random.RandomState(3)
    m1, m2 = rng.normal(size=(2, 2, 5)).astype(np.float32)
    v1, v2 = rng.uniform(0.5, 2.0, (2, 2, 5)).astype(np.float32)
    with tf.Graph().as_default():
        a, b = tf.zeros([4, 3, 3, 5]), tf.ones([4, 3, 3, 5])
        set_estimate(a, Estimate(m1, v1))
        set_estimate(b, Estimate(m2, v2, rectified=True))
        est = get_estimate(F.add(a, b))
        rm, rv = rectified_gaussian_moments(tf.constant(m2), tf.constant(v2))
        with tf1.Session() as sess:
            mean, var, rm, rv = sess.run([est.mean, est.var, rm, rv])
    assert not est.rectified
    np.testing.assert_allclose(mean, m1 + rm, rtol=1e-6)
    np.testing.assert_allclose(var, v1 + rv, rtol=1e-6)
    assert (rv > 0).all() and (rm > 0).all()


def _shortcut_prior(data_format):
    """The estimate on ResNet-CIFAR's option-A shortcut of a 4 → 8 channel, stride-2 block: the
    model's own code (resnet_cifar.residual_block) run on an input carrying a prior with distinct
    values per group and channel; the shortcut is the only Pad of a feature map in the block."""
    groups, channels = 2, 4
    mean = 10.0 * np.arange(1, groups + 1)[:, None] + np.arange(1, channels + 1)[None, :]   # g·10 + c
    var = 100.0 + mean
    shape = [4, 4, 4, channels] if data_format == 'NHWC' else [4, channels, 4, 4]
    graph = tf.Graph()
    with graph.as_default(), TowerContext('', is_training=True):
        x = tf.constant(np.random.RandomState(4).normal(size=shape).astype(np.float32))
        set_estimate(x, Estimate(mean, var))
        with F.data_format_scope(data_format), kn.norm_scope('bkn', group_size=2):
            residual_block('block', x, 8, 2)
        pads = [op for op in graph.get_operations() if op.type in ('Pad', 'PadV2')
                and op.name.startswith('block/') and op.outputs[0].shape.rank == 4]   # (not the estimate's)
        assert len(pads) == 1, [op.name for op in pads]
        est = get_estimate(pads[0].outputs[0])
        with tf1.Session() as sess:
            return mean, var, sess.run([est.mean, est.var])


@pytest.mark.parametrize('data_format', ['NHWC', 'NCHW'])
def test_shortcut_padding_keeps_each_groups_own_channels(data_format):
    """Group g's padded prior is [0, 0, g's 4 channels, 0, 0] (the authors' code zero-pads the two
    ends of a vector laid out group by group, handing groups each other's channels)."""
    mean, var, (pm, pv) = _shortcut_prior(data_format)
    assert pm.shape == (2, 8)
    for g in range(2):
        np.testing.assert_array_equal(pm[g], np.concatenate([[0, 0], mean[g], [0, 0]]))
        np.testing.assert_array_equal(pv[g], np.concatenate([[0, 0], var[g], [0, 0]]))


# ----------------------------------------------------------------------------------------------
# moving averages from every group
# ----------------------------------------------------------------------------------------------

def _group_moments(x, group_size):
    g = x.astype(np.float64).reshape((-1, group_size) + x.shape[1:])
    return g.mean(axis=(1, 2, 3)), g.var(axis=(1, 2, 3))


@pytest.mark.parametrize('kind', ['bkn', 'bn'])
def test_moving_averages_follow_the_mean_over_all_groups(kind):
    """One EMA step (momentum 0.8) folds in the mean over the 4 groups of the group statistics
    (BKN: of the Eq. 7 posteriors), not group 0's (the authors' code)."""
    rng = np.random.RandomState(5)
    # groups with clearly different statistics, so that group 0 alone would be far off
    x = (rng.normal(size=(8, 3, 3, 4)) * np.repeat([0.5, 1.0, 2.0, 3.0], 2)[:, None, None, None]
         + np.repeat([-2.0, 0.0, 1.0, 3.0], 2)[:, None, None, None]).astype(np.float32)
    pm = rng.normal(size=(4, 4)).astype(np.float32)
    pv = rng.uniform(0.5, 4.0, (4, 4)).astype(np.float32)
    graph = tf.Graph()
    with graph.as_default(), TowerContext('', is_training=True):
        if kind == 'bkn':
            BatchKalmanNorm('L', tf.constant(x), prior=(pm, pv), group_size=2, momentum=0.8, gain=0.1,
                            process_noise=False, pooled_variance=True)
        else:
            MicroBatchNorm('L', tf.constant(x), group_size=2, momentum=0.8)
        ema = [v for v in tf1.global_variables() if v.op.name in ('L/mean/EMA', 'L/variance/EMA')]
        with _session(graph) as sess:
            sess.run(tf1.global_variables_initializer())
            sess.run(tf1.get_collection(tf1.GraphKeys.UPDATE_OPS))
            ema_mean, ema_var = sess.run(sorted(ema, key=lambda v: v.op.name))
    bm, bv = _group_moments(x, 2)                                     # [4 groups, 4 channels]
    unbiased = bv * 18.0 / 17.0                  # the EMA takes S unbiased: n = 2 samples x 3 x 3
    if kind == 'bkn':
        q, p = 0.1, 0.9
        mean = p * pm + q * bm
        var = p * pv + q * unbiased + p * q * (bm - pm) ** 2
    else:
        mean, var = bm, unbiased
    np.testing.assert_allclose(ema_mean, 0.2 * mean.mean(0), rtol=1e-5, atol=1e-6)    # EMA starts at 0
    np.testing.assert_allclose(ema_var, 0.8 + 0.2 * var.mean(0), rtol=1e-5)           # and at 1
    assert np.abs(ema_mean - 0.2 * mean[0]).max() > 0.1               # group 0 alone is far off
