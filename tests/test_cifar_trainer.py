"""Tests of the CIFAR trainer (kalman_norm/train/cifar.py, scripts/cifar_resnet.py) on tiny generated data.

* the trainer path in-process (make_config + make_trainer + launch_train_with_config) for every
  norm with the ResNet and for a few norms with the Inception net;
* per-tower normalization of the replicated multi-"GPU" trainer on CPU towers;
* the script end to end on each data format (official pickles, image folder, .tar.gz), with
  --gpus 2, and killed + resumed;
* every bad option combination: a clear message and exit code 2.

Model x norm graphs on their own are tested in tests/test_models.py; here every graph goes
through the trainer.  Graphs are tiny (ResNet-8, Inception at width 1/8, 8 samples per step).
"""
import json
import os
import pickle
import re
import subprocess
import sys
import tarfile

import numpy as np
import pytest

import kalman_norm  # noqa: F401  (before tensorflow / tensorpack)
import cv2
import tensorflow as tf
from tensorpack import TrainConfig, launch_train_with_config
from tensorpack.callbacks import Callback
from tensorpack.input_source import TensorInput
from tensorpack.tfutils.sesscreate import NewSessionCreator
from tensorpack.tfutils.tower import get_current_tower_context

from kalman_norm.train import cifar, classifier, evaluation, core as trainer
from kalman_norm import data as kdata
from kalman_norm.train.cifar import parse_options
from kalman_norm.train.options import OptionError
from kalman_norm.layers import kn_diagnostics

tf1 = tf.compat.v1
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(REPO, 'scripts', 'cifar_resnet.py')
CLASSES = ['c%d' % i for i in range(10)]
# the smallest trainer runs: ResNet-8, 8 samples per step in groups of 2, 2 steps, no workers
# (the generated data sets are tiny copies of CIFAR-10's layouts: --partial-data accepts their counts)
TINY = ['-n', '1', '--batch', '2', '--total-batch', '8', '--steps-per-epoch', '2', '--epochs', '1',
        '--num-proc', '0', '--seed', '1', '--partial-data', 'true']
RUN_TIMEOUT = 400


# ----------------------------------------------------------------------------------------------
# tiny datasets

def _images(rng, n):
    return rng.randint(0, 256, size=(n, 32, 32, 3)).astype(np.uint8)


def write_cifar10(root, n=4, seed=0):
    """The official 'cifar-10-batches-py/' layout with n images per batch file."""
    rng = np.random.RandomState(seed)
    d = os.path.join(str(root), kdata.CIFAR10_DIR)
    os.makedirs(d)
    for f in kdata.CIFAR10_FILES:
        x = _images(rng, n)
        with open(os.path.join(d, f), 'wb') as fo:
            pickle.dump({b'batch_label': f.encode(), b'labels': rng.randint(0, 10, n).tolist(),
                         b'data': x.transpose(0, 3, 1, 2).reshape(n, 3072)}, fo, protocol=2)
    return str(root)


def write_folder(root, n_train, n_test=1, seed=0):
    """train/<class>/*.png + test/<class>/*.png."""
    rng = np.random.RandomState(seed)
    for split, n in (('train', n_train), ('test', n_test)):
        for c in CLASSES:
            d = os.path.join(str(root), split, c)
            os.makedirs(d)
            for i in range(n):
                assert cv2.imwrite(os.path.join(d, '%03d.png' % i), _images(rng, 1)[0])
    return str(root)


def memory_dataset(n_train=16, n_test=6, seed=0):
    rng = np.random.RandomState(seed)
    tr, te = _images(rng, n_train), _images(rng, n_test)
    mean, std = kdata.channel_stats(tr)
    return kdata.Dataset(tr, rng.randint(0, 10, n_train).astype(np.int32), te,
                            rng.randint(0, 10, n_test).astype(np.int32), CLASSES, 10, mean, std,
                            'memory', 'cifar10')


@pytest.fixture(scope='module')
def data_dirs(tmp_path_factory):
    base = tmp_path_factory.mktemp('cifar_data')
    pickles = write_cifar10(base / 'pickles')                         # 20 train, 4 test
    folder = write_folder(base / 'folder', n_train=2)                 # 20 train, 10 test
    big = write_folder(base / 'big' / 'imgs', n_train=4)              # 40 train, 10 test
    tgz = str(base / 'imgs.tar.gz')
    with tarfile.open(tgz, 'w:gz') as t:
        t.add(big, arcname='imgs')
    return dict(pickles=pickles, folder=folder, tgz=tgz)


