"""Normalization layers (tensorpack ``@layer_register`` layers, graph mode).

Every layer has a ``check_<layer>_options(**options)`` function next to it, which validates
options by name before anything is built (:class:`kalman_norm.NormSpec` calls it).
"""
from .baselines import (BiasOnly, GroupNorm, LayerNormalization, MicroBatchNorm,  # noqa: F401
                        MicroBatchRenorm, renorm_clip_schedule, weight_normalize,
                        check_bias_only_options, check_group_norm_options,
                        check_layer_normalization_options, check_micro_batch_norm_options,
                        check_micro_batch_renorm_options)
from .kalman import (NOISE_PARAMS, PROPAGATE_MODES, PRIOR_SOURCES, kn_diagnostics, BatchKalmanNorm,  # noqa: F401
                     GroupKalmanNorm, KNDiagnostic, kalman_update, check_batch_kalman_norm_options,
                     check_group_kalman_norm_options)
from .field_norms import (EvoNormB0, EvoNormS0, FilterResponseNorm, center_weights,  # noqa: F401
                          check_evonorm_b0_options, check_evonorm_s0_options,
                          check_filter_response_norm_options, fused_activation_linear, weight_standardize)
from .mabn import (MABN_HISTORY_MODES, MovingAverageBatchNorm,  # noqa: F401
                   check_moving_average_batch_norm_options)
