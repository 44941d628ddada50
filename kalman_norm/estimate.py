"""Gaussian estimates of feature distributions, carried alongside the tensors they describe.

An :class:`Estimate` is KN's state ``(µ̂, Σ̂)`` of one feature map: per micro-batch group and
per channel, the mean and (diagonal) variance of a feature value at a random position of a
random sample of that group.  Shapes are ``[G, C]`` (G = groups in the tower batch).

Estimates live in a per-graph registry keyed by the tensor they describe.  The ops of
:mod:`kalman_norm.flow` read the estimate of their input, push it through the op (the paper's
prediction step, Eq. 7 first and third lines) and register the result on their output.  A KN
layer finds its prior by looking up the estimate of its own input.  This is how the prior flows
through a model without the model threading ``(mean, var)`` pairs through every block.
"""
import math

import tensorflow as tf

__all__ = ['Estimate', 'get_estimate', 'set_estimate', 'rectified_gaussian_moments']

_REGISTRY_ATTR = '_kalman_norm_estimates'


class Estimate(object):
    """A diagonal Gaussian ``N(mean, var)`` per group and channel, optionally rectified.

    Args:
        mean, var: tensors of shape ``[G, C]``, of any real dtype (kept as float32).
        rectified (bool): the described value is ``relu(z)`` with ``z ~ N(mean, var)``.
            ReLU is applied lazily so that the Monte-Carlo transition can sample the Gaussian
            and rectify the samples exactly as the paper does; :meth:`moments` gives the
            closed-form moments of the rectified Gaussian for everything else.
    """
    __slots__ = ('mean', 'var', 'rectified')

    def __init__(self, mean, var, rectified=False):
        self.mean = _as_float32(mean, 'mean')
        self.var = _as_float32(var, 'variance')
        self.rectified = bool(rectified)

    def relu(self):
        return self if self.rectified else Estimate(self.mean, self.var, rectified=True)

    def moments(self):
        """(mean, var) of the described value, with ReLU applied in closed form if pending."""
        if not self.rectified:
            return self.mean, self.var
        return rectified_gaussian_moments(self.mean, self.var)

    def materialized(self):
        """The same distribution's first two moments as a non-rectified estimate."""
        return self if not self.rectified else Estimate(*self.moments())

    @property
    def num_channels(self):
        return self.mean.shape[-1]

    def __repr__(self):
        return 'Estimate(mean=%s, var=%s, rectified=%s)' % (self.mean.shape, self.var.shape, self.rectified)


def _as_float32(value, what):
    """A float32 tensor of ``value`` (any real dtype: a float16 prior for a float16 model works;
    KN's statistics are float32 whatever the feature dtype)."""
    t = tf.convert_to_tensor(value)
    if not (t.dtype.is_floating or t.dtype.is_integer):
        raise TypeError('An estimate\'s %s must be real numbers, got dtype %s' % (what, t.dtype.name))
    return t if t.dtype == tf.float32 else tf.cast(t, tf.float32)


def rectified_gaussian_moments(mean, var):
    """Mean and variance of ``relu(z)``, ``z ~ N(mean, var)`` (elementwise).

    With s = sqrt(var), a = mean / s, Φ the normal CDF and φ its density:
        E[relu z]   = mean Φ(a) + s φ(a)
        E[relu z^2] = (mean^2 + var) Φ(a) + mean s φ(a)
    """
    s = tf.sqrt(tf.maximum(var, 0.) + 1e-12)
    a = mean / s
    cdf = 0.5 * tf.math.erfc(-a / math.sqrt(2.))
    pdf = tf.exp(-0.5 * tf.square(a)) / math.sqrt(2. * math.pi)
    first = mean * cdf + s * pdf
    second = (tf.square(mean) + var) * cdf + mean * s * pdf
    return first, tf.maximum(second - tf.square(first), 0.)


def _registry(graph=None):
    graph = graph or tf.compat.v1.get_default_graph()
    reg = getattr(graph, _REGISTRY_ATTR, None)
    if reg is None:
        reg = {}
        setattr(graph, _REGISTRY_ATTR, reg)
    return reg


def _key(tensor):
    if not isinstance(tensor, tf.Tensor) or not hasattr(tensor, 'graph'):
        return None
    return tensor.name


def set_estimate(tensor, estimate):
    """Attach ``estimate`` (an :class:`Estimate`, a ``(mean, var)`` pair, or None) to ``tensor``."""
    key = _key(tensor)
    if key is None:
        return tensor
    if estimate is not None and not isinstance(estimate, Estimate):
        mean, var = estimate
        estimate = Estimate(mean, var)
    reg = _registry(tensor.graph)
    if estimate is None:
        reg.pop(key, None)
    else:
        reg[key] = estimate
    return tensor


def get_estimate(tensor):
    """The :class:`Estimate` attached to ``tensor``, or None."""
    key = _key(tensor)
    if key is None:
        return None
    return _registry(tensor.graph).get(key)
