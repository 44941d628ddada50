"""Tests of kalman_norm.spec (NormSpec / norm_scope / F.norm dispatch), kalman_norm.compat
(NumPy 2 aliases for tensorpack 0.11) and kalman_norm._environment (the stack check)."""
import importlib.metadata
import inspect
import itertools
import os
import types

import numpy as np
import pytest

import kalman_norm
import tensorflow as tf
from tensorpack.tfutils.tower import TowerContext

from kalman_norm import KN_RECIPES, NORMS, NormSpec, compat, current_norm, norm_scope
from kalman_norm import _environment
from kalman_norm import flow as F
from kalman_norm.layers import (BatchKalmanNorm, BiasOnly, GroupKalmanNorm, GroupNorm, LayerNormalization,
                                MicroBatchNorm, MicroBatchRenorm, kn_diagnostics)

from kalman_norm.norms import norms_where

tf1 = tf.compat.v1
BATCH_NORMS = norms_where('group_size')


# =================================================================== NormSpec validation

def test_norms_are_the_documented_twelve():
    assert set(NORMS) == {'bn', 'bkn', 'gn', 'gkn', 'brn', 'ln', 'wn', 'none',
                          'frn', 'evonorm_s0', 'evonorm_b0', 'mabn'}


def test_unknown_norm_lists_the_valid_names():
    with pytest.raises(ValueError) as err:
        NormSpec('batchnorm')
    msg = str(err.value)
    assert "'batchnorm'" in msg
    for name in NORMS:
        assert name in msg


def test_unknown_options_are_rejected_by_name():
    with pytest.raises(ValueError) as err:
        NormSpec('bn', momentm=0.9, bogus=1)
    assert 'bogus' in str(err.value) and 'momentm' in str(err.value)
    assert 'momentum' in str(err.value)            # lists what the layer accepts
    # an option of another norm does not apply
    with pytest.raises(ValueError, match='gain'):
        NormSpec('gn', gain=0.5)
    with pytest.raises(ValueError, match='channel_groups'):
        NormSpec('bkn', channel_groups=8)
    # 'none' accepts nothing but data_format
    with pytest.raises(ValueError, match='epsilon'):
        NormSpec('none', epsilon=1e-3)


def test_valid_options_are_accepted():
    assert NormSpec('bkn', group_size=2, gain='learned', process_noise=False).options == \
        {'gain': 'learned', 'process_noise': False}
    assert NormSpec('gkn', group_size=2, channel_groups=8).options == {'channel_groups': 8}
    assert NormSpec('brn', rmax=2.0, dmax=1.0, warmup=None).options['warmup'] is None


@pytest.mark.parametrize('bad', [0, -2, 2.0, '2', True, [2]])
def test_group_size_validation(bad):
    with pytest.raises(ValueError, match='group_size'):
        NormSpec('bn', group_size=bad)


@pytest.mark.parametrize('kind', NORMS)
def test_group_size_is_allowed_for_every_norm(kind):
    """One command line serves every norm: group_size is ignored by the batch-independent ones."""
    spec = NormSpec(kind, group_size=2)
    assert spec.group_size == 2
    assert NormSpec(kind).group_size is None


def test_prior_method_and_samples_validation():
    assert NormSpec('bkn', prior_method='mc', prior_samples=3).prior_samples == 3
    with pytest.raises(ValueError, match='prior method') as err:
        NormSpec('bkn', prior_method='sampled')
    assert 'analytic' in str(err.value) and 'mc' in str(err.value)
    for bad in (0, -1, 1.5, None):
        with pytest.raises(ValueError, match='prior_samples'):
            NormSpec('bkn', prior_method='mc', prior_samples=bad)