def no_grappler_session():
    """Grappler's rewrites cost many seconds on the first step of the KN graphs; not tested here."""
    config = tf1.ConfigProto(allow_soft_placement=True)
    config.graph_options.rewrite_options.disable_meta_optimizer = True
    return NewSessionCreator(config=config)


# ----------------------------------------------------------------------------------------------
# 1. the trainer path in-process, every norm

def _norm_args(norm, model):
    args = ['--norm', norm, '--model', model]
    if norm in cifar.EMA_NORMS:
        args += ['--eval-stats', 'both']
    if norm in ('gn', 'gkn'):
        args += ['--norm-option', 'channel_groups=8']
    return args


@pytest.mark.parametrize('model,norm', [('resnet', n) for n in kalman_norm.NORMS]
                         + [('inception', 'gn')])
def test_trainer_trains_every_norm_two_steps(model, norm, tmp_path):
    extra = ['--model-option', 'width=0.125'] if model == 'inception' else []
    o = parse_options(TINY + _norm_args(norm, model) + extra + ['--logdir', str(tmp_path / 'log')])
    ds = memory_dataset()
    data = cifar.TASK.data_from(ds, o)
    graphs = []
    real_make_config = trainer.make_config

    def spy(*args):
        graphs.append(tf1.get_default_graph())
        return real_make_config(*args)

    trainer.make_config = spy
    try:
        line, code = trainer.train(cifar.TASK, o, data, session_creator=no_grappler_session())
    finally:
        trainer.make_config = real_make_config
    assert code == 0
    assert bool(kn_diagnostics(graphs[0])) == (norm in cifar.KALMAN_NORMS)
    with open(os.path.join(o['logdir'], 'stats.json')) as f:
        stats = json.load(f)
    assert [s['epoch_num'] for s in stats] == [1] and stats[-1]['global_step'] == 2
    for _, tag in evaluation.eval_tags(o):
        assert 0.0 <= stats[-1][tag] <= 1.0, tag
    for key in ('xentropy', 'cost', 'train_error'):
        assert np.isfinite(stats[-1][key]), key
    assert tf.train.load_variable(os.path.join(o['logdir'], 'model-2'), 'global_step') == 2
    assert line.startswith('FINAL cifar10 %s norm=%s' % ('resnet8' if model == 'resnet' else 'inception',
                                                         norm))
    with open(os.path.join(o['logdir'], 'status.json')) as f:
        assert json.load(f)['status'] == 'finished'


@pytest.mark.parametrize('source', ['moving', 'calibrated'])
def test_trainer_with_other_prior_sources(source, tmp_path):
    """The KN study's prior_source rows train through the trainer; the calibration's running bias is
    updated by the trainer's update ops and saved with the model."""
    o = parse_options(TINY + _norm_args('bkn', 'resnet') + ['--norm-option', 'prior_source=' + source,
                                                             '--logdir', str(tmp_path / 'log')])
    line, code = _train_in_process(o, memory_dataset())
    assert code == 0 and line.startswith('FINAL cifar10 resnet8 norm=bkn')
    names = [n for n, _ in tf.train.list_variables(os.path.join(o['logdir'], 'model-2'))]
    offsets = [n for n in names if n.endswith('prior_offset/EMA')]
    assert bool(offsets) == (source == 'calibrated')
    for name in offsets:
        value = tf.train.load_variable(os.path.join(o['logdir'], 'model-2'), name)
        assert np.isfinite(value).all() and np.abs(value).max() > 0, name


