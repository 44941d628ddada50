"""Inception-v2 = BN-Inception (Ioffe & Szegedy, ICML 2015, Sect. 4.1 and Fig. 5) for ImageNet.

GoogLeNet with a norm after every convolution and the changes listed in that paper: the 5×5
branch replaced by two stacked 3×3 convs ("double 3×3"), 28×28 modules 3a/3b/3c instead of two,
average or max pooling with a 1×1 projection in the pool branch, and stride-2 "pass-through"
modules (3c, 4e) whose pool branch is a 3×3/2 max pool without projection.  The widths are those
of Fig. 5 (:data:`MODULES`)::

    conv 7×7/2, 64 → max pool 3×3/2 → conv 1×1, 64 → conv 3×3, 192 → max pool 3×3/2
    3a 3b 3c(/2)  4a 4b 4c 4d 4e(/2)  5a 5b → global average pool → fully connected (with bias)

    module   1×1   3×3 reduce, 3×3   double 3×3 reduce, 3×3, 3×3   pool + proj    out
    3a        64    64,  64           64,  96,  96                  avg + 32       256
    3b        64    64,  96           64,  96,  96                  avg + 64       320
    3c /2      0   128, 160           64,  96,  96                  max, pass      576
    4a       224    64,  96           96, 128, 128                  avg + 128      576
    4b       192    96, 128           96, 128, 128                  avg + 128      576
    4c       160   128, 160          128, 160, 160                  avg + 128      608
    4d        96   128, 192          160, 192, 192                  avg + 128      608
    4e /2      0   128, 192          192, 256, 256                  max, pass     1056
    5a       352   192, 320          160, 224, 224                  avg + 128     1024
    5b       352   192, 320          192, 224, 224                  max + 128     1024

(Fig. 5 prints 576 as the output of 4c and 4d; its own widths add up to 608, and we keep the
widths.  TF-slim's ``inception_v2`` instead shrinks the pool projections of 4c/4d to 96 to get
576: that net has 11.19M parameters, not the KN paper's 11.29M.)

**Parameter count (Table 2 of the KN paper: 11.29M with BN).**  With these widths, a full 7×7
first conv (3 → 64), convs without bias (the norm's beta is the bias; this is how Ioffe &
Szegedy's net and TF-slim's are built), gamma + beta per norm channel, a 1024 → 1000 classifier
with bias and no auxiliary classifier: 11,285,224 parameters = 11.29M.  The variants that do not
give 11.29M: convs with biases (the Caffe BN-Inception often used as a pretrained backbone):
11,295,240 = 11.30M; TF-slim's depthwise-separable first conv (depth multiplier 8): 11.28M; slim's
576-wide 4c/4d: 11.19M; an auxiliary classifier adds about 1M.  With KN each norm layer that
receives a prior adds one per-channel process noise R: every norm but the stem's first gets one
(9,952 channels), 11,295,176 = 11.30M, the paper's KN column.

Every convolution is followed by ``F.norm`` and ``F.relu``.  All convs and pools use SAME
padding, so any input size ≥ 32 builds (224 → 7×7 before the global pool).

KN's prior chain: only the first norm (``conv1/bn``, on the image) has no prior.  Its estimate
flows through the stem's max pools, every module's avg/max pool branch
(:func:`kalman_norm.flow.max_pool` carries it) and the channel concatenations, so every other
norm layer gets a prior.

Names: ``conv1``, ``conv2_reduce``, ``conv2``, modules ``inception_3a`` … ``inception_5b`` with
branches ``b1x1``, ``b3x3_reduce``, ``b3x3``, ``double3x3_reduce``, ``double3x3a``,
``double3x3b``, ``pool_proj``, each holding ``conv`` and its norm ``bn``; the classifier
``linear``.  The norm is not an argument: wrap the call in ``with kalman_norm.norm_scope(...)``.
"""
import collections

import tensorflow as tf

from kalman_norm import flow as F

from .registry import Model, register_model
from .resnet_imagenet import check_image

__all__ = ['inception_v2', 'inception_module', 'Module', 'MODULES']

#: One BN-Inception module.  ``b1x1 = 0``: no 1×1 branch.  ``pool``: 'avg' or 'max';
#: ``pool_proj = 0``: the pooled input passes through unprojected.  ``stride`` 2 on the 3×3
#: branch, the last conv of the double 3×3 branch, and the pool.
Module = collections.namedtuple('Module', ['b1x1', 'b3x3_reduce', 'b3x3', 'double3x3_reduce', 'double3x3',
                                           'pool', 'pool_proj', 'stride'])

