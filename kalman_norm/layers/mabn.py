"""Moving Average Batch Normalization (Yan et al., ICLR 2020), over micro-batch groups."""
import numbers

import tensorflow as tf
from tensorpack.tfutils.tower import get_current_tower_context

from ._common import Layout, affine_params, norm_layer, resolve_training, to_float32
from .field_norms import VarianceEMA
from ._options import BATCH_STAT_CHECKS, check_choice, check_number, check_options, layer_options

__all__ = ['MovingAverageBatchNorm', 'check_moving_average_batch_norm_options', 'MABN_HISTORY_MODES']

#: whose statistics fill a micro-batch group's moving window (see MovingAverageBatchNorm)
MABN_HISTORY_MODES = ('per_device', 'official_simulation')


def _check_count(name, value, minimum):
    if not isinstance(value, numbers.Integral) or isinstance(value, bool) or value < minimum:
        raise ValueError('%s must be an integer >= %d, got %r' % (name, minimum, value))


def check_moving_average_batch_norm_options(**options):
    """Validate options of :func:`MovingAverageBatchNorm`."""
    check_options(options, {k: v for k, v in BATCH_STAT_CHECKS.items() if k != 'unbiased_variance'})
    if 'history' in options:
        _check_count('MABN history (steps in the moving window)', options['history'], 1)
    if 'history_mode' in options:
        check_choice('history_mode', options['history_mode'], MABN_HISTORY_MODES)
    for name in ('batch_stats_steps', 'renorm_start'):
        if name in options:
            _check_count(name, options[name], 0)
    if 'rmax' in options:
        check_number('rmax', options['rmax'])
        if options['rmax'] < 1.0:
            raise ValueError('MABN needs rmax >= 1, got rmax=%r' % (options['rmax'],))


def _window_mean(history, current, count, mode, history_len):
    """Mean of each group's moving window of ``history_len`` statistics: the stored ``history``
    (zeros where nothing is stored yet) and this step's ``current`` [G, C], divided by ``count``
    [G, 1], the number of real entries.  Returns (means [G, C], the history to store)."""
    if history is None:
        return current, None
    if mode == 'per_device':              # history [m-1, G, C]: the group's own last m-1 steps
        window = tf.reduce_sum(history, 0) + current
        return window / count, tf.concat([history[1:], current[None]], 0)
    # official_simulation, history [m-1, C]: the groups form one sequence, step after step, and
    # group i's window is the m entries ending at it (earlier groups of this step included)
    sequence = tf.concat([history, current], 0)
    cumulative = tf.concat([tf.zeros_like(sequence[:1]), tf.cumsum(sequence, 0)], 0)
    groups = current.shape[0]
    window = cumulative[history_len:history_len + groups] - cumulative[:groups]
    return window / count, sequence[-(history_len - 1):]


def _window_count(steps_before, groups, mode, history_len):
    """[G, 1] real entries in each group's window at this step (1-based step = steps_before + 1)."""
    if mode == 'per_device':
        seen = tf.fill([groups, 1], steps_before + 1.0)
    else:
        seen = steps_before * groups + tf.range(1.0, groups + 1.0)[:, None]
    return tf.minimum(seen, float(history_len))


