"""The micro-batch field beside KN: Weight Standardization, FRN + TLU, EvoNorm-S0 and EvoNorm-B0.

FRN and EvoNorm replace a BN + ReLU pair (their nonlinearity is part of the layer).  A layer
built with ``nonlinearity=True`` returns its activated output and marks it
(:func:`fused_activation_linear`), so that the flow ops can follow the papers' networks:
``F.relu`` right after it is the layer's own activation (not a second ReLU), and ``F.add`` takes
its affine output, as the papers' layers before a residual addition have no nonlinearity.
"""
import tensorflow as tf

from ._common import EMA, Layout, affine_params, bessel_factor, norm_layer, resolve_training, to_float32
from ._groupnorm import group_norm_view, num_channel_groups
from ._options import (BATCH_STAT_CHECKS, COMMON_CHECKS, check_bool, check_options, check_positive,
                       layer_options)

__all__ = ['weight_standardize', 'center_weights', 'FilterResponseNorm', 'EvoNormS0', 'EvoNormB0',
           'fused_activation_linear', 'check_filter_response_norm_options', 'check_evonorm_s0_options',
           'check_evonorm_b0_options', 'WS_EPSILON', 'VarianceEMA']

#: ε of Weight Standardization's σ (Qiao et al. 2019, Eq. 6)
WS_EPSILON = 1e-5


def weight_standardize(kernel, epsilon=WS_EPSILON):
    """Weight Standardization (Qiao et al. 2019, Eqs. 5-6): per output channel (the last axis),
    over its fan-in (kh·kw·C_in, or C_in of a dense kernel),
        Ŵ = (W - µ_W) / σ_W,   µ_W = mean(W),   σ_W = sqrt(mean((W - µ_W)²) + ε).
    The variance is the biased one of Eq. 6 (the authors' PyTorch code divides by the unbiased
    std + ε instead: a factor sqrt(I/(I-1)) apart, 0.35% for a 3×3×16 fan-in)."""
    axes = list(range(kernel.shape.rank - 1))
    mean, var = tf.nn.moments(kernel, axes, keepdims=True)
    return (kernel - mean) * tf.math.rsqrt(var + epsilon)


def center_weights(kernel):
    """Weight centralisation (Yan et al. 2020, Sect. 4.2, MABN's conv): W - mean(W) per output
    channel over its fan-in, so that E[x] of the next layer is ~0 and MABN may normalise by the
    second moment alone."""
    axes = list(range(kernel.shape.rank - 1))
    return kernel - tf.reduce_mean(kernel, axes, keepdims=True)


# ---------------------------------------------------------------------------------------------
# layers whose nonlinearity is fused

_FUSED_ATTR = '_kalman_norm_fused_activations'


def _mark_fused_activation(activated, linear):
    registry = getattr(activated.graph, _FUSED_ATTR, None)
    if registry is None:
        registry = {}
        setattr(activated.graph, _FUSED_ATTR, registry)
    registry[activated.name] = linear
    return activated


def fused_activation_linear(tensor):
    """The affine (pre-activation) output of a layer whose nonlinearity is fused, if ``tensor``
    is such a layer's activated output; else None."""
    if not isinstance(tensor, tf.Tensor):
        return None
    return getattr(tensor.graph, _FUSED_ATTR, {}).get(tensor.name)


def _affine(layout, x, gamma, beta):
    return x * layout.channel_broadcast(gamma) + layout.channel_broadcast(beta)


def _fused_output(activated, affine, restore, ema=None, ema_updates=None):
    """The layer's output (``activated``, in the input dtype, named 'output'), marked with its
    affine output; an ``ema`` folds its ``ema_updates`` after the output is computed."""
    if ema is None:
        out = tf.identity(restore(activated), name='output')
    else:
        out = ema.fold(restore(activated), ema_updates)
    return _mark_fused_activation(out, tf.identity(restore(affine), name='affine_output'))


def _channel_variable(name, layout, init):
    return tf.compat.v1.get_variable(name, [layout.channels], initializer=tf.constant_initializer(init))


# ---------------------------------------------------------------------------------------------
# FRN + TLU

def check_filter_response_norm_options(**options):
    """Validate options of :func:`FilterResponseNorm`."""
    check_options(options, COMMON_CHECKS)
    if options.get('learned_epsilon') is not None:
        check_bool('learned_epsilon (or None: learned on single-position maps)', options['learned_epsilon'])
    if 'nonlinearity' in options:
        check_bool('nonlinearity', options['nonlinearity'])
    if 'epsilon_init' in options:
        check_positive('epsilon_init', options['epsilon_init'])


