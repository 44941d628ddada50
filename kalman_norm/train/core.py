"""The trainer core shared by the CIFAR and ImageNet trainers: a trainer is a :class:`Task` (settings
and four hooks) run by :func:`main`.

:func:`prepare` checks every option (command line over TOML over the KN recipe over defaults, then
the cross-option checks and a dry build of the graph) before the data loads or the log directory
(:mod:`~kalman_norm.train.rundir`) is touched.  :func:`train` trains the tensorpack model of
:mod:`~kalman_norm.train.classifier` (normalised images -> the task's model under the norm ->
cross-entropy + L2 on conv/FC kernels) on data-parallel towers, each normalising only its own
samples, here or on a cluster (:mod:`~kalman_norm.train.distributed`), with the callbacks of
:mod:`~kalman_norm.train.callbacks` (a divergence stops the run and is never reported as a result),
and reports the line of :func:`~kalman_norm.train.evaluation.summarize`.
"""
import inspect
import os
import signal
import sys
from collections import namedtuple

import kalman_norm  # noqa: F401  (sets up the TF/tensorpack stack first)
import numpy as np
import tensorflow as tf
from tensorpack import QueueInput, SimpleTrainer, SyncMultiGPUTrainerReplicated, TrainConfig
from tensorpack import launch_train_with_config
from tensorpack.callbacks import (ClassificationError, EstimatedTimeLeft, InferenceRunner, JSONWriter, ScalarPrinter,
                                  ScheduledHyperParamSetter)
from tensorpack.tfutils.sessinit import SaverRestore
from tensorpack.utils import logger

from .distributed import ClusterError, horovod_trainer, make_distributed_trainer, parse_cluster, \
    run_parameter_server
from . import command_line
from .. import runtime
from .callbacks import CheckpointSaver, EpochStatus, EventWriter, FiniteLogits, StopOnDivergence, WallClock
from .classifier import ClassifierModel, check_graph
from .evaluation import EMA_NORMS, eval_tags, eval_batch_size, record_precise, result_head, summarize, test_batches
from .options import OptionError, resolve
from .rundir import RunDir, RunFailed, default_logdir, last_complete_epoch, read_stats, restorable_epoch, \
    truncate_stats
from ..models import get_model
from ..norms import get_norm, norms_where
from ..spec import KN_RECIPES, NormSpec

__all__ = ['Task', 'Data', 'COMMON_OPTIONS', 'prepare', 'train', 'main',
           'EMA_NORMS', 'KALMAN_NORMS', 'OptionError', 'EXIT_BAD_INPUT', 'EXIT_DIVERGED']

EVAL_MODES = command_line.EVAL_MODES    # (its choices are described in kalman_norm/train/command_line.py)
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


#: What a task's input is before its data loads: the data set's name (in log directory names and
#: result lines), one image's shape (H, W, C), and the classes of the dry build (training uses the
#: loaded data's own count).
InputDescription = namedtuple('InputDescription', ['dataset', 'image_shape', 'num_classes'])


class Task(object):
    """What one trainer adds to the core, as tensorpack's ImageNetModel adds to ModelDesc: settings
    (the class attributes) and four hooks (check, describe_input, load_data, lr_schedule).  The model
    is the row of the model registry that ``o[model_option]`` names; :meth:`build_logits` is
    tensorpack's ``get_logits``."""
    prog = None
    description = None
    options = []                 # task-specific Opt list (after COMMON_OPTIONS)
    #: schedule name -> its defaults for epochs, lr, weight_decay, nesterov
    schedule_recipes = {}
    #: the option naming the model (a row of the model registry of this task's family)
    model_option = 'model'
    #: build one tower on placeholders before loading data (seconds for CIFAR models; ImageNet's
    #: KN graphs take minutes on a CPU, and their options are checked by signature and NormSpec)
    dry_build = True
    #: its Data provides ``train_batches`` for --eval-stats precise/all (PreciseBN)
    precise_bn = False
    #: options that enter the identity only when set to other than their default
    identity_if_set = ()
    #: exception types that mean "bad data input" (exit code 2, one line)
    data_errors = ()
    #: about this many test images per batch (a multiple of --batch: evaluation.eval_batch_size)
    eval_batch_target = 256
    default_log_root = 'train_log'

    def check(self, o):
        """Task-specific checks and defaults; raise OptionError.  Subclasses extend it."""
        if o['eval_stats'] in ('precise', 'all') and not self.precise_bn:
            raise OptionError('--eval-stats %s (PreciseBN) is implemented for the CIFAR trainer only' % o['eval_stats'])
        recipe = self.schedule_recipes[o['schedule']]
        for key in ('epochs', 'lr', 'weight_decay', 'nesterov'):
            if o[key] is None:
                o[key] = recipe[key]
        # every argument of the model's builder that the task does not pass may come from --model-option
        model = get_model(o[self.model_option])
        passed = ('image', 'num_classes') + tuple(model.fixed) + tuple(model.trainer_arguments)
        accepted = set(inspect.signature(model.builder).parameters) - set(passed)
        unknown = sorted(set(o['model_options']) - accepted)
        if unknown:
            raise OptionError('--model-option %s does not apply to --%s %s; it accepts: %s'
                              % (', '.join(unknown), self.model_option.replace('_', '-'), o[self.model_option],
                                 ', '.join(sorted(accepted)) or 'none'))

    def describe_input(self, o):
        """-> :data:`InputDescription`."""
        raise NotImplementedError

    def load_data(self, o):
        """-> :class:`Data`; raises one of :attr:`data_errors` (ValueError subclasses) with one line."""
        raise NotImplementedError

    def lr_schedule(self, o):
        """([(epoch, lr)], interp) for tensorpack's ScheduledHyperParamSetter."""
        raise NotImplementedError

    def all_options(self):
        return COMMON_OPTIONS + list(self.options)

    def model_name(self, o):
        return get_model(o[self.model_option]).display_name(o)

    def build_logits(self, o, image, num_classes):
        return get_model(o[self.model_option]).build(image, num_classes, o)

    def eval_batch_size(self, o):
        return eval_batch_size(o, self.eval_batch_target)


