"""Batch Kalman Normalization (BKN) and Group Kalman Normalization (GKN).

KN (Wang et al., NeurIPS 2018) estimates a layer's statistics from two sources (Eq. 7):

    prediction   µ̂_{k|k-1} = A_k µ̂_{k-1|k-1}          Σ̂_{k|k-1} = A_k Σ̂_{k-1|k-1} A_kᵀ + R
    update       µ̂_{k|k}   = p µ̂_{k|k-1} + q x̄_k      Σ̂_{k|k}   = p Σ̂_{k|k-1} + q S_k      (p = 1 - q)

The prediction (the prior) arrives from the previous KN layer through
:mod:`kalman_norm.transition` / :mod:`kalman_norm.flow`; this module implements the update and
the normalisation with the posterior ``(µ̂_{k|k}, Σ̂_{k|k})``; the gain q, the process noise R,
the calibrated prior and the options' checks are in :mod:`kalman_norm.layers._kalman_parts`.

Defaults: the recipe that trained best in this project's KN study (results/kn_study.md), which
differs from the paper and from the authors' code in two options: no process noise R (as the
authors' code; the paper learns R) and the output hand-on (``propagate='output'``; both hand on
the input estimate).  :data:`kalman_norm.spec.KN_RECIPES` names this recipe ('library'), the
authors' ('authors') and the paper's ('paper'), one keyword away each.
"""
import collections

import tensorflow as tf

from ..estimate import Estimate, get_estimate, set_estimate
from ._common import EMA, Layout, affine_params, bessel_factor, norm_layer, resolve_training, to_float32
from ._groupnorm import group_norm_apply, group_norm_view, num_channel_groups
from ._kalman_parts import (NOISE_PARAMS, PRIOR_SOURCES, PROPAGATE_MODES, _BKN_CHECKS, _KN_CHECKS, _Gain,
                            _PriorCalibration, _ProcessNoise, _process_noise)
from ._options import BATCH_STAT_CHECKS, COMMON_CHECKS, check_group_size, check_options, check_training, layer_options

__all__ = ['BatchKalmanNorm', 'GroupKalmanNorm', 'kalman_update', 'kn_diagnostics', 'KNDiagnostic',
           'PROPAGATE_MODES', 'PRIOR_SOURCES', 'NOISE_PARAMS', 'check_batch_kalman_norm_options',
           'check_group_kalman_norm_options']

#: One :class:`KNDiagnostic` per KN layer with a prior (per tower), kept per graph by
#: :func:`kn_diagnostics`.  Not a TF collection: tensorpack's ModelSaver exports every collection
#: into the .meta graph, and these Python records cannot be serialised there.
_DIAGNOSTICS_ATTR = '_kalman_norm_diagnostics'
#: ``prior_var`` is the transition's AΣ̂Aᵀ, before R.  ``gain`` (q, a scalar tensor) and
#: ``process_noise`` (the layer's tensor of that name: R, or r where R = r ⊙ AΣ̂Aᵀ; see
#: :class:`_ProcessNoise`) are read by name, None where the layer has none (R switched off).
KNDiagnostic = collections.namedtuple(
    'KNDiagnostic', ['layer', 'prior_mean', 'prior_var', 'group_mean', 'group_var',
                     'tower_mean', 'tower_var', 'trusted', 'gain', 'process_noise'],
    defaults=(None, None))


def prior_validity(prior_mean, prior_var):
    """[..., 1] bool: the prior row is usable: every mean and variance finite, every variance >= 0.

    A negative variance cannot come out of the transition (its variances are sums of squares)
    but can be handed in by a user; normalising with it would give NaN (rsqrt of a negative).
    """
    finite = tf.reduce_all(tf.math.is_finite(prior_mean) & tf.math.is_finite(prior_var), -1, keepdims=True)
    return finite & tf.reduce_all(prior_var >= 0.0, -1, keepdims=True)


