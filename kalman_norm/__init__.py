"""kalman_norm: Kalman Normalization (Wang et al., NeurIPS 2018) for TensorFlow / Tensorpack.

Importing this package sets ``TF_USE_LEGACY_KERAS=1`` (tensorpack needs Keras 2) before
TensorFlow is imported, checks the stack, and restores the NumPy aliases tensorpack 0.11 uses.

Quick use inside a tensorpack model::

    import kalman_norm as kn
    from kalman_norm import flow as F
    with kn.norm_scope('bkn', group_size=2):
        x = F.conv2d('conv1', image, 16, 3)
        x = F.relu(F.norm('bn1', x))
        x = F.conv2d('conv2', x, 16, 3)     # its prior is predicted from bn1's estimate
        x = F.relu(F.norm('bn2', x))

KN's defaults are this package's recipe; the paper's and the authors' are one keyword away:
``kn.norm_scope('bkn', group_size=2, **kn.KN_RECIPES['paper'])`` (see :data:`KN_RECIPES`).
"""
from ._stack import StackError, check_stack, prepare_environment

prepare_environment()
check_stack()

from . import compat  # noqa: E402

compat.apply_all()

from .norms import Norm, get_norm, norm_names, register_norm  # noqa: E402,F401
from .spec import KN_RECIPES, NORMS, NormSpec, current_norm, norm_scope  # noqa: E402,F401
from .estimate import Estimate, get_estimate, set_estimate  # noqa: E402,F401
from . import flow  # noqa: E402,F401

__version__ = "0.1.0"