#: (kind, options, message): every bad value is refused when the spec is made, by the layer's
#: own check_*_options function, with a one-line message naming the option
BAD_OPTION_VALUES = [
    ('bn', {'epsilon': 0}, r'epsilon must be a number > 0, got 0'),
    ('bkn', {'epsilon': -1e-5}, r'epsilon must be a number > 0'),
    ('gn', {'epsilon': float('nan')}, r'epsilon must be a number > 0'),
    ('ln', {'epsilon': '1e-5'}, r'epsilon must be a number > 0'),
    ('bn', {'momentum': 1.0}, r'momentum must be in \[0, 1\), got 1.0'),
    ('brn', {'momentum': -0.1}, r'momentum must be in \[0, 1\)'),
    ('bkn', {'momentum': '0.9'}, r'momentum must be in \[0, 1\)'),
    ('bkn', {'guard_ratio': 1.0}, r'guard_ratio must be None \(no guard\) or a number > 1, got 1.0'),
    ('gkn', {'guard_ratio': 0.5}, r'guard_ratio must be None'),
    ('bkn', {'guard_ratio': 'off'}, r'guard_ratio must be None'),
    ('bkn', {'noise_init': 0.0}, r'noise_init must be a number > 0, got 0.0'),
    ('gkn', {'noise_init': -1e-3}, r'noise_init must be a number > 0'),
    ('bkn', {'noise_param': 'log'}, r"noise_param must be one of \('relative', 'softplus'\), got 'log'"),
    ('bkn', {'process_noise': 'False'}, r"process_noise must be True or False, got 'False'"),
    ('gkn', {'process_noise': 0}, r'process_noise must be True or False, got 0'),
    ('bkn', {'pooled_variance': 'True'}, r"pooled_variance must be True or False, got 'True'"),
    ('bn', {'center': 'False'}, r"center must be True or False, got 'False'"),
    ('ln', {'scale': 1}, r'scale must be True or False, got 1'),
    ('gkn', {'center': None}, r'center must be True or False'),
    ('bkn', {'propagate': 'posterior'}, r"propagate must be one of \('input', 'output'\), got 'posterior'"),
    ('gkn', {'propagate': None}, r'propagate must be one of'),
    ('gn', {'channel_groups': 0}, r'channel_groups must be a positive integer, got 0'),
    ('gkn', {'channel_groups': 2.0}, r'channel_groups must be a positive integer, got 2.0'),
    ('gn', {'channel_groups': True}, r'channel_groups must be a positive integer, got True'),
    ('bkn', {'gain': 1.5}, r'gain must be in \[0, 1\], got 1.5'),
    ('bkn', {'gain': True}, r"gain must be a number in \[0, 1\] or 'learned', got True"),
    ('bkn', {'gain': '0.1'}, r"gain must be a number in \[0, 1\] or 'learned'"),
    ('gkn', {'gain': 'learned', 'gain_init': 1.0}, r'gain_init must be in \(0, 1\)'),
    ('bkn', {'gain_init': 0.0}, r'gain_init must be in \(0, 1\)'),
    ('bn', {'eval_stats': 'online'}, r"eval_stats must be one of \('moving', 'batch'\), got 'online'"),
    ('bn', {'ema_update': 'always'}, r"ema_update must be .*got 'always'"),
    ('bkn', {'training': 'yes'}, r"training must be None \(follow the tower\) or True/False, got 'yes'"),
    ('bn', {'gamma_init': 'one'}, r"gamma_init must be a finite number or an initializer .*, got 'one'"),
    ('brn', {'rmax': 0.5}, r'rmax >= 1, got rmax=0.5'),
    ('brn', {'dmax': -1}, r'dmax >= 0, got dmax=-1'),
    ('brn', {'warmup': (10, 5, 20)}, r'renorm warmup must be None or \(start, rmax_end, dmax_end\)'),
    ('brn', {'warmup': 100}, r'renorm warmup must be'),
    ('none', {'data_format': 'NWHC'}, r"Unknown data_format 'NWHC'"),
    ('bn', {'data_format': 'nhwc'}, r"Unknown data_format 'nhwc'"),
]


@pytest.mark.parametrize('kind,options,match', BAD_OPTION_VALUES,
                         ids=['%s-%s' % (k, '-'.join(o)) for k, o, _ in BAD_OPTION_VALUES])
