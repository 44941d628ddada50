"""The prediction step of KN: push an estimate through the layers between two norm layers.

Paper, Eq. 7:  µ̂_{k|k-1} = A_k µ̂_{k-1|k-1},   Σ̂_{k|k-1} = A_k Σ̂_{k-1|k-1} A_kᵀ + R.
A_k is the layer's own convolution kernel.  The paper evaluates it by Monte-Carlo: sample
N(µ̂, Σ̂) (independent per pixel and channel), apply ReLU and the conv, take the moments.

Two methods, both under that same model (independent inputs with per-channel moments):

* ``'mc'`` — the paper's Monte-Carlo: ``num_samples`` whole feature maps per group are
  sampled, rectified if a ReLU lies in between, convolved with the real kernel (gradients reach
  the kernel and, by reparameterisation, the previous estimate), and their moments pooled over
  samples and positions.
* ``'analytic'`` — the many-samples limit of ``'mc'`` (not the expectation of a few-sample
  estimate).  For the mean the two agree: the MC mean is unbiased.  For the variance they do
  not: the spatial variance of one sampled image is, in expectation, lower than the limit by
  the variance of that image's spatial mean, which grows as the output shrinks and as its
  positions correlate (measured in tests/test_transition.py with random 3×3 kernels on
  rectified inputs: ≲0.5 % at 32×32, 1-4 % at 8×8, 14-38 % for a 2×2 output; a 1×1 output
  has no spatial variance, so one sample predicts 0).  So ``prior_samples=1`` (the authors')
  predicts smaller variances than the limit, with noise, most on small feature maps.
  The formula: for an output position p,
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
  On a CPU-only machine the kernel-sized part (the products a_t = m W_t, Σ_t f_t v W_t² and
  their gradients) runs in one fused op for up to FUSED_MAX_GROUPS groups (kalman_norm/ops:
  one pass over the kernel each way instead of ~8); same values and gradients.

The conv here is a cross-correlation with TensorFlow's SAME/VALID padding conventions.
"""
import numpy as np
import tensorflow as tf

from . import ops
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


#: The fused CPU op (kalman_norm/ops) is used for estimates of at most this many groups.  Its
#: loops beat TensorFlow's ops where the kernel-sized passes dominate (1-16 groups: the prior of
#: Inception-v2 at 224 px costs 0.44x (1 group) to 0.7x (8 groups) of TensorFlow's ops, ResNet-20
#: CIFAR at 16 groups 0.7x) and lose where the products with many groups dominate (ResNet-20 at
#: 64 groups, 1.16x): scripts/benchmark_prior.py --groups G.
FUSED_MAX_GROUPS = 16


def _analytic_conv(est, kernel, in_hw, kernel_hw, strides, padding, fused=None):
    """``fused``: use the fused CPU op (kalman_norm/ops) for the kernel-sized work; None = where
    it applies (``ops.fused_prior_enabled()`` and at most FUSED_MAX_GROUPS groups, known when the
    graph is built).  Both give the same values and gradients."""
    m, v = est.moments()
    if fused is None:
        groups = m.shape[0]
        fused = groups is not None and groups <= FUSED_MAX_GROUPS and ops.fused_prior_enabled()
    cin, cout = int(kernel.shape[2]), int(kernel.shape[3])
    taps = kernel_hw[0] * kernel_hw[1]
    f, pair = tap_coverage(in_hw, kernel_hw, strides, padding)
    # Border positions see fewer taps, so E[y_p] varies with p.  That spread adds
    # Σ_{t,t'} F_{tt'} a_t a_t' − mean² to the variance; it vanishes when every tap is valid everywhere.
    spread = None if np.allclose(pair, 1.0) else pair
    # (a reshape: its gradient is free, a slice's is a kernel-sized StridedSliceGrad)
    w = tf.reshape(kernel, [taps, cin, cout])
    if fused:
        return _conv_moments_fused(m, v, w, f, spread)
    return _conv_moments(m, v, w, f, spread)


