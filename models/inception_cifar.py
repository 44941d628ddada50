"""The small Inception net of the KN paper's CIFAR ablations (Wang et al., NeurIPS 2018, Sect. 4.3.2,
Tables 7 and 8).

The paper's table (partly garbled in the extracted text; the widths below are our reading of it,
they have the Inception-v1 "3a/3b/4a" pattern and the stated output widths add up)::

    type         spatial   filters   1×1   1×1→3×3   1×1→5×5   pool→1×1   out
    conv         16×16     32
    inception    16×16               64    96, 128   16, 32    32         256
    inception    16×16               128   128, 192  32, 96    64         480
    inception    16×16               192   96, 208   16, 48    64         512
    avg pool     1×1                                                      512
    (fully connected, 1000 outputs: "omitted" from the table, see below)

The widths read from the table are :data:`INCEPTION_BLOCKS`; a branch's reduce conv and its
3×3 / 5×5 conv are the pairs.  Every conv is followed by ``F.norm`` and ``F.relu`` (the paper
stacks the norm after each convolution and before its ReLU), so the net has 1 + 3 × 6 = 19 norm
layers (20 with ``fc_units``).  Trainable parameters under 'bn': 0.90M (1.42M with
``fc_units=1000``; 61k at ``width=0.25``).

Choices the paper leaves open, and what this module does:

* **32×32 → 16×16.**  The CIFAR input is 32×32 but the first conv already works at 16×16; the
  table gives its 32 filters but no kernel size ("1×1" in the extracted text is the header of the
  next column).  We use one **3×3 conv with stride 2** (32 filters, SAME): a 1×1 conv with stride
  2 would throw away three pixels in four, and a full-resolution conv followed by 2×2 pooling
  costs 4× the stem compute for no gain at this depth.  The stride-2 conv keeps "every conv →
  norm → ReLU": only the stem's norm (``bn0``) has no prior.
* **The pool branch.**  Inception-v1/v2 uses 3×3 *max* pooling, stride 1, then a 1×1 conv.  The
  default here is ``pool='avg'`` — 3×3 average pooling, stride 1, SAME (padding excluded from the
  average, as in TensorFlow) — through which the prior is predicted exactly; Inception-v3 and
  later use average pooling in this branch too.  With ``pool='max'`` the net is the literal
  Inception-v2 block, and the prior passes the max pooling through its moment transition
  (:func:`kalman_norm.flow.max_pool`: exact for independent Gaussian taps).  Either way every KN
  layer but the stem's has a prior.
* **The "fully connected layer with 1,000 output channels".**  The paper says it is omitted from
  the table.  Inception-v1/v2 have no hidden FC layer after the global pool: their only FC layer
  is the 1000-way ImageNet classifier, so we read the omitted layer as the classifier carried over
  from the ImageNet template, which on CIFAR has ``num_classes`` outputs.  ``fc_units=1000`` adds
  the literal reading instead: global pool → FC 1000 → norm → ReLU → classifier (the norm there
  works on [N, 1000] features; GN/GKN then need ``channel_groups`` dividing 1000, e.g. 8).
* **Width multiplier** ``width`` (default 1.0, the paper's net): every width is scaled and rounded
  to a multiple of 8 (at least 8), so that ``width=0.25`` gives a net ~16× cheaper for tests and
  smoke runs.  All paper widths are multiples of 8, so ``width=1`` is exact.
* **GN / GKN.**  208 and 48 are not multiples of GN's default 32 channel groups; use
  ``norm_scope('gn', channel_groups=16)`` (divides every width at ``width=1``) or 8 (every width
  at any ``width``, with ``fc_units`` 1000 too).

The stem and the classifier: ``conv0``/``bn0`` and ``linear`` (as in :mod:`models.resnet_cifar`);
inception blocks are ``inception1..3`` with branches ``b1x1``, ``b3x3_reduce``, ``b3x3``,
``b5x5_reduce``, ``b5x5``, ``pool_proj``, each holding its conv and its norm ``bn``.

The norm is not an argument: wrap the call in ``with kalman_norm.norm_scope(...)``.
"""
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
    with F.layout(data_format):
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