def test_bad_option_values_are_refused_when_the_spec_is_made(kind, options, match):
    with pytest.raises(ValueError, match=match) as err:
        NormSpec(kind, **options)
    assert '\n' not in str(err.value)
    # and by the layer itself, before it creates anything, when called directly
    layer = {'bn': MicroBatchNorm, 'bkn': BatchKalmanNorm, 'gn': GroupNorm, 'gkn': GroupKalmanNorm,
             'brn': MicroBatchRenorm, 'ln': LayerNormalization, 'none': BiasOnly}[kind]
    graph = tf.Graph()
    with graph.as_default(), TowerContext('', is_training=True):
        with pytest.raises(ValueError, match=match):
            layer('L', tf.zeros([4, 3, 3, 8]), **options)
        assert tf1.global_variables() == []


def test_good_option_values_pass_the_checks():
    NormSpec('bkn', epsilon=1e-3, momentum=0.0, guard_ratio=None, noise_init=0.5, noise_param='softplus',
             process_noise=False, pooled_variance=False, center=False, scale=True, propagate='output',
             gain=1, gain_init=0.5, training=False, gamma_init=0, ema_update='internal', data_format='NCHW')
    NormSpec('gkn', channel_groups=8, guard_ratio=1.5, noise_init=None, gain='learned')
    NormSpec('brn', rmax=1, dmax=0, warmup=[0, 0, 0])
    NormSpec('gn', channel_groups=64)          # capped at the channel count when built


def test_propagates_and_weight_norm_flags():
    assert [k for k in NORMS if NormSpec(k).propagates] == ['bkn', 'gkn']
    assert [k for k in NORMS if NormSpec(k).weight_norm] == ['wn']


def test_replace_copies_and_validates():
    spec = NormSpec('bkn', group_size=2, gain=0.2)
    other = spec.replace(gain='learned', prior_method='mc')
    assert other is not spec
    assert other.kind == 'bkn' and other.group_size == 2
    assert other.options == {'gain': 'learned'} and other.prior_method == 'mc'
    assert spec.options == {'gain': 0.2} and spec.prior_method == 'analytic'   # unchanged
    assert spec.replace(group_size=None).group_size is None
    with pytest.raises(ValueError, match='bogus'):
        spec.replace(bogus=1)
    with pytest.raises(ValueError, match='group_size'):
        spec.replace(group_size=0)


def test_repr():
    assert repr(NormSpec('bn', group_size=2)) == "NormSpec('bn', group_size=2)"
    assert repr(NormSpec('bkn', group_size=2, gain='learned', eval_stats='batch')) == \
        "NormSpec('bkn', group_size=2, prior_method='analytic', eval_stats='batch', gain='learned')"
    assert repr(NormSpec('gkn', prior_method='mc', prior_samples=4)) == \
        "NormSpec('gkn', group_size=None, prior_method='mc', prior_samples=4)"
    # the repr of a spec rebuilds an equal spec
    spec = NormSpec('brn', group_size=4, rmax=2.0)
    rebuilt = eval(repr(spec), {'NormSpec': NormSpec})
    assert repr(rebuilt) == repr(spec)


# =================================================================== norm_scope

def test_norm_scope_nesting_inner_wins_and_outer_is_restored():
    assert current_norm(required=False) is None
    with norm_scope('bn', group_size=2) as outer:
        assert current_norm() is outer
        with norm_scope('gn') as inner:
            assert current_norm() is inner and current_norm().kind == 'gn'
            with norm_scope(outer) as again:       # re-entering a spec pushes it again
                assert current_norm() is outer is again
            assert current_norm() is inner
        assert current_norm() is outer
    assert current_norm(required=False) is None


def test_norm_scope_is_restored_after_an_exception():
    with pytest.raises(KeyError):
        with norm_scope('bn'):
            with norm_scope('ln'):
                raise KeyError('boom')
    assert current_norm(required=False) is None


def test_norm_scope_from_a_spec_with_overrides():
    spec = NormSpec('bkn', group_size=2)
    changed = norm_scope(spec, gain='learned')
    assert changed is not spec and changed.options == {'gain': 'learned'} and changed.group_size == 2
    assert norm_scope(spec) is spec


def test_norm_outside_a_scope_raises_with_the_fix():
    with tf.Graph().as_default(), TowerContext('', is_training=True):
        with pytest.raises(RuntimeError, match='norm_scope'):
            F.norm('bn', tf.zeros([2, 4, 4, 8]))
        with pytest.raises(RuntimeError):
            current_norm()


# =================================================================== F.norm dispatch

