"""Tests of the ImageNet models (kalman_norm/models/resnet_imagenet.py, inception_v2.py).

The real architectures at 1000 classes, on 2 images of 32×32.  Each (architecture, norm) graph
is built once and shared by the tests that look at it (see BUILT for which are built and why):
the graphs build under every norm, KN's prior reaches every KN layer after the stem, the
parameter counts are the paper's Table 2, and a KN training step lowers the loss.  Graph
building dominates the time.
"""
import functools
import importlib.util
import os

import numpy as np
import pytest

import kalman_norm  # noqa: F401  (before tensorflow / tensorpack)
import tensorflow as tf
from tensorpack.models.registry import disable_layer_logging
from tensorpack.tfutils.tower import TowerContext

from kalman_norm.layers import kn_diagnostics
from kalman_norm.models import get_model, model_names
from kalman_norm.models.inception_v2 import MODULES, inception_v2
from kalman_norm.norms import get_norm, norms_where
from kalman_norm.models.resnet_imagenet import BLOCKS_PER_STAGE, resnet_imagenet

from conftest import make_session

tf1 = tf.compat.v1
ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), '..')
BATCH, SIZE, CLASSES = 2, 32, 1000
BATCH_NORMS = norms_where('group_size')          # registry rows
EMA_NORMS = norms_where('moving_averages')
LEARNING_RATE = 0.01

ARCHS = {get_model(name).title: (lambda model: lambda image, num_classes=CLASSES, **kw:
                                  model.make(image, num_classes, **kw))(get_model(name))
         for name in model_names('imagenet')}   # every registered ImageNet model
#: the norm layer on the image: the only one without a KN prior
STEM_NORM = {'ResNet-50': 'bn0', 'ResNet-101': 'bn0', 'Inception-v2': 'conv1/bn'}


def load_script(name):
    spec = importlib.util.spec_from_file_location(name, os.path.join(ROOT, 'scripts', name + '.py'))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


_session = make_session


@functools.lru_cache(maxsize=None)
def forward_graph(arch, norm, **options):
    """Build the training-mode forward graph of ``arch`` under ``norm`` with the norm's defaults, or
    ``options`` (groups of 2 for the batch norms, GN's 32 channel groups; nothing runs).  Returns
    the trainable variables' shapes, the norm layers and their widths, and the KN layers that
    recorded a prior."""
    disable_layer_logging()
    graph = tf.Graph()
    with graph.as_default():
        image = tf.zeros([BATCH, SIZE, SIZE, 3])
        opts = dict({'group_size': 2} if norm in BATCH_NORMS else {}, **options)
        with TowerContext('', is_training=True), kalman_norm.norm_scope(norm, **opts):
            logits = ARCHS[arch](image, num_classes=CLASSES)
        trainable = {v.op.name: v.shape.as_list() for v in tf1.trainable_variables()}
        return {'graph': graph, 'logits_shape': logits.shape.as_list(), 'trainable': trainable,
                'norm_layers': {name.rsplit('/', 1)[0]: shape[0] for name, shape in trainable.items()
                                if name.endswith('/beta')},
                'prior_layers': [d.layer for d in kn_diagnostics(graph)],
                'ema_layers': {v.op.name[:-len('/variance/EMA')] for v in tf1.global_variables()
                               if v.op.name.endswith('/variance/EMA')},
                'num_updates': len(tf1.get_collection(tf1.GraphKeys.UPDATE_OPS))}