@norm_layer
def MovingAverageBatchNorm(x, *, group_size=None, history=16, history_mode='per_device', batch_stats_steps=100,
                           rmax=5.0, renorm_start=1000, eval_stats='moving', momentum=0.98, epsilon=1e-5,
                           center=True, scale=True, gamma_init=1.0, training=None, ema_update='default',
                           data_format=None):
    """Moving Average Batch Normalization (Yan et al., ICLR 2020), per micro-batch group.

    Its convs centre their kernels (Sect. 4.2; ``flow.conv2d`` under this norm), so the layer
    normalises by the second moment alone, no mean.  Per group, with χ_B = mean(x²) over the
    group's g·H·W values (Sect. 4.1, Algorithm 1):
        forward:   χ̄ = SMA of χ_B over the last m = ``history`` steps,  z = x / sqrt(χ̄ + ε),
                   y = γ r z + β,  r = stop_grad(clip(sqrt(χ̄ + ε) / sqrt(χ + ε), 1/rmax, rmax))
        backward:  g = ∂L/∂z,  gz_B = mean(g · z),  ḡ = SMA of gz_B over the last m steps,
                   ∂L/∂x = (g - z ḡ) / sqrt(χ̄ + ε)
    the backward pass's batch statistic replaced by its moving average, as the forward one.  χ is
    the running second moment, an EMA of χ̄ with ``momentum`` (the authors' ``running_var``):
    ``variance/EMA`` (initial 1) over the mean of the groups' χ̄, for inference (one update op,
    ``var_ema_op``, moves it with the per-device χ below); r is 1 for the first ``renorm_start``
    steps, and for the first ``batch_stats_steps`` steps χ̄ = χ_B and ḡ = gz_B (then ∂L/∂x is the
    exact gradient of z).
    With fewer than m steps stored the SMA is over those stored.

    ``history_mode`` says whose statistics fill a group's window:
      * ``'per_device'`` (default): the group's own statistics of its last m steps, as a GPU
        holding g samples has (the authors' ``MABN.py``).  Variables ``x2_history``,
        ``gz_history`` [m-1, G, C]; the tower batch must be static.  r divides by the group's own
        running χ, ``device_moment`` [G, C] (the EMA of its χ̄: a GPU keeps its own
        ``running_var``), so nothing of another group enters a group's training forward.
      * ``'official_simulation'``: the authors' ImageNet simulation (``cls/networks/MABN.py``):
        the groups of a step are a sequence of devices' iterations, and group i's window is the
        m statistics ending at it, i.e. groups i-m+1..i of this step and the tail of the last
        (``x2_history``, ``gz_history`` [m-1, C]); r divides by the shared χ, as there.  Its
        schedules are this layer's (``batch_stats_steps``, ``renorm_start``), where the authors'
        simulation uses batch statistics in its first step only and r from step 100: pass those
        values to follow it exactly.

    The layer's own counter ``step_count`` drives the schedules; the histories, the counter and
    the EMA are updated by the first training tower (the forward ones by the EMA's update policy,
    ``gz_history`` in the backward pass); ``ema_update='skip'`` freezes all of them.  At inference
    z = x / sqrt(χ + ε) (``eval_stats='moving'``) or x / sqrt(χ_B + ε) of the test group
    (``'batch'``).  Only one training tower may build it (histories are per device).
    """
    check_moving_average_batch_norm_options(**layer_options(locals()))
    layout = Layout(x, data_format)
    x32, restore = to_float32(x)
    gamma, beta = affine_params(layout.channels, center, scale, gamma_init)
    ema = VarianceEMA(layout.channels, momentum, ema_update)
    training = resolve_training(training)
    if not training and eval_stats == 'moving':
        out = layout.normalize_global(x32, tf.zeros_like(ema.variance), ema.variance, gamma, beta, epsilon)
        return tf.identity(restore(out), name='output')
    grouped, axes = layout.group(x32, group_size)
    x2 = tf.reduce_mean(tf.square(grouped), axes)                        # χ_B [G, C]
    rank = grouped.shape.rank
    if not training:
        out = grouped * layout.broadcast(tf.math.rsqrt(x2 + epsilon) * gamma, rank) + layout.broadcast(beta, rank)
        return tf.identity(restore(tf.reshape(out, tf.shape(x32))), name='output')

    ctx = get_current_tower_context()
    if not ctx.is_main_training_tower:
        raise ValueError('MovingAverageBatchNorm keeps per-device histories in one training tower; '
                         'build it in the first training tower only (tower %r is another)' % (ctx.name,))
    groups = grouped.shape[0]
    if groups is None:
        raise ValueError('MovingAverageBatchNorm needs a static tower batch in training (its histories '
                         'hold one row per micro-batch group), got shape %s' % (layout.shape,))
    get = tf.compat.v1.get_variable
    steps = get('step_count', [], initializer=tf.zeros_initializer(), trainable=False)
    ema.track(steps)
    x2_history = gz_history = None
    if history > 1:
        rows = [history - 1, groups, layout.channels] if history_mode == 'per_device' \
            else [history - 1, layout.channels]
        x2_history = get('x2_history', rows, initializer=tf.zeros_initializer(), trainable=False)
        gz_history = get('gz_history', rows, initializer=tf.zeros_initializer(), trainable=False)
        ema.track(x2_history)
        ema.track(gz_history)
    # r's running χ: the device's own per device; the one shared by the simulation's groups
    device_moment = None
    if history_mode == 'per_device':
        device_moment = get('device_moment', [groups, layout.channels], initializer=tf.ones_initializer(),
                            trainable=False)
        ema.track(device_moment)
    steps_before = steps.read_value()
    count = _window_count(steps_before, groups, history_mode, history)
    use_batch = steps_before < float(batch_stats_steps)
    x2_window, x2_next = _window_mean(None if x2_history is None else x2_history.read_value(), x2, count,
                                      history_mode, history)
    chi_bar = tf.stop_gradient(tf.where(use_batch, x2, x2_window))    # only the custom gradient below
    inv_std = tf.math.rsqrt(chi_bar + epsilon)
    update = ema.should_update(training)

    @tf.custom_gradient
    def normalize(features):
        z = features * layout.broadcast(inv_std, rank)

        def grad(dz):
            gz = tf.reduce_mean(dz * z, axes)                           # gz_B [G, C]
            gz_window, gz_next = _window_mean(None if gz_history is None else gz_history.read_value(), gz,
                                              count, history_mode, history)
            g_bar = tf.where(use_batch, gz, gz_window)
            dx = (dz - z * layout.broadcast(g_bar, rank)) * layout.broadcast(inv_std, rank)
            if update and gz_history is not None:
                with tf.control_dependencies([dx]):
                    store = tf.compat.v1.assign(gz_history, gz_next, name='gz_history_op')
                with tf.control_dependencies([store]):
                    dx = tf.identity(dx)
            return dx

        return z, grad

    z = normalize(grouped)
    running = ema.variance if device_moment is None else device_moment.read_value()
    moving_std = tf.sqrt(running + epsilon)
    r = tf.clip_by_value(tf.sqrt(chi_bar + epsilon) / moving_std, 1.0 / rmax, rmax)
    r = tf.stop_gradient(tf.where(steps_before < float(renorm_start), tf.ones_like(r), r))
    out = z * layout.broadcast(r * gamma, rank) + layout.broadcast(beta, rank)
    out = restore(tf.reshape(out, tf.shape(x32)))
    if not update:
        return tf.identity(out, name='output')
    with tf.control_dependencies([out]):
        moments = [tf.compat.v1.assign(ema.variance, momentum * ema.variance
                                       + (1.0 - momentum) * tf.reduce_mean(chi_bar, 0))]
        if device_moment is not None:
            moments.append(tf.compat.v1.assign(device_moment, momentum * device_moment + (1.0 - momentum) * chi_bar))
        ops = [tf.group(*moments, name='var_ema_op'), tf.compat.v1.assign_add(steps, 1.0, name='step_count_op')]
        if x2_history is not None:
            ops.append(tf.compat.v1.assign(x2_history, x2_next, name='x2_history_op'))
    return ema.attach(out, ops)