def _keep_valid(prior_mean, prior_var, valid):
    """Replace rejected rows by (0, 1) so that NaN/Inf cannot reach values or gradients."""
    return (tf.where(valid, prior_mean, tf.zeros_like(prior_mean)),
            tf.where(valid, prior_var, tf.ones_like(prior_var)))


def kalman_update(prior_mean, prior_var, batch_mean, batch_var, q, noise=None,
                  pooled_variance=True, guard_ratio=100.0, epsilon=1e-5, relative_noise=False, p=None,
                  prior_valid=None):
    """Eq. 7's update for statistics of shape ``[..., C]``; returns (mean, var, trusted).

    * ``noise`` R enters the predicted variance: Σ̂_{k|k-1} = AΣA^T + R, with R = ``noise``, or
      R = ``noise`` ⊙ AΣA^T if ``relative_noise`` (see :class:`_ProcessNoise`).
    * ``p``: 1 - q, if the caller has a more accurate value (a learned gain); default 1 - q.
    * ``pooled_variance`` adds q(1-q)(x̄ - µ̂_{k|k-1})², making Σ̂_{k|k} the variance of the mixture
      p·N(µ̂_{k|k-1}, Σ̂_{k|k-1}) + q·N(x̄, S) (the authors' code); Eq. 7 leaves the term out.
    * A row whose prior is unusable — a non-finite mean or variance, or a negative variance
      (:func:`prior_validity`, tested on the prior as given, before R), or False in
      ``prior_valid`` [..., 1] — falls back to its batch statistics.
    * The guard (authors' code: mean(prior_var / batch_var) ≥ 100) falls back to the batch
      statistics of a row when prior and batch variance disagree by ``guard_ratio`` or more in
      either direction (channel-mean of the ratio).  ``guard_ratio=None`` disables the ratio
      test (unusable priors are always rejected).
    ``trusted`` [..., 1] is True where the prior was used.
    """
    valid = prior_validity(prior_mean, prior_var)
    if prior_valid is not None:
        valid = valid & prior_valid
    # Keep rejected priors out of the arithmetic entirely so that they cannot reach gradients.
    prior_mean, prior_var = _keep_valid(prior_mean, prior_var, valid)
    if noise is not None:
        prior_var = prior_var * (1.0 + noise) if relative_noise else prior_var + noise
    p = 1.0 - q if p is None else p
    mean = p * prior_mean + q * batch_mean
    var = p * prior_var + q * batch_var
    if pooled_variance:
        var = var + p * q * tf.square(batch_mean - prior_mean)
    trusted = valid
    if guard_ratio is not None:
        up = tf.reduce_mean((prior_var + epsilon) / (batch_var + epsilon), -1, keepdims=True)
        down = tf.reduce_mean((batch_var + epsilon) / (prior_var + epsilon), -1, keepdims=True)
        ratio = tf.maximum(tf.stop_gradient(up), tf.stop_gradient(down))
        trusted = trusted & (ratio < guard_ratio)
    mean = tf.where(trusted, mean, batch_mean)          # trusted [..., 1] broadcasts over channels
    var = tf.where(trusted, var, batch_var)
    return mean, var, trusted


def _resolve_prior(x, prior, channels):
    """The prior as an Estimate, or None.  'auto' reads the estimate the flow attached to x."""
    if isinstance(prior, str):
        if prior != 'auto':
            raise ValueError("prior must be 'auto', None, an Estimate or a (mean, var) pair, got %r" % (prior,))
        prior = get_estimate(x)
    if prior is None:
        return None
    if not isinstance(prior, Estimate):
        try:
            mean, var = prior
        except (TypeError, ValueError):
            raise ValueError('prior must be an Estimate or a (mean, var) pair, got %r' % (prior,))
        prior = Estimate(mean, var)        # any real dtype; the statistics are float32 inside
    mean, var = prior.moments()
    for what, t in (('mean', mean), ('variance', var)):
        shape = t.shape.as_list()
        if len(shape) == 1:
            shape = [1] + shape
        if len(shape) != 2 or shape[-1] != channels:
            raise ValueError('The prior %s has shape %s; expected [groups, %d] or [%d] for an input '
                             'with %d channels' % (what, t.shape.as_list(), channels, channels, channels))
    mean = tf.reshape(mean, [-1, channels])
    var = tf.reshape(var, [-1, channels])
    return mean, var