def _two_layers(kind, batch=4, channels=16, x=None, norm_overrides=None, **options):
    """conv → norm 'n1' → ReLU → conv → norm 'n2' under norm_scope(kind); returns (graph, {var: shape}, out)."""
    graph = tf.Graph()
    with graph.as_default(), TowerContext('', is_training=True):
        if x is None:
            x = tf.constant(np.random.RandomState(0).randn(batch, 6, 6, 3).astype(np.float32))
        with norm_scope(kind, **options):
            y = F.relu(F.norm('n1', F.conv2d('conv1', x, channels, 3)))
            out = F.norm('n2', F.conv2d('conv2', y, channels, 3), **(norm_overrides or {}))
        variables = {v.op.name: v.shape.as_list() for v in tf1.global_variables()}
    return graph, variables, out


def _layer_vars(variables, layer):
    return {name[len(layer) + 1:] for name in variables if name.startswith(layer + '/')}


#: second layer's variables (it has a prior under the KN norms; by default no R, no learned q)
EXPECTED_VARS = {
    'bn': {'gamma', 'beta', 'mean/EMA', 'variance/EMA'},
    'bkn': {'gamma', 'beta', 'mean/EMA', 'variance/EMA'},
    'gn': {'gamma', 'beta'},
    'gkn': {'gamma', 'beta'},
    'brn': {'gamma', 'beta', 'mean/EMA', 'variance/EMA', 'stddev/EMA'},   # sigma: Algorithm 1
    'ln': {'gamma', 'beta'},
    'wn': {'beta'},
    'none': {'beta'},
    'frn': {'gamma', 'beta', 'tau'},
    'evonorm_s0': {'gamma', 'beta', 'v'},
    'evonorm_b0': {'gamma', 'beta', 'v', 'variance/EMA'},
    'mabn': {'gamma', 'beta', 'variance/EMA', 'step_count', 'x2_history', 'gz_history', 'device_moment'},
}


@pytest.mark.parametrize('kind', NORMS)
def test_norm_dispatches_to_the_layer_of_the_scope(kind):
    opts = {'group_size': 2} if kind in BATCH_NORMS else {}
    graph, variables, out = _two_layers(kind, **opts)
    assert _layer_vars(variables, 'n2') == EXPECTED_VARS[kind]
    assert out.shape.as_list() == [4, 6, 6, 16]
    # weight normalization lives in the convs: F.conv2d creates the gain wn_g only under 'wn'
    assert ('conv2/wn_g' in variables) == (kind == 'wn')
    assert variables['conv2/W'] == [3, 3, 16, 16]
    with graph.as_default():
        ops = [op.name for op in graph.get_operations() if op.name.startswith('n2/')]
        # Batch Renorm's clipped correction r, d; only in 'brn' and MABN's renormalising r (Sect. 4.3)
        assert any('clip_by_value' in name for name in ops) == (kind in ('brn', 'mabn'))
        # only KN layers record diagnostics (the second layer, which has a prior)
        assert [d.layer for d in kn_diagnostics()] == (['n2'] if kind in ('bkn', 'gkn') else [])


def _run(graph, tensor):
    with graph.as_default(), tf1.Session() as sess:
        sess.run(tf1.global_variables_initializer())
        return sess.run(tensor)


def test_gn_and_ln_normalize_over_different_sets():
    """GN (16 channels, channel_groups capped at 16: one channel per group) zeroes every sample's
    per-channel mean; LN only every sample's mean over all channels and positions."""
    gn_graph, _, gn = _two_layers('gn', channels=16)
    ln_graph, _, ln = _two_layers('ln', channels=16)
    gn, ln = _run(gn_graph, gn), _run(ln_graph, ln)
    np.testing.assert_allclose(gn.mean(axis=(1, 2)), 0, atol=1e-4)
    np.testing.assert_allclose(ln.mean(axis=(1, 2, 3)), 0, atol=1e-4)
    assert np.abs(ln.mean(axis=(1, 2))).max() > 1e-2


