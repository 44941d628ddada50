"""The ImageNet trainer (kalman_norm/train/imagenet.py, scripts/imagenet.py) on a tiny ILSVRC-style folder.

The trainer core is tested through the CIFAR trainer (tests/test_cifar_trainer.py,
tests/test_run_trust.py); here: what is ImageNet's (options, data, schedules), one real training
run with both evaluation options and its resume, fake data, and the bad inputs.  Graphs are
ResNet-50 at 32x32 with BN (every architecture x norm builds in tests/test_imagenet_models.py).
"""
import json
import os
import re
import subprocess
import sys

import pytest

import kalman_norm  # noqa: F401
from kalman_norm.data import DataError
from kalman_norm.train import imagenet
from kalman_norm.train.options import OptionError

from test_imagenet_data import make_ilsvrc

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(REPO, 'scripts', 'imagenet.py')
TINY = ['--arch', 'resnet50', '--image-size', '32', '--batch', '2', '--total-batch', '4', '--epochs', '1',
        '--steps-per-epoch', '2', '--num-proc', '0', '--seed', '1', '--schedule', 'short']


def run(args, tmp_path, timeout=600):
    env = dict(os.environ, PYTHONUNBUFFERED='1')
    return subprocess.run([sys.executable, SCRIPT] + args, cwd=str(tmp_path), env=env, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True, timeout=timeout)


def final_line(r):
    lines = [line for line in r.stdout.splitlines() if line.startswith(('FINAL', 'DIVERGED'))]
    return lines[-1] if lines else ''


@pytest.fixture(scope='module')
def ilsvrc(tmp_path_factory):
    root = tmp_path_factory.mktemp('ilsvrc') / 'ilsvrc12'
    make_ilsvrc(root, n_train=4, n_val=2)
    return str(root)


