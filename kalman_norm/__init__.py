"""kalman_norm: Kalman Normalization (Wang et al., NeurIPS 2018) for TensorFlow / Tensorpack.

Importing this package sets ``TF_USE_LEGACY_KERAS=1`` (tensorpack needs Keras 2) before
TensorFlow is imported, checks that the stack is installed, and restores the NumPy aliases
tensorpack 0.11 uses; TensorFlow itself loads with the first name that needs it.

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
import importlib
import importlib.util
import sys

from ._environment import StackError, check_installed, check_stack, prepare_environment

prepare_environment()
check_installed()
if 'tensorflow' in sys.modules:
    # imported before this package: it may have bound Keras 3, which tensorpack cannot use
    check_stack()

from . import compat  # noqa: E402

compat.apply_all()

__version__ = "0.1.0"

#: what ``kalman_norm.<name>`` gives, imported on first use: the modules behind them import
#: TensorFlow, which ``import kalman_norm`` alone does not (the trainers check their command lines
#: first; kalman_norm.train.command_line)
_LAZY = {'Norm': 'norms', 'get_norm': 'norms', 'norm_names': 'norms', 'register_norm': 'norms',
         'KN_RECIPES': 'spec', 'NORMS': 'spec', 'NormSpec': 'spec', 'current_norm': 'spec', 'norm_scope': 'spec',
         'Estimate': 'estimate', 'get_estimate': 'estimate', 'set_estimate': 'estimate'}


def __getattr__(name):
    if name in _LAZY:
        check_stack()
        value = getattr(importlib.import_module('.' + _LAZY[name], __name__), name)
    elif importlib.util.find_spec('.' + name, __name__) is not None:
        check_stack()
        value = importlib.import_module('.' + name, __name__)      # a submodule: kalman_norm.flow
    else:
        raise AttributeError("module 'kalman_norm' has no attribute %r" % name)
    globals()[name] = value
    return value


def __dir__():
    return sorted(set(globals()) | set(_LAZY) | {'flow'})
