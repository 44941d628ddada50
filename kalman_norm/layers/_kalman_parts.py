"""The parts of a Kalman Normalization layer (:mod:`kalman_norm.layers.kalman`): the vocabularies of
its options and their checks, the Kalman gain q and process noise R of Eq. 7, and the calibrated
prior's running bias.  Private: import the layers and names from :mod:`kalman_norm.layers`.
"""
import math
import numbers

import tensorflow as tf
from tensorpack.tfutils.tower import get_current_tower_context

from ._options import check_bool, check_choice, check_positive


#: What a KN layer hands on to the next prediction step.
#: 'input':  the posterior estimate of its own input, as the paper and the authors' code do
#:           (the normalisation and γ/β in between are ignored by the transition);
#: 'output': the distribution the next layer really receives, the normalised, scaled and
#:           shifted output: N(γ(µ̂ - µ_n)/σ_n + β, γ² Σ̂ / σ_n²), with (µ_n, σ_n²) the statistics
#:           used to normalise.  The layers' default (this project's prediction step).
PROPAGATE_MODES = ('input', 'output')

#: Where BatchKalmanNorm's prior comes from (option ``prior_source``), in the layers that have one:
#: 'flow':   the prediction step, the estimate of the layer below pushed through the transition
#:           (the paper's Eq. 7).  The default.
#: 'moving': the layer's own moving averages, without gradient: a control, not the paper's method.
#:           It keeps Eq. 7's update, the gain and the guard and replaces only the prediction by
#:           another low-noise estimate, so that a study can tell whether KN's gain needs the
#:           propagation through the network or only a steadier estimate than the micro-batch's.
#: 'calibrated': the prediction, corrected by its own running bias (this project's, not the
#:           paper's; see :class:`_PriorCalibration`): the transition supplies how the statistics
#:           change with the weights, the layer's history how far off the transition's level is.
PRIOR_SOURCES = ('flow', 'moving', 'calibrated')


#: How the learned process noise R is parametrised (option ``noise_param``); see :class:`_ProcessNoise`.
NOISE_PARAMS = ('relative', 'softplus')
#: ``noise_init=None`` means: r = 0.1 (relative), R = 1e-3 (softplus, the first version's value)
_DEFAULT_NOISE_INIT = {'relative': 0.1, 'softplus': 1e-3}
#: A learned gain starts this far from 0 and 1 at least: sigmoid(θ) rounds to 1 in float32 for
#: θ > ~17, where q's gradient q(1-q) is exactly 0 and q could never move again.
_GAIN_INIT_MARGIN = 1e-6


class _Gain(object):
    """The Kalman gain q of Eq. 7, and p = 1 - q.

    Fixed: a number.  Learned (``gain='learned'``): one scalar per layer, q = sigmoid(θ) with θ
    (variable ``gain_logit``) initialised to logit(``gain_init``).  The gradient is
    dL/dθ = q(1-q)·dL/dq: 0.09·dL/dq at q = 0.1, so q learns at the default start; the logit is
    summed over every channel and group, so it sees a large share of the loss.  p is computed as
    sigmoid(-θ), not 1 - sigmoid(θ): where q rounds to 1 in float32 p stays a positive number.
    """

    def __init__(self, gain, gain_init):
        _validate_gain(gain, gain_init)
        if gain == 'learned':
            logit = tf.compat.v1.get_variable(
                'gain_logit', [], initializer=tf.constant_initializer(math.log(gain_init / (1.0 - gain_init))))
            self.q = tf.sigmoid(logit, name='gain')
            self.p = tf.sigmoid(-logit, name='one_minus_gain')
        else:
            self.q = tf.constant(float(gain), tf.float32, name='gain')
            self.p = tf.constant(1.0 - float(gain), tf.float32, name='one_minus_gain')


