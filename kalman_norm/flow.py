"""Model-building ops that carry KN's estimate along with the features.

Each op computes its real output and, when its input carries an :class:`Estimate` (attached by
a KN layer), predicts the output's estimate — the prediction step of Eq. 7 — so that the next
KN layer finds its prior without the model passing it by hand::

    from kalman_norm import flow as F
    y = F.conv2d('conv1', x, 64, 3)      # W is a variable named conv1/W, as tensorpack's Conv2D
    y = F.norm('bn1', y)                 # the layer of the active norm_scope
    y = F.relu(y)

Estimates are propagated through: ReLU (lazily; closed form or sampled), conv2d and
fully_connected (the layer's own kernel, gradients flow into it), average and global average
pooling, strided subsampling, channel zero-padding, addition (independent branches: moments
add, as the authors do for residual blocks), channel concatenation and max pooling (the
moments of the max of independent taps, :func:`kalman_norm.transition.max_pool_estimate`).
An op whose inputs do not all carry an estimate produces none, and any op outside this module
ends the chain (the next KN layer has no prior and uses batch statistics).
"""

import numpy as np
import tensorflow as tf
from tensorpack.models import layer_register

from .data_format import canonical_data_format, data_format_scope, default_data_format
from .estimate import Estimate, get_estimate, set_estimate
from .layers import center_weights, fused_activation_linear, weight_normalize, weight_standardize
from .spec import current_norm
from .transition import (avg_pool_estimate, conv_estimate, dense_estimate, global_avg_pool_estimate,
                         max_pool_estimate)

__all__ = ['conv2d', 'fully_connected', 'norm', 'relu', 'add', 'avg_pool', 'max_pool',
           'global_avg_pool', 'concat', 'pad_channels', 'subsample', 'data_format_scope', 'default_data_format']


def _fmt(data_format):
    return canonical_data_format(data_format)


def _channel_axis(x, data_format):
    return 1 if (x.shape.rank == 2 or data_format == 'NCHW') else 3


def _hw(x, data_format):
    shape = x.shape.as_list()
    return (shape[2], shape[3]) if data_format == 'NCHW' else (shape[1], shape[2])


def _pair(v):
    return tuple(v) if isinstance(v, (list, tuple)) else (v, v)


def _spec():
    return current_norm(required=False)


def _prior_method():
    spec = _spec()
    if spec is None:
        return 'analytic', 1
    return spec.prior_method, spec.prior_samples


def norm(name, x, activation=True, **overrides):
    """The normalization layer of the innermost :func:`kalman_norm.norm_scope`.

    ``activation=False`` says that no activation follows (the output enters a residual sum): a
    norm whose nonlinearity is part of the layer (FRN's TLU, EvoNorm; the registry's
    ``fused_activation``) is then built without it, as the papers' nets build the layer before a
    residual addition, so that it has no variable or update that nothing uses.  Other norms
    ignore it."""
    spec = current_norm()
    if not activation and spec.norm.fused_activation:
        overrides = dict(overrides, nonlinearity=False)
    return spec(name, x, **overrides)


