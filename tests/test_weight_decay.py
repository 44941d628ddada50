"""Weight decay through tensorpack's regularize_cost: the same value as the sum the trainer wrote by
hand (wd * sum of l2_loss over conv and FC kernels), and as float64 NumPy's wd * sum(W**2) / 2,
in one tower and in replicated towers (each tower decays its own kernels only)."""
import numpy as np
import tensorflow as tf
from tensorpack.tfutils.tower import TowerContext

import kalman_norm as kn
from conftest import graph_session
from kalman_norm.models import get_model
from kalman_norm.train.classifier import weight_decay_cost

tf1 = tf.compat.v1
WD = 5e-4


def _hand_written(vs_name):
    """The trainer's sum before regularize_cost, verbatim."""
    kernels = [v for v in tf1.trainable_variables()
               if v.op.name.endswith('/W') and (not vs_name or v.op.name.startswith(vs_name))]
    return tf.multiply(WD, tf.add_n([tf.nn.l2_loss(v) for v in kernels])), kernels


def _tower(name, model):
    with TowerContext(name, is_training=True, vs_name=name), tf1.variable_scope(name):
        image = tf.random.normal([4, 32, 32, 3], seed=1)
        with kn.norm_scope('bn'):
            model.make(image, 10, **model.smallest)
        return weight_decay_cost(WD), _hand_written(name)


def test_regularize_cost_is_the_hand_written_sum_and_numpy():
    for model_name in ('resnet', 'inception'):
        with graph_session() as sess:
            ours, (theirs, kernels) = _tower('', get_model(model_name))
            sess.run(tf1.global_variables_initializer())
            a, b, weights = sess.run([ours, theirs, kernels])
            assert len(kernels) > 5 and all(k.shape.ndims in (2, 4) for k in kernels)
            reference = WD * sum(0.5 * np.sum(np.float64(w) ** 2) for w in weights)
            assert a == b, model_name                      # the same ops in the same order
            np.testing.assert_allclose(a, reference, rtol=1e-6)


def test_replicated_towers_decay_their_own_kernels():
    with graph_session() as sess:
        costs = [_tower(name, get_model('resnet')) for name in ('tower0', 'tower1')]
        sess.run(tf1.global_variables_initializer())
        for ours, (theirs, kernels) in costs:
            a, b, weights = sess.run([ours, theirs, kernels])
            assert a == b
            np.testing.assert_allclose(a, WD * sum(0.5 * np.sum(np.float64(w) ** 2) for w in weights), rtol=1e-6)
        kernels0, kernels1 = costs[0][1][1], costs[1][1][1]
        assert len(kernels0) == len(kernels1) and not set(kernels0) & set(kernels1)