def test_make_config_eval_towers_and_step_count():
    ds = memory_dataset(n_train=40, n_test=10)
    o = parse_options(['--norm', 'bkn', '--batch', '2', '--total-batch', '8', '--eval-stats', 'both',
                       '--num-proc', '0', '--logdir', 'unused'])
    assert evaluation.eval_tags(o) == [('InferenceTowerMoving', 'val-error-moving'),
                                    ('InferenceTowerBatch', 'val-error-batch')]
    with tf.Graph().as_default():
        assert trainer.make_config(cifar.TASK, o, cifar.TASK.data_from(ds, o), None).steps_per_epoch == 5
    o = parse_options(['--norm', 'gn', '--total-batch', '8', '--gpus', '2', '--batch', '4',
                       '--num-proc', '0', '--logdir', 'unused'])
    assert evaluation.eval_tags(o) == [('InferenceTower', 'val-error')]
    with tf.Graph().as_default():
        # 40 images, 8 per step over both towers
        assert trainer.make_config(cifar.TASK, o, cifar.TASK.data_from(ds, o), None).steps_per_epoch == 5
    o = parse_options(['--total-batch', '64', '--batch', '64', '--num-proc', '0', '--logdir', 'unused'])
    with pytest.raises(OptionError, match='smaller than one step of 64 samples'):
        trainer.make_config(cifar.TASK, o, cifar.TASK.data_from(ds, o), None)


# ----------------------------------------------------------------------------------------------
# 3. each tower of the replicated trainer normalizes only its own samples

class _Capture(Callback):
    def __init__(self, names):
        self.names, self.values = names, None

    def _trigger_epoch(self):
        # values, not resource handles; the replicas of towers >= 1 are local variables
        variables = {v.name: v for v in tf1.global_variables() + tf1.local_variables()}
        self.values = self.trainer.sess.run({n: variables.get(n, n) for n in self.names})


def _numpy_conv_same(x, w):
    """3x3 stride-1 SAME convolution, NHWC x [N,H,W,C], w [3,3,C,K]."""
    n, h, wd, _ = x.shape
    p = np.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
    out = np.zeros((n, h, wd, w.shape[3]), np.float64)
    for i in range(3):
        for j in range(3):
            out += np.einsum('nhwc,ck->nhwk', p[:, i:i + h, j:j + wd, :], w[i, j])
    return out


def test_replicated_towers_normalize_only_their_own_samples():
    o = parse_options(['--norm', 'bn', '-n', '1', '--gpus', '2', '--total-batch', '8', '--batch', '4',
                       '--num-proc', '0', '--logdir', 'unused'])
    rng = np.random.RandomState(3)
    tower_images = [rng.randint(0, 40, size=(4, 32, 32, 3)).astype(np.uint8),      # dark
                    rng.randint(190, 256, size=(4, 32, 32, 3)).astype(np.uint8)]   # bright
    mean, std = np.array([120.0, 121.0, 122.0], np.float32), np.array([60.0, 61.0, 62.0], np.float32)
    built = []

    def tower_input():
        k = get_current_tower_context().index
        built.append(get_current_tower_context().name)
        return [tf.constant(tower_images[k]), tf.constant(np.arange(4, dtype=np.int32) + k)]

    names = []
    for k in range(2):
        vs = '' if k == 0 else 'tower%d/' % k
        names += ['tower%d/conv0/output:0' % k, 'tower%d/bn0/output:0' % k,
                  '%sconv0/W:0' % vs, '%sbn0/gamma:0' % vs, '%sbn0/beta:0' % vs]
    capture = _Capture(names)
    with tf.Graph().as_default():
        tower_trainer = trainer.make_trainer(o)
        assert type(tower_trainer).__name__ == 'SyncMultiGPUTrainerReplicated'
        config = TrainConfig(model=classifier.ClassifierModel(cifar.TASK, o, mean, std, 10),
                             data=TensorInput(tower_input),
                             callbacks=[capture], monitors=[], steps_per_epoch=2, max_epoch=1,
                             session_creator=no_grappler_session())
        launch_train_with_config(config, tower_trainer)
    assert built == ['tower0', 'tower1']
    v = capture.values
    tower_mean = []
    for k in range(2):
        vs = '' if k == 0 else 'tower%d/' % k
        x = (tower_images[k].astype(np.float64) - mean) / std
        conv = _numpy_conv_same(x, v['%sconv0/W:0' % vs].astype(np.float64))
        np.testing.assert_allclose(v['tower%d/conv0/output:0' % k], conv, rtol=1e-3, atol=1e-3)
        m, var = conv.mean(axis=(0, 1, 2)), conv.var(axis=(0, 1, 2))
        tower_mean.append(m)
        gamma, beta = v['%sbn0/gamma:0' % vs], v['%sbn0/beta:0' % vs]
        want = (conv - m) / np.sqrt(var + 1e-5) * gamma + beta
        np.testing.assert_allclose(v['tower%d/bn0/output:0' % k], want, rtol=1e-3, atol=2e-3)
    # replicas stay in sync; the towers saw very different data, so normalizing over the mixture
    # of both towers would have given visibly different outputs
    np.testing.assert_allclose(v['conv0/W:0'], v['tower1/conv0/W:0'], atol=1e-6)
    assert np.abs(tower_mean[0] - tower_mean[1]).max() > 1.0