def _match_groups(prior_mean, prior_var, num_groups_tensor, static_groups):
    """Check the prior has one row per group (or one row for all) and broadcast it."""
    pg = prior_mean.shape[0]
    if pg is not None and static_groups is not None and pg not in (1, static_groups):
        raise ValueError('The prior has %d groups but the input has %d micro-batch groups'
                         % (pg, static_groups))
    if pg is None or static_groups is None:
        rows = tf.shape(prior_mean)[0]
        check = tf.debugging.Assert(
            tf.logical_or(tf.equal(rows, 1), tf.equal(rows, num_groups_tensor)),
            ['The prior does not have one row per micro-batch group: prior rows, groups =',
             rows, num_groups_tensor])
        with tf.control_dependencies([check]):
            prior_mean = tf.identity(prior_mean)
    if pg is not None and pg == static_groups:
        return prior_mean, prior_var
    shape = tf.stack([num_groups_tensor, prior_mean.shape[1]])
    return tf.broadcast_to(prior_mean, shape), tf.broadcast_to(prior_var, shape)


def _output_estimate(post_mean, post_var, norm_mean, norm_var, gamma, beta, epsilon):
    """Distribution of γ(x - µ_n)/sqrt(σ_n² + ε) + β for x ~ N(post_mean, post_var)."""
    scale = gamma * tf.math.rsqrt(norm_var + epsilon)
    return Estimate((post_mean - norm_mean) * scale + beta, post_var * tf.square(scale))


def check_batch_kalman_norm_options(**options):
    """Validate options of :func:`BatchKalmanNorm` (ValueError, one line, for the first bad one)."""
    check_options(options, dict(BATCH_STAT_CHECKS, **_KN_CHECKS, **_BKN_CHECKS))


def check_group_kalman_norm_options(**options):
    """Validate options of :func:`GroupKalmanNorm` (the channel count is checked when the layer is built)."""
    check_options(options, dict(COMMON_CHECKS, group_size=check_group_size, training=check_training,
                                **_KN_CHECKS))
    if 'channel_groups' in options:
        num_channel_groups(options['channel_groups'], options['channel_groups'])


def kn_diagnostics(graph=None):
    """The (mutable) list of KNDiagnostic records of ``graph`` (default: the default graph)."""
    graph = graph or tf.compat.v1.get_default_graph()
    records = getattr(graph, _DIAGNOSTICS_ATTR, None)
    if records is None:
        records = []
        setattr(graph, _DIAGNOSTICS_ATTR, records)
    return records


def _record_diagnostic(layout, x, prior, group_mean, group_var, trusted):
    # q and R are read back by the names the layer gave them ('gain', 'process_noise') in its own
    # name scope, so that a change of their parametrisation does not touch this record.
    graph = tf.compat.v1.get_default_graph()
    scope = graph.get_name_scope()
    found = {}
    for key in ('gain', 'process_noise'):
        name = '%s/%s:0' % (scope, key) if scope else key + ':0'
        try:
            found[key] = graph.get_tensor_by_name(name)
        except KeyError:
            found[key] = None
    tower_mean, tower_var = tf.nn.moments(x, axes=[a for a in range(layout.ndims) if a != layout.channel_axis])
    kn_diagnostics().append(KNDiagnostic(
        tf.compat.v1.get_variable_scope().name, prior[0], prior[1], group_mean, group_var,
        tower_mean, tower_var, trusted, found['gain'], found['process_noise']))


