"""The norm registry: one row per normalization, holding every trait the package asks about.

A new norm is its layer, one :func:`register_norm` row and its docs; the spec, the trainers, the
probe, the scripts and the tests read the row (tests are parametrised over :func:`norm_names`).
"""
from dataclasses import dataclass
from typing import Callable, Optional

from .registry import Registry
from .layers import (BatchKalmanNorm, BiasOnly, GroupKalmanNorm, GroupNorm, LayerNormalization,
                     MicroBatchNorm, MicroBatchRenorm, check_batch_kalman_norm_options,
                     check_bias_only_options, check_group_kalman_norm_options, check_group_norm_options,
                     check_layer_normalization_options, check_micro_batch_norm_options,
                     check_micro_batch_renorm_options)
from .layers import (EvoNormB0, EvoNormS0, FilterResponseNorm, MovingAverageBatchNorm, check_evonorm_b0_options,
                     check_evonorm_s0_options, check_filter_response_norm_options,
                     check_moving_average_batch_norm_options)

__all__ = ['Norm', 'register_norm', 'get_norm', 'norm_names', 'norms_where']


@dataclass(frozen=True)
class Norm:
    """One normalization.

    Attributes:
        name: the name of ``norm_scope(name)``, ``--norm name`` and configs.
        layer: the tensorpack layer ``layer(name, x, **options)`` that ``flow.norm`` builds.
        check_options: validates option values given by name (one ValueError line per problem).
        description: one line.
        reference: the paper it implements.
        group_size: statistics come from micro-batch groups of ``group_size`` samples (BN-like);
            the spec passes its ``group_size`` to the layer.
        channel_groups: takes ``channel_groups`` (GN-like statistics over groups of channels).
        moving_averages: keeps moving statistics, so inference can use them or the test batch's
            (``eval_stats``: the trainers' ``--eval-stats``).
        kalman: a Kalman norm: the flow ops predict its prior (``prior_method``, ``--gain``).
        affine: has ``gamma`` (``gamma_initializer``, alias ``gamma_init``, applies) and ``beta``.
        weight_norm: normalises the conv/dense kernels (``flow.conv2d`` applies it).
        step_warmup: has a schedule in training steps that the trainers size to the run (BRN).
        updates_per_layer: the moving-average update ops one layer adds to UPDATE_OPS in the first
            training tower (BN: mean and variance; EvoNorm-B0: the variance; MABN: its second
            moment, step counter and window); 0 without moving averages.
        centered_weights: the convs centre their kernels per output channel (MABN's weight
            centralisation; ``flow.conv2d`` applies it).  Weight Standardization, which composes
            with every norm, is the spec's option ``weight_standardization``, not a row.
        folds_at_inference: at inference (with moving statistics where the norm keeps them) the
            layer is y = a·x + b per channel with a, b fixed by its variables, so it folds into the
            preceding conv's kernel and bias; False where a or b depends on the input (per-sample
            statistics) or the layer applies a nonlinearity of its own.  Each row says why.
        fused_activation: the layer's nonlinearity is part of it (it replaces BN + ReLU) and its
            option ``nonlinearity=False`` leaves it out; ``flow.norm(..., activation=False)``, for a
            layer whose output enters a residual sum, builds it so, as the papers' nets do.
    """
    name: str
    layer: Callable
    check_options: Callable
    description: str
    reference: str
    group_size: bool = False
    channel_groups: bool = False
    moving_averages: bool = False
    kalman: bool = False
    affine: bool = True
    weight_norm: bool = False
    step_warmup: bool = False
    updates_per_layer: int = 0
    centered_weights: bool = False
    folds_at_inference: bool = False
    fused_activation: bool = False


_REGISTRY = Registry('normalization', Norm)


def register_norm(norm):
    """Add a row; a name is registered once."""
    return _REGISTRY.register(norm)


def get_norm(name):
    """The registry row of ``name``; one line naming the choices for an unknown one."""
    return _REGISTRY.get(name)