@norm_layer
def FilterResponseNorm(x, *, epsilon=1e-6, learned_epsilon=None, epsilon_init=1e-4, nonlinearity=True,
                       center=True, scale=True, gamma_init=1.0, data_format=None):
    """Filter Response Normalization with a Thresholded Linear Unit (Singh & Krishnan, CVPR 2020).

    Per sample and channel, over the H×W positions (Eqs. 1-2, 4):
        ν² = mean(x²),   x̂ = x / sqrt(ν² + ε),   y = γ x̂ + β,   z = max(y, τ)
    with a learned threshold ``tau`` per channel (initial 0: TLU starts as a ReLU).  No mean is
    subtracted and nothing depends on other samples: training and inference are one computation,
    and there is no moving average.  A learned ε is the paper's variant for small maps
    (Sect. 3.2): ε = ``epsilon`` + |ε_l|, ε_l a variable ``epsilon_l`` per channel (initial
    ``epsilon_init``); ``learned_epsilon=None`` (default) learns it where a map has a single
    position, True / False everywhere / nowhere.  On 2-D inputs [N, C] the definition is applied
    to a 1×1 map, ν² = x² (the paper's fully connected case, where a fixed small ε makes FRN
    close to a sign function).  ``nonlinearity=False`` leaves out the TLU.
    """
    check_filter_response_norm_options(**layer_options(locals()))
    layout = Layout(x, data_format)
    x32, restore = to_float32(x)
    gamma, beta = affine_params(layout.channels, center, scale, gamma_init)
    axes = layout.spatial_axes
    nu2 = tf.reduce_mean(tf.square(x32), axes, keepdims=True) if axes else tf.square(x32)
    eps = epsilon
    if learned_epsilon is None:
        learned_epsilon = not axes or [layout.shape[a] for a in axes] == [1, 1]
    if learned_epsilon:
        eps = epsilon + tf.abs(layout.channel_broadcast(_channel_variable('epsilon_l', layout, epsilon_init)))
    x_hat = x32 * tf.math.rsqrt(nu2 + eps)
    y = _affine(layout, x_hat, gamma, beta)
    if not nonlinearity:
        return tf.identity(restore(y), name='output')
    tau = _channel_variable('tau', layout, 0.0)
    return _fused_output(tf.maximum(y, layout.channel_broadcast(tau)), y, restore)


# ---------------------------------------------------------------------------------------------
# EvoNorm

def check_evonorm_s0_options(**options):
    """Validate options of :func:`EvoNormS0` (the channel count is checked when it is built)."""
    check_options(options, COMMON_CHECKS)
    if 'nonlinearity' in options:
        check_bool('nonlinearity', options['nonlinearity'])
    if 'channel_groups' in options:
        num_channel_groups(options['channel_groups'], options['channel_groups'])


def check_evonorm_b0_options(**options):
    """Validate options of :func:`EvoNormB0`."""
    check_options(options, BATCH_STAT_CHECKS)
    if 'nonlinearity' in options:
        check_bool('nonlinearity', options['nonlinearity'])


@norm_layer
def EvoNormS0(x, *, channel_groups=32, epsilon=1e-5, nonlinearity=True, center=True, scale=True,
              gamma_init=1.0, data_format=None):
    """EvoNorm-S0 (Liu et al., NeurIPS 2020, Table 1): per sample,
        y = x · sigmoid(v · x) / sqrt(s²_{w,h,c/g}(x) + ε) · γ + β
    where s² is the (biased) variance over each group of C/g channels and all positions, as GN's
    (``channel_groups`` g capped at the channel count, as :func:`GroupNorm`; the channels must
    divide evenly), and ``v`` a learned vector (initial 1).  Batch-independent; no moving
    average.  On 2-D inputs the group variance is over the group's channels.
    ``nonlinearity=False`` is the authors' layer where no activation follows: γ x + β only.
    """
    check_evonorm_s0_options(**layer_options(locals()))
    layout = Layout(x, data_format)
    x32, restore = to_float32(x)
    groups = num_channel_groups(layout.channels, channel_groups)
    gamma, beta = affine_params(layout.channels, center, scale, gamma_init)
    if not nonlinearity:
        return tf.identity(restore(_affine(layout, x32, gamma, beta)), name='output')
    v = layout.channel_broadcast(_channel_variable('v', layout, 1.0))
    view, axes = group_norm_view(layout, x32, groups)
    _, var = tf.nn.moments(view, axes=axes, keepdims=True)
    inv_std = tf.math.rsqrt(var + epsilon)
    group_std_inv = tf.reshape(inv_std * tf.ones_like(view), tf.shape(x32))
    activated = _affine(layout, x32 * tf.sigmoid(v * x32) * group_std_inv, gamma, beta)
    return _fused_output(activated, _affine(layout, x32, gamma, beta), restore)


