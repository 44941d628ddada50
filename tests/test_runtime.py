"""kalman_norm.runtime: the session config, the environment, and that oneDNN keeps the maths.

oneDNN (``TF_ENABLE_ONEDNN_OPTS=1``) is read when TensorFlow starts, so the checks that need it
on and off run small child processes.  They compare a few training steps of a small conv net
(BKN at groups of 2: its layers compute everything BN's do, plus the Kalman update) between
oneDNN on and off: the losses and the weights after the steps must agree to float32 tolerance.
"""
import json
import os
import subprocess
import sys
import textwrap

import kalman_norm  # noqa: F401  (must come before tensorflow)
from kalman_norm import runtime

import numpy as np
import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

_CHILD = textwrap.dedent('''
    import json, sys
    import kalman_norm as kn
    import numpy as np
    import tensorflow as tf
    from tensorpack.tfutils.tower import TowerContext
    from kalman_norm import flow as F
    tf1 = tf.compat.v1
    result = {}
    for norm in ('bkn',):
        rng = np.random.RandomState(0)
        graph = tf.Graph()
        with graph.as_default():
            tf1.set_random_seed(0)
            x = tf.constant(rng.normal(size=(8, 8, 8, 3)).astype(np.float32))
            y = tf.constant(rng.randint(0, 10, 8).astype(np.int32))
            with TowerContext('', is_training=True), kn.norm_scope(norm, group_size=2):
                h = F.relu(F.norm('norm1', F.conv2d('conv1', x, 4, 3)))
                h = F.relu(F.norm('norm2', F.conv2d('conv2', h, 4, 3)))   # its prior: from norm1
                logits = F.fully_connected('fc', F.global_avg_pool(h), 10)
            loss = tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(labels=y, logits=logits))
            with tf.control_dependencies(tf1.get_collection(tf1.GraphKeys.UPDATE_OPS)):
                step = tf1.train.GradientDescentOptimizer(0.1).minimize(loss)
            config = tf1.ConfigProto(intra_op_parallelism_threads=1, inter_op_parallelism_threads=1)
            with tf1.Session(graph=graph, config=config) as sess:
                sess.run(tf1.global_variables_initializer())
                for v in tf1.trainable_variables():   # the same weights in every process
                    sess.run(v.assign(np.random.RandomState(len(v.op.name)).normal(
                        0, 0.3, v.shape.as_list()).astype(np.float32)))
                losses = [float(sess.run([loss, step])[0]) for _ in range(3)]
                weights = sess.run({v.op.name: v for v in tf1.global_variables()
                                    if v.dtype.base_dtype == tf.float32})
                run_metadata = tf1.RunMetadata()
                sess.run(step, options=tf1.RunOptions(trace_level=tf1.RunOptions.FULL_TRACE),
                         run_metadata=run_metadata)
        kernels = sorted({n.timeline_label.split(' = ')[1].split('(')[0]
                          for d in run_metadata.step_stats.dev_stats for n in d.node_stats
                          if ' = ' in n.timeline_label and 'Conv2D' in n.timeline_label})
        result[norm] = dict(losses=losses, weights={k: v.tolist() for k, v in weights.items()},
                            conv_kernels=kernels)
    print('RESULT ' + json.dumps(result))
''')


def run_children(*onednn_values):
    """Run _CHILD once per TF_ENABLE_ONEDNN_OPTS value, side by side; their parsed results."""
    procs = []
    for value in onednn_values:
        env = dict(os.environ, TF_ENABLE_ONEDNN_OPTS=value, TF_CPP_MIN_LOG_LEVEL='2')
        procs.append(subprocess.Popen([sys.executable, '-c', _CHILD], env=env, cwd=REPO, text=True,
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE))
    results = []
    for proc in procs:
        out, err = proc.communicate(timeout=600)
        lines = [l for l in out.splitlines() if l.startswith('RESULT ')]
        assert proc.returncode == 0 and lines, err[-3000:]
        results.append(json.loads(lines[-1][len('RESULT '):]))
    return results


def test_session_config_uses_every_core_on_cpu():
    import tensorflow as tf
    from tensorpack.tfutils.common import get_default_sess_config
    conf = runtime.session_config()
    assert not tf.config.list_physical_devices('GPU')      # this test machine
    assert conf.intra_op_parallelism_threads == 0          # tensorpack: 1
    assert conf.inter_op_parallelism_threads == 0
    # everything else is tensorpack's default (soft placement, GPU memory growth), and no XLA
    default = get_default_sess_config()
    assert conf.allow_soft_placement == default.allow_soft_placement is True
    assert conf.gpu_options.allow_growth is True
    assert conf.graph_options.optimizer_options.global_jit_level == \
        default.graph_options.optimizer_options.global_jit_level


def test_configure_environment_sets_defaults_and_respects_the_user():
    env = {}
    assert runtime.configure_environment(env) is True      # a child's environment: always in time
    assert env == runtime.ENVIRONMENT == {'TF_ENABLE_ONEDNN_OPTS': '1'}
    env = {'TF_ENABLE_ONEDNN_OPTS': '0'}
    runtime.configure_environment(env)
    assert env['TF_ENABLE_ONEDNN_OPTS'] == '0'


def test_configure_environment_after_tensorflow_warns(monkeypatch):
    monkeypatch.delenv('TF_ENABLE_ONEDNN_OPTS', raising=False)
    with pytest.warns(RuntimeWarning, match='before importing kalman_norm or tensorflow'):
        assert runtime.configure_environment() is False
    assert os.environ['TF_ENABLE_ONEDNN_OPTS'] == '1'       # still set, for child processes


def test_module_does_not_import_tensorflow_by_itself():
    """runtime.py loaded alone (not through the package) must not start TensorFlow."""
    code = ('import importlib.util, sys; spec = importlib.util.spec_from_file_location("rt", %r); '
            'm = importlib.util.module_from_spec(spec); spec.loader.exec_module(m); '
            'import os; m.configure_environment(); '
            'print("tensorflow" in sys.modules, os.environ["TF_ENABLE_ONEDNN_OPTS"])'
            % runtime.__file__)
    env = dict(os.environ)
    env.pop('TF_ENABLE_ONEDNN_OPTS', None)
    out = subprocess.run([sys.executable, '-c', code], env=env, capture_output=True, text=True,
                         timeout=120)
    assert out.stdout.split() == ['False', '1'], out.stderr


def test_onednn_changes_the_kernels_not_the_maths():
    off, on = run_children('0', '1')
    for norm in ('bkn',):
        # the switch works: oneDNN's convolution kernels run only when it is on
        assert not any(k.startswith('_Mkl') for k in off[norm]['conv_kernels']), off[norm]['conv_kernels']
        assert any(k.startswith('_Mkl') for k in on[norm]['conv_kernels']), on[norm]['conv_kernels']
        # ... and training is the same computation: losses and every weight after the steps
        np.testing.assert_allclose(on[norm]['losses'], off[norm]['losses'], rtol=1e-4)
        assert on[norm]['losses'][-1] < on[norm]['losses'][0]
        assert sorted(on[norm]['weights']) == sorted(off[norm]['weights'])
        for name, value in off[norm]['weights'].items():
            np.testing.assert_allclose(on[norm]['weights'][name], value, rtol=1e-3, atol=1e-4,
                                       err_msg='%s %s' % (norm, name))
