"""Shared test helpers: TensorFlow sessions sized for a machine that also trains.

``KALMAN_NORM_TEST_THREADS`` (default 2) caps every test session's thread pools, so the suite can
run beside a training run that was given its own ``--threads``.
"""
import contextlib
import os

import kalman_norm  # noqa: F401  (before tensorflow / tensorpack)
import tensorflow as tf

tf1 = tf.compat.v1
THREADS = int(os.environ.get('KALMAN_NORM_TEST_THREADS', '2'))


def session_config(grappler=True):
    """A ConfigProto with the test thread cap; ``grappler=False`` skips Grappler's rewrites, which
    cost seconds on the first run of a graph and are not what the tests test."""
    config = tf1.ConfigProto(intra_op_parallelism_threads=THREADS, inter_op_parallelism_threads=THREADS)
    if not grappler:
        config.graph_options.rewrite_options.disable_meta_optimizer = True
    return config


def make_session(graph=None, grappler=False):
    return tf1.Session(graph=graph, config=session_config(grappler))


@contextlib.contextmanager
def graph_session(grappler=True):
    """A fresh graph, made the default, and a session on it."""
    graph = tf.Graph()
    with graph.as_default():
        sess = tf1.Session(graph=graph, config=session_config(grappler))
        try:
            yield sess
        finally:
            sess.close()
