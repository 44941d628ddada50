"""The prediction step of KN: push an estimate through the layers between two norm layers.

Paper, Eq. 7:  µ̂_{k|k-1} = A_k µ̂_{k-1|k-1},   Σ̂_{k|k-1} = A_k Σ̂_{k-1|k-1} A_kᵀ + R.
A_k is the layer's own convolution kernel.  The paper evaluates it by Monte-Carlo: sample
N(µ̂, Σ̂) (independent per pixel and channel), apply ReLU and the conv, take the moments.

Two methods, both under that same model (independent inputs with per-channel moments):

* ``'mc'`` — the paper's Monte-Carlo: ``num_samples`` whole feature maps per group are
  sampled, rectified if a ReLU lies in between, convolved with the real kernel (gradients reach
  the kernel and, by reparameterisation, the previous estimate), and their moments pooled over
  samples and positions.
* ``'analytic'`` — the exact limit of ``'mc'`` as samples grow.  For an output position p,
  ``y_p = Σ_{taps t valid at p} Σ_c W[t,c,:] x``; with independent inputs of moments (m, v)
  (rectified-Gaussian moments if a ReLU lies in between):
      E y_p   = Σ_{t∈V(p)} a_t,              a_t = Σ_c W[t,c,:] m_c
      Var y_p = Σ_{t∈V(p)} Σ_c W[t,c,:]² v_c
  The distribution of a value at a uniformly random output position is then
      mean = Σ_t f_t a_t,   var = Σ_t f_t (W_t² v) + Σ_{t,t'} F_{tt'} a_t a_t' − mean²
  with f_t the fraction of output positions where tap t falls inside the (zero-padded) input,
  F_{tt'} the fraction where both do (stride and padding enter only through f and F, which are
  computed once from static shapes).  No sampling noise, and the cost is that of a few
  [G, C_in] × [C_in, C_out] products instead of a convolution over sampled images.

The conv here is a cross-correlation with TensorFlow's SAME/VALID padding conventions.
"""
import numpy as np
import tensorflow as tf

from .estimate import Estimate

__all__ = ['conv_estimate', 'dense_estimate', 'avg_pool_estimate', 'global_avg_pool_estimate',
           'tap_coverage', 'METHODS']

METHODS = ('analytic', 'mc')


def _pair(v):
    if isinstance(v, (list, tuple)):
        assert len(v) == 2, v
        return int(v[0]), int(v[1])
    return int(v), int(v)