def test_bn_group_size_reaches_the_layer():
    """bn with group_size=2: each pair of samples is normalised on its own."""
    graph, _, out = _two_layers('bn', group_size=2)
    out = _run(graph, out).reshape(2, 2, 6, 6, 16)
    np.testing.assert_allclose(out.mean(axis=(1, 2, 3)), 0, atol=1e-4)
    with pytest.raises(ValueError, match='group_size=3'):
        _two_layers('bn', group_size=3)           # 4 samples are not groups of 3
    with pytest.raises(ValueError, match='group_size=3'):
        _two_layers('bkn', group_size=3)


def test_spec_options_reach_the_layer():
    _, variables, _ = _two_layers('bkn', group_size=2, gain='learned')
    assert 'gain_logit' in _layer_vars(variables, 'n2')
    _, variables, _ = _two_layers('bkn', group_size=2, process_noise=True)
    assert 'noise_rho' in _layer_vars(variables, 'n2') and 'noise_rho' not in _layer_vars(variables, 'n1')
    _, variables, _ = _two_layers('gkn', group_size=2, process_noise=True, channel_groups=4)
    assert 'noise_rho' in _layer_vars(variables, 'n2')
    _, variables, _ = _two_layers('gkn', group_size=2, gain='learned', channel_groups=4)
    assert 'gain_logit' in _layer_vars(variables, 'n2')
    with pytest.raises(ValueError, match='channel_groups'):
        _two_layers('gn', channels=16, channel_groups=3)      # 16 channels, 3 groups
    # center/scale reach the baselines
    _, variables, _ = _two_layers('ln', scale=False)
    assert _layer_vars(variables, 'n2') == {'beta'}


def test_norm_call_overrides_the_scope_options():
    _, variables, _ = _two_layers('bkn', group_size=2, norm_overrides={'gain': 'learned'})
    assert 'gain_logit' in _layer_vars(variables, 'n2')
    assert 'gain_logit' not in _layer_vars(variables, 'n1')


def test_kn_prior_method_reaches_the_flow_ops():
    """prior_method='mc' samples feature maps in the conv's prediction step (RandomStandardNormal)."""
    counts = {}
    for method in ('analytic', 'mc'):
        graph, _, _ = _two_layers('bkn', group_size=2, prior_method=method)
        counts[method] = sum(op.type == 'RandomStandardNormal' for op in graph.get_operations())
    # (the conv kernels' initialisers sample too, in both graphs)
    assert counts['mc'] > counts['analytic'], counts


# =================================================================== compat: NumPy 2 aliases

def test_numpy_aliases_have_their_old_meaning():
    assert np.float is float
    assert np.object is object
    assert np.int is int
    assert np.dtype(np.float) == np.float64
    for key in ('int', 'uint', 'float', 'complex', 'others'):
        assert key in np.sctypes
    assert np.float32 in np.sctypes['float'] and np.int64 in np.sctypes['int']
    assert np.uint8 in np.sctypes['uint'] and np.complex128 in np.sctypes['complex']


def test_patch_is_idempotent():
    before = (np.float, np.object, np.sctypes)
    assert compat.apply_all() == []
    assert compat.patch_numpy_aliases() == []
    assert (np.float, np.object, np.sctypes) == before
    assert np.float is before[0] and np.sctypes is before[2]


def test_patch_restores_missing_names_only(monkeypatch):
    monkeypatch.delattr(np, 'float')
    monkeypatch.delattr(np, 'sctypes')
    assert not hasattr(np, 'float')
    added = compat.patch_numpy_aliases()
    assert sorted(added) == ['float', 'sctypes']
    assert np.float is float and 'float' in np.sctypes
    assert compat.patch_numpy_aliases() == []
    # names NumPy 2 still defines are left alone
    assert np.bool is np.bool_


def test_tensorpack_imgaug_coordinates_use_np_float():
    """dataflow/image.py validate_coords: np.issubdtype(coords.dtype, np.float)."""
    from tensorpack.dataflow import AugmentImageCoordinates, DataFromList, imgaug
    img = np.arange(4 * 6 * 3, dtype=np.uint8).reshape(4, 6, 3)
    coords = np.array([[1.0, 2.0], [5.0, 0.0]])           # (x, y), float64
    ds = AugmentImageCoordinates(DataFromList([[img, coords]], shuffle=False),
                                 [imgaug.Flip(horiz=True, prob=1.0)])
    ds.reset_state()
    (out_img, out_coords), = list(ds)
    np.testing.assert_array_equal(out_img, img[:, ::-1])
    np.testing.assert_allclose(out_coords, [[6 - 1.0, 2.0], [6 - 5.0, 0.0]])