MODULES = collections.OrderedDict([
    ('3a', Module(64, 64, 64, 64, 96, 'avg', 32, 1)),
    ('3b', Module(64, 64, 96, 64, 96, 'avg', 64, 1)),
    ('3c', Module(0, 128, 160, 64, 96, 'max', 0, 2)),
    ('4a', Module(224, 64, 96, 96, 128, 'avg', 128, 1)),
    ('4b', Module(192, 96, 128, 96, 128, 'avg', 128, 1)),
    ('4c', Module(160, 128, 160, 128, 160, 'avg', 128, 1)),
    ('4d', Module(96, 128, 192, 160, 192, 'avg', 128, 1)),
    ('4e', Module(0, 128, 192, 192, 256, 'max', 0, 2)),
    ('5a', Module(352, 192, 320, 160, 224, 'avg', 128, 1)),
    ('5b', Module(352, 192, 320, 192, 224, 'max', 128, 1)),
])


def _conv_norm_relu(name, x, filters, kernel_size, strides=1):
    with tf.compat.v1.variable_scope(name):
        x = F.conv2d('conv', x, filters, kernel_size, strides=strides)
        return F.relu(F.norm('bn', x))


def inception_module(name, x, module):
    """One BN-Inception module: its branches concatenated along channels."""
    if module.pool not in ('avg', 'max'):
        raise ValueError("A module's pool must be 'avg' or 'max', got %r" % (module.pool,))
    if module.stride not in (1, 2):
        raise ValueError("A module's stride must be 1 or 2, got %r" % (module.stride,))
    s = module.stride
    with tf.compat.v1.variable_scope(name):
        branches = []
        if module.b1x1:
            branches.append(_conv_norm_relu('b1x1', x, module.b1x1, 1))
        b = _conv_norm_relu('b3x3_reduce', x, module.b3x3_reduce, 1)
        branches.append(_conv_norm_relu('b3x3', b, module.b3x3, 3, strides=s))
        b = _conv_norm_relu('double3x3_reduce', x, module.double3x3_reduce, 1)
        b = _conv_norm_relu('double3x3a', b, module.double3x3, 3)
        branches.append(_conv_norm_relu('double3x3b', b, module.double3x3, 3, strides=s))
        pool = F.avg_pool if module.pool == 'avg' else F.max_pool
        b = pool(x, 3, strides=s, padding='SAME', name='pool')
        if module.pool_proj:
            b = _conv_norm_relu('pool_proj', b, module.pool_proj, 1)
        branches.append(b)
        return F.concat(branches, name='output')


def inception_v2(image, num_classes=1000, data_format='NHWC'):
    """Logits of BN-Inception for a normalised float ``image`` batch [N, H, W, 3] (NHWC in).

    Args:
        image: float images, NHWC, with static height and width (224×224 on ImageNet; any
            size ≥ 32 builds).
        num_classes: classifier outputs (1000 for ImageNet).
        data_format: layout inside the net, 'NHWC' or 'NCHW' (transposed here; NCHW is for GPUs).
    """
    if not isinstance(num_classes, int) or isinstance(num_classes, bool) or num_classes < 1:
        raise ValueError('num_classes must be a positive integer, got %r' % (num_classes,))
    check_image(image, 'Inception-v2', 32)
    with F.layout(data_format):
        x = image if data_format == 'NHWC' else tf.transpose(image, [0, 3, 1, 2])
        x = _conv_norm_relu('conv1', x, 64, 7, strides=2)
        x = F.max_pool(x, 3, strides=2, padding='SAME', name='pool1')
        x = _conv_norm_relu('conv2_reduce', x, 64, 1)
        x = _conv_norm_relu('conv2', x, 192, 3)
        x = F.max_pool(x, 3, strides=2, padding='SAME', name='pool2')
        for name, module in MODULES.items():
            x = inception_module('inception_' + name, x, module)
        x = F.global_avg_pool(x)
        return F.fully_connected('linear', x, num_classes)


register_model(Model('inception_v2', inception_v2, 'imagenet', 'inception_v2', 'Inception-v2'))
