"""The trainer's callbacks beyond tensorpack's: divergence stops the run (:class:`StopOnDivergence`,
:class:`FiniteLogits`), a checkpoint that cannot be written stops it (:class:`CheckpointSaver`), and
the status and wall clock are kept per epoch.  :func:`kalman_norm.train.core.make_config` orders them."""
import math
import os
import time

import tensorflow as tf
from tensorpack.callbacks import Callback, Inferencer, ModelSaver, TFEventWriter
from tensorpack.train.base import StopTraining
from tensorpack.utils import logger

from .rundir import RunDiverged, RunFailed

__all__ = ['StopOnDivergence', 'FiniteLogits', 'CheckpointSaver', 'WallClock', 'EventWriter', 'EpochStatus']


class StopOnDivergence(Callback):
    """Stops training at the first non-finite loss (checked every step: one scalar fetch), and
    at the end of each epoch if any variable is not finite.

    A step's loss is computed before its update, so the loss alone misses an update that leaves
    non-finite weights after an epoch's last step: the epoch-end check (one boolean per
    variable) catches that before the checkpoint and the validation of the epoch, which is why
    this callback must come before the checkpoint saver.  Once either fires, the weights in
    memory are unusable; no checkpoint is written after this point, and the last one on disk is
    the end of the last complete epoch.

    The divergence is kept in :attr:`diverged` and the loop is ended with tensorpack's
    ``StopTraining``: any other exception passes through tensorpack 0.11's main loop, whose
    ``logger.error`` call is malformed and prints two "--- Logging error ---" tracebacks that look
    like a crash, ahead of the one-line DIVERGED message."""

    HINT = ('Usual causes: a learning rate too high for this batch or norm (try --lr 10x smaller), '
            'an epsilon <= 0 or other bad --norm-option, or corrupt input data.')

    def __init__(self):
        self.diverged = None            # the RunDiverged, once a loss was not finite

    def _setup_graph(self):
        self._cost = self.get_tensors_maybe_in_tower(['cost:0'])[0]
        self._variables = [v for v in tf.compat.v1.global_variables() if v.dtype.base_dtype.is_floating]
        self._finite = [tf.reduce_all(tf.math.is_finite(v)) for v in self._variables]

    def _trigger_epoch(self):
        finite = self.trainer.sess.run(self._finite)
        bad = [v.op.name for v, ok in zip(self._variables, finite) if not ok]
        if bad:
            self.stop('%d variable(s) are not finite, e.g. %s' % (len(bad), ', '.join(bad[:3])))

    def stop(self, state):
        """Record a non-finite ``state`` found after this epoch's last step and end the loop."""
        self.diverged = RunDiverged(self.global_step, self.epoch_num, None, self.HINT, state=state)
        raise StopTraining(str(self.diverged))

    def _before_run(self, _):
        return [self._cost]

    def _after_run(self, _, run_values):
        if not run_values.results:          # a run that did not fetch the loss
            return
        loss = float(run_values.results[0])
        if not math.isfinite(loss):
            self.diverged = RunDiverged(self.global_step + 1, self.epoch_num, loss, self.HINT)
            raise StopTraining(str(self.diverged))


class FiniteLogits(Inferencer):
    """Ends the run as diverged if an inference tower's logits are not finite.

    Weights can stay finite and still be too large for a forward pass (an update with a huge
    learning rate): every logit is then inf or NaN, and the validation error (100%) would be
    reported as a result.  Writes no statistic."""

    def __init__(self, divergence, tower):
        self.divergence, self.tower = divergence, tower

    def _before_inference(self):
        self.finite = True

    def _get_fetches(self):
        return ['logits_finite']

    def _on_fetches(self, results):
        self.finite = self.finite and bool(results[0])

    def _after_inference(self):
        if not self.finite:
            self.divergence.stop("the %s tower's logits are not finite" % self.tower)
        return {}


class CheckpointSaver(ModelSaver):
    """tensorpack's ModelSaver, except that a checkpoint that cannot be written stops the run.

    tensorpack's logs the error (disk full, permission denied) and carries on, so a run would end
    'finished' with no checkpoint to resume from or evaluate.  The failure is kept in
    :attr:`failure` and the loop ended with ``StopTraining`` (see :class:`StopOnDivergence` for why
    not another exception)."""

    def __init__(self, **kwargs):
        super(CheckpointSaver, self).__init__(**kwargs)
        self.failure = None

    def _fail(self, what, e):
        text = (getattr(e, 'message', None) or getattr(e, 'strerror', None) or str(e)).strip().splitlines()
        self.failure = RunFailed('cannot write %s in %s (%s): free space or make it writable; the run '
                                 'resumes from its last checkpoint' % (what, self.checkpoint_dir,
                                                                        text[0] if text else type(e).__name__))
        raise StopTraining(str(self.failure))

    def _before_train(self):
        try:
            super(CheckpointSaver, self)._before_train()
        except (OSError, tf.errors.OpError) as e:
            self._fail('the graph', e)

    def _trigger(self):
        try:
            self.saver.save(tf.compat.v1.get_default_session(), self.path,
                            global_step=tf.compat.v1.train.get_global_step(), write_meta_graph=False)
        except (OSError, tf.errors.OpError) as e:
            self._fail('the checkpoint of epoch %d' % self.epoch_num, e)
        logger.info('Model saved to %s-%d.' % (self.path, self.global_step))


class WallClock(Callback):
    """Minutes since this process started training, per epoch (for time budgets)."""

    def _before_train(self):
        self._start = time.time()

    def _trigger_epoch(self):
        self.trainer.monitors.put_scalar('wall_minutes', (time.time() - self._start) / 60.0)


class EventWriter(TFEventWriter):
    """tensorpack's TFEventWriter, except that training ends only once the graph is written.

    TFEventWriter serialises the graph for TensorBoard in a daemon thread started before the first
    step.  A process with (almost) nothing to train -- a cluster worker joining a rerun of a
    finished run, a run that diverges in its first steps -- can reach interpreter shutdown while
    that thread is still inside TensorFlow's C++ (``TF_GraphToGraphDef``); CPython then ends the
    daemon thread with ``pthread_exit``, whose unwinding through TensorFlow's frames aborts the
    process ("FATAL: exception not rethrown", SIGABRT) after a run that succeeded.  Joining the
    thread before closing the file also keeps the graph from being written to a closed writer.
    """

    def _after_train(self):
        thread = getattr(self, '_write_graph_thread', None)     # None if before_train never ran
        if thread is not None:
            thread.join()
        super(EventWriter, self)._after_train()


class EpochStatus(Callback):
    """Keeps status.json's epoch count current (the run is 'running' until it ends)."""

    def __init__(self, rundir, total_epochs):
        self.rundir, self.total = rundir, total_epochs

    def _trigger_epoch(self):
        self.rundir.set_status('running', epochs_done=self.epoch_num, epochs=self.total, pid=os.getpid())
