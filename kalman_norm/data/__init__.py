"""The data layer: one module per source, and the public API of the trainers.

=================  ============================================================================
``common``         :class:`DataError`, the :class:`Dataset` record, expected counts, :func:`describe`
``cache``          the decode cache, keyed by content and written atomically
``cifar``          CIFAR-10 / CIFAR-100 official pickles; tensorpack's downloaders
``svhn``           SVHN ``.mat`` files; tensorpack's downloader
``folder``         image folders ``train/<class>/*.jpg`` + ``test/<class>/...``
``archive``        ``.tar(.gz)`` of a folder or of the official files, verified completely
``load``           :func:`load_dataset`: which source, and the checks of what a name promises
``dataflow``       :func:`get_dataflow`: 32x32 training (pad-4 crop + flip) and test batches
``imagenet``       ILSVRC-12 folders, its augmentation and dataflows, fake data
=================  ============================================================================

Images are uint8 NHWC RGB everywhere; per-channel normalisation happens in the TF graph.
"""
from .cache import default_cache_dir
from .cifar import CIFAR10_DIR, CIFAR10_FILES, CIFAR10_NAMES, CIFAR10_TRAIN, CIFAR100_DIR, CIFAR100_FILES
from .common import (DATASETS, EXPECTED_COUNTS, IMAGE_SHAPE, KNOWN_DATASETS, NUM_CLASSES, OWN_DATASET,
                     DataError, Dataset, channel_stats, describe)
from .dataflow import augment_batch, get_dataflow
from .imagenet import (IMAGENET_MEAN, IMAGENET_STD, ImageNetData, describe_imagenet,
                       fake_imagenet_dataflow, get_imagenet_dataflow, load_imagenet)
from .load import load_dataset
from .svhn import SVHN_FILES

__all__ = ["DataError", "Dataset", "load_dataset", "get_dataflow", "describe", "augment_batch",
           "channel_stats", "default_cache_dir", "DATASETS", "KNOWN_DATASETS", "OWN_DATASET",
           "NUM_CLASSES", "EXPECTED_COUNTS", "IMAGE_SHAPE", "CIFAR10_DIR", "CIFAR10_FILES",
           "CIFAR10_NAMES", "CIFAR10_TRAIN", "CIFAR100_DIR", "CIFAR100_FILES", "SVHN_FILES",
           "ImageNetData", "load_imagenet", "describe_imagenet", "get_imagenet_dataflow",
           "fake_imagenet_dataflow", "IMAGENET_MEAN", "IMAGENET_STD"]