@layer_register(log_shape=True)
def conv2d(x, filters, kernel_size, strides=1, padding='SAME', use_bias=False,
           kernel_initializer=None, data_format=None):
    """2-D convolution with variables ``W`` [kh, kw, C_in, C_out] (and ``b``) as tensorpack's Conv2D.

    Default initialiser: He (variance scaling 2.0, fan-out, normal), the ResNet convention.
    Under ``norm_scope('wn')`` the kernel is weight-normalised (``W`` is then v, plus ``wn_g``);
    under a spec with ``weight_standardization=True`` it is standardised per output channel
    (Qiao et al. 2019), under 'mabn' centred (Yan et al. 2020).  A KN prior is predicted through
    the kernel the conv uses, after any of these.
    """
    data_format = _fmt(data_format)
    if padding.upper() not in ('SAME', 'VALID'):
        raise ValueError("padding must be 'SAME' or 'VALID', got %r" % (padding,))
    kh, kw = _pair(kernel_size)
    sh, sw = _pair(strides)
    cin = x.shape[_channel_axis(x, data_format)]
    if kernel_initializer is None:
        kernel_initializer = tf.compat.v1.variance_scaling_initializer(
            scale=2.0, mode='fan_out', distribution='untruncated_normal')
    kernel = tf.compat.v1.get_variable('W', [kh, kw, cin, filters], initializer=kernel_initializer)
    spec = _spec()
    if spec is not None and spec.weight_norm:
        kernel = weight_normalize(kernel)
    elif spec is not None and spec.weight_standardization:
        kernel = weight_standardize(kernel)
    elif spec is not None and spec.norm.centered_weights:
        kernel = center_weights(kernel)
    conv_strides = [1, 1, sh, sw] if data_format == 'NCHW' else [1, sh, sw, 1]
    y = tf.nn.conv2d(x, tf.cast(kernel, x.dtype), strides=conv_strides, padding=padding.upper(),
                     data_format=data_format)
    bias = None
    if use_bias:
        bias = tf.compat.v1.get_variable('b', [filters], initializer=tf.zeros_initializer())
        y = tf.nn.bias_add(y, tf.cast(bias, y.dtype), data_format=data_format)
    y = tf.identity(y, name='output')
    est = get_estimate(x)
    if est is not None:
        method, samples = _prior_method()
        set_estimate(y, conv_estimate(est, kernel, _hw(x, data_format), (sh, sw), padding, bias,
                                      method=method, num_samples=samples))
    return y


@layer_register(log_shape=True)
def fully_connected(x, units, use_bias=True, kernel_initializer=None):
    """Dense layer with variables ``W`` [C_in, units] and ``b``, as tensorpack's FullyConnected.
    Inputs of rank > 2 are flattened (their estimate, if any, is then dropped)."""
    if x.shape.rank > 2:
        x = tf.reshape(x, [-1, int(np.prod(x.shape.as_list()[1:]))])
    if kernel_initializer is None:
        kernel_initializer = tf.compat.v1.variance_scaling_initializer(2.0, distribution='untruncated_normal')
    kernel = tf.compat.v1.get_variable('W', [x.shape[1], units], initializer=kernel_initializer)
    spec = _spec()
    if spec is not None and spec.weight_norm:
        kernel = weight_normalize(kernel)
    y = tf.matmul(x, tf.cast(kernel, x.dtype))
    bias = None
    if use_bias:
        bias = tf.compat.v1.get_variable('b', [units], initializer=tf.zeros_initializer())
        y = y + tf.cast(bias, y.dtype)
    y = tf.identity(y, name='output')
    est = get_estimate(x)
    if est is not None:
        method, samples = _prior_method()
        set_estimate(y, dense_estimate(est, kernel, bias, method=method, num_samples=samples))
    return y


def relu(x, name=None):
    """ReLU; after a layer whose nonlinearity is fused (FRN's TLU, EvoNorm) it is that layer's
    own activation, as the papers replace BN + ReLU by the layer: x is returned as it is."""
    if fused_activation_linear(x) is not None:
        return x if name is None else tf.identity(x, name=name)
    y = tf.nn.relu(x, name=name)
    est = get_estimate(x)
    if est is not None:
        set_estimate(y, est.relu())
    return y


def add(*xs, name=None):
    """Sum of tensors (e.g. a residual block's branch and shortcut).  The estimates add as for
    independent branches; the authors' code adds the two branches' moments the same way.  A
    layer with a fused nonlinearity (FRN, EvoNorm) enters the sum by its affine output: the
    papers' layer before a residual addition has no activation, as BN there has no ReLU."""
    xs = [x if fused_activation_linear(x) is None else fused_activation_linear(x) for x in xs]
    y = tf.add_n(list(xs), name=name)
    ests = [get_estimate(x) for x in xs]
    if all(e is not None for e in ests):
        moments = [e.moments() for e in ests]
        set_estimate(y, Estimate(tf.add_n([m for m, _ in moments]), tf.add_n([v for _, v in moments])))
    return y


