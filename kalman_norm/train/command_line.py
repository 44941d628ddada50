"""The trainers' command lines: their option tables, programs and descriptions, and the first
check of a command line, all without TensorFlow: a bad option fails in a fraction of a second, before
the trainer (which imports TensorFlow) loads.  The trainers take these tables as they are; their
cross-option checks (a norm's own options, the model's arguments) follow once TensorFlow is up."""
import sys
from collections import namedtuple

from ..names import DATASETS, KN_RECIPE_NAMES, MODEL_NAMES, NORM_NAMES, PRIOR_METHODS, SCHEDULES
from .options import Opt, OptionError, resolve

__all__ = ['EVAL_MODES', 'COMMON_OPTIONS', 'CIFAR', 'IMAGENET', 'EXIT_BAD_INPUT', 'check_command_line']

EXIT_BAD_INPUT = 2

#: 'precise': moving statistics every epoch, and after the last one PreciseBN's (kalman_norm.precise_bn,
#: recorded as val-error-precise); 'all': moving and batch every epoch, PreciseBN's at the end
EVAL_MODES = ('moving', 'batch', 'both', 'precise', 'all')

COMMON_OPTIONS = [
    Opt('norm', 'bn', 'choice', 'normalization', choices=NORM_NAMES),
    Opt('batch', 128, 'int', 'samples per normalization (per GPU in the paper\'s sense)', minimum=1),
    Opt('total_batch', 128, 'int', 'samples per SGD step over all towers (and all workers of a cluster)',
        minimum=1),
    Opt('gpus', 1, 'int', 'data-parallel towers on this machine, each normalizing its own samples', minimum=1),
    Opt('epochs', None, 'int', 'epochs (default: the schedule\'s)', minimum=1, nullable=True),
    Opt('steps_per_epoch', None, 'int', 'cap on steps per epoch (smoke runs)', minimum=1, nullable=True),
    Opt('lr', None, 'float', 'peak learning rate (default: the schedule\'s)', above=0.0, nullable=True),
    Opt('weight_decay', None, 'float', 'L2 on conv/FC kernels (default: the schedule\'s)', minimum=0.0,
        nullable=True),
    Opt('momentum', 0.9, 'float', 'SGD momentum, in [0, 1)', minimum=0.0),
    Opt('nesterov', None, 'bool', 'Nesterov momentum (default: the schedule\'s)', nullable=True),
    Opt('kn_recipe', 'library', 'choice', "KN recipe: library (this package's defaults: analytic prior, "
        "output hand-on, no R), authors (the authors' CIFAR code: MC prior, input hand-on, no R) or paper "
        "(MC prior, learned q and R, Eq. 7's variance, no guard, input hand-on); it sets --prior, "
        "--prior-samples, --gain and the KN norm options that the config and command line leave out "
        "(kalman_norm.KN_RECIPES)", choices=KN_RECIPE_NAMES, identity=False),
    Opt('gain', 'auto', 'any', "KN gain q: a number in [0, 1], 'learned', or 'auto' (0.1 if batch <= 16 "
        "else 0.95, the authors' values; --kn-recipe paper: learned)"),
    Opt('prior', 'analytic', 'choice', 'KN prior: analytic, or mc (the paper\'s Monte-Carlo; '
        '--kn-recipe authors and paper)', choices=PRIOR_METHODS),
    Opt('prior_samples', 1, 'int', 'sampled feature maps per group for --prior mc', minimum=1),
    Opt('eval_stats', 'moving', 'choice', 'inference statistics: moving (A), batch (B) or both; precise: '
        'moving, and after the last epoch the moving statistics recomputed with the final weights over '
        '--precise-batches training batches (PreciseBN, Wu & Johnson 2021; val-error-precise); all: both + '
        'precise', choices=EVAL_MODES),
    Opt('precise_batches', 200, 'int', "training batches of the tower's size that --eval-stats precise/all "
        "averages (200 x 128 = half of CIFAR's training set, forward only); recorded beside the result",
        minimum=1, identity=False),
    Opt('seed', None, 'int', 'random seed (weights, data order, augmentation)', nullable=True, minimum=0),
    Opt('norm_options', {}, 'table', 'a norm layer option (TOML value), e.g. process_noise=false'),
    Opt('model_options', {}, 'table', 'a model option (TOML value)'),
    Opt('logdir', None, 'path', 'log directory; default train_log/<name>-<hash of the options>; '
        'a run resumes in its own directory', nullable=True, identity=False),
    Opt('keep_checkpoints', 2, 'int', 'checkpoints kept (the last N epochs)', minimum=1, identity=False),
    Opt('num_proc', 1, 'int', 'data worker processes (0: in the training process)', minimum=0,
        identity=False),
    Opt('threads', None, 'int', 'CPU threads for TensorFlow (intra- and inter-op pools); default: every '
        'core. Give it when another process shares the machine', minimum=1, nullable=True, identity=False),
    Opt('trainer', 'auto', 'choice', "auto: replicated towers on one machine, parameter servers on a "
        "cluster; replicated: replicated variables on a cluster too; horovod: Horovod's allreduce "
        "(if horovod.tensorflow imports)", choices=('auto', 'replicated', 'horovod')),
    Opt('cluster', [], 'list', 'a cluster job, JOB=HOST:PORT,... (ps=..., worker=...); or TF_CONFIG',
        identity=False),
    Opt('task', None, 'str', "this process's task in the cluster, JOB:INDEX (ps:0, worker:1)",
        nullable=True, identity=False),
    Opt('cluster_timeout', 600.0, 'float', 'seconds a cluster worker waits for the parameter servers '
        '(and a non-chief worker for the chief) before giving up with an error', above=0.0, identity=False),
]