def _conv_moments_fused(m, v, w, f, pair):
    """:func:`_conv_moments` with its kernel-sized work (a_t = m W_t and Σ_t f_t v W_t², and their
    gradients) in one fused CPU op; the rest works on [T, G, C_out] and keeps TensorFlow's ops."""
    a, var = ops.conv_prior(m, v, w, tf.constant(f, tf.float32))
    if len(f) == 1:
        mean = tf.squeeze(a, 0) if f[0] == 1.0 else f[0] * tf.squeeze(a, 0)
    else:
        mean = tf.reduce_sum(tf.constant(np.reshape(f, [-1, 1, 1]), tf.float32) * a, 0)
    if pair is not None:
        fa = tf.tensordot(tf.constant(pair, tf.float32), a, 1)     # Σ_t' F_{tt'} a_t'
        var = var + tf.maximum(tf.reduce_sum(a * fa, 0) - tf.square(mean), 0.)
    return mean, var


def _conv_moments(m, v, w, f, pair):
    """(mean, var) [G, C_out] of the analytic prior (module docstring; Eq. 7's prediction with A
    the conv) for m, v [G, C_in] and w [T, C_in, C_out]; ``pair`` F [T, T] or None (no spread).

        a_t = m W_t,  b_t = v W_t²,  mean = Σ_t f_t a_t,
        var = Σ_t f_t b_t + max(Σ_{t,t'} F_{tt'} a_t a_t' − mean², 0)

    The sums over taps are taken of the [T, G, C_out] products, not of the kernel (Σ_t f_t W_t,
    Σ_t f_t W_t² would each cost a kernel-sized pass, and another in the backward), and the
    gradient is written out, with few kernel-sized ops (they dominate KN's extra time in Table 3,
    results/table3_speed.md) and few small ones (timing: scripts/benchmark_prior.py):
        da_t = f_t d_mean + 2 [spread ≥ 0] d_var (Σ_t' F_{tt'} a_t' − f_t mean),   db_t = f_t d_var,
        dm = Σ_t da_t W_tᵀ,   dv = Σ_t db_t (W_t²)ᵀ,   dW_t = mᵀ da_t + W_t ⊙ (2vᵀ db_t).
    (The derived gradient forms 2·W and (2·W) ⊙ (vᵀ db) in two passes for Square, and hands the
    kernel its terms separately to a later AddN.)  Equality of values and gradients with the plain
    formula: tests/test_analytic_conv_rewrite.py.
    """
    taps = len(f)
    f_col = tf.constant(np.reshape(f, [taps, 1, 1]), tf.float32)

    @tf.custom_gradient
    def moments(m, v, w):
        w2 = tf.square(w)
        a = tf.matmul(m, w)          # [G, C_in] broadcast against [T, C_in, C_out] → [T, G, C_out]
        b = tf.matmul(v, w2)
        if taps == 1:                # a 1x1 kernel covers every output position: f = 1
            mean, var = tf.squeeze(a, 0), tf.squeeze(b, 0)
        else:
            mean, var = tf.reduce_sum(f_col * a, 0), tf.reduce_sum(f_col * b, 0)
        if pair is not None:
            fa = tf.tensordot(tf.constant(pair, tf.float32), a, 1)     # Σ_t' F_{tt'} a_t'
            spread = tf.reduce_sum(a * fa, 0) - tf.square(mean)
            var = var + tf.maximum(spread, 0.)

        def grad(d_mean, d_var):
            d_mean = tf.zeros_like(mean) if d_mean is None else d_mean
            d_var = tf.zeros_like(var) if d_var is None else d_var
            da, db = f_col * d_mean, f_col * d_var
            if pair is not None:
                # tf.maximum's gradient goes to its first argument where it is >= the second
                d_spread = tf.where(spread >= 0., 2. * d_var, tf.zeros_like(d_var))
                da = da + d_spread * (fa - f_col * mean)
            dm = tf.reduce_sum(tf.matmul(da, w, transpose_b=True), 0)
            dv = tf.reduce_sum(tf.matmul(db, w2, transpose_b=True), 0)
            if m.shape[0] == 1:
                # One group (the paper's Table 3 setting): the outer products are broadcast
                # multiplies; a batched matmul with an inner dimension of 1 was the slowest op here.
                cin = int(m.shape[1])
                dw = tf.reshape(m, [cin, 1]) * da + (w * tf.reshape(2. * v, [cin, 1])) * db
            else:
                dw = tf.matmul(m, da, transpose_a=True) + w * tf.matmul(v, 2. * db, transpose_a=True)
            return dm, dv, dw

        return (mean, var), grad

    return moments(m, v, w)


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