# ----------------------------------------------------------------------------------------------
# 2. the script end to end

def _env(tmp_path):
    env = dict(os.environ)
    env.update(KALMAN_NORM_CACHE=str(tmp_path / 'cache'), TENSORPACK_DATASET=str(tmp_path / 'tp_data'),
               PYTHONUNBUFFERED='1', TF_CPP_MIN_LOG_LEVEL='2')
    return env


def run_script(args, tmp_path, timeout=RUN_TIMEOUT):
    return subprocess.run([sys.executable, SCRIPT] + list(args), cwd=str(tmp_path), env=_env(tmp_path),
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, timeout=timeout)


def _fail_text(r):
    return 'exit %s\nSTDOUT tail:\n%s\nSTDERR tail:\n%s' % (r.returncode, r.stdout[-3000:], r.stderr[-3000:])


def output_lines(stdout):
    """The lines the script prints itself: tensorpack's threads and dataflow workers may log
    their shutdown (EnqueueThread, MultiProcessRunnerZMQ clean-up) after the summary line."""
    return [line for line in stdout.splitlines()
            if line.strip() and not re.match(r'\[\d{4} \d\d:\d\d:\d\d @', line)
            and 'MultiProcessRunnerZMQ successfully cleaned-up' not in line]


def check_finished_run(r, logdir, tags, epochs=1, steps=2):
    assert r.returncode == 0, _fail_text(r)
    lines = output_lines(r.stdout)
    assert lines and lines[-1].startswith('FINAL cifar10 '), _fail_text(r)
    assert 'epochs=%d' % epochs in lines[-1]
    for tag in tags:
        assert '%s best ' % tag in lines[-1], lines[-1]
    with open(os.path.join(logdir, 'stats.json')) as f:
        stats = json.load(f)
    assert stats and stats[-1]['epoch_num'] == epochs
    for tag in tags:
        assert 0.0 <= stats[-1][tag] <= 1.0
    files = os.listdir(logdir)
    assert 'checkpoint' in files and 'model-%d.index' % (epochs * steps) in files, files
    assert any(f.startswith('events.out.tfevents.') for f in files), files
    assert 'options.json' in files and 'log.log' in files
    assert tf.train.load_variable(tf.train.latest_checkpoint(logdir), 'global_step') == epochs * steps
    return stats


def test_script_official_pickles_num_proc_1_both_eval_modes(data_dirs, tmp_path):
    logdir = tmp_path / 'log'
    r = run_script(TINY + ['--num-proc', '1', '--norm', 'bn',
                                                       '--eval-stats', 'both', '--data', data_dirs['pickles'],
                                                       '--logdir', str(logdir)], tmp_path)
    check_finished_run(r, str(logdir), ['val-error-moving', 'val-error-batch'])
    assert 'train 20, test 4 images' in r.stdout + r.stderr


def test_script_image_folder_with_config(data_dirs, tmp_path):
    logdir = tmp_path / 'log'
    conf = tmp_path / 'run.toml'
    conf.write_text('norm = "bkn"\nbatch = 2\ntotal-batch = 8\ndepth = 1\nepochs = 1\n'
                    'steps_per_epoch = 2\nnum_proc = 0\npartial_data = true\n[norm_options]\nprocess_noise = false\n')
    r = run_script(['--config', str(conf), '--data', data_dirs['folder'], '--logdir', str(logdir)], tmp_path)
    check_finished_run(r, str(logdir), ['val-error-moving'])
    assert 'norm=bkn batch=2 gpus=1' in r.stdout
    with open(logdir / 'options.json') as f:
        options = json.load(f)
    # the config's option, and the other KN options of the default recipe: every one recorded
    assert options['norm_options'] == {'process_noise': False, 'pooled_variance': True, 'guard_ratio': 100.0,
                                       'propagate': 'output'} and options['gain'] == 0.1
    assert options['kn_recipe'] == 'library' and 'kn_recipe' not in options['identity']
    assert any(f.endswith('.npz') for f in os.listdir(tmp_path / 'cache'))     # KALMAN_NORM_CACHE