@functools.lru_cache(maxsize=None)
def train_run(arch, norm):
    """Build ``arch`` under ``norm`` with its training op and take one SGD step on 2 fixed random
    images.  Returns the loss before and after the step, and the KN priors after it."""
    disable_layer_logging()
    graph = tf.Graph()
    with graph.as_default():
        tf1.set_random_seed(0)
        image = tf.constant(np.random.RandomState(0).randn(BATCH, SIZE, SIZE, 3).astype(np.float32))
        labels = tf.constant([3, 997])
        opts = {'group_size': 2} if norm in BATCH_NORMS else {}
        with TowerContext('', is_training=True), kalman_norm.norm_scope(norm, **opts):
            logits = ARCHS[arch](image, num_classes=CLASSES)
        loss = tf.reduce_mean(tf1.nn.sparse_softmax_cross_entropy_with_logits(labels=labels, logits=logits))
        updates = tf1.get_collection(tf1.GraphKeys.UPDATE_OPS)
        with tf.control_dependencies(updates):
            train_op = tf1.train.GradientDescentOptimizer(LEARNING_RATE).minimize(loss)
        diags = kn_diagnostics()
        with _session(graph) as sess:
            sess.run(tf1.global_variables_initializer())
            # the step's loss is computed before the update, the second run's after it
            before = sess.run([train_op, loss])[1]
            after, priors = sess.run([loss, [(d.prior_mean, d.prior_var) for d in diags]])
    return {'losses': [before, after], 'logits_shape': logits.shape.as_list(),
            'priors': {d.layer: p for d, p in zip(diags, priors)}}


def num_parameters(graph_info):
    return sum(int(np.prod(shape)) for shape in graph_info['trainable'].values())


# ------------------------------------------------------------------ building and training

#: Every (architecture, norm) graph costs 10-90 s of CPU to build (ResNet-101 has 104 norm layers,
#: a KN training graph ~37k ops), so the full matrix with training steps would take ~20 CPU
#: minutes.  Built here: every architecture under BN, GN and BKN (Table 2, the prior chain),
#: GKN's prior chain on ResNet-50 and Inception-v2 (ResNet-101 only repeats ResNet-50's blocks),
#: ResNet-50 under every norm (the models' only norm-dependent code, the zero-init of the last
#: gamma, and every norm layer in a bottleneck net), and one real training step of Inception-v2
#: under BKN (backward through max pools, concatenations and the prior chain).  Every norm layer
#: is trained in the CIFAR nets (tests/test_models.py).
BUILT = sorted({(a, n) for a in ARCHS for n in ('bn', 'gn', 'bkn')}
               | {(a, 'gkn') for a in ('ResNet-50', 'Inception-v2')}
               | {('ResNet-50', n) for n in kalman_norm.NORMS})


@pytest.mark.parametrize('arch,norm', BUILT)
def test_builds(arch, norm):
    info = forward_graph(arch, norm)
    assert info['logits_shape'] == [BATCH, CLASSES]
    row = get_norm(norm)
    # one set of moving-average updates per layer that keeps moving statistics: every norm layer,
    # but for a norm with a fused nonlinearity not those before a residual sum (built without it)
    assert info['num_updates'] == row.updates_per_layer * len(info['ema_layers'])
    if row.moving_averages and not row.fused_activation:
        assert info['ema_layers'] == set(info['norm_layers'])
    assert info['ema_layers'] <= set(info['norm_layers'])
    if norm in ('wn', 'none'):
        assert not any(n.endswith('/gamma') for n in info['trainable'])       # zero-init skipped: no gamma


