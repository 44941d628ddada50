"""Shared machinery of the normalization layers: layouts, micro-batch groups, EMA, affine."""
import functools
import inspect
import math
import numbers

import numpy as np
import tensorflow as tf
from tensorflow.python.training import moving_averages
from tensorpack.models import layer_register
from tensorpack.tfutils.tower import get_current_tower_context
from tensorpack.models.common import VariableHolder

from ..data_format import DATA_FORMATS, canonical_data_format  # noqa: F401  (re-exported)

__all__ = ['Layout', 'resolve_training', 'affine_params', 'EMA', 'to_float32', 'EVAL_STATS', 'bessel_factor',
           'norm_layer']

EVAL_STATS = ('moving', 'batch')


class Layout(object):
    """Where the batch, channel and reduced axes of a 2-D or 4-D feature tensor are.

    Micro-batch groups: a tower batch of N samples with ``group_size`` g is viewed as
    ``[G, g, ...]`` with G = N / g; every statistic is per group ``[G, C]``.
    ``group_size=None`` means one group holding the whole tower batch (plain BN).
    """

    def __init__(self, x, data_format=None):
        shape = x.shape.as_list()
        self.ndims = len(shape)
        if self.ndims not in (2, 4):
            raise ValueError('Normalization layers take 2-D [N, C] or 4-D feature tensors, got shape %s'
                             % (shape,))
        self.data_format = canonical_data_format(data_format)
        self.channel_axis = 1 if (self.ndims == 2 or self.data_format == 'NCHW') else 3
        self.channels = shape[self.channel_axis]
        if self.channels is None:
            raise ValueError('The channel dimension must be static, got shape %s' % (shape,))
        self.shape = shape
        self.batch = shape[0]

    @property
    def spatial_axes(self):
        if self.ndims == 2:
            return []
        return [2, 3] if self.data_format == 'NCHW' else [1, 2]

    @property
    def spatial_hw(self):
        if self.ndims == 2:
            return None
        return tuple(self.shape[a] for a in self.spatial_axes)

    def group(self, x, group_size, name='input'):
        """Reshape x to [G, g, ...]; returns (grouped, reduction axes of a group's statistic)."""
        if group_size is None:
            grouped = tf.expand_dims(x, 0)
        else:
            if not isinstance(group_size, int) or group_size < 1:
                raise ValueError('group_size must be a positive integer or None, got %r' % (group_size,))
            if self.batch is not None and self.batch % group_size != 0:
                raise ValueError('The tower batch of %d samples is not divisible by group_size=%d: '
                                 'each micro-batch group must be full.' % (self.batch, group_size))
            tail = self.shape[1:]
            if any(d is None for d in tail):
                new_shape = tf.concat([[-1, group_size], tf.shape(x)[1:]], 0)
            else:
                new_shape = [-1, group_size] + tail
            if self.batch is None:
                check = tf.debugging.assert_equal(
                    tf.math.floormod(tf.shape(x)[0], group_size), 0,
                    message='The tower batch is not divisible by group_size=%d' % group_size)
                with tf.control_dependencies([check]):
                    x = tf.identity(x)
            grouped = tf.reshape(x, new_shape)
        axes = [1] + [a + 1 for a in range(1, self.ndims) if a != self.channel_axis]
        return grouped, axes

    def group_moments(self, x, group_size):
        """Per-group, per-channel mean and (biased) variance, each [G, C].

        The values are those of ``tf.nn.moments`` on the grouped view [G, g, ...]; the gradient
        is written out instead of being derived op by op.  With m values per statistic,
            d mean / d x_i = 1/m,    d var / d x_i = 2 (x_i - mean) / m
        (the term through the mean, -2/m² Σ_k (x_k - mean), is zero), so
            dx = (d_mean + 2 d_var (x - mean)) / m
        is one multiply-add over the features.  TensorFlow's derived gradient tiles both
        upstream gradients to the full feature shape, divides each by m, differentiates the
        squared difference and adds three full-size tensors (timings: results/speed_cifar.md).
        Equality of values and gradients with tf.nn.moments: tests/test_fast_group_stats.py.
        """
        grouped, axes = self.group(x, group_size)

        @tf.custom_gradient
        def moments(features):
            mean = tf.reduce_mean(features, axes, keepdims=True)
            centered = features - mean
            var = tf.reduce_mean(tf.square(centered), axes, keepdims=True)
            reduced = [features.shape[a] for a in axes]
            if all(d is not None for d in reduced):
                count = float(np.prod(reduced))
            else:   # a dynamic batch (group_size=None) or spatial size
                count = tf.cast(tf.reduce_prod(tf.gather(tf.shape(features), axes)), features.dtype)

            def grad(d_mean, d_var):
                # tf.gradients hands zeros for an unused output; None is kept safe all the same
                d_mean = tf.zeros_like(mean) if d_mean is None else tf.reshape(d_mean, tf.shape(mean))
                d_var = tf.zeros_like(var) if d_var is None else tf.reshape(d_var, tf.shape(var))
                return centered * (d_var * (2.0 / count)) + d_mean / count

            return (tf.squeeze(mean, axes), tf.squeeze(var, axes)), grad

        mean, var = moments(grouped)
        return grouped, mean, var

    def values_per_statistic(self, x, group_size):
        """n, the number of values behind one group statistic: g·H·W (4-D) or g (2-D), with
        g = ``group_size`` or the whole tower batch; a Python float where the shape is static."""
        dims = [group_size if group_size is not None else self.batch] + [self.shape[a] for a in self.spatial_axes]
        if all(d is not None for d in dims):
            return float(np.prod(dims))
        shape = tf.shape(x)
        dynamic = [tf.constant(d) if d is not None else shape[0 if i == 0 else self.spatial_axes[i - 1]]
                   for i, d in enumerate(dims)]
        return tf.cast(tf.reduce_prod(tf.stack(dynamic)), tf.float32)

    def broadcast(self, stat, grouped_rank):
        """[G, C] → shape broadcastable against the grouped tensor [G, g, ...]."""
        shape = [-1] + [1] * (grouped_rank - 1)
        shape[self.channel_axis + 1] = self.channels
        return tf.reshape(stat, shape)

    def channel_broadcast(self, vec):
        """[C] → shape broadcastable against x."""
        shape = [1] * self.ndims
        shape[self.channel_axis] = self.channels
        return tf.reshape(vec, shape)

    def normalize_grouped(self, x, group_size, mean, var, gamma, beta, epsilon):
        """(x - mean) / sqrt(var + eps) * gamma + beta with per-group [G, C] statistics."""
        grouped, _ = self.group(x, group_size)
        scale = gamma * tf.math.rsqrt(var + epsilon)           # [G, C]
        offset = beta - mean * scale
        rank = grouped.shape.rank
        out = grouped * self.broadcast(scale, rank) + self.broadcast(offset, rank)
        return tf.reshape(out, tf.shape(x))

    def normalize_global(self, x, mean, var, gamma, beta, epsilon):
        scale = gamma * tf.math.rsqrt(var + epsilon)
        offset = beta - mean * scale
        return x * self.channel_broadcast(scale) + self.channel_broadcast(offset)