def test_tensorpack_numpy_serializer_uses_np_object(tmp_path):
    """dataflow/serialize.py NumpySerializer.save: np.asarray(buffer, dtype=np.object)."""
    from tensorpack.dataflow import DataFromList, NumpySerializer
    data = [[np.full((2, 2), i, np.float32), i] for i in range(3)]
    path = str(tmp_path / 'data.npz')
    NumpySerializer.save(DataFromList(data, shuffle=False), path)
    loaded = NumpySerializer.load(path, shuffle=False)
    loaded.reset_state()
    got = list(loaded)
    assert [int(dp[1]) for dp in got] == [0, 1, 2]
    np.testing.assert_array_equal(got[2][0], data[2][0])


def test_tensorpack_print_data_uses_np_sctypes():
    """dataflow/common.py PrintData: itertools.chain(*np.sctypes.values())."""
    from tensorpack.dataflow import DataFromList, PrintData
    data = [[np.float32(1.5), np.zeros((2, 3), np.uint8), [1, 2]] for _ in range(2)]
    ds = PrintData(DataFromList(data, shuffle=False), num=2)
    ds.reset_state()
    assert len(list(ds)) == 2
    msg = ds._analyze_input_data(data[0], 0)
    assert 'float32' in msg and 'with value 1.5' in msg


def test_tensorpack_viz_uses_np_object():
    """utils/viz.py _preprocess_patch_list: plist.dtype != np.object."""
    from tensorpack.utils import viz
    patches = np.random.RandomState(0).randint(0, 255, (4, 5, 5, 3)).astype(np.uint8)
    canvas = viz.stack_patches(patches, nr_row=2, nr_col=2, border=0)
    assert canvas.shape == (10, 10, 3)


# =================================================================== the stack check

def test_legacy_keras_is_set_after_import():
    assert os.environ['TF_USE_LEGACY_KERAS'] == '1'
    assert hasattr(tf1.layers, 'Conv2D')
    assert issubclass(kalman_norm.StackError, ImportError)


def test_check_stack_passes_on_this_stack():
    assert _environment.check_stack() is tf


@pytest.mark.parametrize('missing', sorted(_environment.REQUIRED))
def test_check_stack_names_a_missing_distribution_and_the_fix(monkeypatch, missing):
    real = importlib.metadata.version

    def version(dist):
        if dist == missing:
            raise importlib.metadata.PackageNotFoundError(dist)
        return real(dist)

    monkeypatch.setattr(importlib.metadata, 'version', version)
    with pytest.raises(_environment.StackError) as err:
        _environment.check_stack()
    msg = str(err.value)
    assert missing in msg and 'is not installed' in msg
    assert "pip install 'tensorflow==2.21.*' 'tf-keras==2.21.*' tensorpack==0.11" in msg


def test_check_stack_names_several_missing_distributions(monkeypatch):
    monkeypatch.setattr(_environment, '_version', lambda module: None if module != 'tensorflow' else '2.21.0')
    with pytest.raises(_environment.StackError, match=r'tf-keras, tensorpack, which are not installed.*pip install'):
        _environment.check_stack()


def test_check_stack_warns_on_an_untested_version(monkeypatch):
    real = _environment._version
    monkeypatch.setattr(_environment, '_version', lambda module: '0.10.1' if module == 'tensorpack' else real(module))
    with pytest.warns(UserWarning, match='tensorpack 0.11.*found 0.10.1'):
        _environment.check_stack()


def test_check_stack_detects_keras_3(monkeypatch):
    """tf.compat.v1.layers is missing when TensorFlow was imported with Keras 3."""
    monkeypatch.setattr(tf1, 'layers', types.SimpleNamespace())
    with pytest.raises(_environment.StackError, match='TF_USE_LEGACY_KERAS=1'):
        _environment.check_stack()


