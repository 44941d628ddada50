"""Validation of the layers' options, one clear message per bad value, before any graph is built.

Every layer module defines a ``check_<layer>_options(**options)`` function from the checks
here.  The layer calls it first thing with all its options, and :class:`kalman_norm.NormSpec`
calls it with the options a user gave by name (a config file, ``--norm-option``), so that a bad
value fails when the spec is made, not halfway through building a model.  A checker validates
only the options it is given; which option names a layer accepts at all is the spec's business
(it reads the layer's signature).
"""
import math
import numbers

from ..data_format import canonical_data_format
from ._common import EVAL_STATS, GAMMA_TWICE, check_gamma_initializer

__all__ = ['check_options', 'layer_options', 'check_bool', 'check_positive', 'check_number',
           'check_choice', 'check_momentum', 'check_group_size', 'check_training', 'check_data_format',
           'EMA_UPDATES', 'COMMON_CHECKS', 'BATCH_STAT_CHECKS']

#: tensorpack's BatchNorm values of ``ema_update`` ('default' = 'collection')
EMA_UPDATES = ('default', 'collection', 'internal', 'skip')


def _is_number(value):
    # bool is an int subclass: True must not pass as 1
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def check_number(name, value):
    if not _is_number(value) or not math.isfinite(value):
        raise ValueError('%s must be a finite number, got %r' % (name, value))


def check_positive(name, value):
    if not _is_number(value) or not math.isfinite(value) or not value > 0:
        raise ValueError('%s must be a number > 0, got %r' % (name, value))


def check_bool(name, value):
    # a string such as 'False' from a config file is truthy: refuse it instead of guessing
    if not isinstance(value, bool):
        raise ValueError('%s must be True or False, got %r' % (name, value))


def check_choice(name, value, choices):
    if not isinstance(value, str) or value not in choices:
        raise ValueError('%s must be one of %s, got %r' % (name, choices, value))


def check_momentum(value):
    if not _is_number(value) or not 0.0 <= value < 1.0:
        raise ValueError('momentum must be in [0, 1), got %r' % (value,))


def check_group_size(value):
    if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 1):
        raise ValueError('group_size must be a positive integer or None, got %r' % (value,))


def check_training(value):
    if value is not None and not isinstance(value, bool):
        raise ValueError('training must be None (follow the tower) or True/False, got %r' % (value,))


def check_data_format(value):
    if value is not None:
        canonical_data_format(value)


def _check_eval_stats(value):
    check_choice('eval_stats', value, EVAL_STATS)


def _check_ema_update(value):
    if not isinstance(value, str) or value not in EMA_UPDATES:
        raise ValueError("ema_update must be 'default', 'collection', 'internal' or 'skip', got %r" % (value,))


#: options every feature-normalising layer has
COMMON_CHECKS = {
    'epsilon': lambda v: check_positive('epsilon', v),
    'center': lambda v: check_bool('center', v),
    'scale': lambda v: check_bool('scale', v),
    'gamma_init': lambda v: check_gamma_initializer('gamma_init', v),
    'gamma_initializer': lambda v: v is None or check_gamma_initializer('gamma_initializer', v),
    'data_format': check_data_format,
}

#: options of the layers with batch statistics and moving averages (BN, BRN, BKN)
BATCH_STAT_CHECKS = dict(COMMON_CHECKS, **{
    'group_size': check_group_size,
    'eval_stats': _check_eval_stats,
    'momentum': check_momentum,
    'training': check_training,
    'ema_update': _check_ema_update,
    'unbiased_variance': lambda v: check_bool('unbiased_variance', v),
})


def check_options(options, checks):
    """Run ``checks[name](value)`` for every given option that has a check."""
    if 'gamma_initializer' in checks and options.get('gamma_initializer') is not None and 'gamma_init' in options:
        raise ValueError(GAMMA_TWICE)
    for name, value in options.items():
        if name in checks:
            checks[name](value)


def layer_options(local_vars, inputs=('x', 'prior')):
    """A layer's options from its ``locals()`` taken first thing in its body (inputs left out)."""
    return {k: v for k, v in local_vars.items() if k not in inputs}