def test_script_tar_gz_two_towers(data_dirs, tmp_path):
    logdir = tmp_path / 'log'
    r = run_script(['--partial-data', 'true', '-n', '1', '--gpus', '2', '--total-batch', '16', '--batch', '2', '--norm', 'brn',
                    '--eval-stats', 'both', '--steps-per-epoch', '2', '--epochs', '1', '--num-proc', '0',
                    '--data', data_dirs['tgz'], '--logdir', str(logdir)], tmp_path)
    check_finished_run(r, str(logdir), ['val-error-moving', 'val-error-batch'])
    assert 'gpus=2' in output_lines(r.stdout)[-1]
    assert 'train 40, test 10 images' in r.stdout + r.stderr


# ----------------------------------------------------------------------------------------------
# 4. killed at any phase, then resumed with the same command (a real kill -9: tests/test_run_trust.py)

def _train_in_process(o, ds):
    return trainer.train(cifar.TASK, o, cifar.TASK.data_from(ds, o), session_creator=no_grappler_session())


def _checkpoints(logdir):
    return sorted(int(f[len('model-'):-len('.index')]) for f in os.listdir(logdir)
                  if f.startswith('model-') and f.endswith('.index'))


def _kill_state(logdir, phase):
    """Turn a finished 3-epoch run (2 steps/epoch, every checkpoint kept) into what a kill at
    ``phase`` leaves on disk."""
    stats_path = os.path.join(logdir, 'stats.json')
    stats = json.load(open(stats_path))

    def drop_checkpoint(step):
        for f in os.listdir(logdir):
            if f.startswith('model-%d.' % step):
                os.remove(os.path.join(logdir, f))

    if phase == 'training':          # during epoch 3's steps: epochs 1-2 recorded and saved
        drop_checkpoint(6)
        stats = stats[:2]
    elif phase == 'evaluation':      # epoch 3 saved, killed during its validation
        stats = stats[:2]
    elif phase == 'checkpointing':   # killed while writing epoch 3's checkpoint: data, no index
        os.remove(os.path.join(logdir, 'model-6.index'))
        stats = stats[:2]
    elif phase == 'first-evaluation':  # epoch 1 saved, killed during its validation: no stats
        drop_checkpoint(4)
        drop_checkpoint(6)
        stats = []
    if stats:
        json.dump(stats, open(stats_path, 'w'))
    else:
        os.remove(stats_path)
    return 0 if phase == 'first-evaluation' else 2


@pytest.fixture(scope='module')
def finished_three_epochs(tmp_path_factory):
    ds = memory_dataset()
    logdir = str(tmp_path_factory.mktemp('three') / 'log')
    o = parse_options(TINY + ['--epochs', '3', '--keep-checkpoints', '5', '--logdir', logdir])
    line, code = _train_in_process(o, ds)
    assert code == 0 and _checkpoints(logdir) == [2, 4, 6]
    return logdir, ds


@pytest.mark.parametrize('phase', ['training', 'evaluation', 'checkpointing', 'first-evaluation'])
def test_resume_after_a_kill_at_any_phase(phase, finished_three_epochs, tmp_path):
    import shutil
    source, ds = finished_three_epochs
    logdir = str(tmp_path / 'log')
    shutil.copytree(source, logdir)
    recorded = _kill_state(logdir, phase)
    assert trainer.last_complete_epoch(logdir, 2) == recorded
    o = parse_options(TINY + ['--epochs', '3', '--keep-checkpoints', '5', '--logdir', logdir])
    line, code = _train_in_process(o, ds)
    assert code == 0 and 'epochs=3' in line
    stats = json.load(open(os.path.join(logdir, 'stats.json')))
    assert [(s['epoch_num'], s['global_step']) for s in stats] == [(1, 2), (2, 4), (3, 6)]
    assert tf.train.load_variable(os.path.join(logdir, 'model-6'), 'global_step') == 6
    assert json.load(open(os.path.join(logdir, 'status.json')))['status'] == 'finished'
    if recorded:
        # the resumed epoch 3 started from epoch 2's weights: epoch 2's stats are the original ones
        assert stats[1] == json.load(open(os.path.join(source, 'stats.json')))[1]