# ----------------------------------------------------------------------------------------------
# Max pooling
# ----------------------------------------------------------------------------------------------
#
# Under the model every transition here shares (the taps of a window are independent draws of
# the channel's distribution N(m, v), rectified if a ReLU lies in between), the max of a window
# of n valid taps is
#     max_t relu(z_t) = relu(max_t z_t) = relu(m + s·M_n),    s = √v,
# with M_n the maximum of n independent standard normals (ReLU is monotone, so it commutes with
# the max).  M_n has density p_n(x) = n φ(x) Φ(x)^(n-1), the same for every channel, so
#     E[relu(m + s M_n)]   = m S0(t) + s S1(t)
#     E[relu(m + s M_n)²]  = m² S0(t) + 2 m s S1(t) + s² S2(t),        t = -m/s,
#     S_k(t) = ∫_t^∞ x^k p_n(x) dx      (S0(t) = 1 - Φ(t)^n),
# and without the ReLU (t → -∞) simply E = m + s µ_n, Var = v σ_n² with µ_n, σ_n² the moments of
# M_n.  S1 and S2 have no closed form: they are tabulated once per n with NumPy (fine trapezoid
# rule) and linearly interpolated in the graph, which keeps the prior differentiable in m and s.
# This is the exact limit of the Monte-Carlo prior (method 'mc': sample, tf.nn.max_pool2d,
# moments), as 'analytic' is for the convolution; Clark's (1961) pairwise formulas would add a
# second approximation (that every partial maximum is Gaussian), which costs up to ~30% of the
# variance when ReLU cuts the max, and is not needed because all taps share one distribution.
#
# Borders: TensorFlow's max pooling ignores padded positions, so a window at a SAME border has
# fewer valid taps.  A random output position is then a mixture over tap counts n with weights
# w_n (fractions of output positions): mean = Σ w_n E_n, E[y²] = Σ w_n E2_n.
#
# What the prior assumes: taps independent with the channel's moments (real neighbouring
# activations are positively correlated, which makes their max smaller and more spread than
# predicted), and a Gaussian pre-activation.  The result carries moments only (not a Gaussian):
# a max is skewed, and the next layer's prediction uses the first two moments, as for every
# other op here.

__all__ += ['max_pool_estimate', 'max_of_normals_moments', 'max_of_normals_table']

_MAX_TABLE_RANGE = 10.0          # t in [-10, 10]: beyond it S_k is at its limit to float32 precision
_MAX_TABLE_STEP = 1.0 / 128      # interpolation error ~ step²/8 · |S_k''| < 1e-5


def _normal_cdf(x):
    from math import erfc, sqrt
    return np.array([0.5 * erfc(-v / sqrt(2.0)) for v in np.ravel(x)]).reshape(np.shape(x))


_MAX_TABLES = {}


def max_of_normals_table(n):
    """(t [K], S0, S1, S2 [K]): S_k(t) = ∫_t^∞ x^k p_n(x) dx for the max of n standard normals,
    on the grid t = -10 .. 10 (step 1/128), computed with a trapezoid rule 16× finer."""
    n = int(n)
    if n < 1:
        raise ValueError('A pooling window needs at least one valid tap, got %d' % n)
    if n not in _MAX_TABLES:
        fine_step = _MAX_TABLE_STEP / 16
        x = np.arange(-_MAX_TABLE_RANGE - 2.0, _MAX_TABLE_RANGE + 2.0 + fine_step / 2, fine_step)
        pdf = n * np.exp(-0.5 * x * x) / np.sqrt(2 * np.pi) * _normal_cdf(x) ** (n - 1)
        tails = []
        for k in (0, 1, 2):
            f = pdf * x ** k
            # ∫_x^∞ f: cumulative trapezoid from the right end (where p_n is ~1e-30 or less)
            seg = 0.5 * (f[1:] + f[:-1]) * fine_step
            tails.append(np.concatenate([np.cumsum(seg[::-1])[::-1], [0.0]]))
        grid = np.arange(-_MAX_TABLE_RANGE, _MAX_TABLE_RANGE + _MAX_TABLE_STEP / 2, _MAX_TABLE_STEP)
        idx = np.round((grid - x[0]) / fine_step).astype(int)
        _MAX_TABLES[n] = (grid,) + tuple(t[idx] for t in tails)
    return _MAX_TABLES[n]


