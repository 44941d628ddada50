"""The architectures live in the top-level models/ and install as kalman_norm.models: the import
resolves to the repository's folder, a built wheel carries them (and the fused op's source) with no
top-level `models` package, and the installed wheel, away from the repository, trains a CIFAR model."""
import glob
import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile

import pytest

import kalman_norm.models

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_models_import_from_the_top_level_folder():
    assert os.path.realpath(os.path.dirname(kalman_norm.models.__file__)) == os.path.join(REPO, 'models')


def test_a_checkout_on_pythonpath_uses_its_own_models(tmp_path):
    """A fixed-commit worktree imported through PYTHONPATH trains with its own models/, not with
    those of the editable install this interpreter has (setup.py's package_dir maps only that one)."""
    checkout = tmp_path / 'checkout'
    shutil.copytree(os.path.join(REPO, 'kalman_norm'), str(checkout / 'kalman_norm'),
                    ignore=shutil.ignore_patterns('__pycache__', '*.so'))
    shutil.copytree(os.path.join(REPO, 'models'), str(checkout / 'models'), ignore=shutil.ignore_patterns('__pycache__'))
    shutil.copy(os.path.join(REPO, 'setup.py'), str(checkout / 'setup.py'))
    code = ('import importlib.util, kalman_norm; '
            'print(kalman_norm.__file__); print(importlib.util.find_spec("kalman_norm.models").origin)')
    r = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, timeout=120, cwd=str(tmp_path),
                       env=dict(os.environ, PYTHONPATH=str(checkout)))
    assert r.returncode == 0, r.stderr[-2000:]
    package, models = r.stdout.split()
    assert package == str(checkout / 'kalman_norm' / '__init__.py')
    assert models == str(checkout / 'models' / '__init__.py')


@pytest.fixture(scope='module')
def wheel(tmp_path_factory):
    out = tmp_path_factory.mktemp('wheel')
    # the build backend installed beside pip (setuptools >= 64, pyproject.toml's requirement)
    r = subprocess.run([sys.executable, '-m', 'pip', 'wheel', '--no-deps', '--no-build-isolation', '-q',
                        '-w', str(out), REPO], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    found = glob.glob(str(out / '*.whl'))
    assert len(found) == 1, found
    return found[0]


def test_wheel_holds_the_models_and_the_op_source_and_no_top_level_models(wheel):
    names = zipfile.ZipFile(wheel).namelist()
    assert {n.split('/')[0] for n in names} == {'kalman_norm', 'kalman_norm-0.1.0.dist-info'}
    for module in ('__init__', 'registry', 'resnet_cifar', 'inception_cifar', 'resnet_imagenet', 'inception_v2'):
        assert 'kalman_norm/models/%s.py' % module in names
    assert 'kalman_norm/ops/conv_prior.cc' in names


def test_installed_wheel_trains_a_cifar_model_away_from_the_repository(wheel, tmp_path):
    from test_cifar_trainer import write_cifar10
    target = tmp_path / 'site'
    r = subprocess.run([sys.executable, '-m', 'pip', 'install', '--no-deps', '-q', '--target', str(target), wheel],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    data = write_cifar10(tmp_path / 'data', n=8)
    code = ('import kalman_norm, kalman_norm.models as m, sys; assert m.__file__.startswith(%r), m.__file__; '
            'from kalman_norm.train import cifar; cifar.main(sys.argv[1:])' % str(target))
    args = ['-n', '1', '--batch', '2', '--total-batch', '8', '--steps-per-epoch', '2', '--epochs', '1',
            '--num-proc', '0', '--seed', '1', '--partial-data', 'true', '--norm', 'bkn',
            '--data', data, '--logdir', str(tmp_path / 'log'), '--threads', '1']
    # the installed copy first, then this environment's dependencies; not the repository
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(target), sysconfig.get_paths()['purelib']]))
    r = subprocess.run([sys.executable, '-I', '-c', 'import sys; sys.path[:0] = %r.split(%r); exec(%r)'
                        % (env['PYTHONPATH'], os.pathsep, code)] + args,
                       cwd=str(tmp_path), capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, (r.stdout[-1500:], r.stderr[-3000:])
    assert 'FINAL cifar10 resnet8 norm=bkn' in r.stdout
