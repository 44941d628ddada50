"""Faults a user meets, each reproduced: one clear line (or the right behaviour), a truthful status.

A diverged last step, a checkpoint that cannot be written, SIGTERM and Ctrl-C, a resume on other
data, a norm option the trainer owns, the two evaluations on different images, a required fused
op without a compiler, a damaged cached fused-op library, a read-only log directory, a damaged
checkpoint, boolean flags, and how fast a bad option is reported.  (A cluster task that never
answers: tests/test_distributed.py.)  Tiny data and few steps, as in tests/test_cifar_trainer.py.
"""
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

import kalman_norm  # noqa: F401  (before tensorflow / tensorpack)
import tensorflow as tf
from tensorpack.callbacks import Callback

from kalman_norm import ops
from kalman_norm.train import cifar, imagenet, rundir, core as trainer
from kalman_norm.train.cifar import parse_options
from kalman_norm.train.options import OptionError

from test_cifar_trainer import (SCRIPT, TINY, _checkpoints, _env, _fail_text, data_dirs, memory_dataset,  # noqa: F401
                                no_grappler_session, output_lines, run_script, write_folder)

tf1 = tf.compat.v1


def _status(logdir):
    with open(os.path.join(str(logdir), 'status.json')) as f:
        return json.load(f)


def _error_lines(err):
    """stderr without tensorpack's progress bars."""
    return [line for line in err.strip().splitlines() if line.strip() and not re.search(r'\d+%\|', line)]


def _train(argv, ds=None, extra_callbacks=()):
    """trainer.train in-process on a memory data set, with callbacks added to its configuration."""
    o = parse_options(TINY + list(argv))
    real = trainer.make_config

    def with_extra(*args):
        config = real(*args)
        config.callbacks.extend(extra_callbacks)
        return config

    trainer.make_config = with_extra
    try:
        return o, trainer.train(cifar.TASK, o, cifar.TASK.data_from(ds or memory_dataset(), o),
                                session_creator=no_grappler_session())
    finally:
        trainer.make_config = real


# ----------------------------------------------------------------------------------------------
# 2. a diverged last step

def test_an_update_too_large_for_the_forward_pass_is_diverged_not_finished(tmp_path):
    """One step at lr 1e38: the loss (computed before the update) is finite, the weights after it
    are finite but ~1e37, and every validation logit is inf/NaN.  It used to end 'finished' with
    a 100% error reported as the result."""
    logdir = tmp_path / 'log'
    o, (line, code) = _train(['--steps-per-epoch', '1', '--lr', '1e38', '--logdir', str(logdir)])
    assert code == trainer.EXIT_DIVERGED, line
    assert line.startswith('DIVERGED ') and "logits are not finite after global step 1 (epoch 1)" in line
    status = _status(logdir)
    assert status['status'] == 'diverged' and status['step'] == 1 and 'logits' in status['state']
    assert not (logdir / 'stats.json').exists()          # no result recorded for the epoch


class _PoisonLastStep(Callback):
    """After the epoch's last step, one variable becomes NaN: what an update that overflows does."""

    def _setup_graph(self):
        var = [v for v in tf1.global_variables() if v.op.name == 'conv0/W'][0]
        self._poison = var.assign(tf.fill(tf.shape(var), np.float32(np.nan)))

    def _trigger_step(self):
        if self.local_step == self.trainer.steps_per_epoch - 1:
            self.trainer.sess.run(self._poison)


def test_non_finite_weights_after_the_last_step_are_diverged_and_not_saved(tmp_path):
    logdir = tmp_path / 'log'
    o, (line, code) = _train(['--logdir', str(logdir)], extra_callbacks=[_PoisonLastStep()])
    assert code == trainer.EXIT_DIVERGED, line
    assert '1 variable(s) are not finite, e.g. conv0/W after global step 2 (epoch 1)' in line
    assert _status(logdir)['status'] == 'diverged'
    assert _checkpoints(str(logdir)) == []               # checked before the checkpoint is written


# ----------------------------------------------------------------------------------------------
# 4. a checkpoint that cannot be written