# ----------------------------------------------------------------------------------------------
# 5. bad options: a clear message, exit code 2

BASE = ['--logdir', 'unused']
BAD_OPTIONS = [
    (['--total-batch', '12', '--batch', '4', '--gpus', '2'], r'multiple of --batch × --gpus'),
    (['--total-batch', '9', '--batch', '1', '--gpus', '2'], 'not divisible by --gpus 2'),
    (['--batch', '0'], '--batch must be >= 1, got 0'),
    (['--gpus', '0'], '--gpus must be >= 1'),
    (['--norm', 'bn', '--gain', '0.5'], '--gain applies to bkn and gkn only'),
    (['--norm', 'bkn', '--gain', '1.5'], r'--gain must be in \[0, 1\]'),
    (['--norm', 'gkn', '--gain', 'abc'], "--gain must be a number in .*'abc'"),
    (['--norm', 'bn', '--prior', 'mc'], '--prior/--prior-samples apply to bkn and gkn only'),
    (['--norm', 'gn', '--kn-recipe', 'paper'], r'--kn-recipe applies to bkn and gkn \(got --norm gn\)'),
    (['--norm', 'gn', '--eval-stats', 'batch'], '--eval-stats applies to norms with moving averages'),
    (['--norm-option', 'unknown_key=1'], r"unknown_key do not apply to 'bn'"),
    (['--norm-option', 'process_noise'], "--norm-option takes KEY=VALUE, got 'process_noise'"),
    (['--norm', 'bkn', '--norm-option', 'gain=2'], r'gain must be in \[0, 1\], got 2'),
    (['--epochs', '0'], '--epochs must be >= 1'),
    (['--lr', 'inf'], '--lr must be a finite number'),
    (['--momentum', '5'], '--momentum must be < 1'),
    (['--model-option', 'width=2'], '--model-option width does not apply to --model resnet'),
    (['--lr', '-1'], '--lr must be > 0'),
    (['--steps-per-epoch', '0'], '--steps-per-epoch must be >= 1'),
    (['--num-proc', '-1'], '--num-proc must be >= 0'),
    (['--weight-decay', '-0.1'], '--weight-decay must be >= 0'),
]


@pytest.mark.parametrize('argv,match', BAD_OPTIONS, ids=[' '.join(a) for a, _ in BAD_OPTIONS])
def test_bad_option_raises_option_error_and_exits_2(argv, match, capsys):
    with pytest.raises(OptionError, match=match):
        parse_options(argv + BASE)
    with pytest.raises(SystemExit) as e:
        cifar.main(argv + BASE)
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith('error: ') and len(err.strip().splitlines()) == 1


