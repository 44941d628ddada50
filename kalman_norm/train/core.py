"""The trainer core shared by the CIFAR and ImageNet trainers.

A trainer is a :class:`Task` (its data, models, schedules and extra options) run by
:func:`main`.  The core owns what every run needs and must get right:

* options: the shared ones (:data:`COMMON_OPTIONS`), command line over TOML over the KN recipe
  (``--kn-recipe``) over defaults, typed and range-checked, then the cross-option checks, then a
  dry build of the model graph, all before the data is loaded or the log directory touched
  (:func:`prepare`);
* the log directory (:mod:`kalman_norm.train.rundir`): one configuration per directory, a lock, a
  status file, resume from the last complete epoch after a kill at any point;
* the tensorpack model (:class:`ClassifierModel`): normalised images -> the task's model under
  the chosen norm -> cross-entropy + L2 on conv/FC kernels; inference towers with moving
  averages (option A) and/or online batch statistics (option B);
* data-parallel towers on one machine (each tower normalises only its own samples) or on a
  cluster (:mod:`kalman_norm.train.distributed`);
* divergence: the first non-finite loss stops the run, the status says so, and the summary
  never reports it as a result.
"""
import inspect
import json
import math
import os
import signal
import sys
import time
from collections import namedtuple

import kalman_norm  # noqa: F401  (sets up the TF/tensorpack stack first)
import numpy as np
import tensorflow as tf
from tensorpack import ModelDesc, QueueInput, SimpleTrainer, SyncMultiGPUTrainerReplicated, TrainConfig
from tensorpack import launch_train_with_config
from tensorpack.callbacks import (Callback, ClassificationError, EstimatedTimeLeft, Inferencer, InferenceRunner,
                                  JSONWriter, ModelSaver, ScalarPrinter, ScheduledHyperParamSetter, TFEventWriter)
from tensorpack.models.regularize import regularize_cost
from tensorpack.tfutils.common import get_global_step_var
from tensorpack.tfutils.sessinit import SaverRestore
from tensorpack.tfutils.summary import add_moving_summary
from tensorpack.tfutils.tower import TowerContext, get_current_tower_context
from tensorpack.train.base import StopTraining
from tensorpack.utils import logger

from .distributed import ClusterError, horovod_trainer, make_distributed_trainer, parse_cluster, \
    run_parameter_server
from . import command_line
from .. import runtime
from .options import OptionError, resolve
from .rundir import RunDir, RunDiverged, RunFailed, atomic_write_json, default_logdir, last_complete_epoch
from ..models import get_model
from ..norms import get_norm, norms_where
from ..spec import KN_RECIPES, NormSpec

__all__ = ['Task', 'Data', 'COMMON_OPTIONS', 'ClassifierModel', 'prepare', 'train', 'main',
           'EMA_NORMS', 'KALMAN_NORMS', 'OptionError', 'EXIT_BAD_INPUT', 'EXIT_DIVERGED']

EVAL_MODES = command_line.EVAL_MODES    # (its choices are described in kalman_norm/train/command_line.py)
PRECISE_TAG = 'val-error-precise'
#: norms with moving averages, for which --eval-stats chooses between options A and B (registry rows)
EMA_NORMS = norms_where('moving_averages')
KALMAN_NORMS = norms_where('kalman')
EXIT_FAILED = 1          # a run-time failure (a checkpoint that cannot be written, a silent cluster)
EXIT_BAD_INPUT = command_line.EXIT_BAD_INPUT
EXIT_DIVERGED = 3
#: norm layer options that the trainer sets itself, and the flag that gives each
TRAINER_NORM_OPTIONS = {'data_format': "the model's layout (--model-option data_format)",
                        'training': 'the tower (training, or inference towers)',
                        'eval_stats': '--eval-stats', 'group_size': '--batch',
                        'prior_method': '--prior', 'prior_samples': '--prior-samples'}

#: The conventions a run was made under (in its identity; records without the key are version 1).
#: 2: ``--seed`` seeds the training graph (initial weights, sampling ops) as well as the data order
#: and augmentation; BN's and BKN's ``variance/EMA`` take the micro-batch variance unbiased
#: (tensorpack's 4-D BatchNorm); BRN tracks σ as Ioffe's Algorithm 1; schedule 'paper' is the
#: authors' to the epoch.  README, "Conventions", says what each changed.
CONVENTIONS = 2

COMMON_OPTIONS = command_line.COMMON_OPTIONS