def max_of_normals_moments(n):
    """(µ_n, σ_n²): mean and variance of the maximum of n independent standard normals."""
    _, s0, s1, s2 = max_of_normals_table(n)
    mean = s1[0] / s0[0]
    return float(mean), float(s2[0] / s0[0] - mean * mean)


def _interp(table, t):
    """Piecewise-linear interpolation of ``table`` (on the max-of-normals grid) at t; constant
    outside the grid."""
    k = len(table)
    pos = tf.clip_by_value((t + _MAX_TABLE_RANGE) / _MAX_TABLE_STEP, 0.0, float(k - 1) - 1e-3)
    i0 = tf.floor(pos)
    frac = pos - i0
    i0 = tf.cast(i0, tf.int32)
    values = tf.constant(table, tf.float32)
    lo, hi = tf.gather(values, i0), tf.gather(values, i0 + 1)
    return lo + frac * (hi - lo)


def _window_counts(in_hw, pool, strides, padding):
    """{n: fraction of output positions whose window holds n valid input positions}."""
    (ph, pw), (sh, sw) = _pair(pool), _pair(strides)
    rows, _ = _axis_coverage(int(in_hw[0]), ph, sh, padding)
    cols, _ = _axis_coverage(int(in_hw[1]), pw, sw, padding)
    counts = (rows.sum(0)[:, None] * cols.sum(0)[None, :]).astype(int).ravel()
    values, freq = np.unique(counts, return_counts=True)
    return {int(v): float(f) / counts.size for v, f in zip(values, freq)}


def _analytic_max_pool(est, counts):
    m, v = est.mean, tf.maximum(est.var, 0.)
    s = tf.sqrt(v + 1e-12)
    if len(counts) == 1 and not est.rectified:
        (n, _), = counts.items()
        mu_n, var_n = max_of_normals_moments(n)
        return m + s * mu_n, v * var_n
    t = -m / s
    first, second = 0., 0.
    for n, weight in sorted(counts.items()):
        if est.rectified:
            _, s0, s1, s2 = max_of_normals_table(n)
            p0, p1, p2 = _interp(s0, t), _interp(s1, t), _interp(s2, t)
            e1 = m * p0 + s * p1
            e2 = tf.square(m) * p0 + 2. * m * s * p1 + v * p2
        else:
            mu_n, var_n = max_of_normals_moments(n)
            e1 = m + s * mu_n
            e2 = tf.square(e1) + v * var_n
        first, second = first + weight * e1, second + weight * e2
    return first, tf.maximum(second - tf.square(first), 0.)


def _mc_max_pool(est, in_hw, pool, strides, padding, num_samples):
    x, groups = _sample(est, [int(in_hw[0]), int(in_hw[1])], num_samples)
    x = tf.reshape(x, [-1, int(in_hw[0]), int(in_hw[1]), est.mean.shape[-1]])
    y = tf.nn.max_pool2d(x, _pair(pool), _pair(strides), padding, data_format='NHWC')
    return _grouped_moments(y, groups)


def max_pool_estimate(est, in_hw, pool, strides=None, padding='VALID', method='analytic', num_samples=1):
    """Predict the estimate of ``max_pool(x)`` from the estimate of ``x`` (see the notes above).

    Args:
        est (Estimate): estimate of the pooling input ``[G, C]`` (rectified or not).
        in_hw: static (height, width) of the input.
        pool, strides: window and strides (an int or a pair; strides default to the window).
        padding: 'SAME' or 'VALID' (padded positions never win the max, as in TensorFlow).
        method: 'analytic' (exact moments under independent taps) or 'mc' (sample the input
            Gaussian, rectify if pending, ``tf.nn.max_pool2d``, take moments).
        num_samples: 'mc' only: sampled feature maps per group.
    Returns:
        Estimate ``[G, C]`` holding the output's mean and variance (not rectified).
    """
    _check_static_hw(in_hw, 'max pooling')
    padding = padding.upper()
    if padding not in ('SAME', 'VALID'):
        raise ValueError("padding must be 'SAME' or 'VALID', got %r" % (padding,))
    strides = pool if strides is None else strides
    counts = _window_counts(in_hw, pool, strides, padding)
    if method == 'analytic':
        mean, var = _analytic_max_pool(est, counts)
    elif method == 'mc':
        mean, var = _mc_max_pool(est, in_hw, pool, strides, padding, num_samples)
    else:
        raise ValueError("Unknown prior method %r; choose one of %s" % (method, METHODS))
    return Estimate(mean, var)
