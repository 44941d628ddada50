"""A training run's log directory: one configuration, one live process, a status that tells the truth.

Everything a later reader trusts (checkpoints, ``stats.json``, results) lives in the log
directory, so the directory guards itself:

* **Identity.**  ``options.json`` records the options that change what a run computes (see
  :class:`kalman_norm.train.options.Opt`) when the directory is first used.  A later run with other
  values for any of them is refused before it touches anything; the default directory name
  carries a short hash of the identity, so different configurations never meet.
* **One process.**  ``.lock`` is held with ``flock`` for the life of the training process; the
  kernel releases it when the process dies, however it dies, so a killed run never blocks its
  own resume, while a second live run on the same directory fails at once.
* **Status.**  ``status.json`` says ``running``, ``finished``, ``stopped``, ``diverged`` (with the
  step and loss), ``interrupted`` (SIGINT/SIGTERM; resumable) or ``failed`` (a run-time failure
  such as a checkpoint that cannot be written; resumable), written atomically; a diverged run is
  never reported as a result.
* **Data.**  ``options.json`` records the training and test data's content hash
  (``data_hash``); a resume with other data is refused.

Resuming from any kill point is :func:`restorable_epoch`: the last epoch that is both recorded
in ``stats.json`` and has a checkpoint that reads back whole.
"""
import errno
import fcntl
import hashlib
import json
import os
import re

import tensorflow as tf
from tensorpack.utils import logger

from .options import OptionError
from ..provenance import atomic_write_json, utc_now

__all__ = ['RunDir', 'identity_hash', 'atomic_write_json', 'last_complete_epoch', 'restorable_epoch',
           'unreadable_checkpoint', 'read_stats', 'truncate_stats', 'RunDiverged', 'RunFailed']

OPTIONS_FILE = 'options.json'
STATUS_FILE = 'status.json'
LOCK_FILE = '.lock'
#: files a launcher (scripts/reproduce.py) may write into a log directory before the trainer
LAUNCHER_FILES = ('run.json', 'stdout.log')


class RunDiverged(RuntimeError):
    """Training produced a non-finite loss, or left a non-finite state after an epoch's last step
    (weights, or the validation's logits); the run was stopped and recorded as diverged.

    ``state``: None for a non-finite loss, else what was found not finite (one phrase)."""

    def __init__(self, step, epoch, loss, hint, state=None):
        self.step, self.epoch, self.loss, self.state = step, epoch, loss, state
        if state:
            what = '%s after global step %d (epoch %d)' % (state, step, epoch)
        else:
            what = 'the loss is %s at global step %d (epoch %d)' % (loss, step, epoch)
        super(RunDiverged, self).__init__('training diverged: %s. %s' % (what, hint))


class RunFailed(RuntimeError):
    """The run cannot go on for a reason outside its options (a checkpoint that cannot be
    written, a cluster task that never answers); the message is one line saying what to do."""


def _canonical(value):
    """JSON-able, order-independent form of an option value (tuples -> lists, floats exact)."""
    return json.loads(json.dumps(value, sort_keys=True, default=str))


def identity_hash(identity):
    text = json.dumps(_canonical(identity), sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:8]


def _read_json(path):
    try:
        with open(path) as f:
            return json.load(f)
    except FileNotFoundError:
        return None
    except ValueError as e:
        raise OptionError('%s is not valid JSON (%s); this log directory is damaged — move it away or '
                          'pass another --logdir' % (path, e))


def last_complete_epoch(logdir, steps_per_epoch, before=None):
    """The last epoch (before epoch ``before``, if given) whose statistics are in stats.json AND
    whose checkpoint exists, or 0.

    tensorpack saves an epoch's checkpoint before the validation that completes its stats, so a
    kill in between leaves a checkpoint one epoch ahead of stats.json; a kill during the first
    epoch's validation leaves a checkpoint and no stats at all.  Both resume from the last
    epoch that has both (or from scratch)."""
    stats = _read_json(os.path.join(logdir, 'stats.json')) or []
    recorded = sorted({int(s['epoch_num']) for s in stats if 'epoch_num' in s})
    for epoch in reversed(recorded):
        if before is not None and epoch >= before:
            continue
        prefix = os.path.join(logdir, 'model-%d' % (epoch * steps_per_epoch))
        if os.path.exists(prefix + '.index') and any(
                f.startswith('model-%d.data-' % (epoch * steps_per_epoch)) for f in os.listdir(logdir)):
            return epoch
    return 0


