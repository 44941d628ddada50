"""The paper's baselines: BN and BRN over micro-batch groups, GN, LN, WN, and no normalization."""
import tensorflow as tf
from tensorflow.python.training import moving_averages
from tensorpack.tfutils.common import get_global_step_var

from ._common import EMA, Layout, affine_params, bessel_factor, norm_layer, resolve_training, to_float32
from ._groupnorm import group_norm_apply, group_norm_view, num_channel_groups
from ._options import (BATCH_STAT_CHECKS, COMMON_CHECKS, check_bool, check_data_format, check_number,
                       check_options, layer_options)

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
    if 'moving_stddev' in options:
        check_bool('moving_stddev', options['moving_stddev'])
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


@norm_layer
def MicroBatchNorm(x, *, group_size=None, eval_stats='moving', momentum=0.9, epsilon=1e-5,
                   center=True, scale=True, gamma_init=1.0, training=None, ema_update='default',
                   unbiased_variance=True, data_format=None):
    """Batch Normalization whose statistics come from micro-batch groups of ``group_size`` samples.

    A tower batch of N samples is split into N / group_size consecutive groups, each normalised
    with its own mean and variance: one device simulates N / group_size devices with
    micro-batches (the paper's CIFAR protocol: 128 samples as 64 groups of 2).  ``group_size=None``
    is ordinary BN over the tower batch.  With a group of one 4-D sample the statistics are over
    its positions; a 2-D group of one has zero variance (the output is β).

    What enters the EMA: ``mean/EMA`` tracks the mean over groups of the group means (what
    per-GPU BN's EMA tracks); ``variance/EMA`` the mean over groups of the group variances taken
    unbiased, n/(n-1)·S with n = g·H·W values per statistic (``unbiased_variance=True``), as
    tensorpack's 4-D ``BatchNorm`` (TF's fused kernel), tf-keras's fused BN and PyTorch do, so a
    checkpoint means what it means there.  ``unbiased_variance=False`` keeps the biased S (the
    convention of this package before 0.2, of tensorpack on 2-D inputs and of tf-keras unfused);
    it matters most for 2-D or 1×1 layers with small groups (n = 2 halves the fresh share).
    Training normalises with the biased S either way.  ``eval_stats='batch'`` normalises test
    batches with their own group statistics (the paper's option B).  Variable names are
    tensorpack's BatchNorm's.
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
    ema_var = var * bessel_factor(layout.values_per_statistic(x32, group_size)) if unbiased_variance else var
    return ema.update(restore(out), mean, ema_var, training)


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


@norm_layer
def MicroBatchRenorm(x, *, group_size=None, rmax=3.0, dmax=5.0, warmup=(5000, 40000, 25000),
                     eval_stats='moving', momentum=0.99, epsilon=1e-5, center=True, scale=True,
                     gamma_init=1.0, training=None, ema_update='default', moving_stddev=True,
                     data_format=None):
    """Batch Renormalization (Ioffe 2017) over micro-batch groups.

    Training output, per group with statistics µ_B, σ_B = sqrt(S + ε) (S biased) and moving µ, σ:
        r = stop_grad(clip(σ_B / σ, 1/r_max, r_max)),  d = stop_grad(clip((µ_B - µ) / σ, -d_max, d_max))
        y = γ ((x - µ_B) / σ_B · r + d) + β
    r_max/d_max follow :func:`renorm_clip_schedule` on the global step.

    What enters the EMA (first training tower; means over groups): ``mean/EMA`` tracks µ_B.
    With ``moving_stddev=True`` (default) σ is the EMA of σ_B itself, as in the paper's
    Algorithm 1 and tf-keras (``moving_stddev``): it is kept in ``stddev/EMA`` (initial
    sqrt(1 + ε)), and ``variance/EMA`` holds σ² - ε, so that inference with moving statistics
    (``eval_stats='moving'``) and tensorpack's BatchNorm read the variable they expect.
    ``moving_stddev=False``: ``variance/EMA`` is the EMA of S and σ = sqrt(variance/EMA + ε)
    (this package's convention before 0.2).  Test groups may use their own statistics
    (``'batch'``).  Ioffe uses momentum 0.99, the default here.
    """
    check_micro_batch_renorm_options(**layer_options(locals()))
    layout = Layout(x, data_format)
    x32, restore = to_float32(x)
    gamma, beta = affine_params(layout.channels, center, scale, gamma_init)
    ema = EMA(layout.channels, momentum, ema_update)
    stddev_ema = None
    if moving_stddev:
        stddev_ema = tf.compat.v1.get_variable('stddev/EMA', [layout.channels], trainable=False,
                                               initializer=tf.constant_initializer((1.0 + epsilon) ** 0.5))
        ema.track(stddev_ema)
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
    moving_std = stddev_ema if moving_stddev else tf.sqrt(ema.variance + epsilon)
    r = tf.stop_gradient(tf.clip_by_value(std / moving_std, 1.0 / r_max, r_max))
    d = tf.stop_gradient(tf.clip_by_value((mean - ema.mean) / moving_std, -d_max, d_max))
    # y = γ r (x - µ_B)/σ_B + (γ d + β): a grouped affine normalisation with scale γr/σ_B
    eff_gamma = gamma * r
    eff_beta = beta + gamma * d
    grouped, _ = layout.group(x32, group_size)
    rank = grouped.shape.rank
    out = (grouped - layout.broadcast(mean, rank)) / layout.broadcast(std, rank)
    out = out * layout.broadcast(eff_gamma, rank) + layout.broadcast(eff_beta, rank)
    out = restore(tf.reshape(out, tf.shape(x32)))
    if not moving_stddev:
        return ema.update(out, mean, var, training)
    if not ema.should_update(training):
        return tf.identity(out, name='output')
    batch_mean = tf.reduce_mean(tf.stop_gradient(mean), axis=0)
    batch_std = tf.reduce_mean(tf.stop_gradient(std), axis=0)
    with tf.control_dependencies([out]):
        # after the output: r and d above read the values from before this step
        mean_op = moving_averages.assign_moving_average(ema.mean, batch_mean, momentum, zero_debias=False,
                                                        name='mean_ema_op')
        std_op = moving_averages.assign_moving_average(stddev_ema, batch_std, momentum, zero_debias=False,
                                                       name='stddev_ema_op')
        # variance/EMA follows the new σ, for inference and for readers of tensorpack's names
        var_op = tf.compat.v1.assign(ema.variance, tf.nn.relu(tf.square(std_op) - epsilon), name='var_ema_op')
    return ema.attach(out, [mean_op, var_op])


@norm_layer
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


@norm_layer
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


@norm_layer
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