@norm_layer
def EvoNormB0(x, *, group_size=None, eval_stats='moving', momentum=0.9, epsilon=1e-5, nonlinearity=True,
              center=True, scale=True, gamma_init=1.0, training=None, ema_update='default',
              unbiased_variance=True, data_format=None):
    """EvoNorm-B0 (Liu et al., NeurIPS 2020, Table 1):
        y = x / max(sqrt(s²_{b,w,h}(x) + ε), v · x + sqrt(s²_{w,h}(x) + ε)) · γ + β
    s²_{b,w,h} is the batch variance per channel, taken over each micro-batch group of
    ``group_size`` samples in training (as :func:`MicroBatchNorm`), over the moving average
    ``variance/EMA`` at inference (``eval_stats='moving'``) or the test group's own
    (``'batch'``); s²_{w,h} the variance per sample and channel over positions (zero on 2-D
    inputs, where the right-hand term is v·x + sqrt(ε)); ``v`` a learned vector (initial 1).

    What enters the EMA: ``variance/EMA`` (the layer's only moving statistic, initial 1) tracks
    the mean over groups of the group variances, unbiased n/(n-1)·S with n = g·H·W values
    (``unbiased_variance=True``, as MicroBatchNorm) or biased.  B0 subtracts no mean, so it keeps
    none.  ``nonlinearity=False`` is the authors' layer where no activation follows: γ x + β.
    """
    check_evonorm_b0_options(**layer_options(locals()))
    layout = Layout(x, data_format)
    x32, restore = to_float32(x)
    gamma, beta = affine_params(layout.channels, center, scale, gamma_init)
    affine = _affine(layout, x32, gamma, beta)
    if not nonlinearity:
        return tf.identity(restore(affine), name='output')
    ema = VarianceEMA(layout.channels, momentum, ema_update)
    v = layout.channel_broadcast(_channel_variable('v', layout, 1.0))
    axes = layout.spatial_axes
    if axes:
        _, instance_var = tf.nn.moments(x32, axes, keepdims=True)
    else:
        instance_var = tf.zeros_like(x32)
    right = v * x32 + tf.sqrt(instance_var + epsilon)
    training = resolve_training(training)
    if not training and eval_stats == 'moving':
        left = layout.channel_broadcast(tf.sqrt(ema.variance + epsilon))
        return _fused_output(_affine(layout, x32 / tf.maximum(left, right), gamma, beta), affine, restore)
    grouped, _, batch_var = layout.group_moments(x32, group_size)
    left = layout.broadcast(tf.sqrt(batch_var + epsilon), grouped.shape.rank)
    right_grouped, _ = layout.group(right, group_size)
    activated = _affine(layout, tf.reshape(grouped / tf.maximum(left, right_grouped), tf.shape(x32)), gamma, beta)
    if not ema.should_update(training):
        return _fused_output(activated, affine, restore)
    if unbiased_variance:
        batch_var = batch_var * bessel_factor(layout.values_per_statistic(x32, group_size))
    update = (ema.variance, tf.reduce_mean(tf.stop_gradient(batch_var), axis=0), 'var_ema_op')
    return _fused_output(activated, affine, restore, ema, [update])


class VarianceEMA(EMA):
    """:class:`EMA`'s update policy and tower rules for a ``variance/EMA`` alone, for layers that
    subtract no mean and so keep none (EvoNorm-B0; MABN, whose moving second moment it holds)."""

    def __init__(self, channels, momentum, ema_update):
        self.momentum = momentum
        self.ema_update = 'collection' if ema_update == 'default' else ema_update
        self.mean = None
        self.variance = tf.compat.v1.get_variable('variance/EMA', [channels], initializer=tf.ones_initializer(),
                                                  trainable=False)
        self.track(self.variance)