def norm_names():
    """Every registered name, in registration order."""
    return _REGISTRY.names()


def norms_where(trait, value=True, names: Optional[tuple] = None):
    """The names whose row has ``trait == value``, e.g. ``norms_where('moving_averages')``."""
    return tuple(n for n in (names or norm_names()) if getattr(_REGISTRY.get(n), trait) == value)


for _row in [
    Norm('bn', MicroBatchNorm, check_micro_batch_norm_options,
         'Batch Normalization over micro-batch groups', 'Ioffe & Szegedy 2015',
         group_size=True, moving_averages=True, updates_per_layer=2,
         folds_at_inference=True),      # γ(x − µ_EMA)/√(σ²_EMA + ε) + β
    Norm('bkn', BatchKalmanNorm, check_batch_kalman_norm_options,
         'Batch Kalman Normalization (Eq. 7)', 'Wang et al. 2018',
         group_size=True, moving_averages=True, updates_per_layer=2, kalman=True,
         folds_at_inference=True),      # BN's formula with the posterior's moving averages (option A)
    Norm('gn', GroupNorm, check_group_norm_options,
         'Group Normalization', 'Wu & He 2018', channel_groups=True),   # per-sample statistics: no fold
    Norm('gkn', GroupKalmanNorm, check_group_kalman_norm_options,
         'Group Kalman Normalization (Sect. 3.3)', 'Wang et al. 2018',
         group_size=True, channel_groups=True, kalman=True),   # per-sample group statistics: no fold
    Norm('brn', MicroBatchRenorm, check_micro_batch_renorm_options,
         'Batch Renormalization over micro-batch groups', 'Ioffe 2017',
         group_size=True, moving_averages=True, updates_per_layer=2, step_warmup=True,
         folds_at_inference=True),      # BN's formula with the moving µ, σ (r, d are training-only)
    Norm('ln', LayerNormalization, check_layer_normalization_options,
         'Layer Normalization', 'Ba et al. 2016'),   # per-sample statistics: no fold
    Norm('wn', BiasOnly, check_bias_only_options,
         'Weight Normalization of conv/dense kernels (+ bias)', 'Salimans & Kingma 2016',
         affine=False, weight_norm=True,
         folds_at_inference=True),      # x + β; g·v/‖v‖ is a function of the weights alone
    Norm('none', BiasOnly, check_bias_only_options,
         'no normalization (+ bias)', '-', affine=False, folds_at_inference=True),   # x + β
]:
    register_norm(_row)


# the micro-batch field beside KN: layers in kalman_norm/layers/field_norms.py, mabn.py
for _row in [
    # ν² per sample and the TLU max(y, τ): no fold
    Norm('frn', FilterResponseNorm, check_filter_response_norm_options,
         'Filter Response Normalization + TLU (replaces BN + ReLU)', 'Singh & Krishnan 2020', fused_activation=True),
    # per-sample group std and sigmoid(v·x): no fold
    Norm('evonorm_s0', EvoNormS0, check_evonorm_s0_options,
         'EvoNorm-S0: x sigmoid(vx) / group std (replaces BN + ReLU)', 'Liu et al. 2020', channel_groups=True,
         fused_activation=True),
    # max(moving std, v·x + instance std) depends on x per sample: no fold
    Norm('evonorm_b0', EvoNormB0, check_evonorm_b0_options,
         'EvoNorm-B0: x / max(batch std, vx + instance std) over micro-batch groups (replaces BN + ReLU)',
         'Liu et al. 2020', group_size=True, moving_averages=True, updates_per_layer=1, fused_activation=True),
    Norm('mabn', MovingAverageBatchNorm, check_moving_average_batch_norm_options,
         'Moving Average Batch Normalization over micro-batch groups, centred conv kernels', 'Yan et al. 2020',
         group_size=True, moving_averages=True, updates_per_layer=3, centered_weights=True,
         folds_at_inference=True),      # γ·x/√(χ_EMA + ε) + β; the centred kernel depends on weights alone
]:
    register_norm(_row)