def unreadable_checkpoint(prefix):
    """Why the checkpoint ``prefix`` cannot be restored (one line), or None if every tensor reads."""
    try:
        reader = tf.compat.v1.train.NewCheckpointReader(prefix)
        for name in reader.get_variable_to_shape_map():
            reader.get_tensor(name)
    except Exception as e:      # OpError subclasses, and IndexError for a truncated data file
        text = (getattr(e, 'message', None) or str(e)).strip().splitlines()
        return text[0] if text else type(e).__name__
    return None


def restorable_epoch(logdir, steps):
    """The last complete epoch (:func:`last_complete_epoch`) whose checkpoint reads back whole; a
    damaged one (truncated by a full disk, say) is named in the log and the previous kept
    checkpoint with its epoch's statistics is used instead."""
    epoch = last_complete_epoch(logdir, steps)
    while epoch:
        prefix = os.path.join(logdir, 'model-%d' % (epoch * steps))
        problem = unreadable_checkpoint(prefix)
        if problem is None:
            return epoch
        earlier = last_complete_epoch(logdir, steps, before=epoch)
        if not earlier:
            raise OptionError('the checkpoint %s (epoch %d) cannot be read (%s) and no earlier checkpoint with '
                              'its epoch\'s statistics is kept: move %s away to train from scratch'
                              % (prefix, epoch, problem, logdir))
        logger.warn('The checkpoint %s (epoch %d) cannot be read (%s); resuming from epoch %d\'s instead'
                    % (prefix, epoch, problem, earlier))
        epoch = earlier
    return 0


def read_stats(logdir):
    """stats.json's epochs ([] before the first epoch's)."""
    return _read_json(os.path.join(logdir, 'stats.json')) or []


def truncate_stats(logdir, epoch):
    """stats.json keeps exactly the epochs the resumed run will not redo."""
    path = os.path.join(logdir, 'stats.json')
    stats = _read_json(path)
    if stats is None:
        return
    kept = [s for s in stats if s.get('epoch_num', 0) <= epoch]
    if len(kept) != len(stats):
        logger.warn('stats.json has epochs after the last checkpointed epoch %d; they will be redone' % epoch)
        atomic_write_json(path, kept) if kept else os.remove(path)