def test_a_checkpoint_that_cannot_be_written_stops_the_run(data_dirs, tmp_path, monkeypatch, capsys):
    def disk_full(*args, **kwargs):
        raise tf.errors.ResourceExhaustedError(None, None, 'model-2.data-00000-of-00001.tempstate: No space left on '
                                                           'device')
    real_save = tf1.train.Saver.save
    monkeypatch.setattr(tf1.train.Saver, 'save', disk_full)
    monkeypatch.setenv('KALMAN_NORM_CACHE', str(tmp_path / 'cache'))
    logdir = tmp_path / 'log'
    with pytest.raises(SystemExit) as e:
        cifar.main(TINY + ['--data', data_dirs['folder'], '--logdir', str(logdir)])
    assert e.value.code == trainer.EXIT_FAILED
    out, err = capsys.readouterr()
    err = '\n'.join(_error_lines(err))
    assert len(err.splitlines()) == 1, err
    assert err.startswith('error: cannot write the checkpoint of epoch 1 in %s' % logdir), err
    assert 'No space left on device' in err
    assert not any(line.startswith('FINAL') for line in output_lines(out))
    status = _status(logdir)
    assert status['status'] == 'failed' and status['epochs_done'] == 0
    # resumable: the same command trains once the disk has room again
    monkeypatch.setattr(tf1.train.Saver, 'save', real_save)
    assert cifar.main(TINY + ['--data', data_dirs['folder'], '--logdir', str(logdir)]).startswith('FINAL ')
    assert _status(logdir)['status'] == 'finished'


# ----------------------------------------------------------------------------------------------
# 5. SIGTERM and Ctrl-C

@pytest.mark.parametrize('signum', [signal.SIGTERM, signal.SIGINT], ids=['SIGTERM', 'SIGINT'])
def test_a_signal_ends_the_run_with_one_line_and_it_resumes(signum, data_dirs, tmp_path):
    logdir = tmp_path / 'log'
    args = TINY + ['--epochs', '12', '--data', data_dirs['folder'], '--logdir', str(logdir)]
    p = subprocess.Popen([sys.executable, SCRIPT] + args, cwd=str(tmp_path), env=_env(tmp_path),
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        deadline = time.time() + 300
        while not (logdir / 'stats.json').exists() and p.poll() is None and time.time() < deadline:
            time.sleep(0.2)
        assert p.poll() is None, 'the run ended before the signal'
        # SIGTERM to the trainer, as a job scheduler does; SIGINT to the process group, as Ctrl-C does
        os.kill(p.pid, signum) if signum == signal.SIGTERM else os.killpg(p.pid, signum)
        out, err = p.communicate(timeout=120)
    finally:
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGKILL)
    r = subprocess.CompletedProcess(p.args, p.returncode, out, err)
    assert p.returncode == 128 + signum, _fail_text(r)
    assert 'Traceback' not in out + err, _fail_text(r)
    last = output_lines(out)[-1]
    name = signal.Signals(signum).name
    assert last.startswith('INTERRUPTED cifar10 resnet8 norm=bn') and 'by %s after epoch' % name in last, last
    status = _status(logdir)
    assert status['status'] == 'interrupted' and status['signal'] == name and 'pid' not in status
    done = status['epochs_done']
    assert done >= 1 and 'the same command resumes after epoch %d' % done in last
    r = run_script(args, tmp_path)
    assert r.returncode == 0, _fail_text(r)
    assert 'Resuming after epoch %d' % done in r.stdout + r.stderr
    assert _status(logdir)['status'] == 'finished'
    assert [s['epoch_num'] for s in json.load(open(logdir / 'stats.json'))] == list(range(1, 13))


# ----------------------------------------------------------------------------------------------
# 6. resuming on other data

def test_the_data_content_hash_tells_data_sets_apart():
    ds = memory_dataset()
    same = memory_dataset()
    assert ds.content_hash() == same.content_hash()
    swapped = memory_dataset()
    swapped.train_labels = np.where(swapped.train_labels == 0, 1, np.where(swapped.train_labels == 1, 0,
                                                                           swapped.train_labels)).astype(np.int32)
    assert swapped.content_hash() != ds.content_hash()


