"""CIFAR-scale trainer of the paper's experiments (Fig. 4, Tables 7 and 8, the large-batch table).

``scripts/cifar_resnet.py`` is the command line; the core (options, log directory, towers,
resume, evaluation, divergence) is :mod:`kalman_norm.train.core`; this module adds what is CIFAR's:
the models, the data sets and the schedules.

Terms, as in the paper:
  * ``--batch`` (group size): samples per normalisation — the paper's per-GPU batch.
  * ``--total-batch``: samples per SGD step, split over ``--gpus`` data-parallel towers; each
    tower normalises only its own samples, in groups of ``--batch``.
  So ``--batch 2 --total-batch 128 --gpus 1`` is the paper's CIFAR protocol: one device, 128
  samples per step, normalised as 64 micro-batches of 2.
"""
import copy

import numpy as np

from . import command_line, core
from ..data import OWN_DATASET, DataError, describe, get_dataflow, load_dataset
from ..models import model_names
from .options import OptionError
from .core import EMA_NORMS, KALMAN_NORMS  # noqa: F401  (the trainer's tests use them from here)

MODELS = model_names('cifar')

#: The schedules.
#:  * 'paper': the authors' public CIFAR recipe — 400 epochs; lr 0.01 for the first epoch (a
#:    warm-up), then 0.1, 0.01 from epoch 82, 0.001 from epoch 123, 0.0002 from epoch 300;
#:    momentum 0.9 (plain); weight decay 2e-4 on conv and FC kernels.  "From epoch 82" counts
#:    epochs from 1: the value holds from the 82nd epoch on.  The rates scale with --lr (0.1).
#:  * 'short': a CPU-sized recipe: 30 epochs, linear warm-up over 2 epochs from lr/5, then linear
#:    decay to 0; Nesterov momentum; weight decay 5e-4 (stronger regularisation suits short runs).
SCHEDULE_RECIPES = {
    'paper': dict(epochs=400, lr=0.1, weight_decay=2e-4, nesterov=False),
    'short': dict(epochs=30, lr=0.1, weight_decay=5e-4, nesterov=True),
}
SCHEDULES = tuple(SCHEDULE_RECIPES)
TRAIN_SIZES = {'cifar10': 50000, 'cifar100': 50000, 'svhn': 73257}
#: classes for the dry build of the graph before the data loads (a folder's are counted later)
NUM_CLASSES = {'cifar10': 10, 'cifar100': 100, 'svhn': 10, OWN_DATASET: 10}


def validation_split(ds, size):
    """(a Dataset whose training set is all but the last ``size`` training images and whose test
    set is those ``size``, size): a validation split for choosing hyperparameters without the test
    set.  The split follows the stored order (deterministic); ``size`` 0 returns ``ds`` itself.
    The normalisation statistics stay the whole training set's, as the data set defines them."""
    if size == 0:
        return ds, 0
    if size >= len(ds.train_labels):
        raise OptionError('--validation %d leaves no training images (the training set holds %d)'
                          % (size, len(ds.train_labels)))
    cut = len(ds.train_labels) - size
    split = copy.copy(ds)
    split.train_images, split.train_labels = ds.train_images[:cut], ds.train_labels[:cut]
    split.test_images, split.test_labels = ds.train_images[cut:], ds.train_labels[cut:]
    return split, size


def lr_schedule(schedule, lr, epochs):
    """[(epoch, lr)] points for tensorpack's ScheduledHyperParamSetter, and its interpolation.

    A point (e, v) sets v after epoch e completes, so v holds from epoch e + 1 (epochs count from
    1).  'paper' is the authors' list, [(1, 0.1), (82, 0.01), (123, 0.001), (300, 0.0002)] with
    the learning rate starting at 0.01: 0.01 in epoch 1, 0.1 in epochs 2-82, 0.01 in 83-123,
    0.001 in 124-300, 0.0002 from 301 (scaled by lr / 0.1).  'short': lr / 5 rising linearly to
    lr over the first two epochs, then linear decay to 0 at the end."""
    if schedule == 'paper':
        scale = lr / 0.1
        points = [(0, 0.01), (1, 0.1), (82, 0.01), (123, 0.001), (300, 0.0002)]
        return [(e, v * scale) for e, v in points if e < epochs], None
    warm = min(2, max(epochs - 1, 0))
    return [(0, lr / 5.0), (warm, lr), (epochs, 0.0)], 'linear'


class CifarTask(core.Task):
    prog = command_line.CIFAR_PROG
    description = command_line.CIFAR_DESCRIPTION
    options = command_line.CIFAR_OPTIONS

    schedule_recipes = SCHEDULE_RECIPES
    precise_bn = True
    identity_if_set = ('validation',)
    data_errors = (DataError,)

    def check(self, o):
        super().check(o)
        # (replaced by the real count once the data is loaded, see core.prepare)
        train_size = TRAIN_SIZES.get(o['dataset'], 50000) - o['validation']
        o['steps_per_epoch_estimate'] = o['steps_per_epoch'] or max(train_size, 0) // o['total_batch']

    def describe_input(self, o):
        return core.InputDescription(o['dataset'], (32, 32, 3), NUM_CLASSES[o['dataset']])

    def lr_schedule(self, o):
        return lr_schedule(o['schedule'], o['lr'], o['epochs'])

    def load_data(self, o):
        return self.data_from(load_dataset(o['dataset'], o['data'], cache_dir=o['cache_dir'],
                                         strict_counts=not o['partial_data']), o)

    def data_from(self, ds, o):
        """A loaded data set as the trainer's :class:`~kalman_norm.train.core.Data` for options ``o``."""
        tower = o['tower_batch']
        content_hash = ds.content_hash()       # of the data set as loaded, whatever the split
        loaded = ds
        ds, held_out = validation_split(ds, o['validation'])
        if len(ds.train_labels) < o['total_batch']:
            raise OptionError('The training set (%d images) is smaller than one step of %d samples'
                              % (len(ds.train_labels), o['total_batch']))
        train_df = get_dataflow(ds.train_images, ds.train_labels, tower, train=True,
                                         num_proc=o['num_proc'],
                                         seed=None if o['seed'] is None else o['seed'] + 1000 * o['worker_index'])
        # Test sets are stored class by class; with batch statistics (option B) a test batch must
        # be a random draw, not 256 images of one class.  A fixed permutation keeps it repeatable.
        order = np.random.RandomState(1234).permutation(len(ds.test_labels))
        test_images, test_labels = ds.test_images[order], ds.test_labels[order]

        def test(batch_size, whole_groups_of):
            # a partial last batch is kept only if it holds whole normalization groups
            remainder = (len(test_labels) % batch_size) % whole_groups_of == 0
            return get_dataflow(test_images, test_labels, batch_size, train=False, remainder=remainder)

        def train_batches(seed):
            return get_dataflow(ds.train_images, ds.train_labels, tower, train=True, num_proc=0, seed=seed)

        described = describe(loaded) if not held_out else (
            '%s; validation split: the last %d training images held out and evaluated on (training on %d; '
            'the test set is not used)' % (describe(loaded), held_out, len(ds.train_labels)))
        return core.Data(train_df, len(ds.train_labels), test, ds.num_classes, ds.channel_mean,
                            ds.channel_std, (32, 32, 3), described, content_hash, train_batches)


TASK = CifarTask()


def parse_options(argv=None):
    return core.parse_options(TASK, argv)


def make_spec(o):
    return core.make_spec(o)


DEFAULTS = {opt.key: opt.default for opt in TASK.all_options()}


def main(argv=None):
    return core.main(TASK, argv)
