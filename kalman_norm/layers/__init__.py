"""Normalization layers (tensorpack ``@layer_register`` layers, graph mode)."""
from .baselines import (BiasOnly, GroupNorm, LayerNormalization, MicroBatchNorm,  # noqa: F401
                        MicroBatchRenorm, renorm_clip_schedule, weight_normalize)
from .kalman import (PROPAGATE_MODES, kn_diagnostics, BatchKalmanNorm, GroupKalmanNorm,  # noqa: F401
                     KNDiagnostic, kalman_update)
