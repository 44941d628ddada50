"""The paper's baselines: BN and BRN over micro-batch groups, GN, LN, WN, and no normalization."""
import tensorflow as tf
from tensorpack.models import layer_register
from tensorpack.tfutils.common import get_global_step_var

from ._common import EMA, Layout, affine_params, resolve_training, to_float32
from ._groupnorm import group_norm_apply, group_norm_view, num_channel_groups
from ._options import (BATCH_STAT_CHECKS, COMMON_CHECKS, check_data_format, check_number, check_options,
                       layer_options)

__all__ = ['MicroBatchNorm', 'MicroBatchRenorm', 'GroupNorm', 'LayerNormalization', 'BiasOnly',
           'weight_normalize', 'renorm_clip_schedule', 'check_micro_batch_norm_options',
           'check_micro_batch_renorm_options', 'check_group_norm_options',
           'check_layer_normalization_options', 'check_bias_only_options']


def check_micro_batch_norm_options(**options):
    """Validate options of :func:`MicroBatchNorm` (raises ValueError with one line per problem)."""
    check_options(options, BATCH_STAT_CHECKS)


def _check_warmup(warmup):
    if warmup is None:
        return
    ok = (isinstance(warmup, (list, tuple)) and len(warmup) == 3
          and all(isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in warmup))
    if not ok or not warmup[0] <= warmup[1] or not warmup[0] <= warmup[2]:
        raise ValueError('renorm warmup must be None or (start, rmax_end, dmax_end), non-negative integer '
                         'steps with start <= ends, got %r' % (warmup,))


def check_micro_batch_renorm_options(**options):
    """Validate options of :func:`MicroBatchRenorm`."""
    check_options(options, BATCH_STAT_CHECKS)
    if 'rmax' in options:
        check_number('rmax', options['rmax'])
        if options['rmax'] < 1.0:
            raise ValueError('Batch Renorm needs rmax >= 1, got rmax=%r' % (options['rmax'],))
    if 'dmax' in options:
        check_number('dmax', options['dmax'])
        if options['dmax'] < 0.0:
            raise ValueError('Batch Renorm needs dmax >= 0, got dmax=%r' % (options['dmax'],))
    if 'warmup' in options:
        _check_warmup(options['warmup'])


def check_group_norm_options(**options):
    """Validate options of :func:`GroupNorm` (the channel count is checked when the layer is built)."""
    check_options(options, COMMON_CHECKS)
    if 'channel_groups' in options:
        num_channel_groups(options['channel_groups'], options['channel_groups'])


def check_layer_normalization_options(**options):
    """Validate options of :func:`LayerNormalization`."""
    check_options(options, COMMON_CHECKS)


def check_bias_only_options(**options):
    """Validate options of :func:`BiasOnly`."""
    if 'data_format' in options:
        check_data_format(options['data_format'])


@layer_register()
def MicroBatchNorm(x, *, group_size=None, eval_stats='moving', momentum=0.9, epsilon=1e-5,
                   center=True, scale=True, gamma_init=1.0, training=None, ema_update='default',
                   data_format=None):
    """Batch Normalization whose statistics come from micro-batch groups of ``group_size`` samples.

    A tower batch of N samples is split into N / group_size consecutive groups, each normalised
    with its own mean and variance: one device simulates N / group_size devices with
    micro-batches (the paper's CIFAR protocol: 128 samples as 64 groups of 2).  ``group_size=None``
    is ordinary BN over the tower batch.  With a group of one 4-D sample the statistics are over
    its positions; a 2-D group of one has zero variance (the output is β).

    Moving averages track the mean over groups of the group statistics (what per-GPU BN's EMA
    tracks).  ``eval_stats='batch'`` normalises test batches with their own group statistics
    (the paper's option B).  Variables and EMA conventions are tensorpack's BatchNorm's.
    """
    check_micro_batch_norm_options(**layer_options(locals()))
    layout = Layout(x, data_format)
    x32, restore = to_float32(x)
    gamma, beta = affine_params(layout.channels, center, scale, gamma_init)
    ema = EMA(layout.channels, momentum, ema_update)
    training = resolve_training(training)
    if not training and eval_stats == 'moving':
        out = layout.normalize_global(x32, ema.mean, ema.variance, gamma, beta, epsilon)
        return tf.identity(restore(out), name='output')
    _, mean, var = layout.group_moments(x32, group_size)
    out = layout.normalize_grouped(x32, group_size, mean, var, gamma, beta, epsilon)
    return ema.update(restore(out), mean, var, training)


