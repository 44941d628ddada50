"""The small Inception net of the KN paper's CIFAR ablations (Sect. 4.3.2, Tables 7 and 8): a
stride-2 3×3 stem and three Inception blocks at 16×16 (widths :data:`INCEPTION_BLOCKS`, our
reading of the paper's partly garbled table), global average pool, classifier.  Every conv is
followed by ``F.norm`` and ``F.relu``.  The choices the paper leaves open (stem, pool branch, the
omitted FC layer, width multiplier, GN groups) are argued in models/README.md."""
import collections

import tensorflow as tf

from kalman_norm import flow as F

from .registry import Model, register_model

__all__ = ['inception_cifar', 'inception_block', 'InceptionConfig', 'INCEPTION_BLOCKS', 'STEM_FILTERS',
           'POOLS', 'scaled']

#: (1×1, 3×3 reduce, 3×3, 5×5 reduce, 5×5, pool projection) widths of one inception block.
InceptionConfig = collections.namedtuple('InceptionConfig', ['b1x1', 'b3x3_reduce', 'b3x3', 'b5x5_reduce',
                                                             'b5x5', 'pool_proj'])

STEM_FILTERS = 32
#: The three inception blocks of the paper's table (all at 16×16).
INCEPTION_BLOCKS = [
    InceptionConfig(64, 96, 128, 16, 32, 32),      # → 256
    InceptionConfig(128, 128, 192, 32, 96, 64),    # → 480
    InceptionConfig(192, 96, 208, 16, 48, 64),     # → 512
]
POOLS = ('avg', 'max')


def scaled(channels, width):
    """``channels * width`` rounded to a multiple of 8, at least 8 (exact for width=1)."""
    if width == 1:
        return channels
    return max(8, int(round(channels * width / 8.0)) * 8)


def _conv_norm_relu(name, x, filters, kernel_size, strides=1):
    with tf.compat.v1.variable_scope(name):
        x = F.conv2d('conv', x, filters, kernel_size, strides=strides)
        return F.relu(F.norm('bn', x))


def inception_block(name, x, config, pool='avg', width=1.0):
    """One Inception-v1/v2 block: four branches concatenated along channels.

    Branches: 1×1; 1×1 → 3×3; 1×1 → 5×5; 3×3 pool (stride 1, SAME) → 1×1.  ``pool`` is 'avg'
    (KN's prior flows through) or 'max' (the prior ends at the pool; see the module docstring).
    """
    if pool not in POOLS:
        raise ValueError("pool must be one of %s, got %r" % (POOLS, pool))
    c = config._replace(**{k: scaled(v, width) for k, v in config._asdict().items()})
    with tf.compat.v1.variable_scope(name):
        b1 = _conv_norm_relu('b1x1', x, c.b1x1, 1)
        b3 = _conv_norm_relu('b3x3_reduce', x, c.b3x3_reduce, 1)
        b3 = _conv_norm_relu('b3x3', b3, c.b3x3, 3)
        b5 = _conv_norm_relu('b5x5_reduce', x, c.b5x5_reduce, 1)
        b5 = _conv_norm_relu('b5x5', b5, c.b5x5, 5)
        pool_op = F.avg_pool if pool == 'avg' else F.max_pool
        bp = pool_op(x, 3, strides=1, padding='SAME', name='pool')
        bp = _conv_norm_relu('pool_proj', bp, c.pool_proj, 1)
        return F.concat([b1, b3, b5, bp], name='output')


def inception_cifar(image, num_classes=10, data_format='NHWC', pool='avg', width=1.0, fc_units=None):
    """Logits of the paper's small CIFAR Inception net for a normalised float 32×32 ``image`` (NHWC in).

    Args:
        image: [N, 32, 32, 3] float images (NHWC; transposed here if ``data_format='NCHW'``).
        num_classes: classifier outputs.
        data_format: layout of the features inside the net, 'NHWC' or 'NCHW' (NCHW builds and,
            with TF 2.21, also runs on CPU; it is meant for GPUs).
        pool: the pool branch's 3×3 stride-1 pooling, 'avg' (default; KN's prior flows through)
            or 'max' (Inception-v2; the pool-branch norms lose the prior).
        width: width multiplier (default 1.0 = the paper's widths); widths are rounded to
            multiples of 8.
        fc_units: None (default): global pool → classifier.  An integer (the paper's 1000) adds
            a hidden FC → norm → ReLU before the classifier.
    """
    if pool not in POOLS:
        raise ValueError("pool must be one of %s, got %r" % (POOLS, pool))
    if not width > 0:
        raise ValueError('width must be > 0, got %r' % (width,))
    if fc_units is not None and (not isinstance(fc_units, int) or fc_units < 1):
        raise ValueError('fc_units must be None or a positive integer, got %r' % (fc_units,))
    with F.data_format_scope(data_format):
        x = image if data_format == 'NHWC' else tf.transpose(image, [0, 3, 1, 2])
        x = F.conv2d('conv0', x, scaled(STEM_FILTERS, width), 3, strides=2)     # 32×32 → 16×16
        x = F.relu(F.norm('bn0', x))
        for i, config in enumerate(INCEPTION_BLOCKS):
            x = inception_block('inception%d' % (i + 1), x, config, pool=pool, width=width)
        x = F.global_avg_pool(x)
        if fc_units is not None:
            x = F.fully_connected('fc', x, fc_units, use_bias=False)
            x = F.relu(F.norm('bn_fc', x))
        return F.fully_connected('linear', x, num_classes)


register_model(Model('inception', inception_cifar, 'cifar', 'inception', 'small Inception (CIFAR)',
                     smallest={'width': 0.25}))