def test_kn_training_step():
    arch = 'Inception-v2'
    run = train_run(arch, 'bkn')
    assert run['logits_shape'] == [BATCH, CLASSES]
    assert np.all(np.isfinite(run['losses'])), run['losses']
    assert run['losses'][1] < run['losses'][0], run['losses']       # one SGD step on 2 images: it goes down
    channels = forward_graph(arch, 'bkn')['norm_layers']
    assert set(run['priors']) == set(channels) - {STEM_NORM[arch]}
    for layer, (mean, var) in run['priors'].items():
        assert mean.shape == var.shape == (BATCH // 2, channels[layer]), layer
        assert np.all(np.isfinite(mean)) and np.all(np.isfinite(var)) and np.all(var >= 0), layer


# ------------------------------------------------------------------ KN's prior reaches every layer

@pytest.mark.parametrize('arch,norm', [(a, n) for a, n in BUILT if n in ('bkn', 'gkn')])
def test_kn_prior_reaches_every_layer_after_the_stem(arch, norm):
    """No KN layer silently falls back to batch statistics because the chain broke: every norm
    layer but the one on the image records a prior (max pools, concatenations, projection
    shortcuts and residual additions all carry it)."""
    info = forward_graph(arch, norm)
    layers = set(info['norm_layers'])
    assert STEM_NORM[arch] in layers
    assert len(info['prior_layers']) == len(set(info['prior_layers']))
    assert set(info['prior_layers']) == layers - {STEM_NORM[arch]}


def test_norm_layer_counts():
    """ResNet: 1 + 3 per block + 1 per stage (projection); BN-Inception: 3 in the stem, 7 per
    module with a 1×1 branch and a pool projection, 5 in the pass-through modules 3c and 4e."""
    for depth in (50, 101):
        expected = 1 + 3 * sum(BLOCKS_PER_STAGE[depth]) + 4
        assert len(forward_graph('ResNet-%d' % depth, 'bn')['norm_layers']) == expected
    expected = 3 + sum(2 + bool(m.b1x1) + 3 + bool(m.pool_proj) for m in MODULES.values())
    assert len(forward_graph('Inception-v2', 'bn')['norm_layers']) == expected == 3 + 8 * 7 + 2 * 5


# ------------------------------------------------------------------ Table 2

@pytest.mark.parametrize('arch', list(ARCHS))
def test_table2_parameter_counts_match_the_paper(arch):
    script = load_script('count_params')
    for column, (norm, options) in script.NORMS.items():
        assert norm != 'gn' or options == {'channel_groups': 32}     # GN's default, as built here
        count = num_parameters(forward_graph(arch, norm, **options))
        assert script.matches(count, script.PAPER_TABLE2[arch][column]), (arch, column, count)


def test_table2_exact_counts():
    """The counts themselves (the two-decimal match above could hide a small change)."""
    assert num_parameters(forward_graph('ResNet-50', 'bn')) == 25557032          # torchvision's ResNet-50
    assert num_parameters(forward_graph('ResNet-101', 'bn')) == 44549160
    assert num_parameters(forward_graph('Inception-v2', 'bn')) == 11285224
    # KN as the paper counts it (count_params.py: R on): one noise_rho per channel of each norm
    # layer with a prior, no gain variable; the library's default KN (no R) has BN's parameters
    paper_kn = load_script('count_params').NORMS['KN']
    assert paper_kn == ('bkn', {'process_noise': True})
    for arch in ARCHS:
        bkn, bn = forward_graph(arch, 'bkn', process_noise=True), forward_graph(arch, 'bn')
        rho = {name: shape for name, shape in bkn['trainable'].items() if name.endswith('/noise_rho')}
        assert len(rho) == len(bkn['prior_layers'])
        assert num_parameters(bkn) - num_parameters(bn) == sum(s[0] for s in rho.values())
        assert not any(name.endswith('gain_logit') for name in bkn['trainable'])
        assert forward_graph(arch, 'bkn')['trainable'].keys() == bn['trainable'].keys()


# ------------------------------------------------------------------ structure

def test_resnet_structure():
    shapes = forward_graph('ResNet-50', 'bn')['trainable']
    assert shapes['conv0/W'] == [7, 7, 3, 64]
    assert shapes['group0/block0/conv3/W'] == [1, 1, 64, 256]
    assert shapes['group0/block0/shortcut/conv/W'] == [1, 1, 64, 256]
    assert shapes['group3/block2/conv2/W'] == [3, 3, 512, 512]
    assert shapes['linear/W'] == [2048, CLASSES] and shapes['linear/b'] == [CLASSES]
    shortcuts = {n.split('/shortcut')[0] for n in shapes if '/shortcut/' in n}
    assert shortcuts == {'group%d/block0' % s for s in range(4)}                 # projections only there
    assert not any(n.endswith('/b') for n in shapes if n != 'linear/b')         # convs have no bias
    deep = forward_graph('ResNet-101', 'bn')['trainable']
    assert 'group2/block22/conv1/W' in deep and 'group2/block23/conv1/W' not in deep


def test_resnet_last_gamma_starts_at_zero():
    graph = forward_graph('ResNet-50', 'bn')['graph']
    with graph.as_default():
        gammas = [v for v in tf1.global_variables() if v.op.name.endswith('bn3/gamma')]
        with _session(graph) as sess:
            sess.run([v.initializer for v in gammas])
            values = sess.run(gammas)
    assert len(values) == sum(BLOCKS_PER_STAGE[50])
    assert all(np.all(g == 0) for g in values)


def test_resnet_stride_is_on_the_3x3_and_zero_init_is_optional():
    disable_layer_logging()
    with tf.Graph().as_default() as graph, TowerContext('', is_training=True), kalman_norm.norm_scope('bn'):
        resnet_imagenet(tf.zeros([2, 64, 64, 3]), depth=50, zero_init_residual=False)
        out = {name: graph.get_tensor_by_name('group1/block0/%s/output:0' % name).shape.as_list()
               for name in ('conv1', 'conv2', 'shortcut/conv')}
        gamma = [v for v in tf1.global_variables() if v.op.name == 'group0/block0/bn3/gamma'][0]
        with _session(graph) as sess:
            sess.run(gamma.initializer)
            assert np.all(sess.run(gamma) == 1)
    # 64 → 32 (conv0) → 16 (pool) → stage 2 halves it on its 3×3 and on the projection
    assert out == {'conv1': [2, 16, 16, 128], 'conv2': [2, 8, 8, 128], 'shortcut/conv': [2, 8, 8, 512]}


def test_inception_module_widths():
    disable_layer_logging()
    with tf.Graph().as_default() as graph, TowerContext('', is_training=True), kalman_norm.norm_scope('bn'):
        inception_v2(tf.zeros([1, 64, 64, 3]))
        outs = [graph.get_tensor_by_name('inception_%s/output:0' % n).shape.as_list() for n in MODULES]
    assert [o[3] for o in outs] == [256, 320, 576, 576, 576, 608, 608, 1056, 1024, 1024]
    assert [o[1] for o in outs] == [8, 8, 4, 4, 4, 4, 4, 2, 2, 2]        # 64 px in: /8, /16, /32
    shapes = forward_graph('Inception-v2', 'bn')['trainable']
    assert shapes['conv1/conv/W'] == [7, 7, 3, 64]
    assert shapes['inception_4e/double3x3b/conv/W'] == [3, 3, 256, 256]
    assert shapes['inception_5a/b1x1/conv/W'] == [1, 1, 1056, 352]
    assert 'inception_3c/pool_proj/conv/W' not in shapes and 'inception_3c/b1x1/conv/W' not in shapes
    assert not any(n.endswith('/b') for n in shapes if n != 'linear/b')


# ------------------------------------------------------------------ bad input

@pytest.mark.parametrize('build,match', [
    (lambda: resnet_imagenet(tf.zeros([2, 64, 64, 3]), depth=34), 'depth must be one of'),
    (lambda: resnet_imagenet(tf.zeros([2, 64, 64, 3]), num_classes=0), 'num_classes'),
    (lambda: inception_v2(tf.zeros([2, 64, 64, 3]), num_classes=2.5), 'num_classes'),
    (lambda: resnet_imagenet(tf.zeros([2, 64, 64]), depth=50), r'\[N, H, W, 3\]'),
    (lambda: inception_v2(tf.zeros([2, 3, 64, 64])), r'\[N, H, W, 3\]'),
    (lambda: inception_v2(tf1.placeholder(tf.float32, [None, None, None, 3])), 'static image height'),
    (lambda: resnet_imagenet(tf.zeros([2, 16, 16, 3])), 'at least 32'),
])
def test_bad_input_is_rejected_before_building(build, match):
    with tf.Graph().as_default() as graph, kalman_norm.norm_scope('bn'):
        with pytest.raises(ValueError, match=match):
            build()
        assert not graph.get_collection(tf1.GraphKeys.GLOBAL_VARIABLES)       # nothing was built


def test_benchmark_norm_subset_always_measures_bn_and_tables_a_paired_ratio():
    bench = load_script('benchmark_imagenet')
    assert bench.parse_args(['--norms', 'KN package']).norms == ['BN', 'KN package']
    assert bench.parse_args([]).norms == list(bench.NORMS)
    assert bench.NORMS['KN package'] == ('bkn', {})          # the layer defaults: the shipped recipe

    class Timed(object):
        def __init__(self, label, times):
            self.arch, self.label, self.batch, self.times = 'ResNet-50', label, 8, times
    # a slow spell in round 2 hits both steps: the paired ratio sees through it
    table = bench.results_table([Timed('BN', [1.0, 3.0, 1.0]), Timed('KN package', [1.1, 3.3, 1.1])])
    row = [line for line in table.splitlines() if 'KN package' in line][0].split('|')
    assert [c.strip() for c in row[6:8]] == ['0.909', '0.909']


def test_benchmark_profile_counts_the_ops_a_step_executes():
    """The profile's op count: KN runs more ops per step than BN (its prior and update), and the
    count is what a traced step executed, stated in the profile table."""
    bench = load_script('benchmark_imagenet')
    configs = [bench.Config('Inception-v2', label, 2, 64, 2) for label in ('BN', 'KN package')]
    for cfg in configs:
        cfg.profile = cfg.op_type_times(steps=1)
    bn, kn = (c.executed_ops for c in configs)
    assert 1000 < bn < kn
    assert 'ops executed per training step: %d vs %d' % (kn, bn) in bench.profile_table(configs)


@pytest.mark.parametrize('script,argv,match', [
    ('count_params', ['--image-size', '16'], 'at least 32'),
    ('count_params', ['--out', '/nonexistent/dir/t2.md'], 'does not exist'),
    ('benchmark_imagenet', ['--batch', '8', '--group-size', '3'], 'divisor'),
    ('benchmark_imagenet', ['--batch', '0'], 'at least 1'),
    ('benchmark_imagenet', ['--rounds', '2'], 'at least 3'),
    ('benchmark_imagenet', ['--image-size', '16'], 'at least 32'),
    ('benchmark_imagenet', ['--archs', 'VGG'], 'unknown architecture'),
    ('benchmark_imagenet', ['--norms', 'KN fast'], 'unknown configuration'),
    ('benchmark_imagenet', ['--out', '/nonexistent/dir/t3.md'], 'does not exist'),
])
def test_scripts_reject_bad_options_before_building(script, argv, match, capsys):
    with pytest.raises(SystemExit) as exit_info:
        load_script(script).parse_args(argv)
    assert exit_info.value.code == 2
    assert match in capsys.readouterr().err


@pytest.mark.parametrize('arch', list(ARCHS))
def test_table2_field_norm_counts(arch):
    """count_params.py's second table (issue 22's norms): WS and MABN's centring add no variable,
    FRN's τ and EvoNorm's v one vector per norm layer followed by an activation; GN+WS and EvoNorm-S0 at 32 channel groups."""
    script = load_script('count_params')
    bn = forward_graph(arch, 'bn')
    for column, (norm, options) in script.FIELD_NORMS.items():
        built = forward_graph(arch, norm, **options)
        extra = {name: shape for name, shape in built['trainable'].items() if name not in bn['trainable']}
        if norm in ('frn', 'evonorm_s0', 'evonorm_b0'):
            suffix = '/tau' if norm == 'frn' else '/v'
            # the norms before a residual sum (a block's last, a projection shortcut's) are built
            # without their nonlinearity (flow.norm(..., activation=False)): no τ or v there
            activated = {layer for layer in built['norm_layers']
                         if not (layer.endswith('/bn3') or layer.endswith('/shortcut/bn'))}
            assert {name.rsplit('/', 1)[0] for name in extra} == activated, column
            assert all(name.endswith(suffix) for name in extra), column
        else:
            assert not extra, column
        assert num_parameters(built) - num_parameters(bn) == sum(s[0] for s in extra.values()), column