def renorm_clip_schedule(rmax=3.0, dmax=5.0, warmup=(5000, 40000, 25000), step=None):
    """Batch Renorm's r_max / d_max ramp (Ioffe 2017, Sect. 4): r_max = 1 and d_max = 0 until
    step ``warmup[0]``, then linear growth to ``rmax`` at step ``warmup[1]`` and ``dmax`` at step
    ``warmup[2]``.  ``warmup=None`` uses the final values from the start."""
    if warmup is None:
        return tf.constant(float(rmax)), tf.constant(float(dmax))
    start, r_end, d_end = warmup
    if not start <= r_end or not start <= d_end:
        raise ValueError('renorm warmup must be (start, rmax_end, dmax_end) with start <= ends, got %r'
                         % (warmup,))
    if step is None:
        # at the root variable scope, not inside the calling layer's ('bn0/global_step')
        step = get_global_step_var()
    step = tf.cast(step, tf.float32)

    def ramp(end):
        if end == start:
            return tf.cast(step >= start, tf.float32)
        return tf.clip_by_value((step - start) / float(end - start), 0.0, 1.0)

    return 1.0 + (rmax - 1.0) * ramp(r_end), dmax * ramp(d_end)


@layer_register()
def MicroBatchRenorm(x, *, group_size=None, rmax=3.0, dmax=5.0, warmup=(5000, 40000, 25000),
                     eval_stats='moving', momentum=0.99, epsilon=1e-5, center=True, scale=True,
                     gamma_init=1.0, training=None, ema_update='default', data_format=None):
    """Batch Renormalization (Ioffe 2017) over micro-batch groups.

    Training output, per group with statistics (µ_B, σ_B) and moving (µ, σ):
        r = stop_grad(clip(σ_B / σ, 1/r_max, r_max)),  d = stop_grad(clip((µ_B - µ) / σ, -d_max, d_max))
        y = γ ((x - µ_B) / σ_B · r + d) + β
    r_max/d_max follow :func:`renorm_clip_schedule` on the global step.  The moving averages are
    updated from the group statistics (first training tower) and used at inference
    (``eval_stats='moving'``), or test groups use their own statistics (``'batch'``).
    Ioffe uses momentum 0.99, the default here.
    """
    check_micro_batch_renorm_options(**layer_options(locals()))
    layout = Layout(x, data_format)
    x32, restore = to_float32(x)
    gamma, beta = affine_params(layout.channels, center, scale, gamma_init)
    ema = EMA(layout.channels, momentum, ema_update)
    training = resolve_training(training)
    if not training and eval_stats == 'moving':
        out = layout.normalize_global(x32, ema.mean, ema.variance, gamma, beta, epsilon)
        return tf.identity(restore(out), name='output')
    _, mean, var = layout.group_moments(x32, group_size)
    if not training:
        out = layout.normalize_grouped(x32, group_size, mean, var, gamma, beta, epsilon)
        return tf.identity(restore(out), name='output')
    r_max, d_max = renorm_clip_schedule(rmax, dmax, warmup)
    std = tf.sqrt(var + epsilon)
    moving_std = tf.sqrt(ema.variance + epsilon)
    r = tf.stop_gradient(tf.clip_by_value(std / moving_std, 1.0 / r_max, r_max))
    d = tf.stop_gradient(tf.clip_by_value((mean - ema.mean) / moving_std, -d_max, d_max))
    # y = γ r (x - µ_B)/σ_B + (γ d + β): a grouped affine normalisation with scale γr/σ_B
    eff_gamma = gamma * r
    eff_beta = beta + gamma * d
    grouped, _ = layout.group(x32, group_size)
    rank = grouped.shape.rank
    out = (grouped - layout.broadcast(mean, rank)) / layout.broadcast(std, rank)
    out = out * layout.broadcast(eff_gamma, rank) + layout.broadcast(eff_beta, rank)
    out = tf.reshape(out, tf.shape(x32))
    return ema.update(restore(out), mean, var, training)


