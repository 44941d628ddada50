"""ResNet-50/101 for ImageNet (He et al. 2016): bottleneck blocks with the stride on the 3×3
conv, projection shortcuts, optional zero-initialised last gamma.  Norm-agnostic; KN's prior flows
through the stem's max pool and every block.  Design notes: models/README.md."""
import tensorflow as tf

from kalman_norm import flow as F

from .registry import Model, register_model

__all__ = ['resnet_imagenet', 'bottleneck_block', 'check_image', 'BLOCKS_PER_STAGE', 'STAGE_WIDTHS', 'EXPANSION']

#: blocks per stage for each supported depth (He et al. 2016, Table 1)
BLOCKS_PER_STAGE = {50: (3, 4, 6, 3), 101: (3, 4, 23, 3), 152: (3, 8, 36, 3)}
STAGE_WIDTHS = (64, 128, 256, 512)
EXPANSION = 4               # a bottleneck block outputs 4× its width
STEM_FILTERS = 64


def _channels(x):
    return x.shape[1 if F.default_data_format() == 'NCHW' else 3]


def _last_norm(name, x, zero_init):
    """The block's last norm; its gamma starts at 0 when asked and when the norm has a gamma."""
    from kalman_norm.spec import current_norm
    if zero_init and current_norm().norm.affine:
        return F.norm(name, x, activation=False, gamma_init=0.0)
    return F.norm(name, x, activation=False)


def bottleneck_block(name, x, width, stride, zero_init_residual=True):
    """One bottleneck block (see the module docstring); returns relu(branch + shortcut)."""
    out_channels = width * EXPANSION
    with tf.compat.v1.variable_scope(name):
        y = F.conv2d('conv1', x, width, 1)
        y = F.relu(F.norm('bn1', y))
        y = F.conv2d('conv2', y, width, 3, strides=stride)
        y = F.relu(F.norm('bn2', y))
        y = F.conv2d('conv3', y, out_channels, 1)
        y = _last_norm('bn3', y, zero_init_residual)
        shortcut = x
        if stride != 1 or _channels(x) != out_channels:
            with tf.compat.v1.variable_scope('shortcut'):
                shortcut = F.norm('bn', F.conv2d('conv', x, out_channels, 1, strides=stride), activation=False)
        return F.relu(F.add(y, shortcut))


def resnet_imagenet(image, depth=50, num_classes=1000, data_format='NHWC', zero_init_residual=True):
    """Logits of ResNet-``depth`` for a normalised float ``image`` batch [N, H, W, 3] (NHWC in).

    Args:
        image: float images, NHWC, with static height and width (KN's prior needs static shapes;
            224×224 is the ImageNet size, any size ≥ 32 builds).
        depth: 50 or 101 (the paper's; 152 is offered too).
        num_classes: classifier outputs (1000 for ImageNet).
        data_format: layout inside the net, 'NHWC' or 'NCHW' (transposed here; NCHW is for GPUs).
        zero_init_residual: start each block's last gamma at 0 (see the module docstring).
    """
    if depth not in BLOCKS_PER_STAGE:
        raise ValueError('ResNet-ImageNet depth must be one of %s, got %r' % (sorted(BLOCKS_PER_STAGE), depth))
    if not isinstance(num_classes, int) or isinstance(num_classes, bool) or num_classes < 1:
        raise ValueError('num_classes must be a positive integer, got %r' % (num_classes,))
    check_image(image, 'ResNet', 32)
    with F.data_format_scope(data_format):
        x = image if data_format == 'NHWC' else tf.transpose(image, [0, 3, 1, 2])
        x = F.conv2d('conv0', x, STEM_FILTERS, 7, strides=2)
        x = F.relu(F.norm('bn0', x))
        x = F.max_pool(x, 3, strides=2, padding='SAME', name='pool0')
        for stage, (blocks, width) in enumerate(zip(BLOCKS_PER_STAGE[depth], STAGE_WIDTHS)):
            for block in range(blocks):
                stride = 2 if stage > 0 and block == 0 else 1
                x = bottleneck_block('group%d/block%d' % (stage, block), x, width, stride, zero_init_residual)
        x = F.global_avg_pool(x)
        return F.fully_connected('linear', x, num_classes)


def check_image(image, what, min_size):
    shape = image.shape.as_list() if image.shape.rank is not None else None
    if shape is None or len(shape) != 4 or shape[3] != 3:
        raise ValueError('%s takes an image batch [N, H, W, 3] (NHWC), got shape %s' % (what, shape))
    if shape[1] is None or shape[2] is None:
        raise ValueError('%s needs a static image height and width (KN\'s prior is computed from '
                         'static shapes), got shape %s' % (what, shape))
    if min(shape[1], shape[2]) < min_size:
        raise ValueError('%s needs images of at least %d×%d, got %d×%d'
                         % (what, min_size, min_size, shape[1], shape[2]))


register_model(Model('resnet50', resnet_imagenet, 'imagenet', 'resnet50', 'ResNet-50', fixed={'depth': 50}))
register_model(Model('resnet101', resnet_imagenet, 'imagenet', 'resnet101', 'ResNet-101', fixed={'depth': 101}))