#: one line for a layer given gamma's initial value twice
GAMMA_TWICE = "give gamma_initializer (tensorpack's name) or its alias gamma_init, not both"


def check_gamma_initializer(name, value):
    """gamma's initial value: a finite number, or an initializer (a callable, as tensorpack's
    ``gamma_initializer=tf.ones_initializer()``)."""
    number = isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)
    if not (number or callable(value)):
        raise ValueError('%s must be a finite number or an initializer (e.g. tf.zeros_initializer()), got %r'
                         % (name, value))


def _with_gamma_initializer(signature):
    """``signature`` with tensorpack's keyword ``gamma_initializer`` beside the alias ``gamma_init``."""
    params = list(signature.parameters.values())
    extra = inspect.Parameter('gamma_initializer', inspect.Parameter.KEYWORD_ONLY, default=None)
    at = next((i for i, p in enumerate(params) if p.kind == inspect.Parameter.VAR_KEYWORD), len(params))
    return signature.replace(parameters=params[:at] + [extra] + params[at:])


def norm_layer(layer):
    """tensorpack's ``layer_register()``, and the output carries the layer's variables as
    ``.variables`` (a ``VariableHolder``), as tensorpack's ``BatchNorm`` returns them: ``gamma``,
    ``beta``, ``mean`` and ``variance`` (``mean/EMA``, ``variance/EMA``), and any other variable of
    the layer under its name with '/EMA' dropped and '/' as '_' (``stddev``, ``gain_logit``, ...).
    A layer with gamma takes tensorpack's ``gamma_initializer`` (a number or an initializer) as well
    as the alias ``gamma_init``."""
    has_gamma = 'gamma_init' in inspect.signature(layer).parameters

    @functools.wraps(layer)
    def with_variables(x, *args, **kwargs):
        if has_gamma and 'gamma_initializer' in kwargs:
            initializer = kwargs.pop('gamma_initializer')
            if initializer is not None:
                if 'gamma_init' in kwargs:
                    raise ValueError(GAMMA_TWICE)
                check_gamma_initializer('gamma_initializer', initializer)
                kwargs['gamma_init'] = initializer
        scope = tf.compat.v1.get_variable_scope().name + '/'
        out = layer(x, *args, **kwargs)
        held = {v.op.name[len(scope):]: v for v in tf.compat.v1.global_variables() if v.op.name.startswith(scope)}
        out.variables = VariableHolder(**{name.replace('/EMA', '').replace('/', '_'): v for name, v in held.items()})
        return out
    if has_gamma:
        with_variables.__signature__ = _with_gamma_initializer(inspect.signature(layer))
    return layer_register()(with_variables)


def bessel_factor(count):
    """n / (n - 1): turns the biased variance of n values into the unbiased one (what TF's fused
    batch norm, and so tensorpack's 4-D ``BatchNorm``, feed their moving variance).  n = 1 gives 1:
    one value has zero variance either way."""
    if isinstance(count, float):
        return count / max(count - 1.0, 1.0)
    return count / tf.maximum(count - 1.0, 1.0)