def avg_pool(x, pool_size, strides=None, padding='VALID', data_format=None, name=None):
    data_format = _fmt(data_format)
    strides = pool_size if strides is None else strides
    y = tf.nn.avg_pool2d(x, _pair(pool_size), _pair(strides), padding.upper(), data_format=data_format, name=name)
    est = get_estimate(x)
    if est is not None:
        set_estimate(y, avg_pool_estimate(est, _hw(x, data_format), pool_size, strides, padding))
    return y


def global_avg_pool(x, data_format=None, name=None):
    """Mean over positions: [N, H, W, C] or [N, C, H, W] → [N, C]."""
    data_format = _fmt(data_format)
    axes = [2, 3] if data_format == 'NCHW' else [1, 2]
    y = tf.reduce_mean(x, axis=axes, name=name)
    est = get_estimate(x)
    if est is not None:
        set_estimate(y, global_avg_pool_estimate(est, _hw(x, data_format)))
    return y


def concat(xs, data_format=None, name=None):
    """Concatenation along channels; estimates are concatenated."""
    data_format = _fmt(data_format)
    y = tf.concat(list(xs), axis=_channel_axis(xs[0], data_format), name=name)
    ests = [get_estimate(x) for x in xs]
    if all(e is not None for e in ests):
        if all(e.rectified for e in ests):
            # every branch ends in a ReLU (Inception modules): keep the ReLU pending, so that a max
            # pool or a Monte-Carlo conv after the concat sees the rectified Gaussian itself
            set_estimate(y, Estimate(tf.concat([e.mean for e in ests], 1), tf.concat([e.var for e in ests], 1),
                                     rectified=True))
        else:
            moments = [e.moments() for e in ests]
            set_estimate(y, Estimate(tf.concat([m for m, _ in moments], 1),
                                     tf.concat([v for _, v in moments], 1)))
    return y


def pad_channels(x, before, after, data_format=None, name=None):
    """Zero channels added around x (ResNet's option-A shortcut); they have mean 0, variance 0."""
    data_format = _fmt(data_format)
    axis = _channel_axis(x, data_format)
    paddings = [[0, 0]] * x.shape.rank
    paddings[axis] = [before, after]
    y = tf.pad(x, paddings, name=name)
    est = get_estimate(x)
    if est is not None:
        m, v = est.moments()
        set_estimate(y, Estimate(tf.pad(m, [[0, 0], [before, after]]), tf.pad(v, [[0, 0], [before, after]])))
    return y


def subsample(x, stride, data_format=None, name=None):
    """Keep every ``stride``-th position in height and width.  A stationary distribution is
    unchanged by subsampling, so is the estimate."""
    data_format = _fmt(data_format)
    if data_format == 'NCHW':
        y = x[:, :, ::stride, ::stride]
    else:
        y = x[:, ::stride, ::stride, :]
    y = tf.identity(y, name=name)
    est = get_estimate(x)
    if est is not None:
        set_estimate(y, est)
    return y


def max_pool(x, pool_size, strides=None, padding='VALID', data_format=None, name=None):
    """Max pooling (TensorFlow's: padded positions never win).  The estimate is carried through
    it: the moments of the max of the window's taps, taken as independent draws of the channel's
    distribution (exactly for 'analytic', by sampling for the spec's ``prior_method='mc'``; see
    :func:`kalman_norm.transition.max_pool_estimate` for what this assumes)."""
    data_format = _fmt(data_format)
    strides = pool_size if strides is None else strides
    y = tf.nn.max_pool2d(x, _pair(pool_size), _pair(strides), padding.upper(), data_format=data_format,
                         name=name)
    est = get_estimate(x)
    if est is not None:
        method, samples = _prior_method()
        set_estimate(y, max_pool_estimate(est, _hw(x, data_format), pool_size, strides, padding,
                                          method=method, num_samples=samples))
    return y
