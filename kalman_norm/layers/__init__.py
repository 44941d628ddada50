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
