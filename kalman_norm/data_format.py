"""The default data format of the flow ops and the normalization layers.

This module sits below both :mod:`kalman_norm.flow` and :mod:`kalman_norm.layers` (it imports
neither), so that the layers can read the default that ``flow.data_format_scope(...)`` sets without a
circular import.
"""
import contextlib
import threading

__all__ = ['DATA_FORMATS', 'canonical_data_format', 'default_data_format', 'data_format_scope']

DATA_FORMATS = ('NHWC', 'NCHW', 'channels_last', 'channels_first')

_state = threading.local()


def _active_formats():
    """This thread's data format scopes, innermost last; the bottom entry is the default outside
    every scope.  Per thread, as the norm scopes (kalman_norm.spec): towers built in two threads
    must not see each other's format."""
    if not hasattr(_state, 'formats'):
        _state.formats = ['NHWC']
    return _state.formats


def canonical_data_format(data_format):
    """'NHWC' or 'NCHW' for any accepted spelling; None means the current default."""
    if data_format is None:
        data_format = default_data_format()
    if data_format not in DATA_FORMATS:
        raise ValueError("Unknown data_format %r; use 'NHWC' (channels_last) or 'NCHW' (channels_first)"
                         % (data_format,))
    return {'channels_last': 'NHWC', 'channels_first': 'NCHW'}.get(data_format, data_format)


def default_data_format():
    """The data format of the innermost :func:`data_format_scope` ('NHWC' outside any)."""
    return _active_formats()[-1]


@contextlib.contextmanager
def data_format_scope(data_format):
    """Make ``data_format`` the default of the flow ops and norm layers inside the block."""
    formats = _active_formats()
    formats.append(canonical_data_format(data_format))
    try:
        yield
    finally:
        formats.pop()