#: What a task's data loader returns.  ``train``: a dataflow of one tower's training batches;
#: ``train_size``: images per epoch; ``test(batch_size, whole_groups_of)``: a fresh dataflow of the
#: test set in batches of ``batch_size`` (a partial last batch only if it holds whole groups).
#: ``content_hash``: a hash of the images and labels (None: not known), recorded with the run so
#: that a resume on other data is refused.
#: ``train_batches(seed)``: a fresh single-process training dataflow (augmented, in the order of
#: ``seed``) for PreciseBN's recomputation (None: the task has none).
Data = namedtuple('Data', ['train', 'train_size', 'test', 'num_classes', 'channel_mean', 'channel_std',
                           'image_shape', 'description', 'content_hash', 'train_batches'], defaults=(None, None))


def auto_gain(batch):
    """The authors' fixed gains: q = 0.1 for micro-batches, 0.95 for large batches (batch 128)."""
    return 0.1 if batch <= 16 else 0.95


def kn_recipe_options(values):
    """The options ``--kn-recipe`` gives a KN norm (a preset of :func:`kalman_norm.train.options.resolve`:
    the config and the command line override each of them): --prior, --prior-samples, --gain and
    the recipe's layer options as norm options.  Nothing for other norms, which refuse any recipe
    but the default (check_common)."""
    if values['norm'] not in KALMAN_NORMS:
        return {}
    recipe = dict(KN_RECIPES[values['kn_recipe']])
    options = {'prior': recipe.pop('prior_method'), 'prior_samples': recipe.pop('prior_samples')}
    gain = recipe.pop('gain')
    # A recipe's fixed q = 0.1 is the authors' micro-batch value: --gain auto gives it at <= 16 per
    # normalisation and keeps the authors' 0.95 for large batches, so such a recipe leaves auto be.
    if gain != auto_gain(1):
        options['gain'] = gain
    options['norm_options'] = recipe
    return options


class Task(object):
    """What one trainer adds to the core.  Subclasses set the attributes and implement the hooks."""
    prog = None
    description = None
    options = []                 # task-specific Opt list (after COMMON_OPTIONS)
    default_log_root = 'train_log'
    #: build one tower on placeholders before loading data (seconds for CIFAR models; ImageNet's
    #: KN graphs take minutes on a CPU, and their options are checked by signature and NormSpec)
    dry_build = True
    #: its Data provides ``train_batches`` for --eval-stats precise/all (PreciseBN)
    precise_bn = False
    #: options that enter the identity only when set to other than their default
    identity_if_set = ()
    #: the option naming the model (a row of the model registry of this task's family)
    model_option = 'model'

    def all_options(self):
        return COMMON_OPTIONS + list(self.options)

    #: schedule name -> its defaults for epochs, lr, weight_decay, nesterov
    schedule_recipes = {}

    def check(self, o):
        """Task-specific checks and defaults; raise OptionError.  Subclasses extend it."""
        if o['eval_stats'] in ('precise', 'all') and not self.precise_bn:
            raise OptionError('--eval-stats %s (PreciseBN) is implemented for the CIFAR trainer only' % o['eval_stats'])
        recipe = self.schedule_recipes[o['schedule']]
        for key in ('epochs', 'lr', 'weight_decay', 'nesterov'):
            if o[key] is None:
                o[key] = recipe[key]
        fn, choice, passed = self.model_function(o)
        accepted = set(inspect.signature(fn).parameters) - set(passed)
        unknown = sorted(set(o['model_options']) - accepted)
        if unknown:
            raise OptionError('--model-option %s does not apply to %s; it accepts: %s'
                              % (', '.join(unknown), choice, ', '.join(sorted(accepted)) or 'none'))

    def model_function(self, o):
        """(the model's function, the flag that chose it, the arguments the task passes itself):
        every other argument of the function may come from --model-option."""
        model = get_model(o[self.model_option])
        return (model.builder, '--%s %s' % (self.model_option.replace('_', '-'), o[self.model_option]),
                ('image', 'num_classes') + tuple(model.fixed) + tuple(model.trainer_arguments))

    def name_parts(self, o):
        """Readable parts of the default log directory name."""
        raise NotImplementedError

    def model_name(self, o):
        return get_model(o[self.model_option]).display_name(o)

    def load_data(self, o):
        """-> :class:`Data`; raises the task's data error (a ValueError subclass) with one line."""
        raise NotImplementedError

    def data_errors(self):
        """Exception types that mean "bad data input" (exit code 2, one line)."""
        return ()

    def build_logits(self, o, image, num_classes):
        return get_model(o[self.model_option]).build(image, num_classes, o)

    def lr_schedule(self, o):
        """([(epoch, lr)], interp) for tensorpack's ScheduledHyperParamSetter."""
        raise NotImplementedError

    def image_shape(self, o):
        raise NotImplementedError

    def num_classes(self, o):
        """Classes before the data is loaded (for the dry build; the data's own count is used later)."""
        raise NotImplementedError

    def dataset_name(self, o):
        raise NotImplementedError

    def eval_batch_size(self, o):
        """Test batch size: about ``target`` images, a multiple of --batch so that test batches
        normalised with batch statistics (option B) hold whole groups."""
        return eval_batch_size(o)


