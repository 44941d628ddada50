"""PreciseBN (kalman_norm/precise_bn.py, the trainer's --eval-stats precise, scripts/evaluate_checkpoint.py --precise).

The recomputed statistics of a small model against a float64 NumPy reference of its training
forward on the same batches (Wu & Johnson 2021, Sect. 3: equal-weight averages of the per-batch
statistics; the population variance E[σ²_B] + Var[µ_B] where a group is the whole batch), for
every norm with moving averages but BKN (whose posterior is Eq. 7's, checked through the trainer);
then the trainer's recorded val-error-precise against the script's re-evaluation of the same
checkpoint, on the same test images as val-error-moving.
"""
import importlib.util
import json
import os

import numpy as np
import pytest

import kalman_norm  # noqa: F401  (before tensorflow / tensorpack)
import tensorflow as tf
from tensorpack.tfutils.common import get_global_step_var
from tensorpack.tfutils.tower import TowerContext

from kalman_norm import NormSpec
from kalman_norm.train import cifar, evaluation, core as trainer
from kalman_norm import flow as F
from kalman_norm.precise_bn import combine_batches, precise_spec, recompute_statistics
from conftest import session_config
from test_cifar_trainer import TINY, memory_dataset, no_grappler_session

tf1 = tf.compat.v1
EPS = 1e-5
H = W = 3
C_IN, C_MID, CLASSES = 3, 4, 3


def _inputs(images):
    return tf.cast(images, tf.float32) / 64.0 - 1.0


def build_model(two_layers):
    def build(images):
        x = F.norm('n1', _inputs(images))
        if two_layers:
            kernel = tf1.get_variable('conv/W', [C_IN, C_MID])
            x = F.norm('n2', tf.einsum('bhwc,cd->bhwd', tf.nn.relu(x), kernel))
        fc = tf1.get_variable('fc/W', [x.shape[-1], CLASSES])
        return tf.matmul(tf.reduce_mean(x, [1, 2]), fc)
    return build


def make_checkpoint(tmp_path, spec, build, batch):
    """Random weights and moving state (so that a reset between batches matters), saved."""
    rng = np.random.RandomState(3)
    graph = tf.Graph()
    with graph.as_default():
        with TowerContext('', is_training=True), spec:
            get_global_step_var()
            build(tf1.placeholder(tf.uint8, [batch, H, W, C_IN]))
        values = {}
        with tf1.Session(config=session_config()) as sess:
            sess.run(tf1.global_variables_initializer())
            for v in tf1.global_variables():
                name, shape = v.op.name, v.shape.as_list()
                if name == 'global_step':
                    value = np.int64(0)
                elif name.endswith('step_count'):
                    value = np.float32(5000.0)            # past MABN's batch-statistics and renorm phases
                elif name.endswith('gamma') or name.endswith('EMA') or 'history' in name:
                    value = rng.uniform(0.5, 1.5, shape).astype(np.float32)
                else:
                    value = rng.normal(0, 0.5, shape).astype(np.float32)
                v.load(value, sess)
                values[name] = np.asarray(value, np.float64)
            prefix = tf1.train.Saver().save(sess, str(tmp_path / 'model'))
    return prefix, values


def _groups(x, g):
    return x.reshape((-1, g) + x.shape[1:])


def _group_stats(x, g):
    grouped = _groups(x, g)
    return grouped.mean(axis=(1, 2, 3)), grouped.var(axis=(1, 2, 3)), grouped


def reference_batch(kind, x, values, g, two_layers):
    """The per-batch EMA inputs of every layer, float64, from the papers' training forwards."""
    n = g * H * W
    out = {}
    for layer in (['n1', 'n2'] if two_layers else ['n1']):
        gamma, beta = values[layer + '/gamma'], values[layer + '/beta']
        mean, var, grouped = _group_stats(x, g)
        if kind == 'bn':
            out[layer + '/mean/EMA'] = mean.mean(0)
            out[layer + '/variance/EMA'] = (var * n / (n - 1)).mean(0)
            y = (grouped - mean[:, None, None, None]) / np.sqrt(var + EPS)[:, None, None, None] * gamma + beta
        elif kind == 'brn':
            # Ioffe 2017, Algorithm 1 with r_max = 3, d_max = 5 (no warm-up); the moving state is the
            # checkpoint's for every batch
            sigma = np.sqrt(var + EPS)
            moving_mean, moving_sigma = values[layer + '/mean/EMA'], values[layer + '/stddev/EMA']
            r = np.clip(sigma / moving_sigma, 1 / 3.0, 3.0)
            d = np.clip((mean - moving_mean) / moving_sigma, -5.0, 5.0)
            out[layer + '/mean/EMA'] = mean.mean(0)
            out[layer + '/stddev/EMA'] = sigma.mean(0)
            out[layer + '/variance/EMA'] = np.maximum(sigma.mean(0) ** 2 - EPS, 0)   # overwritten below
            xhat = (grouped - mean[:, None, None, None]) / sigma[:, None, None, None]
            y = gamma * (xhat * r[:, None, None, None] + d[:, None, None, None]) + beta
        elif kind == 'evonorm_b0':
            out[layer + '/variance/EMA'] = (var * n / (n - 1)).mean(0)
            y = None
        elif kind == 'mabn':
            out[layer + '/variance/EMA'] = np.square(grouped).mean(axis=(1, 2, 3)).mean(0)   # χ_B
            y = None
        if layer == 'n1' and two_layers:
            x = np.einsum('bhwc,cd->bhwd', np.maximum(y.reshape(x.shape), 0), values['conv/W'])
    return out


CASES = [('bn', 2, True), ('bn', 4, True), ('brn', 2, True), ('evonorm_b0', 2, False), ('mabn', 2, False)]


