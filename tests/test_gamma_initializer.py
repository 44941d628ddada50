"""Every layer with gamma takes tensorpack's ``gamma_initializer`` (a number or an initializer), with
``gamma_init`` kept as its alias; giving both is one clear error, at the spec or at the call."""
import inspect

import kalman_norm as kn  # noqa: I001  (before tensorflow / tensorpack)
from kalman_norm import flow as F
from kalman_norm.layers._common import GAMMA_TWICE

import numpy as np
import pytest
import tensorflow as tf
from tensorpack.tfutils.tower import TowerContext

from conftest import make_session

tf1 = tf.compat.v1
AFFINE = [n for n in kn.norm_names() if kn.get_norm(n).affine]


def test_the_affine_norms_are_the_layers_with_gamma():
    assert len(AFFINE) >= 8
    for name in kn.norm_names():
        params = inspect.signature(kn.get_norm(name).layer).parameters
        assert ('gamma_initializer' in params) == ('gamma_init' in params) == (name in AFFINE), name


@pytest.mark.parametrize('name', AFFINE)
def test_gamma_initializer_sets_gamma_as_its_alias_does(name):
    with tf.Graph().as_default():
        x = tf.random.normal([4, 3, 3, 8], seed=3)
        with TowerContext('', is_training=True), kn.norm_scope(name, group_size=2):
            outputs = [F.norm('init', x, gamma_init=0.5),
                       F.norm('number', x, gamma_initializer=0.5),
                       F.norm('initializer', x, gamma_initializer=tf.constant_initializer(0.5))]
        with kn.norm_scope(name, group_size=2, gamma_initializer=0.25), TowerContext('', is_training=True):
            # the spec's value, and a call's alias replacing it (as ResNet-ImageNet's zero-init does)
            outputs += [F.norm('spec', x), F.norm('call', x, gamma_init=0.0)]
        gammas = [y.variables.gamma for y in outputs]
        with make_session() as sess:
            sess.run(tf1.global_variables_initializer())
            values, ys = sess.run(gammas), sess.run(outputs[:3])
    expected = [0.5, 0.5, 0.5, 0.25, 0.0]
    for g, e in zip(values, expected):
        np.testing.assert_array_equal(g, np.full(8, e, np.float32))
    np.testing.assert_array_equal(ys[1], ys[0])
    np.testing.assert_array_equal(ys[2], ys[0])


@pytest.mark.parametrize('name', AFFINE)
def test_both_names_or_a_bad_value_is_one_line(name):
    with pytest.raises(ValueError, match="gamma_initializer .*or its alias gamma_init, not both"):
        kn.NormSpec(name, gamma_init=0.5, gamma_initializer=0.5)
    with pytest.raises(ValueError, match=r'gamma_initializer must be a finite number or an initializer') as e:
        kn.NormSpec(name, gamma_initializer='ones')
    assert '\n' not in str(e.value)
    with tf.Graph().as_default():
        x = tf.random.normal([4, 3, 3, 8])
        with TowerContext('', is_training=True), kn.norm_scope(name, group_size=2):
            with pytest.raises(ValueError) as e:
                F.norm('n', x, gamma_init=0.5, gamma_initializer=tf.ones_initializer())
            assert str(e.value) == GAMMA_TWICE