# ----------------------------------------------------------------------------------------------
# options

def parse_options(task, argv=None):
    """Resolve and check every option of ``task``; nothing on disk is touched."""
    o = resolve(argv, task.all_options(), task.prog, task.description, presets=kn_recipe_options)
    try:
        cluster = parse_cluster(o['cluster'], o['task'])
    except ClusterError as e:
        raise OptionError(str(e))
    # TOML has no null: a norm option written "none" means None (e.g. guard_ratio = "none")
    o['norm_options'] = {k: (None if isinstance(v, str) and v.strip().lower() in ('none', 'null') else v)
                         for k, v in o['norm_options'].items()}
    o['job'] = cluster.job if cluster else None
    o['workers'] = cluster.cluster.num_tasks('worker') if cluster else 1
    o['worker_index'] = cluster.index if cluster and cluster.job == 'worker' else 0
    check_common(o)
    task.check(o)
    finish_gain_and_spec(o)
    o['identity'] = identity(task, o)
    if o['logdir'] is None:
        o['logdir'] = default_logdir(task.default_log_root, task.name_parts(o), o['identity'])
    if o['worker_index'] > 0:
        # the chief (worker 0) owns the run's directory; the others log beside it
        o['logdir'] = '%s.worker%d' % (o['logdir'].rstrip('/'), o['worker_index'])
    RunDir.check_path(o['logdir'])
    return o


def check_common(o):
    def need(cond, msg):
        if not cond:
            raise OptionError(msg)

    devices = o['gpus'] * o['workers']
    need(o['total_batch'] % devices == 0,
         '--total-batch %d is not divisible by --gpus %d' % (o['total_batch'], o['gpus']) if o['workers'] == 1 else
         '--total-batch %d is not divisible by %d workers x --gpus %d' % (o['total_batch'], o['workers'], o['gpus']))
    tower = o['tower_batch'] = o['total_batch'] // devices
    need(tower % o['batch'] == 0,
         '--total-batch (%d) must be a multiple of --batch × --gpus (%d × %d): each tower holds %d '
         'samples, which must split into whole normalization groups of %d'
         % (o['total_batch'], o['batch'], o['gpus'], tower, o['batch']))
    need(o['momentum'] < 1.0, '--momentum must be < 1, got %r' % o['momentum'])
    if o['norm'] not in KALMAN_NORMS:
        need(o['gain'] in ('auto', None), '--gain applies to bkn and gkn only (got --norm %s)' % o['norm'])
        need(o['prior'] == 'analytic' and o['prior_samples'] == 1,
             '--prior/--prior-samples apply to bkn and gkn only (got --norm %s)' % o['norm'])
        need(o['kn_recipe'] == 'library', '--kn-recipe applies to bkn and gkn (got --norm %s)' % o['norm'])
    if o['norm'] not in EMA_NORMS:
        need(o['eval_stats'] == 'moving', '--eval-stats applies to norms with moving averages (%s); %s has '
             'none' % (', '.join(EMA_NORMS), o['norm']))


def finish_gain_and_spec(o):
    gain = o['gain']
    if o['norm'] in KALMAN_NORMS:
        if gain == 'auto':
            gain = auto_gain(o['batch'])
        elif gain != 'learned':
            if isinstance(gain, bool) or not isinstance(gain, (int, float)):
                try:
                    gain = float(gain)
                except (TypeError, ValueError):
                    raise OptionError("--gain must be a number in [0, 1], 'learned' or 'auto', got %r" % (gain,))
            gain = float(gain)
            if not 0.0 <= gain <= 1.0:
                raise OptionError('--gain must be in [0, 1], got %r' % gain)
    o['gain'] = gain
    o['spec'] = make_spec(o)


def make_spec(o):
    """The NormSpec of the options (layer options validated by the layer's own checks)."""
    options = dict(o['norm_options'])
    owned = sorted(set(options) & set(TRAINER_NORM_OPTIONS))
    if owned:
        raise OptionError('--norm-option %s: the trainer sets %s itself (%s)' % (
            ', '.join(owned), 'it' if len(owned) == 1 else 'them',
            '; '.join('%s: %s' % (k, TRAINER_NORM_OPTIONS[k]) for k in owned)))
    kw = {}
    if o['norm'] in KALMAN_NORMS:
        options.setdefault('gain', o['gain'])
        kw = dict(prior_method=o['prior'], prior_samples=o['prior_samples'])
    if get_norm(o['norm']).step_warmup and 'warmup' not in options:
        # Ioffe's warm-up (5k -> 40k/25k steps) is for ImageNet-length runs; scale it to this run.
        steps = o['epochs'] * o['steps_per_epoch_estimate']
        options['warmup'] = (int(steps * 0.05), int(steps * 0.4), int(steps * 0.25))
    try:
        return NormSpec(o['norm'], group_size=o['batch'], **kw, **options)
    except (TypeError, ValueError) as e:
        raise OptionError('--norm-option: %s' % e)


