"""ResNet for CIFAR (He et al. 2016, Sect. 4.2): 6n+2 layers, conv → norm → ReLU, option-A
shortcuts; n = 3/5/18 gives ResNet-20/32/110.  The norm comes from the enclosing ``norm_scope``;
KN's prior flows through blocks, shortcuts and additions.  Design notes: models/README.md."""
import tensorflow as tf

from kalman_norm import flow as F

from .registry import Model, register_model

__all__ = ['resnet_cifar', 'residual_block', 'depth_of']


def depth_of(n):
    return 6 * n + 2


def residual_block(name, x, channels, stride):
    in_channels = x.shape[1 if F.default_data_format() == 'NCHW' else 3]
    with tf.compat.v1.variable_scope(name):
        y = F.conv2d('conv1', x, channels, 3, strides=stride)
        y = F.relu(F.norm('bn1', y))
        y = F.conv2d('conv2', y, channels, 3)
        y = F.norm('bn2', y, activation=False)
        shortcut = x
        if stride != 1 or in_channels != channels:
            extra = channels - in_channels
            shortcut = F.pad_channels(F.subsample(x, stride), extra // 2, extra - extra // 2)
        return F.relu(F.add(y, shortcut))


def resnet_cifar(image, n=5, num_classes=10, data_format='NHWC'):
    """Logits of the 6n+2-layer CIFAR ResNet for a normalised float ``image`` batch (NHWC in)."""
    if not isinstance(n, int) or n < 1:
        raise ValueError('ResNet-CIFAR needs n >= 1 blocks per stage (depth 6n+2), got %r' % (n,))
    with F.data_format_scope(data_format):
        x = image if data_format == 'NHWC' else tf.transpose(image, [0, 3, 1, 2])
        x = F.conv2d('conv0', x, 16, 3)
        x = F.relu(F.norm('bn0', x))
        for stage, channels in enumerate([16, 32, 64]):
            for block in range(n):
                stride = 2 if stage > 0 and block == 0 else 1
                x = residual_block('res%d.%d' % (stage + 1, block), x, channels, stride)
        x = F.global_avg_pool(x)
        return F.fully_connected('linear', x, num_classes)


register_model(Model('resnet', resnet_cifar, 'cifar', 'resnet{depth}', 'ResNet-{depth} (CIFAR)', trainer_arguments={'n': 'depth'},
                     smallest={'n': 1}))