@layer_register()
def GroupNorm(x, *, channel_groups=32, epsilon=1e-5, center=True, scale=True, gamma_init=1.0,
              data_format=None):
    """Group Normalization (Wu & He 2018): per sample, statistics over each group of channels and
    all positions.  ``channel_groups`` is capped at the number of channels (so 32 groups on a
    16-channel layer means 16 groups of one channel); the channels must divide evenly.
    Batch-independent: training and inference are the same computation."""
    check_group_norm_options(**layer_options(locals()))
    layout = Layout(x, data_format)
    x32, restore = to_float32(x)
    groups = num_channel_groups(layout.channels, channel_groups)
    gamma, beta = affine_params(layout.channels, center, scale, gamma_init)
    view, axes = group_norm_view(layout, x32, groups)
    mean, var = tf.nn.moments(view, axes=axes)
    out = group_norm_apply(layout, x32, groups, tf.reshape(mean, [-1, groups]),
                           tf.reshape(var, [-1, groups]), gamma, beta, epsilon)
    return tf.identity(restore(out), name='output')


@layer_register()
def LayerNormalization(x, *, epsilon=1e-5, center=True, scale=True, gamma_init=1.0, data_format=None):
    """Layer Normalization (Ba et al. 2016): per sample over all channels and positions, then
    γ, β per channel (the convolutional variant)."""
    check_layer_normalization_options(**layer_options(locals()))
    layout = Layout(x, data_format)
    x32, restore = to_float32(x)
    gamma, beta = affine_params(layout.channels, center, scale, gamma_init)
    mean, var = tf.nn.moments(x32, axes=list(range(1, layout.ndims)), keepdims=True)
    # γ is folded into the scale on purpose: on 2-D inputs TF's oneDNN remapper rewrites
    # (x - µ) * rsqrt(σ² + ε) * γ + β into a fused LayerNorm that fails ("scale must be 1D")
    # or ignores ε; this form is not rewritten.
    factor = tf.math.rsqrt(var + epsilon) * layout.channel_broadcast(gamma)
    out = (x32 - mean) * factor + layout.channel_broadcast(beta)
    return tf.identity(restore(out), name='output')


@layer_register()
def BiasOnly(x, *, data_format=None):
    """A per-channel bias ``beta``: the feature-side layer of 'wn' (the normalisation is in the
    kernel) and of 'none' (convs have no bias of their own)."""
    check_bias_only_options(**layer_options(locals()))
    layout = Layout(x, data_format)
    beta = tf.compat.v1.get_variable('beta', [layout.channels], initializer=tf.zeros_initializer())
    return tf.identity(x + tf.cast(layout.channel_broadcast(beta), x.dtype), name='output')


def weight_normalize(v, init_gain=2.0 ** 0.5, epsilon=1e-12):
    """Weight Normalization (Salimans & Kingma 2016): W = g · v / ||v||, one g per output unit.

    ``v`` is a conv kernel [kh, kw, C_in, C_out] or dense kernel [C_in, C_out]; the norm is over
    all axes but the last.  g (variable ``wn_g``) starts at ``init_gain`` = sqrt(2), so every
    output unit starts with the ReLU-preserving gain of He initialisation (data-dependent
    initialisation is not used).
    """
    axes = list(range(v.shape.rank - 1))
    g = tf.compat.v1.get_variable('wn_g', [v.shape[-1]], initializer=tf.constant_initializer(init_gain))
    return v * (g * tf.math.rsqrt(tf.reduce_sum(tf.square(v), axis=axes) + epsilon))