def identity(task, o):
    """The options that change what a run computes (``Opt.identity``), plus the program and the
    number of workers; where things are and how fast they load are not part of it."""
    keys = [opt.key for opt in task.all_options() if opt.identity]
    ident = {k: o[k] for k in keys}
    for key in task.identity_if_set:
        # options added after runs were recorded: at their default, the old identities stay valid
        if o[key] == next(opt.default for opt in task.all_options() if opt.key == key):
            del ident[key]
    ident['program'] = task.prog
    ident['workers'] = o['workers']          # the same total batch over more devices is another run
    ident['conventions'] = CONVENTIONS
    return ident


def recorded_options(o):
    return {k: (repr(v) if k == 'spec' else v) for k, v in o.items() if k != 'identity'}


# ----------------------------------------------------------------------------------------------
# the model

class ClassifierModel(ModelDesc):
    """Normalised uint8 images -> the task's model under the chosen norm -> cross-entropy + L2.

    Inference towers whose name contains ``Batch`` evaluate with online batch statistics
    (option B); the others with moving averages (option A).
    """

    def __init__(self, task, options, channel_mean, channel_std, num_classes):
        self.task, self.o = task, options
        self.mean = np.asarray(channel_mean, np.float32)
        self.std = np.asarray(channel_std, np.float32)
        self.num_classes = num_classes

    def inputs(self):
        return [tf.TensorSpec([None] + list(self.task.image_shape(self.o)), tf.uint8, 'input'),
                tf.TensorSpec([None], tf.int32, 'label')]

    def build_graph(self, image, label):
        ctx = get_current_tower_context()
        # The global step at the root scope: otherwise the first layer asking for it (BRN's
        # warm-up) would create it inside its own variable scope.
        get_global_step_var()
        if ctx.is_training:
            # training batches are always whole towers (the dataflow drops a remainder): say so to
            # the graph, so that layers with per-group state (MABN's histories) see their groups
            image.set_shape([self.o['tower_batch']] + image.shape.as_list()[1:])
        image = (tf.cast(image, tf.float32) - self.mean) / self.std
        spec = self.o['spec']
        if not ctx.is_training and self.o['norm'] in EMA_NORMS:
            spec = spec.replace(eval_stats='batch' if 'Batch' in ctx.name else 'moving')
        with spec:
            logits = self.task.build_logits(self.o, image, self.num_classes)
        xent = tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(labels=label, logits=logits),
                              name='xentropy')
        wrong = tf.cast(tf.logical_not(tf.compat.v1.nn.in_top_k(logits, label, 1)), tf.float32, name='wrong')
        if not ctx.is_training:
            tf.reduce_all(tf.math.is_finite(logits), name='logits_finite')     # for FiniteLogits
            return xent
        wd = weight_decay_cost(self.o['weight_decay'])
        train_error = tf.reduce_mean(wrong, name='train_error')
        cost = tf.add(xent, wd, name='cost')
        add_moving_summary(xent, wd, cost, train_error)
        return cost

    def optimizer(self):
        lr = tf.compat.v1.get_variable('learning_rate', initializer=float(self.o['lr']), trainable=False)
        tf.compat.v1.summary.scalar('lr', lr)
        return tf.compat.v1.train.MomentumOptimizer(lr, self.o['momentum'], use_nesterov=self.o['nesterov'])


def weight_decay_cost(weight_decay):
    """``weight_decay`` x the L2 of the conv and FC kernels (variables named ``.../W``) only, not
    gamma/beta or KN's q and R, as the authors do; tensorpack's regularize_cost takes a replicated
    tower's own kernels.  The rate multiplies the sum (not each term), as the trainer always did."""
    return tf.multiply(weight_decay, regularize_cost(r'/W$', tf.nn.l2_loss), name='weight_decay')


def check_fused_prior(o):
    """KALMAN_NORM_FUSED_PRIOR=1 demands the fused op: if it cannot be built, say so in one line
    now, not in a traceback from the middle of the graph build."""
    from ..ops import ENV_SWITCH, FusedOpUnavailable, fused_prior_enabled
    if os.environ.get(ENV_SWITCH, '').strip() in ('', '0') or not o['spec'].propagates:
        return
    try:
        fused_prior_enabled()
    except (FusedOpUnavailable, ValueError) as e:
        lines = str(e).strip().splitlines()
        raise OptionError('%s%s' % (lines[0], ' (the compiler\'s output follows it in the exception)'
                                    if len(lines) > 1 else ''))