def name_parts(task, o):
    """Readable parts of the default log directory name (the model by its registry display name)."""
    return [task.describe_input(o).dataset, task.model_name(o), o['norm'], 'b%d' % o['batch'], 'g%d' % o['gpus']]


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
        o['logdir'] = default_logdir(task.default_log_root, name_parts(task, o), o['identity'])
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
    # the divergence check first: its epoch-end check must run before the checkpoint is written
    divergence = StopOnDivergence()
    callbacks = [divergence,
                 CheckpointSaver(max_to_keep=o['keep_checkpoints'], keep_checkpoint_every_n_hours=1e6),
                 WallClock(), EstimatedTimeLeft()]
    points, interp = task.lr_schedule(o)
    callbacks.append(ScheduledHyperParamSetter('learning_rate', points, interp=interp))
    for tower_name, tag in eval_tags(o):
        callbacks.append(InferenceRunner(test_batches(task, o, data),
                                         [ClassificationError('wrong', tag), FiniteLogits(divergence, tower_name)],
                                         tower_name=tower_name))
    if rundir is not None:
        callbacks.append(EpochStatus(rundir, o['epochs']))
    model = ClassifierModel(task, o, data.channel_mean, data.channel_std, data.num_classes)
    done = restorable_epoch(o['logdir'], steps)
    truncate_stats(o['logdir'], done)
    kwargs = {}
    if done:
        kwargs['session_init'] = SaverRestore(os.path.join(o['logdir'], 'model-%d' % (done * steps)))
        logger.info('Resuming after epoch %d (the last epoch with both statistics and a checkpoint)' % done)
    config = TrainConfig(model=model, data=QueueInput(data.train), callbacks=callbacks, steps_per_epoch=steps,
                         monitors=[EventWriter(), JSONWriter(), ScalarPrinter()],   # tensorpack's defaults
                         max_epoch=o['epochs'], starting_epoch=done + 1, session_config=runtime.session_config(o['threads']),
                         **kwargs)
    return config


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
        check_graph(task, o)
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
        rundir.set_status_if_possible('failed', message=str(e), epochs_done=_epochs_done(o, config),
                                      epochs=o['epochs'])
        return str(e), EXIT_FAILED
    except KeyboardInterrupt as e:       # Ctrl-C, or SIGTERM through main()'s handler
        signum = getattr(e, 'signum', signal.SIGINT)
        name = signal.Signals(signum).name
        done = _epochs_done(o, config)
        logger.info('Interrupted by %s after epoch %d' % (name, done))
        rundir.set_status_if_possible('interrupted', signal=name, epochs_done=done, epochs=o['epochs'])
        head = result_head(task, o, read_stats(o['logdir']))
        return ('INTERRUPTED %s: by %s after epoch %d of %d (recorded as interrupted; the same command resumes '
                'after epoch %d)' % (head, name, done, o['epochs'], done)), 128 + signum
    finally:
        rundir.release()


def _epochs_done(o, config):
    """Epochs a resume would not redo (0 before the configuration exists)."""
    return last_complete_epoch(o['logdir'], config.steps_per_epoch) if config is not None else 0


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
        except (OptionError,) + tuple(task.data_errors) as e:
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
