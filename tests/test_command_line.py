"""The trainers' command lines are checked before TensorFlow loads (kalman_norm.train.command_line), with
the names they offer declared apart from the registries (kalman_norm.names) and equal to them."""
import os
import subprocess
import sys

import pytest

from kalman_norm import names, spec, transition
from kalman_norm.train import cifar, command_line, imagenet
from kalman_norm.data import DATASETS
from kalman_norm.models import model_names
from kalman_norm.norms import norm_names

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_declared_names_are_the_registries():
    assert names.NORM_NAMES == norm_names() == spec.NORMS
    assert names.PRIOR_METHODS == tuple(transition.METHODS)
    assert names.KN_RECIPE_NAMES == tuple(spec.KN_RECIPES)
    assert names.MODEL_NAMES == {family: model_names(family) for family in ('cifar', 'imagenet')}
    assert names.DATASETS == tuple(DATASETS)
    assert names.SCHEDULES == {'cifar': tuple(cifar.SCHEDULE_RECIPES), 'imagenet': tuple(imagenet.SCHEDULE_RECIPES)}


def test_the_trainers_take_these_tables():
    assert cifar.TASK.all_options() == command_line.CIFAR.options
    assert imagenet.TASK.all_options() == command_line.IMAGENET.options
    assert (cifar.TASK.prog, imagenet.TASK.prog) == (command_line.CIFAR.prog, command_line.IMAGENET.prog)


def _run(code):
    return subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, timeout=120, cwd=REPO)


@pytest.mark.parametrize('argv, line', [
    (['--lr', '-1'], 'error: --lr must be > 0.0, got -1.0'),
    (['--batch', '3'], None),            # well-typed: passes the first check (the trainer checks 128 % 3)
])
def test_a_bad_option_fails_without_tensorflow(argv, line):
    out = _run('import sys\nfrom kalman_norm.train.command_line import CIFAR, check_command_line\n'
               'try:\n    check_command_line(CIFAR, %r)\nexcept SystemExit as e:\n    print("exit", e.code)\n'
               'print("tensorflow" in sys.modules)' % argv)
    if line is None:
        assert out.stdout.split() == ['False'] and out.stderr == '', out.stderr
    else:
        assert out.stdout.split() == ['exit', '2', 'False'] and out.stderr.strip() == line, out.stderr


def test_the_script_fails_with_the_trainers_line(capsys):
    for script, main, argv in (('cifar_resnet.py', cifar.main, ['--lr', '-1']),
                               ('imagenet.py', imagenet.main, ['--fake-data', '--image-size', '8'])):
        out = subprocess.run([sys.executable, os.path.join(REPO, 'scripts', script)] + argv,
                             capture_output=True, text=True, timeout=120)
        assert out.returncode == 2 and len(out.stderr.strip().splitlines()) == 1, out.stderr
        with pytest.raises(SystemExit) as e:
            main(argv)                           # the trainer, with TensorFlow: the same line
        assert e.value.code == 2 and capsys.readouterr().err == out.stderr


def test_import_kalman_norm_loads_tensorflow_only_when_a_name_needs_it():
    out = _run('import sys, kalman_norm\nprint("tensorflow" in sys.modules)\n'
               'kalman_norm.norm_scope\nprint("tensorflow" in sys.modules, kalman_norm.flow.__name__)')
    assert out.stdout.split() == ['False', 'True', 'kalman_norm.flow'], out.stderr


def test_the_trainers_are_one_package_that_loads_nothing_by_itself():
    import kalman_norm
    top = os.path.dirname(kalman_norm.__file__)
    assert not {'trainer.py', 'cifar.py', 'imagenet.py', 'distributed.py', 'options.py', 'rundir.py'} \
        & set(os.listdir(top))
    assert {'core.py', 'cifar.py', 'imagenet.py', 'distributed.py', 'options.py', 'rundir.py',
            'command_line.py'} <= set(os.listdir(os.path.join(top, 'train')))
    out = _run('import sys, kalman_norm.train\nprint(sorted(m for m in sys.modules if m.startswith("kalman_norm.train")),'
               ' "tensorflow" in sys.modules)')
    assert out.stdout.strip() == "['kalman_norm.train'] False", out.stderr