def check_graph(task, o, num_classes):
    """Build one training tower on placeholders in a throw-away graph: any model or norm option
    that cannot work fails here, in a second, before the data loads."""
    tower = o['tower_batch']
    model = ClassifierModel(task, o, np.zeros(3), np.ones(3), num_classes)
    graph = tf.Graph()
    try:
        with graph.as_default(), TowerContext('', is_training=True):
            image = tf.compat.v1.placeholder(tf.uint8, [tower] + list(task.image_shape(o)))
            label = tf.compat.v1.placeholder(tf.int32, [tower])
            model.build_graph(image, label)
    except (TypeError, ValueError, KeyError, AssertionError, tf.errors.OpError) as e:
        text = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise OptionError('the model cannot be built with these options (%s, --model-option %s, '
                          '--norm-option %s): %s' % (task.model_name(o), o['model_options'],
                                                     o['norm_options'], text))


# ----------------------------------------------------------------------------------------------
# callbacks

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


def eval_tags(o):
    """[(inference tower name, summary name)] for the --eval-stats choice."""
    if o['norm'] not in EMA_NORMS:
        return [('InferenceTower', 'val-error')]
    modes = {'both': ['moving', 'batch'], 'all': ['moving', 'batch'], 'precise': ['moving']}.get(
        o['eval_stats'], [o['eval_stats']])
    return [('InferenceTower' + m.capitalize(), 'val-error-' + m) for m in modes]


