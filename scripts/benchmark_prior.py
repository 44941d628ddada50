#!/usr/bin/env python
"""Micro-benchmark of KN's analytic conv prior alone: the previous implementation vs the current.

Table 3's extra time of KN over BN is dominated by kernel-sized ops of the analytic prior
(results/table3_speed.md).  This script times that part in isolation, so that a rewrite of
:func:`kalman_norm.transition._analytic_conv` can be judged without a 10-minute training benchmark.

For each architecture the convolutions that receive a prior are recorded by building the real
model (``kalman_norm.models``, fake 224 px input, KN) and noting every call of the analytic conv
prior: kernel shape, input size, strides, padding, whether the estimate is rectified.  Then three
graphs are built in one process, each holding every recorded prior as one training step:

* ``base``: no prior; the loss is Σ kernel ⊙ G (G a random stand-in for the conv's own filter
  gradient), and SGD applies the gradient to the kernels.  What BN pays for the kernels.
* ``old``:  base + the previous ``_analytic_conv`` (kept below, for this comparison only) on
  estimates ``(m, v)`` [1, C_in] held in variables; the loss adds Σ r₁·mean + r₂·var, and SGD
  updates the kernels (prior gradient summed with G, as in training) and the estimates.
* ``new``:  the same with the package's current ``_analytic_conv`` in TensorFlow's ops.
* ``fused``: the same with the fused CPU op (kalman_norm/ops; compiled on first use).

Steps are interleaved round-robin (base, old, new, fused; the order rotates every round) and the
median step time of each is reported; the prior's own cost is each one's minus base's.

    python scripts/benchmark_prior.py                      # both architectures, 30 rounds
    python scripts/benchmark_prior.py --archs ResNet-50 --rounds 60
    python scripts/benchmark_prior.py --groups 64           # 64 groups (CIFAR's 128 as 64 groups of 2)
"""
import argparse
import collections
import os
import sys
import time


import kalman_norm as kn  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from tensorpack.models.registry import disable_layer_logging  # noqa: E402
from tensorpack.tfutils.tower import TowerContext  # noqa: E402

from kalman_norm import transition  # noqa: E402
from kalman_norm.estimate import Estimate  # noqa: E402
from kalman_norm.models import get_model  # noqa: E402

tf1 = tf.compat.v1

#: name -> (model, input size)
ARCHITECTURES = collections.OrderedDict([
    ('Inception-v2', (lambda image: get_model('inception_v2').make(image, 1000), 224)),
    ('ResNet-50', (lambda image: get_model('resnet50').make(image, 1000), 224)),
    ('ResNet-20-CIFAR', (lambda image: get_model('resnet').make(image, 10, n=3), 32)),
])

#: one analytic conv prior: kernel [kh, kw, C_in, C_out], input (h, w), strides, padding, rectified
Prior = collections.namedtuple('Prior', ['kernel_shape', 'in_hw', 'strides', 'padding', 'rectified'])


def old_analytic_conv(est, kernel, in_hw, kernel_hw, strides, padding):
    """The analytic conv prior as of commit aa0c8cb (for comparison only; same mathematics)."""
    m, v = est.moments()
    cin, cout = int(kernel.shape[2]), int(kernel.shape[3])
    taps = kernel_hw[0] * kernel_hw[1]
    f, pair = transition.tap_coverage(in_hw, kernel_hw, strides, padding)
    w = tf.reshape(kernel, [taps, cin, cout])
    if taps == 1 and f[0] == 1.0:
        w_mean = tf.reshape(kernel, [cin, cout])
        w_var = tf.square(w_mean)
    else:
        f_t = tf.constant(f, tf.float32)
        w_mean = tf.tensordot(f_t, w, 1)
        w_var = tf.tensordot(f_t, tf.square(w), 1)
    mean = tf.matmul(m, w_mean)
    var = tf.matmul(v, w_var)
    if not np.allclose(pair, 1.0):
        a = tf.matmul(tf.expand_dims(m, 0), w)
        fa = tf.tensordot(tf.constant(pair, tf.float32), a, 1)
        spread = tf.reduce_sum(a * fa, 0) - tf.square(mean)
        var = var + tf.maximum(spread, 0.)
    return mean, var


IMPLEMENTATIONS = collections.OrderedDict([
    ('base', None),
    ('old', old_analytic_conv),
    ('new', lambda *args: transition._analytic_conv(*args, fused=False)),   # looked up at build time
    ('fused', lambda *args: transition._analytic_conv(*args, fused=True)),
])


def record_priors(arch):
    """The analytic conv priors the model ``arch`` builds under KN (one group)."""
    records = []
    original = transition._analytic_conv

    def spy(est, kernel, in_hw, kernel_hw, strides, padding):
        records.append(Prior(tuple(kernel.shape.as_list()), tuple(int(d) for d in in_hw),
                             transition._pair(strides), padding, est.rectified))
        return original(est, kernel, in_hw, kernel_hw, strides, padding)

    transition._analytic_conv = spy
    try:
        with tf.Graph().as_default():
            model, image_size = ARCHITECTURES[arch]
            image = tf.zeros([1, image_size, image_size, 3])
            with TowerContext('', is_training=True), kn.norm_scope('bkn', prior_method='analytic'):
                model(image)
    finally:
        transition._analytic_conv = original
    return records