class RunDir(object):
    """The log directory of one run configuration.

    Args:
        path: the directory.
        identity: dict of the options that define what the run computes.
        record: dict written to options.json beside the identity (every resolved option).
    """

    def __init__(self, path, identity, record):
        self.path = path
        self.identity = _canonical(identity)
        self.record = _canonical(record)
        self._lock_fd = None

    # -- checks that change nothing -------------------------------------------------------------
    @staticmethod
    def check_path(path):
        if os.path.exists(path) and not os.path.isdir(path):
            raise OptionError('--logdir %s exists and is not a directory' % path)
        parent = os.path.dirname(os.path.abspath(path))
        while not os.path.exists(parent):
            parent = os.path.dirname(parent)
        if not os.path.isdir(parent) or not os.access(parent, os.W_OK):
            raise OptionError('--logdir %s: cannot create it under %s' % (path, parent))
        if os.path.isdir(path) and not os.access(path, os.W_OK | os.X_OK):
            raise OptionError('--logdir %s is not writable: make it writable, or pass another --logdir' % path)

    def recorded_options(self):
        return _read_json(os.path.join(self.path, OPTIONS_FILE))

    def status(self):
        return _read_json(os.path.join(self.path, STATUS_FILE)) or {}

    def check_identity(self):
        """OptionError if the directory holds a run of another configuration (or of none we know)."""
        self.check_path(self.path)
        if not os.path.isdir(self.path) or not os.listdir(self.path):
            return
        recorded = self.recorded_options()
        if recorded is None or 'identity' not in recorded:
            entries = [f for f in os.listdir(self.path) if f != LOCK_FILE and f not in LAUNCHER_FILES]
            if entries:
                raise OptionError('--logdir %s already holds files (%s) but no %s from this trainer; '
                                  'pass an empty or new --logdir' % (self.path, ', '.join(sorted(entries)[:4]),
                                                                     OPTIONS_FILE))
            return
        self._check_data(recorded)
        old = recorded['identity']
        diff = sorted(k for k in set(old) | set(self.identity) if old.get(k, '<unset>') != self.identity.get(k, '<unset>'))
        if diff:
            raise OptionError('--logdir %s belongs to another configuration: %s; use another --logdir (or '
                              'leave it out to get one named after the options)'
                              % (self.path, '; '.join('%s was %r, now %r' % (k, old.get(k, '<unset>'),
                                                                               self.identity.get(k, '<unset>'))
                                                     for k in diff)))
        status = self.status()
        if status.get('status') == 'diverged':
            raise OptionError('--logdir %s holds a run that diverged (%s); it is kept as evidence. '
                              'Change the options or pass another --logdir' % (self.path, status.get('message')))

    def _check_data(self, recorded):
        old, new = recorded.get('data_hash'), self.record.get('data_hash')
        if old and new and old != new:
            raise OptionError('--logdir %s was trained on other data (content hash %s, now %s from %s); pass '
                              'the same data, or another --logdir' % (self.path, old[:12], new[:12],
                                                                     self.record.get('data') or 'the default data'))

    # -- taking the directory -------------------------------------------------------------------
    def claim(self):
        """Create the directory, take its lock (OptionError if a live process holds it) and
        record the options on first use.  Call only after everything else was checked."""
        self.check_identity()
        try:
            os.makedirs(self.path, exist_ok=True)
            fd = os.open(os.path.join(self.path, LOCK_FILE), os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as e:       # a read-only directory or file system, a full disk
            raise OptionError('--logdir %s cannot be written (%s): make it writable, or pass another --logdir'
                              % (self.path, e.strerror or e))
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            holder = os.read(fd, 200).decode(errors='replace').strip()
            os.close(fd)
            if e.errno in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                raise OptionError('--logdir %s is in use by another training process (%s); wait for it '
                                  'or pass another --logdir' % (self.path, holder or 'pid unknown'))
            raise
        os.ftruncate(fd, 0)
        os.write(fd, ('pid %d since %s' % (os.getpid(), utc_now())).encode())
        self._lock_fd = fd
        self.check_identity()          # again, now that no other process can write here
        if self.recorded_options() is None:
            # flat: every resolved option at the top level (what tools read), plus the identity
            try:
                atomic_write_json(os.path.join(self.path, OPTIONS_FILE),
                                  dict(self.record, identity=self.identity, created=utc_now()))
            except OSError as e:
                self.release()
                raise OptionError('--logdir %s: cannot record the options (%s): free space or pass another '
                                  '--logdir' % (self.path, e.strerror or e))
        return self

    def release(self):
        if self._lock_fd is not None:
            fcntl.flock(self._lock_fd, fcntl.LOCK_UN)
            os.close(self._lock_fd)
            self._lock_fd = None

    def set_status(self, status, **fields):
        fields.update(status=status, updated=utc_now())
        atomic_write_json(os.path.join(self.path, STATUS_FILE), fields)

    def set_status_if_possible(self, status, **fields):
        # a full disk that stopped the run may refuse the status file too; the log says what happened
        try:
            self.set_status(status, **fields)
        except OSError as e:
            logger.warn('Could not record the status %r in %s: %s' % (status, self.path, e))


def default_logdir(root, name_parts, identity):
    """``root/<readable name>-<identity hash>``: readable, and unique per configuration."""
    name = re.sub(r'[^A-Za-z0-9_.+-]', '_', '-'.join(str(p) for p in name_parts))
    return os.path.join(root, '%s-%s' % (name, identity_hash(identity)))