@pytest.mark.parametrize('value', ['0', 'false'])
def test_prepare_environment_rejects_legacy_keras_off(monkeypatch, value):
    monkeypatch.setenv('TF_USE_LEGACY_KERAS', value)
    with pytest.raises(_environment.StackError, match='TF_USE_LEGACY_KERAS'):
        _environment.prepare_environment()
    assert os.environ['TF_USE_LEGACY_KERAS'] == value       # left as the user set it


@pytest.mark.parametrize('value', [None, '1', 'true'])
def test_prepare_environment_sets_legacy_keras(monkeypatch, value):
    if value is None:
        monkeypatch.delenv('TF_USE_LEGACY_KERAS', raising=False)
    else:
        monkeypatch.setenv('TF_USE_LEGACY_KERAS', value)
    _environment.prepare_environment()
    assert os.environ['TF_USE_LEGACY_KERAS'] == '1'


def test_sctypes_cover_tensorpack_scalar_check():
    """PrintData's scalar test: a NumPy scalar's type is in the chained sctypes."""
    types_ = list(itertools.chain(*np.sctypes.values()))
    assert type(np.float32(1)) in types_ and type(np.int8(1)) in types_


# =================================================================== KN recipes

def test_kn_recipes_are_the_documented_three():
    assert list(KN_RECIPES) == ['library', 'authors', 'paper']
    assert dict(KN_RECIPES['library']) == dict(
        prior_method='analytic', prior_samples=1, gain=0.1, process_noise=False, pooled_variance=True,
        guard_ratio=100.0, propagate='output')
    # the authors' public CIFAR code: what tests/test_authors_recipe.py checks
    assert dict(KN_RECIPES['authors']) == dict(
        prior_method='mc', prior_samples=1, gain=0.1, process_noise=False, pooled_variance=True,
        guard_ratio=100.0, propagate='input')
    # the paper's text: MC prior, learned q and R, Eq. 7's variance as written, no guard
    assert dict(KN_RECIPES['paper']) == dict(
        prior_method='mc', prior_samples=1, gain='learned', process_noise=True, pooled_variance=False,
        guard_ratio=None, propagate='input')
    with pytest.raises(TypeError):
        KN_RECIPES['paper']['gain'] = 0.5            # read-only: no run changes another's recipe


@pytest.mark.parametrize('layer', [BatchKalmanNorm, GroupKalmanNorm])
def test_library_recipe_is_the_defaults(layer):
    """KN_RECIPES['library'] states the defaults of NormSpec and of both KN layers: one source each,
    held equal here."""
    library = dict(KN_RECIPES['library'])
    spec = inspect.signature(NormSpec).parameters
    assert (spec['prior_method'].default, spec['prior_samples'].default) == (
        library.pop('prior_method'), library.pop('prior_samples'))
    params = inspect.signature(layer).parameters
    assert {k: params[k].default for k in library} == library


#: the second layer's KN variables under each recipe (it has a prior)
RECIPE_VARS = {'library': set(), 'authors': set(), 'paper': {'gain_logit', 'noise_rho'}}


@pytest.mark.parametrize('kind', ['bkn', 'gkn'])
@pytest.mark.parametrize('recipe', list(KN_RECIPES))
def test_a_recipe_is_one_keyword_away(kind, recipe):
    """``norm_scope(kind, group_size=2, **KN_RECIPES[name])`` takes the prior method into the spec,
    the rest into the layers."""
    extra = {'channel_groups': 4} if kind == 'gkn' else {}
    spec = norm_scope(kind, group_size=2, **KN_RECIPES[recipe], **extra)
    assert (spec.prior_method, spec.prior_samples) == (KN_RECIPES[recipe]['prior_method'], 1)
    assert 'prior_method' not in spec.options and spec.options['gain'] == KN_RECIPES[recipe]['gain']
    _, variables, _ = _two_layers(kind, group_size=2, **KN_RECIPES[recipe], **extra)
    kn_vars = _layer_vars(variables, 'n2') - {'gamma', 'beta', 'mean/EMA', 'variance/EMA'}
    assert kn_vars == RECIPE_VARS[recipe]
    # a keyword given beside the recipe's wins over it (the spec's replace)
    assert norm_scope(spec, gain=0.3).options['gain'] == 0.3