class Graph(object):
    """Every prior of one architecture, as one SGD step, with one implementation (or none)."""

    def __init__(self, priors, impl, groups=1, seed=0):
        rng = np.random.RandomState(seed)
        self.graph = tf.Graph()
        with self.graph.as_default():
            terms, variables = [], []
            for i, p in enumerate(priors):
                kernel = tf1.get_variable('W%d' % i, initializer=(
                    rng.randn(*p.kernel_shape) * np.sqrt(2.0 / np.prod(p.kernel_shape[:3]))).astype(np.float32))
                stand_in = tf1.get_variable('G%d' % i, initializer=rng.randn(*p.kernel_shape).astype(np.float32),
                                            trainable=False)
                variables.append(kernel)
                terms.append(tf.reduce_sum(kernel * stand_in))
                if impl is None:
                    continue
                cin, cout = p.kernel_shape[2], p.kernel_shape[3]
                m = tf1.get_variable('m%d' % i, initializer=rng.randn(groups, cin).astype(np.float32))
                v = tf1.get_variable('v%d' % i, initializer=rng.uniform(0.5, 2, (groups, cin)).astype(np.float32))
                variables += [m, v]
                mean, var = impl(Estimate(m, v, rectified=p.rectified), kernel, p.in_hw, p.kernel_shape[:2],
                                 p.strides, p.padding)
                r1 = tf.constant(rng.randn(groups, cout).astype(np.float32))
                r2 = tf.constant(rng.randn(groups, cout).astype(np.float32))
                terms.append(tf.reduce_sum(mean * r1 + var * r2))
            loss = tf.add_n(terms)
            self.step = tf1.train.GradientDescentOptimizer(1e-9).minimize(loss, var_list=variables)
            self.sess = tf1.Session(graph=self.graph)
            self.sess.run(tf1.global_variables_initializer())
        self.times = []

    def run(self, record=True, **kwargs):
        start = time.perf_counter()
        self.sess.run(self.step, **kwargs)
        if record:
            self.times.append(time.perf_counter() - start)

    def op_type_times(self, steps=3):
        """Milliseconds per op type (summed over ops, median over ``steps`` traced steps)."""
        per_step = []
        for _ in range(steps):
            meta = tf1.RunMetadata()
            self.run(False, options=tf1.RunOptions(trace_level=tf1.RunOptions.FULL_TRACE), run_metadata=meta)
            totals = collections.Counter()
            for dev in meta.step_stats.dev_stats:
                for node in dev.node_stats:
                    try:
                        op_type = self.graph.get_operation_by_name(node.node_name.split(':')[0]).type
                    except KeyError:
                        op_type = node.node_name
                    totals[op_type] += (node.op_end_rel_micros - node.op_start_rel_micros) / 1e3
            per_step.append(totals)
        keys = set().union(*per_step)
        return {k: float(np.median([t.get(k, 0) for t in per_step])) for k in keys}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    p.add_argument('--archs', default='Inception-v2,ResNet-50',
                   help='comma-separated subset of: %s' % ', '.join(ARCHITECTURES))
    p.add_argument('--rounds', type=int, default=30, help='interleaved measured rounds (default 30)')
    p.add_argument('--warmup', type=int, default=3, help='unmeasured steps per graph first (default 3)')
    p.add_argument('--profile', action='store_true', help='also print the op types the priors spend time in')
    p.add_argument('--groups', type=int, default=1,
                   help='normalization groups G of the estimates (default 1, the paper\'s Table 3)')
    args = p.parse_args(argv)
    args.archs = [a.strip() for a in args.archs.split(',') if a.strip()]
    unknown = [a for a in args.archs if a not in ARCHITECTURES]
    if unknown:
        p.error('unknown architecture(s) %s' % unknown)
    return args


def main(argv=None):
    args = parse_args(argv)
    disable_layer_logging()
    for arch in args.archs:
        priors = record_priors(arch)
        params = sum(int(np.prod(p.kernel_shape)) for p in priors)
        kinds = collections.Counter('%dx%d' % p.kernel_shape[:2] for p in priors)
        print('%s: %d conv priors, %.1fM kernel weights (%s)' % (
            arch, len(priors), params / 1e6, ', '.join('%d of %s' % (n, k) for k, n in sorted(kinds.items()))))
        graphs = collections.OrderedDict((name, Graph(priors, impl, groups=args.groups))
                                         for name, impl in IMPLEMENTATIONS.items())
        names = list(graphs)
        for _ in range(args.warmup):
            for g in graphs.values():
                g.run(record=False)
        for r in range(args.rounds):
            for name in names[r % len(names):] + names[:r % len(names)]:
                graphs[name].run()
        med = {name: float(np.median(g.times)) for name, g in graphs.items()}
        iqr = {name: float(np.subtract(*np.percentile(g.times, [75, 25]))) for name, g in graphs.items()}
        for name in names:
            print('  %-5s median step %7.1f ms  (IQR %5.1f ms)' % (name, 1e3 * med[name], 1e3 * iqr[name]))
        cost = {name: med[name] - med['base'] for name in names[1:]}
        print('  prior alone: %s; new/old %.3f, fused/new %.3f' % (
            ', '.join('%s %.1f ms' % (name, 1e3 * c) for name, c in cost.items()),
            cost['new'] / cost['old'], cost['fused'] / cost['new']))
        if args.profile:
            prof = {name: g.op_type_times() for name, g in graphs.items()}
            keys = sorted(set().union(*prof.values()), key=lambda k: -max(p.get(k, 0) for p in prof.values()))
            print('  op type (summed ms per step)' + ''.join('%8s' % name for name in names))
            for k in keys[:14]:
                print('  %-28s' % k + ''.join('%8.1f' % prof[name].get(k, 0) for name in names))
        for g in graphs.values():
            g.sess.close()


if __name__ == '__main__':
    main()