def test_trains_evaluates_both_ways_and_resumes(ilsvrc, tmp_path):
    logdir = str(tmp_path / 'log')
    args = TINY + ['--norm', 'bn', '--eval-stats', 'both', '--data', ilsvrc, '--logdir', logdir]
    r = run(args, tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    line = final_line(r)
    assert line.startswith('FINAL imagenet resnet50 norm=bn batch=2 gpus=1 epochs=1'), line
    assert 'val-error-moving best' in line and 'val-error-batch best' in line
    stats = json.load(open(os.path.join(logdir, 'stats.json')))
    assert [s['epoch_num'] for s in stats] == [1] and 0 <= stats[0]['val-error-batch'] <= 1
    # one more epoch of the same configuration is another configuration (the schedule spans the
    # epochs); the same command again is the same run: nothing to do
    r = run(args, tmp_path)
    assert r.returncode == 0 and 'nothing to do' in r.stdout + r.stderr, r.stderr[-2000:]
    r = run(args[:args.index('--epochs')] + ['--epochs', '2'] + args[args.index('--epochs') + 2:], tmp_path)
    assert r.returncode == 2 and 'epochs was 1, now 2' in r.stderr


def test_fake_data_two_towers(tmp_path):
    r = run(TINY + ['--norm', 'gn', '--gpus', '2', '--total-batch', '8', '--fake-data', 'true', '--num-classes', '5',
                    '--logdir', str(tmp_path / 'log')], tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    assert final_line(r).startswith('FINAL imagenet-fake resnet50 norm=gn batch=2 gpus=2 epochs=1')
    log = open(tmp_path / 'log' / 'log.log').read()
    assert 'each tower normalizes its own 4 samples in groups of 2' in log


@pytest.mark.parametrize('argv,match', [
    ([], 'give either --data DIR'),
    (['--fake-data', 'true', '--data', 'x'], 'give either --data DIR'),
    (['--data', 'x', '--num-classes', '5'], '--num-classes applies to --fake-data only'),
    (['--fake-data', 'true', '--model-option', 'width=2'], '--model-option width does not apply to --arch resnet50'),
    (['--fake-data', 'true', '--arch', 'vgg'], "invalid choice: 'vgg'"),
    (['--fake-data', 'true', '--image-size', '16'], '--image-size must be >= 32'),
    (['--fake-data', 'true', '--total-batch', '6', '--batch', '4'], 'must be a multiple of --batch'),
    (['--fake-data', 'true', '--cluster', 'ps=h0:1', '--task', 'chief:0'], 'task'),
])
def test_bad_options_exit_2_with_one_line(argv, match, capsys):
    args = ['--logdir', 'unused'] + argv
    with pytest.raises(SystemExit) as e:
        imagenet.main(args)
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert match in err, err


def test_missing_data_dir_is_one_line(tmp_path):
    r = run(TINY + ['--data', str(tmp_path / 'nowhere'), '--logdir', str(tmp_path / 'log')], tmp_path)
    assert r.returncode == 2, r.stderr[-2000:]
    assert 'Traceback' not in r.stderr and r.stderr.strip().splitlines()[-1].startswith('error: ')
    assert not (tmp_path / 'log').exists()


def test_learning_rate_scales_with_the_total_batch():
    points, interp = imagenet.lr_schedule('paper', 0.1, 90, 1024)
    assert points[0] == (0, pytest.approx(0.04)) and points[1] == (5, pytest.approx(0.4))
    assert [e for e, _ in points[2:]] == [30, 60, 80] and interp == 'linear'
    o = imagenet.parse_options(['--fake-data', 'true', '--norm', 'bkn', '--batch', '4', '--gpus', '8',
                                '--total-batch', '256'])
    assert (o['epochs'], o['weight_decay'], o['gain'], o['tower_batch']) == (90, 1e-4, 0.1, 32)
    with pytest.raises(OptionError, match='not divisible by --gpus 3'):
        imagenet.parse_options(['--fake-data', 'true', '--gpus', '3'])


@pytest.mark.parametrize('arch', imagenet.ARCHS)
def test_input_description_log_directory_and_test_batch_of_each_arch(arch, tmp_path):
    """The task's settings and describe_input hook as the core reads them: the default log directory
    is <data>-<arch>-<norm>-b<batch>-g<gpus>-<hash> (the names of the runs recorded so far), and
    test batches hold about 64 images, a multiple of --batch."""
    fake = imagenet.parse_options(['--fake-data', 'true', '--arch', arch, '--norm', 'gn', '--batch', '3',
                                   '--total-batch', '6', '--gpus', '2', '--image-size', '64', '--num-classes', '7'])
    assert imagenet.TASK.describe_input(fake) == ('imagenet-fake', (64, 64, 3), 7)
    assert re.fullmatch(re.escape(os.path.join('train_log', 'imagenet-fake-%s-gn-b3-g2-' % arch)) + '[0-9a-f]{8}',
                        fake['logdir']), fake['logdir']
    assert imagenet.TASK.eval_batch_size(fake) == 66           # 22 groups of 3: the first multiple >= 64
    real = imagenet.parse_options(['--data', str(tmp_path), '--arch', arch])
    assert imagenet.TASK.describe_input(real) == ('imagenet', (224, 224, 3), 1000)
    assert re.fullmatch(re.escape(os.path.join('train_log', 'imagenet-%s-bn-b128-g1-' % arch)) + '[0-9a-f]{8}',
                        real['logdir']), real['logdir']
    assert imagenet.TASK.eval_batch_size(real) == 128          # one group when --batch exceeds 64
    assert imagenet.TASK.data_errors == (DataError,)


def test_kn_recipe_is_an_option_of_the_imagenet_trainer_too():
    """The trainer core's --kn-recipe: the library's recipe by default, the paper's one flag away."""
    argv = ['--fake-data', 'true', '--norm', 'bkn', '--batch', '4', '--gpus', '8', '--total-batch', '32']
    o = imagenet.parse_options(argv)
    assert (o['prior'], o['gain'], o['norm_options']['propagate'], o['norm_options']['process_noise']) == \
        ('analytic', 0.1, 'output', False)
    o = imagenet.parse_options(argv + ['--kn-recipe', 'paper'])
    assert (o['prior'], o['gain'], o['norm_options']['propagate'], o['norm_options']['guard_ratio']) == \
        ('mc', 'learned', 'input', None)
    with pytest.raises(OptionError, match='--kn-recipe applies to bkn and gkn'):
        imagenet.parse_options(['--fake-data', 'true', '--norm', 'gn', '--kn-recipe', 'authors'])


IMAGENET_CONFIGS = sorted(os.listdir(os.path.join(REPO, 'configs', 'imagenet')))


@pytest.mark.parametrize('name', IMAGENET_CONFIGS)
def test_paper_configs_parse_and_state_the_papers_number(name):
    path = os.path.join(REPO, 'configs', 'imagenet', name)
    text = open(path).read()
    # the paper's rows state its number; the field's norms (issue 22) at its settings say they are not in it
    assert '# Paper (Table' in text or '# Paper: top-1' in text or '# Not in the paper: ' in text
    o = imagenet.parse_options(['--config', path, '--data', 'unused'])
    if o['norm'] == 'mabn':
        # per-device histories live in one training tower: 8 GPUs simulated as 8 groups of one tower
        assert o['gpus'] == 1 and o['tower_batch'] == 8 * o['batch'] and o['norm_options']['history_mode'] == 'per_device'
    else:
        assert o['gpus'] == 8 and o['tower_batch'] == o['batch']          # one normalisation group per GPU
    table = name.split('_')[0]
    assert o['batch'] == {'table1': 32, 'table4': 4, 'table5': 1}[table]


def test_tables_1_4_5_have_every_row():
    rows = {n[:-len('.toml')] for n in IMAGENET_CONFIGS}
    assert {'table1_inception_v2_bn_b32', 'table1_inception_v2_bkn_b32', 'table1_resnet50_bn_b32',
            'table1_resnet50_gn_b32', 'table1_resnet50_bkn_b32', 'table1_resnet101_bn_b32',
            'table1_resnet101_bkn_b32', 'table4_resnet50_bn_b4', 'table4_resnet50_brn_b4',
            'table4_resnet50_gn_b4', 'table4_resnet50_bkn_b4', 'table5_inception_v2_bn_b1',
            'table5_inception_v2_brn_b1', 'table5_inception_v2_bkn_b1'} <= rows
    # the micro-batch field (issue 22) at Table 4's and Table 5's per-GPU batches
    field = {'bnws', 'gnws', 'bknws', 'frn', 'evonorm_s0', 'evonorm_b0', 'mabn'}
    assert {'table4_resnet50_%s_b4' % n for n in field} | {'table5_inception_v2_%s_b1' % n for n in field} <= rows
    assert len(rows) == 14 + 2 * len(field)