def to_float32(x):
    """Statistics are kept in float32; returns (x as float32, function restoring the input dtype)."""
    dtype = x.dtype.base_dtype
    if dtype == tf.float32:
        return x, lambda y: y
    if dtype not in (tf.float16, tf.bfloat16, tf.float64):
        raise TypeError('Normalization layers take floating-point inputs, got %s' % dtype.name)
    return tf.cast(x, tf.float32), lambda y: tf.cast(y, dtype)


def resolve_training(training):
    if training is None:
        return bool(get_current_tower_context().is_training)
    return bool(training)


def affine_params(channels, center=True, scale=True, gamma_init=1.0):
    """gamma and beta, named as in tensorpack's BatchNorm so checkpoints interchange; ``gamma_init``
    a number or an initializer."""
    beta = tf.compat.v1.get_variable('beta', [channels], initializer=tf.zeros_initializer()) \
        if center else tf.zeros([channels], name='beta')
    gamma_initializer = gamma_init if callable(gamma_init) else tf.constant_initializer(gamma_init)
    gamma = tf.compat.v1.get_variable('gamma', [channels], initializer=gamma_initializer) \
        if scale else tf.ones([channels], name='gamma')
    return gamma, beta


class EMA(object):
    """Moving mean/variance named ``mean/EMA`` and ``variance/EMA`` (tensorpack's names).

    Update policy (tensorpack's ``ema_update``):
      * ``'collection'`` (default): update ops go to ``UPDATE_OPS`` on the first training tower
        only (tensorpack trainers run them after every step);
      * ``'internal'``: the output depends on the update ops (first training tower only);
      * ``'skip'``: never update.
    In a prediction tower with batch statistics nothing is updated.
    """

    def __init__(self, channels, momentum=0.9, ema_update='default'):
        if ema_update == 'default':
            ema_update = 'collection'
        if ema_update not in ('collection', 'internal', 'skip'):
            raise ValueError("ema_update must be 'default', 'collection', 'internal' or 'skip', got %r"
                             % (ema_update,))
        if not 0.0 <= momentum < 1.0:
            raise ValueError('momentum must be in [0, 1), got %r' % (momentum,))
        self.momentum, self.ema_update = momentum, ema_update
        get = tf.compat.v1.get_variable
        self.mean = get('mean/EMA', [channels], initializer=tf.zeros_initializer(), trainable=False)
        self.variance = get('variance/EMA', [channels], initializer=tf.ones_initializer(), trainable=False)
        ctx = get_current_tower_context()
        if ctx.is_main_training_tower:
            for v in (self.mean, self.variance):
                tf.compat.v1.add_to_collection(tf.compat.v1.GraphKeys.MODEL_VARIABLES, v)

    def should_update(self, training):
        ctx = get_current_tower_context()
        return training and ctx.is_training and ctx.is_main_training_tower and self.ema_update != 'skip'

    def update(self, output, mean, var, training):
        """Fold per-group statistics ([G, C], averaged over groups) into the EMA.  ``var`` is what
        the layer wants ``variance/EMA`` to track (the caller applies its variance convention)."""
        if not self.should_update(training):
            return tf.identity(output, name='output')
        mean = tf.reduce_mean(tf.stop_gradient(mean), axis=0)
        var = tf.reduce_mean(tf.stop_gradient(var), axis=0)
        # Assign only after the output is computed: layers that read the EMA in training
        # (Batch Renorm's r, d) would otherwise race with the update run in the same step.
        return self.fold(output, [(self.mean, mean, 'mean_ema_op'), (self.variance, var, 'var_ema_op')])

    def track(self, variable):
        """Save and restore another moving statistic of the layer with the EMA's (model variables)."""
        if get_current_tower_context().is_main_training_tower:
            tf.compat.v1.add_to_collection(tf.compat.v1.GraphKeys.MODEL_VARIABLES, variable)

    def fold(self, output, updates, name='output'):
        """Move each ``(variable, value, op_name)`` towards its value with this EMA's momentum, after
        ``output`` is computed, by the update policy; returns the output (with a dependency on the
        updates under 'internal').  Callers check :meth:`should_update` first."""
        with tf.control_dependencies([output]):
            ops = [moving_averages.assign_moving_average(variable, value, self.momentum, zero_debias=False,
                                                         name=op_name) for variable, value, op_name in updates]
        return self.attach(output, ops, name)

    def attach(self, output, ops, name='output'):
        """Run update ``ops`` by the update policy: to ``UPDATE_OPS`` ('collection') or before the
        returned output ('internal')."""
        if self.ema_update == 'collection':
            for op in ops:
                tf.compat.v1.add_to_collection(tf.compat.v1.GraphKeys.UPDATE_OPS, op)
            return tf.identity(output, name=name)
        with tf.control_dependencies(ops):
            return tf.identity(output, name=name)