CIFAR_PROG = 'cifar_resnet.py'
CIFAR_DESCRIPTION = ('Train a CIFAR ResNet (or the paper\'s small Inception net) with any normalization.\n'
                     'Exit codes: 0 trained (or already done), 1 failed at run time (a checkpoint that cannot '
                     'be written, a silent cluster), 2 bad input (nothing written), 3 diverged, 130/143 '
                     'interrupted (resumable).')

CIFAR_OPTIONS = [
    Opt('depth', 5, 'int', 'ResNet blocks per stage: depth 6n+2 (3: ResNet-20, 5: -32, 18: -110)',
        minimum=1, short='-n'),
    Opt('model', 'resnet', 'choice', 'resnet, or the small inception net of Sect. 4.3.2',
        choices=MODEL_NAMES['cifar']),
    Opt('dataset', 'cifar10', 'choice', 'data set', choices=DATASETS),
    Opt('schedule', 'short', 'choice', "paper: the authors' 400-epoch recipe; short: a 30-epoch CPU "
        "recipe", choices=SCHEDULES['cifar']),
    Opt('data', None, 'path', 'dataset dir (official files or image folder) or .tar.gz; default: '
        'tensorpack download', nullable=True, identity=False),
    Opt('partial_data', False, 'bool', "accept a copy of cifar10/cifar100/svhn whose split sizes differ "
        "from the official release (a warning instead of an error); --dataset folder is for your own data"),
    Opt('cache_dir', None, 'path', 'where decoded image folders are cached', nullable=True, identity=False),
    Opt('validation', 0, 'int', 'hold out the last N training images (in the data set\'s stored order) and '
        'evaluate on them instead of the test set, e.g. 5000 to choose a learning rate; 0: train on all, '
        'evaluate on the test set', minimum=0),
]


IMAGENET_PROG = 'imagenet.py'
IMAGENET_DESCRIPTION = ('Train ResNet-50/101 or Inception-v2 on ILSVRC-12 with any normalization, on one '
                        'machine or a cluster.\nExit codes: 0 trained (or already done), 1 failed at run time '
                        '(a checkpoint that cannot be written, a silent cluster), 2 bad input (nothing written), '
                        '3 diverged, 130/143 interrupted (resumable).')

IMAGENET_OPTIONS = [
    Opt('arch', 'resnet50', 'choice', 'architecture', choices=MODEL_NAMES['imagenet']),
    Opt('image_size', 224, 'int', 'side of the square training and validation crops', minimum=32),
    Opt('schedule', 'paper', 'choice', "paper: 90-epoch standard recipe; short: CPU checks",
        choices=SCHEDULES['imagenet']),
    Opt('fake_data', False, 'bool', 'random images of the right shape instead of --data (throughput)'),
    Opt('num_classes', None, 'int', 'classes with --fake-data (default 1000)', minimum=2, nullable=True),
    Opt('data', None, 'path', 'ILSVRC-12 directory: train/<wnid>/*.JPEG and val/ with its labels',
        nullable=True, identity=False),
]


#: one trainer's command line: its program name, --help text, and every option (common first)
CommandLine = namedtuple('CommandLine', ['prog', 'description', 'options'])
CIFAR = CommandLine(CIFAR_PROG, CIFAR_DESCRIPTION, COMMON_OPTIONS + CIFAR_OPTIONS)
IMAGENET = CommandLine(IMAGENET_PROG, IMAGENET_DESCRIPTION, COMMON_OPTIONS + IMAGENET_OPTIONS)


def check_command_line(command, argv=None):
    """Each option of ``argv`` (and of its --config) typed and range-checked as the trainer will,
    before TensorFlow loads: a bad one exits as the trainer does (argparse's usage line, or
    ``error: <one line>`` and exit 2).  --help prints the trainer's help here."""
    try:
        resolve(argv, command.options, command.prog, command.description)
    except OptionError as e:
        print('error: %s' % e, file=sys.stderr)
        raise SystemExit(EXIT_BAD_INPUT)