def eval_batch_size(o, target=256):
    """About ``target`` (fewer, larger batches are faster on CPU), a multiple of --batch so that
    test batches normalised with batch statistics hold whole groups."""
    g = o['batch']
    return g * max(1, -(-target // g))


# ----------------------------------------------------------------------------------------------
# devices and sessions

def gpu_count():
    return len(tf.config.list_physical_devices('GPU'))


def describe_devices(o):
    n = gpu_count()
    if n == 0:
        # TensorFlow's start-up lines about missing CUDA drivers / cuInit are expected then
        where = 'no GPU found: %s on the CPU' % (
            '1 tower' if o['gpus'] == 1 else '%d towers (simulated devices, soft placement)' % o['gpus'])
    elif n < o['gpus']:
        where = '%d GPU(s) found for %d towers: towers beyond them run on the CPU' % (n, o['gpus'])
    else:
        where = '%d tower(s) on GPUs 0-%d of %d' % (o['gpus'], o['gpus'] - 1, n)
    if o['workers'] > 1:
        where += '; worker %d of %d in the cluster' % (o['worker_index'], o['workers'])
    return 'Devices: %s; each tower normalizes its own %d samples in groups of %d' % (
        where, o['tower_batch'], o['batch'])


def make_trainer(o):
    if o['trainer'] == 'horovod':
        return horovod_trainer()
    if o['job'] is not None:
        cluster = parse_cluster(o['cluster'], o['task'])
        return make_distributed_trainer(cluster.cluster, cluster.job, cluster.index, gpus_per_worker=o['gpus'],
                                        mode='replicated' if o['trainer'] == 'replicated' else 'ps',
                                        timeout=o['cluster_timeout'])
    if o['gpus'] == 1:
        return SimpleTrainer()
    # Replicated data parallelism: one tower per device, gradients averaged, each tower
    # normalising only its own batch.  Without GPUs the towers run on the CPU (soft placement).
    return SyncMultiGPUTrainerReplicated(o['gpus'], average=True)


# ----------------------------------------------------------------------------------------------
# running

def make_config(task, o, data, rundir):
    """The TrainConfig, resuming from the last complete epoch of the log directory."""
    steps = data.train_size // o['total_batch']
    if o['steps_per_epoch']:
        steps = min(steps, o['steps_per_epoch'])
    if steps < 1:
        raise OptionError('The training set (%d images) is smaller than one step of %d samples'
                          % (data.train_size, o['total_batch']))
    eval_bs = task.eval_batch_size(o)
    # the divergence check first: its epoch-end check must run before the checkpoint is written
    divergence = StopOnDivergence()
    callbacks = [divergence,
                 CheckpointSaver(max_to_keep=o['keep_checkpoints'], keep_checkpoint_every_n_hours=1e6),
                 WallClock(), EstimatedTimeLeft()]
    points, interp = task.lr_schedule(o)
    callbacks.append(ScheduledHyperParamSetter('learning_rate', points, interp=interp))
    tags = eval_tags(o)
    # With batch statistics a partial last batch must still be whole groups, else it is dropped;
    # then the moving statistics are evaluated on the same images, so that the two compare.
    whole_groups_of = o['batch'] if any(tag.endswith('batch') for _, tag in tags) else 1
    for tower_name, tag in tags:
        callbacks.append(InferenceRunner(data.test(eval_bs, whole_groups_of),
                                         [ClassificationError('wrong', tag), FiniteLogits(divergence, tower_name)],
                                         tower_name=tower_name))
    if rundir is not None:
        callbacks.append(EpochStatus(rundir, o['epochs']))
    model = ClassifierModel(task, o, data.channel_mean, data.channel_std, data.num_classes)
    done = restorable_epoch(o['logdir'], steps)
    _truncate_stats(o['logdir'], done)
    kwargs = {}
    if done:
        kwargs['session_init'] = SaverRestore(os.path.join(o['logdir'], 'model-%d' % (done * steps)))
        logger.info('Resuming after epoch %d (the last epoch with both statistics and a checkpoint)' % done)
    config = TrainConfig(model=model, data=QueueInput(data.train), callbacks=callbacks, steps_per_epoch=steps,
                         monitors=[EventWriter(), JSONWriter(), ScalarPrinter()],   # tensorpack's defaults
                         max_epoch=o['epochs'], starting_epoch=done + 1, session_config=runtime.session_config(o['threads']),
                         **kwargs)
    return config


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
    """The last complete epoch (:func:`~kalman_norm.train.rundir.last_complete_epoch`) whose checkpoint
    reads back whole; a damaged one (truncated by a full disk, say) is named in the log and the
    previous kept checkpoint with its epoch's statistics is used instead."""
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


def _truncate_stats(logdir, epoch):
    """stats.json keeps exactly the epochs the resumed run will not redo."""
    path = os.path.join(logdir, 'stats.json')
    if not os.path.exists(path):
        return
    with open(path) as f:
        stats = json.load(f)
    kept = [s for s in stats if s.get('epoch_num', 0) <= epoch]
    if len(kept) != len(stats):
        logger.warn('stats.json has epochs after the last checkpointed epoch %d; they will be redone' % epoch)
        atomic_write_json(path, kept) if kept else os.remove(path)


def _read_stats(o):
    path = os.path.join(o['logdir'], 'stats.json')
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return json.load(f)


def _head(task, o, stats):
    return '%s %s norm=%s batch=%d gpus=%d epochs=%d' % (
        task.dataset_name(o), task.model_name(o), o['norm'], o['batch'], o['gpus'],
        stats[-1]['epoch_num'] if stats else 0)


def summarize(task, o, status=None):
    """One line: best and last validation error per eval option, or the divergence."""
    stats = _read_stats(o)
    head = _head(task, o, stats)
    if status and status.get('status') == 'diverged':
        return 'DIVERGED %s: %s (no result: the run is recorded as diverged)' % (head, status.get('message'))
    parts = []
    for _, tag in eval_tags(o):
        series = [(s['epoch_num'], s[tag]) for s in stats if tag in s]
        if not series:
            continue
        best = min(series, key=lambda t: t[1])
        parts.append('%s best %.2f%% (epoch %d) last %.2f%%' % (tag, 100 * best[1], best[0], 100 * series[-1][1]))
    precise = [s for s in stats if PRECISE_TAG in s]
    if precise:
        parts.append('%s %.2f%% (epoch %d, %d batches)' % (PRECISE_TAG, 100 * precise[-1][PRECISE_TAG],
                                                           precise[-1]['epoch_num'], precise[-1]['precise_batches']))
    return 'FINAL %s: %s' % (head, '; '.join(parts) if parts else 'no validation yet')


def describe_options(o):
    keys = sorted(k for k in o if k not in ('spec', 'identity', 'norm_options', 'model_options'))
    return ', '.join('%s=%s' % (k, o[k]) for k in keys) + ', norm_options=%s, model_options=%s, spec=%r' % (
        o['norm_options'], o['model_options'], o['spec'])


def prepare(task, argv=None):
    """Options checked, graph dry-built, data loaded, log directory identity checked: everything
    that can fail on bad input, before anything is written.  -> (options, data)."""
    o = parse_options(task, argv)
    if o['job'] == 'ps':
        # a parameter server holds variables and serves them: no data, no log directory
        cluster = parse_cluster(o['cluster'], o['task'])
        run_parameter_server(cluster.cluster, cluster.index)
    rundir = RunDir(o['logdir'], o['identity'], recorded_options(o))
    rundir.check_identity()
    check_fused_prior(o)
    if task.dry_build:
        check_graph(task, o, num_classes=task.num_classes(o))
    data = task.load_data(o)
    if data.content_hash is not None:
        # recorded with the run (options.json); a resume on other data is refused here, and again
        # once the directory is locked
        o['data_hash'] = data.content_hash
        RunDir(o['logdir'], o['identity'], recorded_options(o)).check_identity()
    steps = min(data.train_size // o['total_batch'], o['steps_per_epoch'] or data.train_size)
    if steps != o['steps_per_epoch_estimate']:
        # schedules inside layers (BRN's warm-up) are in steps: size them to the real data
        o['steps_per_epoch_estimate'] = steps
        o['spec'] = make_spec(o)
    return o, data


def train(task, o, data, session_creator=None):
    """Train with prepared options and data; returns (summary line, exit code).
    ``session_creator`` replaces tensorpack's (tests use one without grappler's slow rewrites)."""
    rundir = RunDir(o['logdir'], o['identity'], recorded_options(o)).claim()
    config = None
    try:
        status = rundir.status()
        logger.set_logger_dir(o['logdir'], action='k')
        logger.info('Options: ' + describe_options(o))
        logger.info(describe_devices(o))
        if not gpu_count():
            logger.info('CPU-only machine: the CUDA messages TensorFlow printed at start-up ("Could not find '
                        'cuda drivers", "failed call to cuInit") are expected and harmless')
        logger.info('Data: ' + data.description)
        if o['seed'] is not None:
            np.random.seed(o['seed'])
        epochs_done = None
        with tf.Graph().as_default():
            if o['seed'] is not None:
                # a graph-level seed belongs to the graph being built: set outside it, the
                # training graph's initial weights and sampling ops would be unseeded
                tf.compat.v1.set_random_seed(o['seed'])
            config = make_config(task, o, data, rundir)
            if session_creator is not None:
                config.session_creator = session_creator
            epochs_done = config.starting_epoch - 1
            if config.starting_epoch > o['epochs'] and o['job'] is None:
                logger.info('%s already trained %d epochs; nothing to do' % (o['logdir'], epochs_done))
            else:
                if config.starting_epoch > o['epochs']:
                    # The other workers wait for the chief's plan: join the cluster with no step
                    # left, so that every worker learns there is nothing to do and exits.
                    logger.info('%s already trained %d epochs; joining the cluster with nothing to do'
                                % (o['logdir'], epochs_done))
                rundir.set_status('running', epochs_done=epochs_done, epochs=o['epochs'], pid=os.getpid())
                launch_train_with_config(config, make_trainer(o))
                e = next(cb for cb in config.callbacks if isinstance(cb, StopOnDivergence)).diverged
                if e is not None:
                    status = dict(status='diverged', message=str(e), step=e.step, epoch=e.epoch)
                    status.update(loss=str(e.loss)) if e.state is None else status.update(state=e.state)
                    rundir.set_status(**status)
                    logger.error(str(e))
                    line = summarize(task, o, status)
                    return line, EXIT_DIVERGED
                failure = next(cb for cb in config.callbacks if isinstance(cb, CheckpointSaver)).failure
                if failure is not None:
                    raise failure
        epochs = last_complete_epoch(o['logdir'], config.steps_per_epoch)
        if epochs >= o['epochs'] and o['eval_stats'] in ('precise', 'all') and o['worker_index'] == 0:
            record_precise(task, o, data, epochs * config.steps_per_epoch)
        rundir.set_status('finished' if epochs >= o['epochs'] else 'stopped', epochs_done=epochs, epochs=o['epochs'])
        return summarize(task, o), 0
    except RunFailed as e:
        logger.error(str(e))
        _set_status_if_possible(rundir, 'failed', message=str(e), epochs_done=_epochs_done(o, config),
                                epochs=o['epochs'])
        return str(e), EXIT_FAILED
    except KeyboardInterrupt as e:       # Ctrl-C, or SIGTERM through main()'s handler
        signum = getattr(e, 'signum', signal.SIGINT)
        name = signal.Signals(signum).name
        done = _epochs_done(o, config)
        logger.info('Interrupted by %s after epoch %d' % (name, done))
        _set_status_if_possible(rundir, 'interrupted', signal=name, epochs_done=done, epochs=o['epochs'])
        return ('INTERRUPTED %s: by %s after epoch %d of %d (recorded as interrupted; the same command resumes '
                'after epoch %d)' % (_head(task, o, _read_stats(o)), name, done, o['epochs'], done)), 128 + signum
    finally:
        rundir.release()


def precise_result(task, o, data, checkpoint, batches):
    """PreciseBN's evaluation of ``checkpoint`` (:func:`kalman_norm.precise_bn.precise_evaluation`):
    ``batches`` training batches of the tower's size in a fixed order, then the evaluation set of
    the epochs' inference runners (the same images, in the same batches)."""
    from ..precise_bn import PRECISE_SEED, precise_evaluation
    if data.train_batches is None:
        raise OptionError('--eval-stats %s: this task provides no training batches for PreciseBN' % o['eval_stats'])
    mean, std = np.asarray(data.channel_mean, np.float32), np.asarray(data.channel_std, np.float32)

    def build_logits(images):
        return task.build_logits(o, (tf.cast(images, tf.float32) - mean) / std, data.num_classes)

    def restore(sess):
        tf.compat.v1.train.Saver().restore(sess, checkpoint)

    def train_images():
        flow, produced = data.train_batches(PRECISE_SEED), 0
        flow.reset_state()
        while True:              # as many epochs of the flow as ``batches`` needs
            for images, _ in flow:
                if produced == batches:
                    return
                produced += 1
                yield images

    whole_groups_of = o['batch'] if any(tag.endswith('batch') for _, tag in eval_tags(o)) else 1
    test = data.test(task.eval_batch_size(o), whole_groups_of)
    test.reset_state()
    return precise_evaluation(build_logits, o['spec'], restore, train_images(), test,
                              runtime.session_config(o['threads']))


def record_precise(task, o, data, step):
    """PreciseBN's error of the final checkpoint into stats.json's last epoch (once)."""
    stats = _read_stats(o)
    if not stats or PRECISE_TAG in stats[-1]:
        return
    logger.info('PreciseBN: recomputing the moving statistics over %d training batches' % o['precise_batches'])
    result = precise_result(task, o, data, os.path.join(o['logdir'], 'model-%d' % step), o['precise_batches'])
    stats[-1].update({PRECISE_TAG: result['error'], 'precise_batches': result['batches'],
                      'precise_images': result['images']})
    atomic_write_json(os.path.join(o['logdir'], 'stats.json'), stats)
    logger.info('PreciseBN: %s %.4f on %d images' % (PRECISE_TAG, result['error'], result['images']))


def _epochs_done(o, config):
    """Epochs a resume would not redo (0 before the configuration exists)."""
    return last_complete_epoch(o['logdir'], config.steps_per_epoch) if config is not None else 0


def _set_status_if_possible(rundir, status, **fields):
    # a full disk that stopped the run may refuse the status file too; the log says what happened
    try:
        rundir.set_status(status, **fields)
    except OSError as e:
        logger.warn('Could not record the status %r in %s: %s' % (status, rundir.path, e))


class Interrupted(KeyboardInterrupt):
    """SIGINT or SIGTERM, raised in the main thread (a KeyboardInterrupt, so that tensorpack's
    main loop closes its session and data threads on the way out, as it does for Ctrl-C)."""

    def __init__(self, signum):
        self.signum = signum
        super(Interrupted, self).__init__(signal.Signals(signum).name)


def _interrupt(signum, frame):
    # a second signal while the first is being handled ends the process at once
    for s in (signal.SIGINT, signal.SIGTERM):
        signal.signal(s, signal.SIG_DFL)
    raise Interrupted(signum)


def _catch_signals():
    """SIGINT and SIGTERM raise :class:`Interrupted` (main thread only); returns the old handlers."""
    import threading
    if threading.current_thread() is not threading.main_thread():
        return {}
    return {s: signal.signal(s, _interrupt) for s in (signal.SIGINT, signal.SIGTERM)}


def main(task, argv=None):
    """Command-line entry: exit 0 (trained or already done), 1 (a run-time failure: one line on
    stderr, recorded as failed, resumable), 2 (bad input: one line on stderr, nothing written),
    3 (diverged: recorded as such), 128 + the signal (SIGINT 130, SIGTERM 143: recorded as
    interrupted, resumable; a second signal ends the process at once)."""
    handlers = _catch_signals()
    try:
        try:
            o, data = prepare(task, argv)
            line, code = train(task, o, data)
        except OptionError as e:
            print('error: %s' % e, file=sys.stderr)
            raise SystemExit(EXIT_BAD_INPUT)
        except task.data_errors() as e:
            print('error: %s' % e, file=sys.stderr)
            raise SystemExit(EXIT_BAD_INPUT)
        except KeyboardInterrupt as e:
            name = signal.Signals(getattr(e, 'signum', signal.SIGINT)).name
            print('interrupted by %s before training started; nothing was recorded' % name, file=sys.stderr)
            raise SystemExit(128 + getattr(e, 'signum', signal.SIGINT))
    finally:
        for s, handler in handlers.items():
            signal.signal(s, handler)
    if code == EXIT_FAILED:
        print('error: %s' % line, file=sys.stderr, flush=True)
        raise SystemExit(code)
    logger.info(line)
    print(line, flush=True)
    if code:
        raise SystemExit(code)
    return line
