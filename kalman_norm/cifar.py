"""CIFAR-scale trainer of the paper's experiments (Fig. 4, Tables 7 and 8, the large-batch table).

``scripts/cifar_resnet.py`` is the command line; this module holds what it needs so that tests
and other scripts can use it: options (command line over TOML config over defaults), the
tensorpack ``ModelDesc``, the schedules, and :func:`train`.

Terms, as in the paper:
  * ``--batch`` (group size): samples per normalisation — the paper's per-GPU batch.
  * ``--total-batch``: samples per SGD step, split over ``--gpus`` data-parallel towers; each
    tower normalises only its own samples, in groups of ``--batch``.
  So ``--batch 2 --total-batch 128 --gpus 1`` is the paper's CIFAR protocol: one device, 128
  samples per step, normalised as 64 micro-batches of 2.
"""
import argparse
import json
import math
import os
import sys
import time

import kalman_norm  # noqa: F401  (sets up the TF/tensorpack stack first)
import numpy as np
import tensorflow as tf
from tensorpack import (AutoResumeTrainConfig, ModelDesc, QueueInput, SimpleTrainer,
                        SyncMultiGPUTrainerReplicated, launch_train_with_config)
from tensorpack.callbacks import (Callback, ClassificationError, EstimatedTimeLeft, InferenceRunner,
                                  ModelSaver, ScheduledHyperParamSetter)
from tensorpack.tfutils.common import get_global_step_var
from tensorpack.tfutils.sessinit import SaverRestore
from tensorpack.tfutils.summary import add_moving_summary
from tensorpack.tfutils.tower import get_current_tower_context
from tensorpack.utils import logger

from . import datasets
from .spec import NORMS, NormSpec

try:
    import tomllib
except ImportError:  # Python < 3.11
    tomllib = None

MODELS = ('resnet', 'inception')
SCHEDULES = ('paper', 'short')
EVAL_MODES = ('moving', 'batch', 'both')
PRIOR_METHODS = ('analytic', 'mc')
#: norms with moving averages, for which --eval-stats chooses between options A and B
EMA_NORMS = ('bn', 'bkn', 'brn')
KALMAN_NORMS = ('bkn', 'gkn')

DEFAULTS = dict(
    norm='bn', batch=128, total_batch=128, gpus=1, depth=5, model='resnet', dataset='cifar10',
    data=None, epochs=None, steps_per_epoch=None, schedule='short', lr=0.1, weight_decay=None,
    momentum=0.9, gain='auto', prior='analytic', prior_samples=1, eval_stats='moving', seed=None,
    logdir=None, num_proc=1, cache_dir=None, norm_options={}, model_options={},
)

#: The schedules.  'paper' is the reference recipe (He et al.'s CIFAR ResNet schedule stretched
#: to the ~400 epochs of the paper's Fig. 4: step decay ×0.1 at 50% and 75%).  'short' is a CPU-
#: sized schedule: 30 epochs, linear warm-up over 2 epochs from lr/5, then linear decay to 0,
#: with weight decay 5e-4 (stronger regularisation suits short schedules).
SCHEDULE_RECIPES = {
    'paper': dict(epochs=400, weight_decay=1e-4),
    'short': dict(epochs=30, weight_decay=5e-4),
}


class OptionError(ValueError):
    """A bad command-line or config option; the message says what to pass."""


