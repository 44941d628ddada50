"""Inception-v2 (BN-Inception, Ioffe & Szegedy 2015, Table 1 / Fig. 5 modules) for ImageNet, the
KN paper's Tables 3 and 5 network.  Norm-agnostic; KN's prior flows through pools and
concatenations.  Design notes: models/README.md."""
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
    with F.data_format_scope(data_format):
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