class _ProcessNoise(object):
    """The diagonal process noise R of Eq. 7's prediction, Σ̂_{k|k-1} = A Σ̂ Aᵀ + R, learned per channel.

    ``noise_param='relative'`` (default): R = r ⊙ AΣ̂Aᵀ, r = softplus(ρ) ≥ 0 per channel, so
        Σ̂_{k|k-1} = (1 + r) ⊙ AΣ̂Aᵀ.  r is unit-free ("the prediction is r·100 % less certain than
        the transition says"), initialised to ``noise_init`` = 0.1.  Why: the loss sees R only
        through the normalising variance, so dL/dR scales like 1 / (feature variance) and a useful
        R scales like the feature variance, which differs by orders of magnitude between layers
        and changes during training.  Relative to the prediction, r ~ 0.1-1 matters in every layer,
        and dr/dρ = sigmoid(ρ) ≈ 0.1 at the start: r moves when the data asks it to (a prior whose
        variance is too small by a factor k is corrected by r → k - 1).
    ``noise_param='softplus'``: the first version, R = softplus(ρ) added as is (absolute units),
        init ``noise_init`` = 1e-3.  There dR/dρ = sigmoid(ρ) ≈ 1e-3 and R ≈ 1e-3 is negligible
        next to feature variances ~1: the gradient reaching ρ is ~1e-6 of the loss's, and in a
        4-epoch CIFAR run every R stayed at 0.00100.  Kept to reproduce old runs.
    In both, ρ is the variable ``noise_rho`` [C] (the paper's one R vector per KN layer, Table 2)
    and the tensor named ``process_noise`` is softplus(ρ): r for 'relative', R for 'softplus'.
    """

    def __init__(self, channels, noise_param, noise_init):
        if noise_init is None:
            noise_init = _DEFAULT_NOISE_INIT[noise_param]
        rho0 = math.log(math.expm1(noise_init))     # softplus⁻¹(noise_init)
        rho = tf.compat.v1.get_variable('noise_rho', [channels], initializer=tf.constant_initializer(rho0))
        self.value = tf.nn.softplus(rho, name='process_noise')
        self.relative = noise_param == 'relative'

    def predict(self, prior_var):
        """Σ̂_{k|k-1} from the transition's A Σ̂ Aᵀ ([..., C])."""
        return prior_var * (1.0 + self.value) if self.relative else prior_var + self.value

    @staticmethod
    def update_args(noise):
        """The keyword arguments of :func:`kalman_update` for ``noise`` (a _ProcessNoise or None)."""
        return {} if noise is None else {'noise': noise.value, 'relative_noise': noise.relative}


class _PriorCalibration(object):
    """The running bias of a layer's prediction, for ``prior_source='calibrated'``.

    The analytic transition is a misspecified model: it treats the input channels and kernel taps
    as independent and the ReLU input as Gaussian, so its prediction is off by a systematic,
    slowly changing amount (the KN study measured the output hand-on's prior variance ~5x off,
    results/kn_study_estimates.md).  A Kalman filter whose process model is biased estimates the
    bias from the innovations; here, per channel, as moving averages over steps of

        d = mean_g (x̄_g − µ̂_g)                       (mean offset)
        l = log((mean_g S_g + ε) / (mean_g Σ̂_g + ε))  (log variance ratio; of group means, so
                                                       that 2-sample noise does not bias it)

    with (µ̂_g, Σ̂_g) the uncalibrated prediction and (x̄_g, S_g) the group statistics, and the
    prior Eq. 7 weighs is N(µ̂ + d, Σ̂ · e^l).  The gradient still flows through µ̂, Σ̂ into the
    weights below; d and l are statistics (no gradient), updated like the moving averages (first
    training tower, after the output).  With frozen weights µ̂ + d tends to the moving mean; while
    the weights move, the prediction supplies the change the moving average lags behind.
    Variables ``prior_offset/EMA`` and ``prior_log_ratio/EMA`` [C], both starting at 0 (the plain
    prediction).
    """

    def __init__(self, channels, ema):
        get = tf.compat.v1.get_variable
        self.offset = get('prior_offset/EMA', [channels], initializer=tf.zeros_initializer(), trainable=False)
        self.log_ratio = get('prior_log_ratio/EMA', [channels], initializer=tf.zeros_initializer(),
                             trainable=False)
        self.ema = ema
        if get_current_tower_context().is_main_training_tower:     # saved and restored as the EMA are
            for v in (self.offset, self.log_ratio):
                tf.compat.v1.add_to_collection(tf.compat.v1.GraphKeys.MODEL_VARIABLES, v)

    def apply(self, prior_mean, prior_var):
        return (prior_mean + tf.stop_gradient(self.offset),
                prior_var * tf.exp(tf.stop_gradient(self.log_ratio)))

    def update(self, output, prior_mean, prior_var, group_mean, group_var, training, epsilon):
        """Fold this step's innovations into the bias estimate (rows with a non-finite prior are
        left out); returns the output, after the update where the layer's ema_update says so."""
        if not self.ema.should_update(training):
            return output
        sg = tf.stop_gradient
        prior_mean, prior_var, group_mean, group_var = map(sg, (prior_mean, prior_var, group_mean, group_var))
        valid = tf.math.is_finite(prior_mean) & tf.math.is_finite(prior_var) & (prior_var >= 0.)
        w = tf.cast(valid, tf.float32)
        n = tf.maximum(tf.reduce_sum(w, 0), 1.)

        def valid_mean(t):
            return tf.reduce_sum(tf.where(valid, t, tf.zeros_like(t)), 0) / n

        offset = valid_mean(group_mean - prior_mean)
        log_ratio = tf.math.log((valid_mean(group_var) + epsilon) / (valid_mean(prior_var) + epsilon))
        any_valid = tf.reduce_sum(w, 0) > 0.
        offset = tf.where(any_valid, offset, self.offset)            # no valid row: keep the estimate
        log_ratio = tf.where(any_valid, log_ratio, self.log_ratio)
        return self.ema.fold(output, [(self.offset, offset, 'offset_ema_op'),
                                      (self.log_ratio, log_ratio, 'log_ratio_ema_op')], name='calibrated')