def test_model_that_cannot_be_built_fails_before_the_data(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        cifar.main(['--model', 'inception', '--model-option', 'width=-1', '--data', str(tmp_path / 'none'),
                    '--logdir', str(tmp_path / 'log')])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert 'the model cannot be built with these options' in err and 'width must be > 0' in err
    assert 'does not exist' not in err and not (tmp_path / 'log').exists()


@pytest.mark.parametrize('argv,match', [
    (['--norm', 'xn'], "argument --norm: invalid choice: 'xn'"),
    (['--batch', 'two'], "argument --batch: invalid int value: 'two'"),
    (['--model', 'vgg'], "argument --model: invalid choice"),
    (['--no-such-flag'], 'unrecognized arguments: --no-such-flag'),
])
def test_argparse_errors_exit_2(argv, match, capsys):
    with pytest.raises(SystemExit) as e:
        cifar.main(argv + BASE)
    assert e.value.code == 2
    assert match in capsys.readouterr().err


def _toml(tmp_path, text, name='c.toml'):
    path = tmp_path / name
    path.write_text(text)
    return str(path)


@pytest.mark.parametrize('text,match', [
    (None, 'no such file'),
    ('norm = "bn\n', 'is not valid TOML'),
    ('norm = "bn"\nlearning_rate = 0.1\n', r'unknown option\(s\) learning_rate; known: '),
    ('lr = "fast"\n', '--lr must be a number'),
    ('num_proc = "two"\n', '--num-proc must be'),
    ('steps_per_epoch = 1.5\n', '--steps-per-epoch must be'),
    ('norm_options = 3\n', 'norm_options must be a table'),
])
def test_bad_config_file(text, match, tmp_path, capsys):
    path = str(tmp_path / 'missing.toml') if text is None else _toml(tmp_path, text)
    with pytest.raises(OptionError, match=match):
        parse_options(['--config', path] + BASE)
    with pytest.raises(SystemExit) as e:
        cifar.main(['--config', path] + BASE)
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith('error: --config %s' % path) or err.startswith('error: %s: ' % path) \
        or text.startswith(('lr', 'num_proc', 'steps')), err


def test_precedence_command_line_over_config_over_defaults(tmp_path):
    path = _toml(tmp_path, 'norm = "bkn"\nbatch = 4\ntotal-batch = 16\nlr = 0.05\ndepth = 2\n'
                           'gain = "learned"\nschedule = "paper"\n'
                           '[norm_options]\nprocess_noise = false\nguard_ratio = 10.0\n'
                           '[model_options]\ndata_format = "NHWC"\n')
    o = parse_options(['--config', path, '--batch', '2', '--lr', '0.2',
                       '--norm-option', 'guard_ratio=50', '--norm-option', 'pooled_variance=false'])
    # command line
    assert o['batch'] == 2 and o['lr'] == 0.2
    # the default KN recipe under both: only the entries neither gives
    assert o['norm_options'] == {'process_noise': False, 'guard_ratio': 50, 'pooled_variance': False,
                                 'propagate': 'output'}
    # config
    assert (o['norm'], o['total_batch'], o['depth'], o['gain'], o['schedule']) == ('bkn', 16, 2, 'learned', 'paper')
    assert o['model_options'] == {'data_format': 'NHWC'}
    # defaults (the schedule's recipe where the default is None)
    assert (o['gpus'], o['momentum'], o['model'], o['eval_stats']) == (1, 0.9, 'resnet', 'moving')
    assert (o['epochs'], o['weight_decay'], o['nesterov']) == (400, 2e-4, False)
    assert re.fullmatch(re.escape(os.path.join('train_log', 'cifar10-resnet14-bkn-b2-g1-')) + '[0-9a-f]{8}',
                        o['logdir']), o['logdir']
    spec = o['spec']
    assert spec.kind == 'bkn' and spec.group_size == 2
    assert spec.options == {'gain': 'learned', 'process_noise': False, 'guard_ratio': 50,
                            'pooled_variance': False, 'propagate': 'output'}
    # defaults alone
    d = parse_options([])
    assert (d['norm'], d['batch'], d['total_batch'], d['epochs'], d['weight_decay'], d['gain']) == \
        ('bn', 128, 128, 30, 5e-4, 'auto')
    assert parse_options(['--norm', 'bkn', '--batch', '2'])['gain'] == 0.1
    assert parse_options(['--norm', 'bkn'])['gain'] == 0.95


def test_task_settings_and_input_description():
    """What the core reads of the CIFAR task: its input before the data loads, the model's display
    name in the log directory (resnet<6n+2>, not --model's value), test batches of about 256 images
    in whole groups, and its data errors."""
    o = parse_options(['--dataset', 'cifar100', '--depth', '2', '--norm', 'gn', '--batch', '3', '--total-batch', '6'])
    assert cifar.TASK.describe_input(o) == ('cifar100', (32, 32, 3), 100)
    assert re.fullmatch(re.escape(os.path.join('train_log', 'cifar100-resnet14-gn-b3-g1-')) + '[0-9a-f]{8}',
                        o['logdir']), o['logdir']
    assert cifar.TASK.eval_batch_size(o) == 258                # 86 groups of 3: the first multiple >= 256
    assert cifar.TASK.data_errors == (kdata.DataError,)
    inception = parse_options(['--model', 'inception', '--dataset', 'svhn', '--norm', 'bn', '--batch', '512',
                               '--total-batch', '512'])
    assert cifar.TASK.describe_input(inception) == ('svhn', (32, 32, 3), 10)
    assert os.path.basename(inception['logdir']).startswith('svhn-inception-bn-b512-g1-')
    assert cifar.TASK.eval_batch_size(inception) == 512        # one group when --batch exceeds 256


#: what each --kn-recipe resolves to at 2 samples per normalisation, with nothing else given
RESOLVED_RECIPES = {
    'library': dict(prior='analytic', prior_samples=1, gain=0.1, norm_options=dict(
        process_noise=False, pooled_variance=True, guard_ratio=100.0, propagate='output')),
    'authors': dict(prior='mc', prior_samples=1, gain=0.1, norm_options=dict(
        process_noise=False, pooled_variance=True, guard_ratio=100.0, propagate='input')),
    'paper': dict(prior='mc', prior_samples=1, gain='learned', norm_options=dict(
        process_noise=True, pooled_variance=False, guard_ratio=None, propagate='input')),
}


@pytest.mark.parametrize('norm', ['bkn', 'gkn'])
@pytest.mark.parametrize('recipe', sorted(RESOLVED_RECIPES))
def test_kn_recipe_sets_the_kn_options(recipe, norm):
    argv = ['--norm', norm, '--batch', '2', '--total-batch', '8'] + BASE
    o = parse_options(argv + ([] if recipe == 'library' else ['--kn-recipe', recipe]))
    assert {k: o[k] for k in RESOLVED_RECIPES[recipe]} == RESOLVED_RECIPES[recipe]
    assert o['kn_recipe'] == recipe
    spec = o['spec']
    assert (spec.prior_method, spec.options) == (o['prior'], dict(o['norm_options'], gain=o['gain']))
    # the recipe is in the identity only through the options it sets: stating them by hand is the same run
    by_hand = ['--prior', o['prior'], '--gain', str(o['gain'])] + sum(
        (['--norm-option', '%s=%s' % kv] for kv in o['norm_options'].items()), [])
    assert parse_options(argv + by_hand)['identity'] == o['identity']


def test_kn_recipe_yields_to_explicit_options(tmp_path):
    """Command line > config > recipe > defaults, option by option and norm option by norm option."""
    o = parse_options(['--norm', 'bkn', '--batch', '2', '--kn-recipe', 'paper', '--gain', '0.3',
                       '--norm-option', 'guard_ratio=50'] + BASE)
    assert (o['gain'], o['prior']) == (0.3, 'mc')
    assert o['norm_options'] == dict(process_noise=True, pooled_variance=False, guard_ratio=50, propagate='input')
    path = _toml(tmp_path, 'norm = "gkn"\nbatch = 2\nkn_recipe = "paper"\nprior = "analytic"\n'
                           '[norm_options]\npropagate = "output"\n')
    o = parse_options(['--config', path, '--norm-option', 'process_noise=false'] + BASE)
    assert (o['kn_recipe'], o['gain'], o['prior']) == ('paper', 'learned', 'analytic')
    assert o['norm_options'] == dict(process_noise=False, pooled_variance=False, guard_ratio=None,
                                     propagate='output')
    # a recipe whose gain is fixed leaves --gain auto: the authors' 0.95 above 16 per normalisation
    assert parse_options(['--norm', 'bkn', '--kn-recipe', 'authors'] + BASE)['gain'] == 0.95
    assert parse_options(['--norm', 'bkn', '--kn-recipe', 'paper'] + BASE)['gain'] == 'learned'
    # other norms: the default recipe is no option of theirs, and they record no KN option
    o = parse_options(['--norm', 'bn', '--kn-recipe', 'library'] + BASE)
    assert o['norm_options'] == {} and o['gain'] == 'auto' and o['prior'] == 'analytic'


def test_script_bad_combination_exits_2(tmp_path):
    r = run_script(['--total-batch', '10', '--batch', '4', '--logdir', str(tmp_path / 'log')], tmp_path)
    assert r.returncode == 2, _fail_text(r)
    assert 'error: --total-batch (10) must be a multiple of --batch × --gpus (4 × 1)' in r.stderr
    assert 'Traceback' not in r.stderr
    assert not (tmp_path / 'log').exists()


def test_script_missing_data_exits_2(tmp_path):
    missing = str(tmp_path / 'no_such_data.tar.gz')
    r = run_script(TINY + ['--data', missing, '--logdir', str(tmp_path / 'log')], tmp_path)
    assert r.returncode == 2, _fail_text(r)
    assert 'error: data path %s does not exist' % missing in r.stderr
    assert 'Traceback' not in r.stderr
