"""ImageNet trainer of the paper's Tables 1, 3, 4 and 5: ResNet-50/101 and Inception-v2 (BN-Inception).

``scripts/imagenet.py`` is the command line; the core (options, log directory, towers, clusters,
resume, evaluation with moving or batch statistics, divergence) is :mod:`kalman_norm.train.core`;
this module adds what is ImageNet's: the architectures, the ILSVRC-12 data and the schedules.

``--batch`` is the number of samples per normalisation per GPU (the paper's "batch size": 32, 4
or 1); ``--total-batch`` the samples of one SGD step over every GPU (and every worker of a
cluster); gradients are averaged.  The learning rate scales with the total batch: ``--lr`` is
the rate for 256 samples per step (Goyal et al. 2017).
"""
from . import command_line, core
from ..data import DataError
from ..data.imagenet import (IMAGENET_MEAN, IMAGENET_STD, describe_imagenet, fake_imagenet_dataflow,
                            get_imagenet_dataflow, load_imagenet)
from ..models import model_names
from .options import OptionError

ARCHS = model_names('imagenet')
TRAIN_SIZE = 1281167
FAKE_SIZES = dict(train=1281167, val=50000)

#: The schedules.  The paper does not state its ImageNet recipe; 'paper' is the standard one of
#: its baselines (He et al. 2016; Goyal et al. 2017): 90 epochs, lr 0.1 per 256 samples with a
#: 5-epoch linear warm-up from 0.1 of it, x0.1 at epochs 30, 60 and 80, momentum 0.9, weight
#: decay 1e-4.  'short' is for CPU checks on small data: linear warm-up over 1 epoch from lr/5,
#: linear decay to 0.
SCHEDULE_RECIPES = {
    'paper': dict(epochs=90, lr=0.1, weight_decay=1e-4, nesterov=False),
    'short': dict(epochs=10, lr=0.1, weight_decay=5e-5, nesterov=True),
}
SCHEDULES = tuple(SCHEDULE_RECIPES)


def lr_schedule(schedule, lr, epochs, total_batch):
    """[(epoch, lr)] for ScheduledHyperParamSetter (value holds after the epoch named), interp."""
    peak = lr * total_batch / 256.0
    if schedule == 'paper':
        warm = min(5, epochs)
        points = [(0, peak * 0.1), (warm, peak)] + [(e, peak * f) for e, f in ((30, 0.1), (60, 0.01), (80, 0.001))
                                                     if e < epochs]
        return points, 'linear' if warm else None
    warm = min(1, max(epochs - 1, 0))
    return [(0, peak / 5.0), (warm, peak), (epochs, 0.0)], 'linear'


class ImageNetTask(core.Task):
    prog = command_line.IMAGENET_PROG
    description = command_line.IMAGENET_DESCRIPTION
    dry_build = False
    model_option = 'arch'
    options = command_line.IMAGENET_OPTIONS

    schedule_recipes = SCHEDULE_RECIPES
    data_errors = (DataError,)
    eval_batch_target = 64          # 224x224 images: 64 fit any GPU

    def check(self, o):
        super().check(o)
        if o['fake_data'] == (o['data'] is not None):
            raise OptionError('give either --data DIR (ILSVRC-12) or --fake-data true')
        if o['num_classes'] is not None and not o['fake_data']:
            raise OptionError('--num-classes applies to --fake-data only (real data has its classes)')
        o['steps_per_epoch_estimate'] = o['steps_per_epoch'] or TRAIN_SIZE // o['total_batch']

    def describe_input(self, o):
        return core.InputDescription('imagenet-fake' if o['fake_data'] else 'imagenet',
                                     (o['image_size'], o['image_size'], 3), o['num_classes'] or 1000)

    def lr_schedule(self, o):
        return lr_schedule(o['schedule'], o['lr'], o['epochs'], o['total_batch'])

    def load_data(self, o):
        tower = o['tower_batch']
        size = o['image_size']
        if o['fake_data']:
            classes = self.describe_input(o).num_classes
            steps = o['steps_per_epoch'] or FAKE_SIZES['train'] // o['total_batch']
            train = fake_imagenet_dataflow(tower, size, classes, num_batches=steps * o['gpus'], seed=o['seed'])

            def test(batch_size, whole_groups_of):
                return fake_imagenet_dataflow(batch_size, size, classes, num_batches=2, seed=1234)

            return core.Data(train, steps * o['total_batch'], test, classes, IMAGENET_MEAN, IMAGENET_STD,
                                (size, size, 3), 'fake ImageNet: random %dx%d images, %d classes' % (size, size, classes))
        data = load_imagenet(o['data'])
        if len(data.train) < o['total_batch']:
            raise OptionError('The training set (%d images) is smaller than one step of %d samples'
                              % (len(data.train), o['total_batch']))
        train = get_imagenet_dataflow(data, 'train', tower, size, num_proc=o['num_proc'],
                                         seed=None if o['seed'] is None else o['seed'] + 1000 * o['worker_index'])

        def test(batch_size, whole_groups_of):
            remainder = (len(data.val) % batch_size) % whole_groups_of == 0
            # strict multi-process decoding: exactly one pass over the validation files
            return get_imagenet_dataflow(data, 'val', batch_size, size, num_proc=o['num_proc'], remainder=remainder)

        return core.Data(train, len(data.train), test, data.num_classes, IMAGENET_MEAN, IMAGENET_STD,
                            (size, size, 3), describe_imagenet(data))


TASK = ImageNetTask()


def parse_options(argv=None):
    return core.parse_options(TASK, argv)


def main(argv=None):
    return core.main(TASK, argv)