def _process_noise(channels, enabled, noise_param, noise_init):
    """A :class:`_ProcessNoise`, or None when R is switched off."""
    return _ProcessNoise(channels, noise_param, noise_init) if enabled else None


def _validate_gain(gain, gain_init=None):
    if gain_init is not None:
        _validate_gain_init(gain_init)
    if gain == 'learned':
        return
    if isinstance(gain, (bool, str)) or gain is None:
        raise ValueError("gain must be a number in [0, 1] or 'learned', got %r" % (gain,))
    try:
        value = float(gain)
    except (TypeError, ValueError):
        raise ValueError("gain must be a number in [0, 1] or 'learned', got %r" % (gain,))
    if not 0.0 <= value <= 1.0:
        raise ValueError('gain must be in [0, 1], got %r' % (gain,))


def _validate_gain_init(gain_init):
    ok = isinstance(gain_init, numbers.Real) and not isinstance(gain_init, bool)
    if not ok or not _GAIN_INIT_MARGIN <= gain_init <= 1.0 - _GAIN_INIT_MARGIN:
        raise ValueError('gain_init must be in (0, 1), at least %g from either end, got %r'
                         % (_GAIN_INIT_MARGIN, gain_init))


def _validate_guard_ratio(guard_ratio):
    ok = guard_ratio is None or (isinstance(guard_ratio, numbers.Real) and not isinstance(guard_ratio, bool))
    if not ok or (guard_ratio is not None and not guard_ratio > 1.0):
        raise ValueError('guard_ratio must be None (no guard) or a number > 1, got %r' % (guard_ratio,))


def _validate_noise_init(noise_init):
    if noise_init is not None:
        check_positive('noise_init', noise_init)


#: options of both KN layers, beyond those of the baselines
_KN_CHECKS = {
    'gain': _validate_gain,
    'gain_init': _validate_gain_init,
    'process_noise': lambda v: check_bool('process_noise', v),
    'noise_param': lambda v: check_choice('noise_param', v, NOISE_PARAMS),
    'noise_init': _validate_noise_init,
    'pooled_variance': lambda v: check_bool('pooled_variance', v),
    'guard_ratio': _validate_guard_ratio,
    'propagate': lambda v: check_choice('propagate', v, PROPAGATE_MODES),
}


#: options of BatchKalmanNorm only (the study's controls and the calibrated prior)
_BKN_CHECKS = {
    'prior_source': lambda v: check_choice('prior_source', v, PRIOR_SOURCES),
    'prior_gradient': lambda v: check_bool('prior_gradient', v),
}
