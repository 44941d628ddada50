"""Group Normalization's view of a feature tensor, shared by GroupNorm and GroupKalmanNorm.

GN (Wu & He 2018) reduces, per sample, over one group of ``C / groups`` channels and all
positions.  These helpers reshape a tensor so that such a set is one reduction, and apply
per-sample, per-channel-group statistics back to it.
"""
import tensorflow as tf

__all__ = ['num_channel_groups', 'group_norm_view', 'group_norm_stats_shape', 'group_norm_apply']


def num_channel_groups(channels, channel_groups):
    """The number of GN groups of a layer: ``channel_groups`` capped at ``channels``.

    The cap lets one setting (the paper's 32) serve layers narrower than 32 channels, where it
    means one channel per group; the channels must divide evenly into the groups.
    """
    if not isinstance(channel_groups, int) or isinstance(channel_groups, bool) or channel_groups < 1:
        raise ValueError('channel_groups must be a positive integer, got %r' % (channel_groups,))
    groups = min(channel_groups, channels)
    if channels % groups != 0:
        raise ValueError('GroupNorm: %d channels are not divisible by channel_groups=%d'
                         % (channels, groups))
    return groups


def group_norm_view(layout, x, groups):
    """Reshape x so that a sample's channel group is one reduction; returns (view, axes)."""
    cg = layout.channels // groups
    if layout.ndims == 2:
        return tf.reshape(x, [-1, groups, cg]), [2]
    if any(d is None for d in layout.shape[1:]):
        raise ValueError('GroupNorm needs static height, width and channels, got %s' % (layout.shape,))
    if layout.data_format == 'NHWC':
        _, h, w, _ = layout.shape
        return tf.reshape(x, [-1, h, w, groups, cg]), [1, 2, 4]
    _, _, h, w = layout.shape
    return tf.reshape(x, [-1, groups, cg, h, w]), [2, 3, 4]


def group_norm_stats_shape(layout, groups):
    """Shape that broadcasts [N, groups] statistics against the group_norm_view."""
    if layout.ndims == 2:
        return [-1, groups, 1]
    return [-1, 1, 1, groups, 1] if layout.data_format == 'NHWC' else [-1, groups, 1, 1, 1]


def group_norm_apply(layout, x, groups, mean, var, gamma, beta, epsilon):
    """Normalise with per-sample, per-channel-group statistics [N, groups], then γ, β per channel."""
    view, _ = group_norm_view(layout, x, groups)
    shape = group_norm_stats_shape(layout, groups)
    out = (view - tf.reshape(mean, shape)) * tf.reshape(tf.math.rsqrt(var + epsilon), shape)
    out = tf.reshape(out, tf.shape(x))
    return out * layout.channel_broadcast(gamma) + layout.channel_broadcast(beta)