def lr_schedule(schedule, lr, epochs):
    """[(epoch, lr)] points for tensorpack's ScheduledHyperParamSetter, and its interpolation."""
    if schedule == 'paper':
        return [(0, lr), (epochs // 2, lr * 0.1), (epochs * 3 // 4, lr * 0.01)], None
    warm = min(2, max(epochs - 1, 0))
    return [(0, lr / 5.0), (warm, lr), (epochs, 0.0)], 'linear'


def auto_gain(batch):
    """The authors' fixed gains: q = 0.1 for micro-batches, 0.95 for large batches (batch 128)."""
    return 0.1 if batch <= 16 else 0.95


# ----------------------------------------------------------------------------------------------
# options

def build_parser():
    p = argparse.ArgumentParser(
        prog='cifar_resnet.py', description=__doc__.split('\n\n')[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter, argument_default=argparse.SUPPRESS)
    a = p.add_argument
    a('--config', help='TOML file with any of these options (command line wins)')
    a('--norm', choices=NORMS, help='normalization (default bn)')
    a('--batch', type=int, help='samples per normalization (per GPU in the paper\'s sense; default 128)')
    a('--total-batch', type=int, help='samples per SGD step over all towers (default 128)')
    a('--gpus', type=int, help='data-parallel towers, each normalizing its own samples (default 1)')
    a('-n', '--depth', type=int, help='ResNet blocks per stage: depth 6n+2 (3: ResNet-20, 5: -32, 18: -110)')
    a('--model', choices=MODELS, help='resnet (default) or the small inception net of Sect. 4.3.2')
    a('--dataset', choices=datasets.DATASETS, help='default cifar10')
    a('--data', help='dataset dir (official files or image folder) or .tar.gz; default: tensorpack download')
    a('--epochs', type=int, help='default from --schedule')
    a('--steps-per-epoch', type=int, help='cap on steps per epoch (smoke runs)')
    a('--schedule', choices=SCHEDULES, help='paper: 400-epoch reference recipe; short: 30-epoch CPU recipe')
    a('--lr', type=float, help='peak learning rate (default 0.1)')
    a('--weight-decay', type=float, help='L2 on conv/dense kernels (default from --schedule)')
    a('--gain', help="KN gain q: a number in [0,1], 'learned', or 'auto' (0.1 if batch<=16 else 0.95)")
    a('--prior', choices=PRIOR_METHODS, help='KN prior: analytic (default) or mc (paper\'s Monte-Carlo)')
    a('--prior-samples', type=int, help='samples per group for --prior mc (default 1)')
    a('--eval-stats', choices=EVAL_MODES, help='inference statistics: moving (A), batch (B) or both')
    a('--norm-option', action='append', metavar='KEY=VALUE',
      help='a norm layer option (TOML value), e.g. process_noise=false; repeatable')
    a('--seed', type=int)
    a('--logdir', help='default train_log/<dataset>-<model>-<norm>-b<batch>-g<gpus>; resumes if it holds a checkpoint')
    a('--num-proc', type=int, help='dataflow worker processes (0: in the training process; default 1)')
    a('--cache-dir', help='where decoded image folders are cached')
    return p


def _parse_value(text):
    """A TOML scalar ('false', '100', '0.5', '"input"') or a bare string."""
    try:
        return tomllib.loads('v = %s' % text)['v']
    except Exception:
        return text


def load_config(path):
    if tomllib is None:  # pragma: no cover
        raise OptionError('--config needs Python >= 3.11 (tomllib)')
    if not os.path.isfile(path):
        raise OptionError('--config %s: no such file' % path)
    with open(path, 'rb') as f:
        try:
            conf = tomllib.load(f)
        except tomllib.TOMLDecodeError as e:
            raise OptionError('--config %s is not valid TOML: %s' % (path, e))
    conf = {k.replace('-', '_'): v for k, v in conf.items()}
    unknown = sorted(set(conf) - set(DEFAULTS))
    if unknown:
        raise OptionError('%s: unknown option(s) %s; known: %s' % (path, ', '.join(unknown),
                                                                  ', '.join(sorted(DEFAULTS))))
    for key in ('norm_options', 'model_options'):
        if not isinstance(conf.get(key, {}), dict):
            raise OptionError('%s: %s must be a table ([%s] section), got %r' % (path, key, key, conf[key]))
    return conf


def parse_options(argv=None):
    """Defaults, overridden by the --config file, overridden by the command line; validated."""
    args = vars(build_parser().parse_args(argv))
    opts = dict(DEFAULTS)
    opts['norm_options'] = {}
    if 'config' in args:
        conf = load_config(args.pop('config'))
        opts.update({k: v for k, v in conf.items() if k not in ('norm_options', 'model_options')})
        opts['norm_options'].update(conf.get('norm_options', {}))
        opts['model_options'] = dict(conf.get('model_options', {}))
    for item in args.pop('norm_option', []) or []:
        if '=' not in item:
            raise OptionError('--norm-option takes KEY=VALUE, got %r' % item)
        k, v = item.split('=', 1)
        opts['norm_options'][k.strip()] = _parse_value(v.strip())
    opts.update(args)
    return validate(opts)


def validate(o):
    def need(cond, msg):
        if not cond:
            raise OptionError(msg)

    # values from a TOML config arrive with TOML's types: check them before comparing
    for key, kinds, what in (('lr', (int, float), 'a number'), ('weight_decay', (int, float), 'a number'),
                             ('momentum', (int, float), 'a number'), ('epochs', int, 'an integer'),
                             ('steps_per_epoch', int, 'an integer'), ('num_proc', int, 'an integer'),
                             ('seed', int, 'an integer'), ('data', str, 'a path'),
                             ('logdir', str, 'a path'), ('cache_dir', str, 'a path')):
        need(o[key] is None or (isinstance(o[key], kinds) and not isinstance(o[key], bool)),
             '--%s must be %s, got %r' % (key.replace('_', '-'), what, o[key]))
    for key in ('batch', 'total_batch', 'gpus', 'depth', 'prior_samples'):
        need(isinstance(o[key], int) and not isinstance(o[key], bool) and o[key] >= 1,
             '--%s must be a positive integer, got %r' % (key.replace('_', '-'), o[key]))
    need(o['norm'] in NORMS, '--norm must be one of %s, got %r' % (', '.join(NORMS), o['norm']))
    need(o['model'] in MODELS, '--model must be one of %s, got %r' % (', '.join(MODELS), o['model']))
    need(o['dataset'] in datasets.DATASETS, '--dataset must be one of %s' % ', '.join(datasets.DATASETS))
    need(o['schedule'] in SCHEDULES, '--schedule must be paper or short, got %r' % (o['schedule'],))
    need(o['eval_stats'] in EVAL_MODES, '--eval-stats must be moving, batch or both')
    need(o['prior'] in PRIOR_METHODS, '--prior must be analytic or mc')
    need(o['num_proc'] >= 0, '--num-proc must be >= 0')
    need(o['total_batch'] % o['gpus'] == 0,
         '--total-batch %d is not divisible by --gpus %d' % (o['total_batch'], o['gpus']))
    tower = o['total_batch'] // o['gpus']
    need(tower % o['batch'] == 0,
         '--total-batch (%d) must be a multiple of --batch × --gpus (%d × %d): each tower holds %d '
         'samples, which must split into whole normalization groups of %d'
         % (o['total_batch'], o['batch'], o['gpus'], tower, o['batch']))
    recipe = SCHEDULE_RECIPES[o['schedule']]
    if o['epochs'] is None:
        o['epochs'] = recipe['epochs']
    if o['weight_decay'] is None:
        o['weight_decay'] = recipe['weight_decay']
    need(isinstance(o['epochs'], int) and o['epochs'] >= 1, '--epochs must be a positive integer')
    need(o['steps_per_epoch'] is None or o['steps_per_epoch'] >= 1, '--steps-per-epoch must be >= 1')
    need(o['lr'] > 0, '--lr must be > 0')
    need(o['weight_decay'] >= 0, '--weight-decay must be >= 0')
    if o['model'] != 'resnet' and 'depth' in o and o['depth'] != DEFAULTS['depth']:
        pass  # depth only matters for the ResNet; accepted and ignored otherwise
    gain = o['gain']
    if o['norm'] in KALMAN_NORMS:
        if gain == 'auto':
            gain = auto_gain(o['batch'])
        elif gain != 'learned':
            try:
                gain = float(gain)
            except (TypeError, ValueError):
                raise OptionError("--gain must be a number in [0, 1], 'learned' or 'auto', got %r" % (gain,))
            need(0.0 <= gain <= 1.0, '--gain must be in [0, 1], got %r' % gain)
    elif gain not in ('auto', None):
        raise OptionError('--gain applies to bkn and gkn only (got --norm %s)' % o['norm'])
    o['gain'] = gain
    if o['norm'] not in KALMAN_NORMS and (o['prior'] != 'analytic' or o['prior_samples'] != 1):
        raise OptionError('--prior/--prior-samples apply to bkn and gkn only (got --norm %s)' % o['norm'])
    if o['norm'] not in EMA_NORMS and o['eval_stats'] != 'moving':
        raise OptionError('--eval-stats applies to norms with moving averages (%s); %s has none'
                          % (', '.join(EMA_NORMS), o['norm']))
    o['spec'] = make_spec(o)          # validates norm_options against the layer
    if o['logdir'] is None:
        model = 'resnet%d' % (6 * o['depth'] + 2) if o['model'] == 'resnet' else 'inception'
        o['logdir'] = os.path.join('train_log', '%s-%s-%s-b%d-g%d' % (
            o['dataset'], model, o['norm'], o['batch'], o['gpus']))
    return o


def make_spec(o):
    options = dict(o['norm_options'])
    kw = {}
    if o['norm'] in KALMAN_NORMS:
        options.setdefault('gain', o['gain'])
        kw = dict(prior_method=o['prior'], prior_samples=o['prior_samples'])
    if o['norm'] == 'brn':
        # Ioffe's warm-up (5k → 40k/25k steps) is for ImageNet-length runs; scale it to this run.
        steps = o['epochs'] * (o['steps_per_epoch'] or 50000 // o['total_batch'])
        options.setdefault('warmup', (int(steps * 0.05), int(steps * 0.4), int(steps * 0.25)))
    try:
        if 'gain' in options and o['norm'] in KALMAN_NORMS:
            from .layers.kalman import _validate_gain
            _validate_gain(options['gain'], options.get('gain_init', 0.1))
        return NormSpec(o['norm'], group_size=o['batch'], **kw, **options)
    except ValueError as e:
        raise OptionError(str(e))


# ----------------------------------------------------------------------------------------------
# model

def build_logits(model, image, num_classes, options):
    if model == 'resnet':
        from kalman_norm.models.resnet_cifar import resnet_cifar
        return resnet_cifar(image, n=options['depth'], num_classes=num_classes,
                            **options.get('model_options', {}))
    from kalman_norm.models.inception_cifar import inception_cifar
    return inception_cifar(image, num_classes=num_classes, **options.get('model_options', {}))


class CifarModel(ModelDesc):
    """Normalised uint8 images → the chosen model under the chosen norm → cross-entropy + L2.

    Inference towers whose name contains ``Batch`` evaluate with online batch statistics
    (option B); the others with moving averages (option A).
    """

    def __init__(self, options, channel_mean, channel_std, num_classes):
        self.o = options
        self.mean = np.asarray(channel_mean, np.float32)
        self.std = np.asarray(channel_std, np.float32)
        self.num_classes = num_classes

    def inputs(self):
        return [tf.TensorSpec([None, 32, 32, 3], tf.uint8, 'input'),
                tf.TensorSpec([None], tf.int32, 'label')]

    def build_graph(self, image, label):
        ctx = get_current_tower_context()
        # Create the global step at the root now: otherwise the first layer asking for it (BRN's
        # warm-up) would create it inside its own variable scope ('bn0/global_step').
        get_global_step_var()
        image = (tf.cast(image, tf.float32) - self.mean) / self.std
        spec = self.o['spec']
        if not ctx.is_training and self.o['norm'] in EMA_NORMS:
            spec = spec.replace(eval_stats='batch' if 'Batch' in ctx.name else 'moving')
        with spec:
            logits = build_logits(self.o['model'], image, self.num_classes, self.o)
        xent = tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(labels=label, logits=logits),
                              name='xentropy')
        wrong = tf.cast(tf.logical_not(tf.compat.v1.nn.in_top_k(logits, label, 1)), tf.float32, name='wrong')
        if not ctx.is_training:
            return xent
        kernels = [v for v in tf.compat.v1.trainable_variables()
                   if v.op.name.endswith('/W') and (not ctx.vs_name or v.op.name.startswith(ctx.vs_name))]
        wd = tf.multiply(self.o['weight_decay'], tf.add_n([tf.nn.l2_loss(v) for v in kernels]),
                         name='weight_decay')
        train_error = tf.reduce_mean(wrong, name='train_error')
        cost = tf.add(xent, wd, name='cost')
        add_moving_summary(xent, wd, cost, train_error)
        return cost

    def optimizer(self):
        lr = tf.compat.v1.get_variable('learning_rate', initializer=float(self.o['lr']), trainable=False)
        tf.compat.v1.summary.scalar('lr', lr)
        return tf.compat.v1.train.MomentumOptimizer(lr, self.o['momentum'], use_nesterov=True)


class WallClock(Callback):
    """Logs minutes since the start of this process's training, per epoch (for time budgets)."""

    def _before_train(self):
        self._start = time.time()

    def _trigger_epoch(self):
        self.trainer.monitors.put_scalar('wall_minutes', (time.time() - self._start) / 60.0)


def eval_tags(o):
    """[(inference tower name, summary name)] for the --eval-stats choice."""
    if o['norm'] not in EMA_NORMS:
        return [('InferenceTower', 'val-error')]
    modes = ['moving', 'batch'] if o['eval_stats'] == 'both' else [o['eval_stats']]
    return [('InferenceTower' + m.capitalize(), 'val-error-' + m) for m in modes]


def eval_batch_size(o):
    """Eval batch: about 256 (fewer, larger batches are faster on CPU), a multiple of --batch so
    that test batches normalised with batch statistics hold whole groups."""
    g = o['batch']
    return g * max(1, -(-256 // g))


def make_config(o, ds):
    tower = o['total_batch'] // o['gpus']
    train_df = datasets.get_dataflow(ds.train_images, ds.train_labels, tower, train=True,
                                     num_proc=o['num_proc'], seed=o['seed'])
    steps = len(train_df) // o['gpus']
    if o['steps_per_epoch']:
        steps = min(steps, o['steps_per_epoch'])
    if steps < 1:
        raise OptionError('The training set (%d images) is smaller than one step of %d samples'
                          % (len(ds.train_labels), o['total_batch']))
    eval_bs = eval_batch_size(o)
    # Test sets are stored class by class; with batch statistics (option B) a test batch must be a
    # random draw, not 256 images of one class.  A fixed permutation keeps evaluation repeatable.
    order = np.random.RandomState(1234).permutation(len(ds.test_labels))
    test_images, test_labels = ds.test_images[order], ds.test_labels[order]
    callbacks = [ModelSaver(max_to_keep=2, keep_checkpoint_every_n_hours=1000), WallClock(),
                 EstimatedTimeLeft()]
    points, interp = lr_schedule(o['schedule'], o['lr'], o['epochs'])
    callbacks.append(ScheduledHyperParamSetter('learning_rate', points, interp=interp))
    for tower_name, tag in eval_tags(o):
        # With batch statistics a partial last batch must still be whole groups; else drop it.
        remainder = not tag.endswith('batch') or (len(test_labels) % eval_bs) % o['batch'] == 0
        test_df = datasets.get_dataflow(test_images, test_labels, eval_bs, train=False, remainder=remainder)
        callbacks.append(InferenceRunner(test_df, [ClassificationError('wrong', tag)],
                                         tower_name=tower_name))
    model = CifarModel(o, ds.channel_mean, ds.channel_std, ds.num_classes)
    config = AutoResumeTrainConfig(
        always_resume=True, model=model, data=QueueInput(train_df), callbacks=callbacks,
        steps_per_epoch=steps, max_epoch=o['epochs'], session_config=session_config())
    return resume_from_recorded_epoch(config, steps)


def resume_from_recorded_epoch(config, steps):
    """AutoResumeTrainConfig takes the epoch from stats.json but the weights from the latest
    checkpoint.  ModelSaver saves an epoch's checkpoint before stats.json records the epoch (the
    validation runs in between), so a run killed there would redo that epoch from the next
    epoch's weights and global step.  Load the checkpoint of the last recorded epoch instead
    (ModelSaver keeps the previous one)."""
    path = getattr(config.session_init, 'path', None)
    if path is None or config.starting_epoch <= 1:
        return config
    want = '%s-%d' % (path.rsplit('-', 1)[0], (config.starting_epoch - 1) * steps)
    if path != want and tf.io.gfile.exists(want + '.index'):
        logger.warn('%s is ahead of the last epoch in stats.json (%d); resuming from %s'
                    % (path, config.starting_epoch - 1, want))
        config.session_init = SaverRestore(want)
    return config


def session_config():
    """tensorpack's default session config, but with every core for each op on CPU-only machines:
    tensorpack sets intra_op_parallelism_threads=1, right when the GPU does the math, and a 2× to
    3× slowdown of convolutions when the CPU does."""
    from tensorpack.tfutils.common import get_default_sess_config
    conf = get_default_sess_config()
    if not tf.config.list_physical_devices('GPU'):
        conf.intra_op_parallelism_threads = 0
    return conf


def make_trainer(o):
    if o['gpus'] == 1:
        return SimpleTrainer()
    # Replicated data parallelism: one tower per device, gradients averaged, each tower
    # normalising only its own batch.  Without GPUs the towers run on the CPU (soft placement).
    return SyncMultiGPUTrainerReplicated(o['gpus'], average=True)


def summarize(logdir, o):
    """Best and last validation error per eval option, from the run's stats.json."""
    path = os.path.join(logdir, 'stats.json')
    with open(path) as f:
        stats = json.load(f)
    parts = []
    for _, tag in eval_tags(o):
        series = [(s['epoch_num'], s[tag]) for s in stats if tag in s]
        if not series:
            continue
        best = min(series, key=lambda t: t[1])
        parts.append('%s best %.2f%% (epoch %d) last %.2f%%' % (tag, 100 * best[1], best[0], 100 * series[-1][1]))
    head = 'FINAL %s %s norm=%s batch=%d gpus=%d epochs=%d' % (
        o['dataset'], o['model'] if o['model'] != 'resnet' else 'resnet%d' % (6 * o['depth'] + 2),
        o['norm'], o['batch'], o['gpus'], stats[-1]['epoch_num'] if stats else 0)
    return head + ': ' + ('; '.join(parts) if parts else 'no validation yet')


def describe_options(o):
    keys = ['model', 'depth', 'dataset', 'data', 'norm', 'batch', 'total_batch', 'gpus', 'schedule',
            'epochs', 'steps_per_epoch', 'lr', 'weight_decay', 'eval_stats', 'seed', 'logdir']
    return ', '.join('%s=%s' % (k, o[k]) for k in keys) + ', spec=%r' % (o['spec'],)


def train(o):
    """Train with validated options ``o`` (see :func:`parse_options`); returns the summary line."""
    if o['seed'] is not None:
        np.random.seed(o['seed'])
        tf.compat.v1.set_random_seed(o['seed'])
    logger.set_logger_dir(o['logdir'], action='k')
    logger.info('Options: ' + describe_options(o))
    with open(os.path.join(o['logdir'], 'options.json'), 'w') as f:
        json.dump({k: (v if k != 'spec' else repr(v)) for k, v in o.items()}, f, indent=1, default=str)
    ds = datasets.load_dataset(o['dataset'], o['data'], cache_dir=o['cache_dir'])
    logger.info('Data: ' + datasets.describe(ds))
    config = make_config(o, ds)
    if config.starting_epoch > o['epochs']:
        logger.info('%s already trained %d epochs; nothing to do' % (o['logdir'], config.starting_epoch - 1))
    else:
        launch_train_with_config(config, make_trainer(o))
    line = summarize(o['logdir'], o)
    logger.info(line)
    print(line, flush=True)
    return line


def main(argv=None):
    try:
        o = parse_options(argv)
        return train(o)
    except (OptionError, datasets.DataError) as e:
        print('error: %s' % e, file=sys.stderr)
        raise SystemExit(2)