@norm_layer
def BatchKalmanNorm(x, prior='auto', *, group_size=None, gain=0.1, gain_init=0.1,
                    process_noise=False, noise_param='relative', noise_init=None, pooled_variance=True,
                    guard_ratio=100.0, propagate='output', prior_source='flow', prior_gradient=True,
                    eval_stats='moving', momentum=0.9, epsilon=1e-5, center=True, scale=True, gamma_init=1.0,
                    training=None, ema_update='default', unbiased_variance=True, data_format=None):
    """Batch Kalman Normalization, Eq. 7 of the paper, over micro-batch groups.

    Args:
        x: 4-D (NHWC or NCHW) or 2-D [N, C] features.
        prior: ``'auto'`` (default) takes the estimate :mod:`kalman_norm.flow` predicted for x;
            an :class:`Estimate` or ``(mean, var)`` of shape [G, C] (or [C]) gives it explicitly;
            None, or no estimate attached, means no prior (the first KN layer of a network):
            plain batch statistics, exactly BN.
        group_size: samples per normalisation (the paper's per-GPU batch).  The tower batch is
            split into consecutive groups, each with its own statistics and prior.  None: one group.
        gain: q of Eq. 7, a number in [0, 1] (weight of the batch statistics), or ``'learned'``:
            q = sigmoid(θ), one scalar per layer, initialised to ``gain_init``.  Default 0.1, the
            authors' fixed value for micro-batches (0.95 for batch 128); the paper learns q.
        gain_init: a learned q's start, in (0, 1).  Default 0.1.
        process_noise: learn a diagonal R ≥ 0 per channel in the predicted variance of Eq. 7.
            Default False (R = 0), as in the authors' code and in the recipe that trains better
            than BN at 2 samples per normalisation in the KN study (results/kn_study.md).  The
            paper learns R (its Table 2 counts it): True.
        noise_param: how R is learned: ``'relative'`` (default) R = r ⊙ AΣAᵀ with r = softplus(ρ),
            a unit-free share of the predicted variance; ``'softplus'`` R = softplus(ρ) in
            absolute units (the first version, which hardly learns).  See :class:`_ProcessNoise`.
        noise_init: R's start: r = 0.1 ('relative') or R = 1e-3 ('softplus') when None.
        pooled_variance: add q(1-q)(x̄ - µ̂_{k|k-1})² to the posterior variance.  Default True
            (authors' code); Eq. 7 as the paper writes it leaves the term out (False).
        guard_ratio: fall back to batch statistics where prior and batch variance disagree by this
            factor (see :func:`kalman_update`); None disables it, else a number > 1.  Default 100
            (authors' code); the paper has no guard (None).
        propagate: what this layer hands to the next prediction step (``PROPAGATE_MODES``).
            Default ``'output'``: the distribution of the normalised output, which accounts for
            the normalisation between the layers; with it BKN trains better than BN at 2 samples
            per normalisation in the KN study (results/kn_study.md), while the input estimate's
            prior lies tens of standard deviations from the statistics it is mixed with
            (results/prior_diagnostic.md).  The paper and the authors' code hand on the input
            estimate: ``'input'``.
        prior_source: ``'flow'`` (default): the prior is the prediction above.  ``'moving'``: a
            control for studies (``PRIOR_SOURCES``): in a layer that has a prior, this layer's
            own moving averages replace it (no gradient through them), all else unchanged.
            ``'calibrated'``: the prediction corrected by its running bias (this project's; see
            :class:`_PriorCalibration`), with two more moving statistics per layer.
        prior_gradient: True (default): the loss's gradient flows through the prior into whatever
            it was computed from (the kernels, γ and β below: the paper's, and the authors' code).
            False: a study's control, the prior enters Eq. 7 as a constant (stop_gradient).
        eval_stats: at inference, ``'moving'`` normalises with the moving averages of the
            posterior (paper's option A); ``'batch'`` runs the filter online on the test groups
            (option B, Tables 4, 5, 7).
        momentum, epsilon, center, scale, gamma_init, ema_update: as tensorpack's BatchNorm.
        unbiased_variance: what enters ``variance/EMA`` (below).  Default True.
        training: None follows the tower context.

    What enters the EMA (means over groups): ``mean/EMA`` tracks the posterior mean µ̂_{k|k};
    ``variance/EMA`` the posterior variance Σ̂_{k|k} with the micro-batch's own share taken
    unbiased: q·S becomes q·S·n/(n-1) (n = g·H·W values per statistic), and a group without a
    prior (or rejected by the guard) contributes n/(n-1)·S, exactly what BN's EMA tracks.  So
    BKN with q = 1 keeps BN's moving averages, and the prior's share, a prediction of the
    population variance rather than a sample's, is not inflated.  ``unbiased_variance=False``
    tracks the posterior as used in training (this package's convention before 0.2).

    Variables: ``gamma``, ``beta``, ``mean/EMA``, ``variance/EMA`` (as tensorpack's BatchNorm),
    and, only in layers that receive a prior, ``gain_logit`` if the gain is learned and
    ``noise_rho`` if R is on (the paper's extra parameters, Table 2).

    NaN/Inf: non-finite inputs propagate to the output as in BN; a prior row with a non-finite
    mean or variance, or a negative variance, is never used (that group falls back to its batch
    statistics).  A prior of any float dtype is accepted; statistics are float32 inside.

    The defaults are ``KN_RECIPES['library']`` (:mod:`kalman_norm.spec`); the authors' CIFAR
    recipe and the paper's are ``norm_scope('bkn', group_size=2, **KN_RECIPES['authors'])`` and
    ``**KN_RECIPES['paper']``.

    Returns the normalised tensor, with ``.posterior`` (an Estimate or None) and the estimate
    for the next layer attached through :func:`kalman_norm.set_estimate`.
    """
    check_batch_kalman_norm_options(**layer_options(locals()))
    layout = Layout(x, data_format)
    x32, restore = to_float32(x)
    c = layout.channels
    gamma, beta = affine_params(c, center, scale, gamma_init)
    ema = EMA(c, momentum, ema_update)
    training = resolve_training(training)
    prior = _resolve_prior(x, prior, c)
    calibration = None
    if prior is not None and prior_source == 'moving':
        # the same layers weigh a prior, but a steadier estimate of their own statistics instead of
        # the prediction; ema.update assigns only after the output, so this step reads the old value
        prior = (tf.stop_gradient(ema.mean)[None], tf.stop_gradient(ema.variance)[None])
    elif prior is not None and prior_source == 'calibrated':
        calibration = _PriorCalibration(c, ema)
    if prior is not None and not prior_gradient:
        prior = tuple(tf.stop_gradient(t) for t in prior)
    # q and R exist only where there is a prior to weigh (not in the first KN layer).
    gain_ = _Gain(gain, gain_init) if prior is not None else None
    noise = _process_noise(c, process_noise, noise_param, noise_init) if prior is not None else None

    if not training and eval_stats == 'moving':
        out = layout.normalize_global(x32, ema.mean, ema.variance, gamma, beta, epsilon)
        out = tf.identity(restore(out), name='output')
        out.posterior = None
        return out

    grouped, batch_mean, batch_var = layout.group_moments(x32, group_size)
    if prior is None:
        mean, var, trusted = batch_mean, batch_var, None
    else:
        prior = _match_groups(prior[0], prior[1], tf.shape(batch_mean)[0], batch_mean.shape[0])
        raw_prior = prior
        if calibration is not None:
            prior = calibration.apply(*prior)
        mean, var, trusted = kalman_update(prior[0], prior[1], batch_mean, batch_var, gain_.q, p=gain_.p,
                                           pooled_variance=pooled_variance, guard_ratio=guard_ratio,
                                           epsilon=epsilon, **_ProcessNoise.update_args(noise))
        _record_diagnostic(layout, x32, prior, batch_mean, batch_var, trusted)
    out = layout.normalize_grouped(x32, group_size, mean, var, gamma, beta, epsilon)
    if calibration is not None:
        out = calibration.update(out, raw_prior[0], raw_prior[1], batch_mean, batch_var, training, epsilon)
    ema_var = var
    if unbiased_variance:
        # Eq. 7's q·S with S unbiased: add (n/(n-1) - 1)·(the batch variance's weight)·S
        weight = 1.0 if trusted is None else tf.where(trusted, tf.broadcast_to(gain_.q, tf.shape(batch_var[..., :1])),
                                                       tf.ones_like(batch_var[..., :1]))
        ema_var = var + (bessel_factor(layout.values_per_statistic(x32, group_size)) - 1.0) * weight * batch_var
    out = ema.update(restore(out), mean, ema_var, training)
    out.posterior = Estimate(mean, var)
    set_estimate(out, out.posterior if propagate == 'input' else
                 _output_estimate(mean, var, mean, var, gamma, beta, epsilon))
    return out