def _axis_coverage(size, k, stride, padding):
    """valid[i, o] = 1 if tap i of output o lands inside an input of length ``size``."""
    if padding == 'SAME':
        out = -(-size // stride)
        pad_before = max((out - 1) * stride + k - size, 0) // 2
    else:
        out = (size - k) // stride + 1
        pad_before = 0
    if out <= 0:
        raise ValueError('Input size %d is smaller than the kernel %d with VALID padding' % (size, k))
    pos = np.arange(out)[None, :] * stride - pad_before + np.arange(k)[:, None]
    return ((pos >= 0) & (pos < size)).astype(np.float64), out


def tap_coverage(in_hw, kernel_hw, strides, padding):
    """(f [T], F [T, T]): fraction of output positions where tap t (resp. taps t and t') is valid.

    Taps are ordered row-major like ``kernel.reshape(kh * kw, ...)``.
    """
    padding = padding.upper()
    assert padding in ('SAME', 'VALID'), padding
    (kh, kw), (sh, sw) = _pair(kernel_hw), _pair(strides)
    rows, out_h = _axis_coverage(int(in_hw[0]), kh, sh, padding)
    cols, out_w = _axis_coverage(int(in_hw[1]), kw, sw, padding)
    # the validity of tap (i, j) at (oy, ox) factorises: rows[i, oy] * cols[j, ox]
    row_pair = rows @ rows.T / out_h          # [kh, kh]
    col_pair = cols @ cols.T / out_w          # [kw, kw]
    pair = np.einsum('ab,cd->acbd', row_pair, col_pair).reshape(kh * kw, kh * kw)
    return np.diag(pair).copy(), pair


def _check_static_hw(in_hw, what):
    if in_hw is None or any(d is None for d in in_hw):
        raise ValueError('The KN prior through %s needs a static spatial shape, got %s. '
                         'Give the input a fully defined height and width.' % (what, in_hw))


def conv_estimate(est, kernel, in_hw, strides=1, padding='SAME', bias=None,
                  method='analytic', num_samples=1):
    """Predict the estimate of ``conv(x, kernel)`` from the estimate of ``x``.

    Args:
        est (Estimate): estimate of the conv input, ``[G, C_in]``.
        kernel: the conv kernel ``[kh, kw, C_in, C_out]`` (the same tensor the conv uses, so
            gradients of the prior reach it as in the paper).
        in_hw: static (height, width) of the conv input.
        method: 'analytic' or 'mc'.
        num_samples: 'mc' only: sampled feature maps per group.
    Returns:
        Estimate ``[G, C_out]``.
    """
    _check_static_hw(in_hw, 'a convolution')
    padding = padding.upper()
    kh, kw = int(kernel.shape[0]), int(kernel.shape[1])
    kernel = tf.cast(kernel, tf.float32)
    if method == 'mc':
        mean, var = _mc_conv(est, kernel, in_hw, strides, padding, num_samples)
    elif method == 'analytic':
        mean, var = _analytic_conv(est, kernel, in_hw, (kh, kw), strides, padding)
    else:
        raise ValueError("Unknown prior method %r; choose one of %s" % (method, METHODS))
    if bias is not None:
        mean = mean + tf.cast(bias, tf.float32)
    return Estimate(mean, var)


def _analytic_conv(est, kernel, in_hw, kernel_hw, strides, padding):
    m, v = est.moments()
    cin, cout = int(kernel.shape[2]), int(kernel.shape[3])
    taps = kernel_hw[0] * kernel_hw[1]
    f, pair = tap_coverage(in_hw, kernel_hw, strides, padding)
    w = tf.reshape(kernel, [taps, cin, cout])
    f_t = tf.constant(f, tf.float32)
    # (plain matmuls: they are several times faster than einsum on CPU, forward and backward)
    w_mean = tf.tensordot(f_t, w, 1)                        # Σ_t f_t W_t     [C_in, C_out]
    w_var = tf.tensordot(f_t, tf.square(w), 1)              # Σ_t f_t W_t²
    mean = tf.matmul(m, w_mean)
    var = tf.matmul(v, w_var)
    # Border positions see fewer taps, so E[y_p] varies with p.  That spread adds
    # Σ_{t,t'} F_{tt'} a_t a_t' − mean² to the variance; it vanishes when every tap is valid everywhere.
    if not np.allclose(pair, 1.0):
        a = tf.matmul(tf.expand_dims(m, 0), w)              # a_t = m W_t      [T, G, C_out]
        fa = tf.tensordot(tf.constant(pair, tf.float32), a, 1)
        spread = tf.reduce_sum(a * fa, 0) - tf.square(mean)
        var = var + tf.maximum(spread, 0.)
    return mean, var


def _sample(est, sample_shape, num_samples):
    """num_samples draws per group of N(mean, var) with shape sample_shape, rectified if pending."""
    groups = tf.shape(est.mean)[0]
    c = est.mean.shape[-1]
    rank = len(sample_shape)
    shape = tf.concat([[groups, num_samples], tf.constant(sample_shape, tf.int32), [c]], 0)
    eps = tf.random.normal(shape)
    bshape = tf.concat([[groups], tf.ones([rank + 1], tf.int32), [c]], 0)
    mean = tf.reshape(est.mean, bshape)
    std = tf.reshape(tf.sqrt(tf.maximum(est.var, 0.) + 1e-12), bshape)
    x = mean + std * eps                                   # reparameterised: gradients reach (µ, Σ)
    if est.rectified:
        x = tf.nn.relu(x)
    return x, groups


def _grouped_moments(y, groups):
    c = y.shape[-1]
    y = tf.reshape(y, tf.stack([groups, -1, c]))
    mean, var = tf.nn.moments(y, axes=[1])
    return mean, var


def _mc_conv(est, kernel, in_hw, strides, padding, num_samples):
    x, groups = _sample(est, [int(in_hw[0]), int(in_hw[1])], num_samples)
    c = est.mean.shape[-1]
    x = tf.reshape(x, [-1, int(in_hw[0]), int(in_hw[1]), c])
    # Samples are i.i.d. per pixel, so their layout is ours to choose: NHWC runs everywhere.
    sh, sw = _pair(strides)
    y = tf.nn.conv2d(x, kernel, strides=[1, sh, sw, 1], padding=padding, data_format='NHWC')
    return _grouped_moments(y, groups)


def dense_estimate(est, kernel, bias=None, method='analytic', num_samples=1):
    """Predict the estimate of ``x @ kernel (+ bias)`` from the estimate of ``x`` ([G, C_in])."""
    kernel = tf.cast(kernel, tf.float32)
    if method == 'analytic':
        m, v = est.moments()
        mean, var = tf.matmul(m, kernel), tf.matmul(v, tf.square(kernel))
    elif method == 'mc':
        x, groups = _sample(est, [], num_samples)
        y = tf.matmul(tf.reshape(x, [-1, est.mean.shape[-1]]), kernel)
        mean, var = _grouped_moments(y, groups)
    else:
        raise ValueError("Unknown prior method %r; choose one of %s" % (method, METHODS))
    if bias is not None:
        mean = mean + tf.cast(bias, tf.float32)
    return Estimate(mean, var)


def avg_pool_estimate(est, in_hw, pool, strides, padding='VALID'):
    """Average pooling of independent inputs: the mean is kept; at an output position averaging
    n valid inputs divides the variance by n (TensorFlow's avg_pool excludes zero padding)."""
    _check_static_hw(in_hw, 'average pooling')
    (ph, pw), padding = _pair(pool), padding.upper()
    rows, _ = _axis_coverage(int(in_hw[0]), ph, _pair(strides)[0], padding)
    cols, _ = _axis_coverage(int(in_hw[1]), pw, _pair(strides)[1], padding)
    counts = rows.sum(0)[:, None] * cols.sum(0)[None, :]      # valid inputs per output position
    m, v = est.moments()
    return Estimate(m, v * float(np.mean(1.0 / counts)))


def global_avg_pool_estimate(est, in_hw):
    _check_static_hw(in_hw, 'global average pooling')
    m, v = est.moments()
    return Estimate(m, v / float(int(in_hw[0]) * int(in_hw[1])))