def test_a_resume_on_other_data_is_refused(data_dirs, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv('KALMAN_NORM_CACHE', str(tmp_path / 'cache'))
    logdir = tmp_path / 'log'
    args = TINY + ['--logdir', str(logdir)]
    assert cifar.main(args + ['--data', data_dirs['folder']]).startswith('FINAL ')
    recorded = json.load(open(logdir / 'options.json'))['data_hash']
    # the same images with two classes swapped
    other = tmp_path / 'swapped'
    shutil.copytree(data_dirs['folder'], other)
    for split in ('train', 'test'):
        os.rename(other / split / 'c0', other / split / 'tmp')
        os.rename(other / split / 'c1', other / split / 'c0')
        os.rename(other / split / 'tmp', other / split / 'c1')
    before = sorted(os.listdir(logdir))
    with pytest.raises(SystemExit) as e:
        cifar.main(args + ['--data', str(other)])
    assert e.value.code == 2
    err = _error_lines(capsys.readouterr().err)
    assert len(err) == 1 and 'was trained on other data (content hash %s' % recorded[:12] in err[0]
    assert sorted(os.listdir(logdir)) == before


# ----------------------------------------------------------------------------------------------
# 7. norm options that the trainer sets

@pytest.mark.parametrize('norm', ['bn', 'bkn'])
@pytest.mark.parametrize('option,flag', [('data_format=NCHW', '--model-option data_format'),
                                         ('training=true', 'the tower'), ('eval_stats=batch', '--eval-stats'),
                                         ('group_size=4', '--batch')])
def test_norm_options_the_trainer_owns_are_refused(norm, option, flag, capsys):
    argv = ['--norm', norm, '--norm-option', option, '--logdir', 'unused']
    with pytest.raises(OptionError, match='the trainer sets it itself'):
        parse_options(argv)
    with pytest.raises(SystemExit) as e:
        cifar.main(argv)
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and flag in err and option.split('=')[0] in err, err


# ----------------------------------------------------------------------------------------------
# 8. --eval-stats both: the same images for both statistics

def test_both_evaluations_see_the_same_images():
    # --batch 3: a test batch is 258 images; 262 leave 4, not whole groups of 3, which batch
    # statistics cannot normalise: both evaluations must then drop them
    ds = memory_dataset(n_train=40, n_test=262)
    o = parse_options(['--batch', '3', '--total-batch', '6', '--eval-stats', 'both', '--num-proc', '0',
                       '--logdir', 'unused'])
    data = cifar.TASK.data_from(ds, o)
    seen = []

    def test(batch_size, whole_groups_of):
        flow = data.test(batch_size, whole_groups_of)
        flow.reset_state()
        seen.append(sum(len(batch[1]) for batch in flow))
        return data.test(batch_size, whole_groups_of)

    with tf.Graph().as_default():
        trainer.make_config(cifar.TASK, o, data._replace(test=test), None)
    assert seen == [258, 258]
    # with moving statistics alone every image is evaluated
    o = parse_options(['--batch', '3', '--total-batch', '6', '--num-proc', '0', '--logdir', 'unused'])
    seen.clear()
    with tf.Graph().as_default():
        trainer.make_config(cifar.TASK, o, data._replace(test=test), None)
    assert seen == [262]


# ----------------------------------------------------------------------------------------------
# 9, 10. the fused prior

def test_a_required_fused_prior_without_a_compiler_is_one_line(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(ops, '_state', {})
    monkeypatch.setenv('KALMAN_NORM_CACHE', str(tmp_path / 'cache'))
    monkeypatch.setenv('CXX', str(tmp_path / 'no-such-compiler'))
    monkeypatch.setenv(ops.ENV_SWITCH, '1')
    with pytest.raises(SystemExit) as e:
        cifar.main(['--norm', 'bkn', '--batch', '2', '--logdir', str(tmp_path / 'log')])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1, err
    assert err.startswith('error: KALMAN_NORM_FUSED_PRIOR=1 but the fused prior is unavailable: no C++ compiler')
    assert not (tmp_path / 'log').exists()


def _fake_compiler(tmp_path, calls):
    """A "compiler" that writes 100 kB of fixed bytes to its -o path and counts its builds (the
    real build needs g++ and TensorFlow's headers; what is tested here is the cache around it).
    A run without -shared is the build's probe of a flag, not a build: not counted."""
    script = tmp_path / 'fake-cxx'
    script.write_text('#!%s\nimport sys\nif "-shared" in sys.argv:\n    out = sys.argv[sys.argv.index("-o") + 1]\n'
                      '    open(out, "wb").write(bytes(range(256)) * 400)\n    open(%r, "a").write("x")\n'
                      % (sys.executable, str(calls)))
    script.chmod(0o755)
    return str(script)


def test_a_damaged_cached_library_is_rebuilt_not_loaded(tmp_path, monkeypatch):
    """A library cut to 20 kB crashed every process in dlopen (SIGBUS) naming no file; it is now
    checked against the size and hash written beside it, and rebuilt before anything loads it."""
    calls = tmp_path / 'calls'
    monkeypatch.setenv('KALMAN_NORM_CACHE', str(tmp_path / 'cache'))
    monkeypatch.setenv('CXX', _fake_compiler(tmp_path, calls))
    path = ops.build()
    size = os.path.getsize(path)
    assert size == 102400 and calls.read_text() == 'x'
    assert ops.verify(path) is None and open(ops.checksum_path(path)).read().split()[0] == str(size)
    assert ops.build() == path and calls.read_text() == 'x'           # a sound library is reused
    with open(path, 'r+b') as f:
        f.truncate(20000)
    assert ops.verify(path) == '20000 bytes, %d bytes when built' % size
    loaded = []
    monkeypatch.setattr(ops, '_libraries', {})
    monkeypatch.setattr(tf, 'load_op_library', lambda p: loaded.append((p, os.path.getsize(p))) or 'library')
    assert ops._load() == 'library'
    assert loaded == [(path, size)] and calls.read_text() == 'xx'     # rebuilt, then loaded whole
    assert ops.verify(path) is None
    # a library without its record (from before records were written) is rebuilt once too
    os.remove(ops.checksum_path(path))
    assert 'no recorded size and hash' in ops.verify(path)
    ops.build()
    assert calls.read_text() == 'xxx' and ops.verify(path) is None
    assert sorted(os.listdir(tmp_path / 'cache')) == sorted([os.path.basename(path),
                                                             os.path.basename(ops.checksum_path(path))])


# ----------------------------------------------------------------------------------------------
# 11. a read-only log directory

def _without_root_privileges():
    """root ignores permission bits; setpriv drops the capability that lets it (uid 0 stays)."""
    if os.getuid() != 0:
        return []
    return ['setpriv', '--inh-caps=-dac_override,-dac_read_search',
            '--bounding-set=-dac_override,-dac_read_search']


def test_a_read_only_logdir_is_one_line(tmp_path):
    logdir = tmp_path / 'log'
    logdir.mkdir()
    logdir.chmod(0o555)
    try:
        r = subprocess.run(_without_root_privileges() + [sys.executable, SCRIPT, '--logdir', str(logdir)],
                           cwd=str(tmp_path), env=_env(tmp_path), capture_output=True, text=True, timeout=300)
    finally:
        logdir.chmod(0o755)
    assert r.returncode == 2, _fail_text(r)
    assert r.stderr.strip().splitlines()[-1] == ('error: --logdir %s is not writable: make it writable, or pass '
                                                 'another --logdir' % logdir), _fail_text(r)
    assert 'Traceback' not in r.stderr
    assert os.listdir(logdir) == []


def test_a_logdir_that_fails_when_claimed_is_one_line(tmp_path, monkeypatch):
    """Writability can change between the check and the claim (or a file system be read-only to
    root too): the claim's own failure is the same kind of line."""
    real_open = os.open

    def read_only(path, *args, **kwargs):
        if path.endswith(rundir.LOCK_FILE):
            raise OSError(30, 'Read-only file system', path)
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr(os, 'open', read_only)
    with pytest.raises(OptionError, match=r'--logdir .* cannot be written \(Read-only file system\)'):
        rundir.RunDir(str(tmp_path / 'log'), {'a': 1}, {}).claim()


# ----------------------------------------------------------------------------------------------
# 12. a damaged checkpoint

@pytest.fixture(scope='module')
def three_epochs(tmp_path_factory):
    ds = memory_dataset()
    logdir = str(tmp_path_factory.mktemp('three') / 'log')
    o, (line, code) = _train(['--epochs', '3', '--keep-checkpoints', '5', '--logdir', logdir], ds)
    assert code == 0 and _checkpoints(logdir) == [2, 4, 6]
    return logdir, ds


def _truncate_checkpoint(logdir, step):
    data = [f for f in os.listdir(logdir) if f.startswith('model-%d.data-' % step)][0]
    path = os.path.join(logdir, data)
    with open(path, 'r+b') as f:
        f.truncate(os.path.getsize(path) // 2)
    return path


def test_a_truncated_checkpoint_is_named_and_the_previous_one_resumes(three_epochs, tmp_path, caplog):
    source, ds = three_epochs
    logdir = str(tmp_path / 'log')
    shutil.copytree(source, logdir)
    os.remove(os.path.join(logdir, 'status.json'))      # as if killed after epoch 3's validation
    _truncate_checkpoint(logdir, 6)
    assert rundir.unreadable_checkpoint(os.path.join(logdir, 'model-6'))
    o, (line, code) = _train(['--epochs', '3', '--keep-checkpoints', '5', '--logdir', logdir], ds)
    assert code == 0 and 'epochs=3' in line
    log = open(os.path.join(logdir, 'log.log')).read()
    assert 'The checkpoint %s (epoch 3) cannot be read' % os.path.join(logdir, 'model-6') in log
    assert "resuming from epoch 2's instead" in log and 'Resuming after epoch 2' in log
    stats = json.load(open(os.path.join(logdir, 'stats.json')))
    assert [(s['epoch_num'], s['global_step']) for s in stats] == [(1, 2), (2, 4), (3, 6)]
    assert rundir.unreadable_checkpoint(os.path.join(logdir, 'model-6')) is None      # written again
    assert stats[:2] == json.load(open(os.path.join(source, 'stats.json')))[:2]


def test_no_readable_checkpoint_left_is_one_line(three_epochs, tmp_path, capsys):
    source, ds = three_epochs
    logdir = str(tmp_path / 'log')
    shutil.copytree(source, logdir)
    for step in (2, 4, 6):
        _truncate_checkpoint(logdir, step)
    o = parse_options(TINY + ['--epochs', '3', '--keep-checkpoints', '5', '--logdir', logdir])
    with pytest.raises(OptionError, match=r'the checkpoint %s \(epoch 1\) cannot be read .* no earlier checkpoint'
                                          % os.path.join(logdir, 'model-2')):
        trainer.train(cifar.TASK, o, cifar.TASK.data_from(ds, o), session_creator=no_grappler_session())


# ----------------------------------------------------------------------------------------------
# issue 20: boolean flags

def test_boolean_flags_take_a_bare_flag_or_a_value():
    base = ['--arch', 'resnet50', '--image-size', '64', '--logdir', 'unused']
    assert imagenet.parse_options(['--fake-data'] + base)['fake_data'] is True
    assert imagenet.parse_options(['--fake-data', 'true'] + base)['fake_data'] is True
    with pytest.raises(OptionError, match='give either --data DIR'):
        imagenet.parse_options(['--fake-data', 'false'] + base)
    assert parse_options(['--partial-data', '--logdir', 'unused'])['partial_data'] is True
    assert parse_options(['--partial-data', 'False', '--logdir', 'unused'])['partial_data'] is False
    assert parse_options(['--nesterov', '--logdir', 'unused'])['nesterov'] is True
    with pytest.raises(SystemExit):
        parse_options(['--partial-data', 'maybe', '--logdir', 'unused'])
