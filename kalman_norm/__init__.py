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
import importlib.abc
import importlib.util
import os
import sys

from ._environment import StackError, check_installed, check_stack, prepare_environment

prepare_environment()
check_installed()
if 'tensorflow' in sys.modules:
    # imported before this package: it may have bound Keras 3, which tensorpack cannot use
    check_stack()

from . import compat  # noqa: E402

compat.apply_all()


class _CheckoutModels(importlib.abc.MetaPathFinder):
    """``kalman_norm.models`` of a source checkout (setup.py beside this package) is the checkout's
    own ``models/``, as setup.py's package_dir maps it.  Without this, a checkout imported through
    PYTHONPATH (a fixed-commit worktree running a campaign) would take the models of whichever
    editable install the interpreter has: code of another commit, silently."""

    def __init__(self, folder):
        self.folder = folder

    def find_spec(self, name, path=None, target=None):
        if name != __name__ + '.models':
            return None
        return importlib.util.spec_from_file_location(name, os.path.join(self.folder, '__init__.py'),
                                                      submodule_search_locations=[self.folder])


_CHECKOUT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if (os.path.isfile(os.path.join(_CHECKOUT, 'setup.py'))
        and os.path.isfile(os.path.join(_CHECKOUT, 'models', 'registry.py'))
        and not any(isinstance(f, _CheckoutModels) for f in sys.meta_path)):
    sys.meta_path.insert(0, _CheckoutModels(os.path.join(_CHECKOUT, 'models')))

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