@pytest.mark.parametrize('kind,group,two_layers', CASES)
def test_recomputed_statistics_match_numpy(kind, group, two_layers, tmp_path):
    batch = 4
    options = dict(warmup=None) if kind == 'brn' else {}
    spec = NormSpec(kind, group_size=group, **options)
    build = build_model(two_layers)
    prefix, values = make_checkpoint(tmp_path, spec, build, batch)
    rng = np.random.RandomState(7)
    batches = [rng.randint(0, 256, (batch, H, W, C_IN)).astype(np.uint8) for _ in range(3)]

    def restore(sess):
        tf1.train.Saver().restore(sess, prefix)

    got, count = recompute_statistics(build, spec, restore, iter(batches), session_config())
    assert count == 3
    per_batch = {}
    for b in batches:
        for name, value in reference_batch(kind, b.astype(np.float64) / 64.0 - 1.0, values, group,
                                           two_layers).items():
            per_batch.setdefault(name, []).append(value)
    want = {name: np.mean(v, axis=0) for name, v in per_batch.items()}
    for name in want:
        if name.endswith('/variance/EMA') and name[:-len('variance/EMA')] + 'stddev/EMA' in want:
            want[name] = np.maximum(want[name[:-len('variance/EMA')] + 'stddev/EMA'] ** 2 - EPS, 0)
        elif kind == 'bn' and group == batch and name.endswith('/variance/EMA'):
            # one group per batch: the population variance E[σ²_B] + Var[µ_B]
            want[name] = want[name] + np.var(per_batch[name[:-len('variance/EMA')] + 'mean/EMA'], axis=0)
    assert sorted(got) == sorted(want)
    for name in want:
        np.testing.assert_allclose(got[name], want[name], rtol=2e-5, atol=2e-6, err_msg=name)
    # the average of the batches, not the checkpoint's EMA nor the last batch alone
    assert not np.allclose(got['n1/variance/EMA'], values['n1/variance/EMA'])
    assert not np.allclose(got['n1/variance/EMA'], per_batch['n1/variance/EMA'][-1])


def test_combine_batches_rules():
    per = {'a/mean/EMA': [np.array([0.0]), np.array([2.0])], 'a/variance/EMA': [np.array([1.0]), np.array([3.0])]}
    assert combine_batches(per, one_group=False, epsilon=EPS)['a/variance/EMA'] == pytest.approx([2.0])
    assert combine_batches(per, one_group=True, epsilon=EPS)['a/variance/EMA'] == pytest.approx([3.0])
    per = {'b/stddev/EMA': [np.array([1.0]), np.array([3.0])], 'b/variance/EMA': [np.array([0.0]), np.array([9.0])]}
    assert combine_batches(per, one_group=True, epsilon=0.5)['b/variance/EMA'] == pytest.approx([4.0 - 0.5])


def test_precise_spec_refuses_norms_without_moving_averages():
    with pytest.raises(ValueError, match='keeps none'):
        precise_spec(NormSpec('gn'))
    assert precise_spec(NormSpec('mabn', group_size=2)).options['batch_stats_steps'] > 10 ** 9
    assert precise_spec(NormSpec('bn', group_size=2)).options['momentum'] == 0.0


def _script():
    spec = importlib.util.spec_from_file_location(
        'evaluate_checkpoint', os.path.join(os.path.dirname(__file__), '..', 'scripts', 'evaluate_checkpoint.py'))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize('norm', ['bn', 'bkn'])
def test_trainer_records_precise_error_and_the_script_reproduces_it(norm, tmp_path, monkeypatch):
    ds = memory_dataset(n_train=16, n_test=6)
    logdir = str(tmp_path / 'log')
    o = cifar.parse_options(TINY + ['--norm', norm, '--eval-stats', 'all', '--precise-batches', '3',
                                    '--logdir', logdir])
    line, code = trainer.train(cifar.TASK, o, cifar.TASK.data_from(ds, o), session_creator=no_grappler_session())
    assert code == 0, line
    assert 'val-error-precise' in line and '3 batches' in line
    with open(os.path.join(logdir, 'stats.json')) as f:
        last = json.load(f)[-1]
    assert 0.0 <= last['val-error-precise'] <= 1.0 and last['precise_batches'] == 3
    # the same 6 test images as the epochs' moving and batch evaluations
    assert last['precise_images'] == len(ds.test_labels)
    script = _script()
    monkeypatch.setattr(script.datasets, 'load_dataset', lambda *a, **k: ds)
    result = script.evaluate(script.build_parser().parse_args([logdir, '--precise']))
    assert result['precise_batches'] == 3 and result['images'] == len(ds.test_labels)
    assert result['error_precise'] == pytest.approx(last['val-error-precise'])
    assert result['error_moving'] == pytest.approx(last['val-error-moving'])
    assert not os.path.exists(os.path.join(logdir, 'stats.json.tmp'))
    with pytest.raises(SystemExit):
        script.main([logdir, '--precise', '--batches', '0'])
    with pytest.raises(SystemExit):
        script.main([logdir, '--batches', '3'])          # --batches without --precise


def test_eval_stats_precise_only_for_moving_average_norms():
    with pytest.raises(trainer.OptionError, match='moving averages'):
        cifar.parse_options(['--norm', 'gn', '--eval-stats', 'precise'])
    assert evaluation.eval_tags(cifar.parse_options(['--norm', 'bn', '--eval-stats', 'precise'])) == \
        [('InferenceTowerMoving', 'val-error-moving')]
    from kalman_norm.train import imagenet
    with pytest.raises(trainer.OptionError, match='CIFAR trainer only'):
        trainer.parse_options(imagenet.TASK, ['--norm', 'bn', '--eval-stats', 'precise'])
