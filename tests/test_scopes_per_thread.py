"""The defaults that scopes set (the norm of kalman_norm.norm_scope, the data format of
flow.data_format_scope) are per thread, so towers built in two threads never see each other's."""
import threading

import kalman_norm as kn
from kalman_norm import flow as F
from kalman_norm.data_format import default_data_format


def _in_thread(fn):
    out = []
    t = threading.Thread(target=lambda: out.append(fn()))
    t.start()
    t.join()
    return out[0]


def test_data_format_scope_is_per_thread():
    with F.data_format_scope('channels_first'):
        assert default_data_format() == 'NCHW'
        assert _in_thread(default_data_format) == 'NHWC'

        def nested():
            with F.data_format_scope('NHWC'):
                return default_data_format()
        assert _in_thread(nested) == 'NHWC'
        assert default_data_format() == 'NCHW'
    assert default_data_format() == 'NHWC'


def test_norm_scope_is_per_thread():
    with kn.norm_scope('gn', channel_groups=4):
        assert kn.current_norm().kind == 'gn'
        assert _in_thread(lambda: kn.current_norm(required=False)) is None
    assert kn.current_norm(required=False) is None


def test_one_word_one_meaning():
    # 'layout' is a tensor's axes (layers._common.Layout); the default data format has its own name
    assert not hasattr(F, 'layout') and F.data_format_scope is not None