def _to_channel_groups(mean, var, groups):
    """Per-channel Gaussian estimates [G, C] → moments of the pooled channel-group distribution
    [G, groups]: mean of the means, and mean variance plus variance of the means (total variance)."""
    c = mean.shape[-1]
    m = tf.reshape(mean, [-1, groups, c // groups])
    v = tf.reshape(var, [-1, groups, c // groups])
    gm, spread = tf.nn.moments(m, axes=[2])
    return gm, tf.reduce_mean(v, 2) + spread


def _per_sample(stat, group_size, batch):
    """[G, k] per micro-batch group → [N, k] per sample (samples of a group are consecutive)."""
    if group_size is None:
        return tf.broadcast_to(stat, tf.stack([batch, tf.shape(stat)[1]]))
    return tf.repeat(stat, group_size, axis=0)


@norm_layer
def GroupKalmanNorm(x, prior='auto', *, group_size=None, channel_groups=32, gain=0.1, gain_init=0.1,
                    process_noise=False, noise_param='relative', noise_init=None, pooled_variance=True,
                    guard_ratio=100.0, propagate='output', epsilon=1e-5, center=True, scale=True,
                    gamma_init=1.0, training=None, data_format=None):
    """Group Kalman Normalization (GKN, Sect. 3.3): Group Normalization's statistics updated by a prior.

    The paper defines GKN only as "Eq. 7 with GN's statistic sets S_i".  The design here:

    1. Observation.  GN's statistics: per sample n and channel group j, mean x̄_{n,j} and
       variance S_{n,j} over the group's channels and all positions (Wu & He 2018).
    2. Prior in GN's space.  The prior arrives per micro-batch group b and channel c
       (µ_{b,c}, σ²_{b,c}) like BKN's.  GN's set S_i pools the channels of group j, so the prior
       for that set is the moments of the pooled distribution: mean over the group's channels
       of µ, and mean of σ² plus the variance of µ across those channels (total variance).
       R enters per channel before the pooling (σ² → σ² + R, or (1 + r)σ² with the relative R),
       so the pooled R is its mean over the group's channels.  Every sample of micro-batch
       group b gets b's prior; if b's per-channel prior is unusable (non-finite, negative
       variance) all of b's samples use their GN statistics.
    3. Update.  Eq. 7 (with the same gain, pooled-variance and guard options as BKN) per
       sample and channel group; the result normalises the sample's group, then γ, β per channel.
    4. Hand-on.  The next prediction needs per-channel moments: ``propagate='input'`` hands on
       Eq. 7 applied per channel to the prior and the micro-batch group's per-channel moments;
       ``'output'`` (default) hands on the distribution of the normalised output under that
       estimate (GN's normalising statistics averaged over the micro-batch group's samples).
       A GKN layer without a prior (the first of a network) is GN and hands on its micro-batch
       group's per-channel moments, as BKN's first layer does, so that the chain starts there.

    Like GN, GKN has no moving averages: inference runs the same computation.  With
    ``gain=1`` GKN is GN.  ``channel_groups`` is GN's number of channel groups (default 32);
    every other option, its default and the paper's and the authors' values are as in
    :func:`BatchKalmanNorm`.  Variables: ``gamma``, ``beta``, and ``gain_logit`` / ``noise_rho``
    as in :func:`BatchKalmanNorm`.
    """
    check_group_kalman_norm_options(**layer_options(locals()))
    layout = Layout(x, data_format)
    x32, restore = to_float32(x)
    c = layout.channels
    groups = num_channel_groups(c, channel_groups)
    gamma, beta = affine_params(c, center, scale, gamma_init)
    resolve_training(training)
    prior = _resolve_prior(x, prior, c)
    gain_ = _Gain(gain, gain_init) if prior is not None else None
    noise = _process_noise(c, process_noise, noise_param, noise_init) if prior is not None else None

    view, axes = group_norm_view(layout, x32, groups)
    sample_mean, sample_var = tf.nn.moments(view, axes=axes)
    sample_mean = tf.reshape(sample_mean, [-1, groups])
    sample_var = tf.reshape(sample_var, [-1, groups])
    _, chan_mean, chan_var = layout.group_moments(x32, group_size)      # [G, C] observed per channel
    batch = tf.shape(x32)[0]
    if prior is None:
        # The first KN layer: plain GN, and (as BKN's first layer) it hands on the observed
        # per-channel moments so that the chain of priors starts here.
        mean, var = sample_mean, sample_var
        out = group_norm_apply(layout, x32, groups, mean, var, gamma, beta, epsilon)
        out = tf.identity(restore(out), name='output')
        post_mean, post_var = chan_mean, chan_var
    else:
        prior = _match_groups(prior[0], prior[1], tf.shape(chan_mean)[0], chan_mean.shape[0])
        # 2-3: prior (with R, per channel) pooled into channel groups, broadcast to samples,
        # updated with GN statistics.  Usability is judged on the per-channel prior: pooling
        # could hide one channel's negative variance among the others.
        valid = prior_validity(prior[0], prior[1])                          # [G, 1]
        pm, pv = _keep_valid(prior[0], prior[1], valid)
        if noise is not None:
            pv = noise.predict(pv)
        pm, pv = _to_channel_groups(pm, pv, groups)
        pm, pv = _per_sample(pm, group_size, batch), _per_sample(pv, group_size, batch)
        sample_valid = _per_sample(tf.cast(valid, tf.float32), group_size, batch) > 0.5
        mean, var, trusted = kalman_update(pm, pv, sample_mean, sample_var, gain_.q, p=gain_.p,
                                           pooled_variance=pooled_variance, guard_ratio=guard_ratio,
                                           epsilon=epsilon, prior_valid=sample_valid)
        out = group_norm_apply(layout, x32, groups, mean, var, gamma, beta, epsilon)
        out = tf.identity(restore(out), name='output')
        # 4: per-channel posterior for the next prediction step.
        post_mean, post_var, chan_trusted = kalman_update(
            prior[0], prior[1], chan_mean, chan_var, gain_.q, p=gain_.p, pooled_variance=pooled_variance,
            guard_ratio=guard_ratio, epsilon=epsilon, **_ProcessNoise.update_args(noise))
        _record_diagnostic(layout, x32, prior, chan_mean, chan_var, chan_trusted)
    out.posterior = Estimate(post_mean, post_var)
    if propagate == 'input':
        set_estimate(out, out.posterior)
    else:
        # normalising statistics of each micro-batch group, averaged over its samples, per channel
        gsize = 1 if group_size is None else group_size
        nm = tf.reduce_mean(tf.reshape(mean, [-1, gsize if group_size else batch, groups]), 1)
        nv = tf.reduce_mean(tf.reshape(var, [-1, gsize if group_size else batch, groups]), 1)
        nm, nv = tf.repeat(nm, c // groups, axis=1), tf.repeat(nv, c // groups, axis=1)
        set_estimate(out, _output_estimate(post_mean, post_var, nm, nv, gamma, beta, epsilon))
    return out
