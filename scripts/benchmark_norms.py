#!/usr/bin/env python
"""Training-step time of every norm relative to BN, measured side by side in one process.

ResNet-32 (n=5) on 128 random 32x32 images per step, normalised either as 64 micro-batch groups
of 2 (the paper's CIFAR protocol) or as one group of 128.  Every configuration gets its own
graph and session; after a warm-up, steps are *interleaved* (one step of each configuration per
round), so that whatever else the machine does affects all of them alike.  Reported: median
step time over the rounds and its ratio to BN with the same grouping.

    python scripts/benchmark_norms.py                      # prints the table
    python scripts/benchmark_norms.py --out results/benchmark_norms.md
"""
import argparse
import os
import sys
import time


import kalman_norm as kn  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from tabulate import tabulate  # noqa: E402
from tensorpack.tfutils.tower import TowerContext  # noqa: E402

from kalman_norm import provenance  # noqa: E402
from kalman_norm.models.resnet_cifar import resnet_cifar  # noqa: E402

# ---- configuration ------------------------------------------------------------------------
DEPTH_N = 5                  # ResNet-32
BATCH = 128                  # samples per step
GROUPINGS = [2, 128]         # samples per normalization: 64 groups of 2, one group of 128
#: KN as results/benchmark_norms.md measured it (the layers' defaults then): learned R, input hand-on
KN_THEN = dict(process_noise=True, propagate='input')
NORMS = [                    # (label, norm, spec options)
    ('BN', 'bn', {}),
    ('BKN analytic prior', 'bkn', dict(prior_method='analytic', **KN_THEN)),
    ('BKN MC prior (1 sample/group)', 'bkn', dict(prior_method='mc', prior_samples=1, **KN_THEN)),
    ('GN', 'gn', {}),
    ('GKN analytic prior', 'gkn', dict(prior_method='analytic', **KN_THEN)),
    ('BRN', 'brn', {}),
    ('LN', 'ln', {}),
    ('WN', 'wn', {}),
    ('none', 'none', {}),
    # the micro-batch field beside KN (issue 22)
    ('GN+WS', 'gn', dict(weight_standardization=True)),
    ('BN+WS', 'bn', dict(weight_standardization=True)),
    ('BKN+WS analytic prior', 'bkn', dict(prior_method='analytic', weight_standardization=True, **KN_THEN)),
    ('FRN+TLU', 'frn', {}),
    ('EvoNorm-S0', 'evonorm_s0', {}),
    ('EvoNorm-B0', 'evonorm_b0', {}),
    ('MABN per device', 'mabn', {}),
    ('MABN official simulation', 'mabn', dict(history_mode='official_simulation')),
]
WARMUP = 15
# -------------------------------------------------------------------------------------------


class Run(object):
    def __init__(self, norm, group_size, options, images, labels, config=None):
        self.graph = tf.Graph()
        with self.graph.as_default():
            x = tf.constant(images)
            y = tf.constant(labels)
            with TowerContext('', is_training=True), kn.norm_scope(norm, group_size=group_size, **options):
                logits = resnet_cifar(x, DEPTH_N)
            loss = tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(labels=y, logits=logits))
            opt = tf.compat.v1.train.MomentumOptimizer(0.01, 0.9)
            with tf.control_dependencies(tf.compat.v1.get_collection(tf.compat.v1.GraphKeys.UPDATE_OPS)):
                self.step = opt.minimize(loss, global_step=tf.compat.v1.train.get_or_create_global_step())
            self.sess = tf.compat.v1.Session(graph=self.graph, config=config)
            self.sess.run(tf.compat.v1.global_variables_initializer())
        self.times = []

    def run(self, record=True):
        t = time.perf_counter()
        self.sess.run(self.step)
        if record:
            self.times.append(time.perf_counter() - t)


def machine():
    return provenance.describe_machine()


def main():
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    p.add_argument('--steps', type=int, default=20, help='timed rounds (median over them)')
    p.add_argument('--norms', help='comma-separated labels subset, e.g. "BN,BKN analytic prior,MABN per device"')
    p.add_argument('--groupings', default=','.join(map(str, GROUPINGS)))
    p.add_argument('--out', help='also write the table as Markdown here')
    p.add_argument('--threads', type=int, help='intra- and inter-op threads of every session (default: '
                   "TensorFlow's); set it when the machine is shared, as the ratios assume equal conditions")
    args = p.parse_args()
    if args.threads is not None and args.threads < 1:
        p.error('--threads must be >= 1, got %d' % args.threads)
    config = None if args.threads is None else tf.compat.v1.ConfigProto(
        intra_op_parallelism_threads=args.threads, inter_op_parallelism_threads=args.threads)
    rng = np.random.RandomState(0)
    images = rng.randn(BATCH, 32, 32, 3).astype(np.float32)
    labels = rng.randint(0, 10, BATCH).astype(np.int32)
    chosen = [n for n in NORMS if args.norms is None or n[0] in args.norms.split(',')]
    groupings = [int(g) for g in args.groupings.split(',')]
    runs = {}
    for g in groupings:
        for label, norm, opts in chosen:
            runs[(label, g)] = Run(norm, g, opts, images, labels, config)
            print('built %-32s groups of %d' % (label, g), flush=True)
    for _ in range(WARMUP):
        for r in runs.values():
            r.run(record=False)
    for _ in range(args.steps):
        for r in runs.values():
            r.run()
    rows = []
    for label, _, _ in chosen:
        row = [label]
        for g in groupings:
            med = np.median(runs[(label, g)].times)
            base = np.median(runs[('BN', g)].times) if ('BN', g) in runs else float('nan')
            row += [1000 * med, med / base]
        rows.append(row)
    headers = ['norm']
    for g in groupings:
        desc = '%d groups of %d' % (BATCH // g, g) if g < BATCH else 'one group of %d' % BATCH
        headers += ['ms/step (%s)' % desc, '× BN (%s)' % desc]
    table = tabulate(rows, headers=headers, floatfmt='.2f', tablefmt='github')
    print(table)
    if args.out:
        with open(args.out, 'w') as f:
            f.write('# Training-step time of each norm relative to BN\n\n')
            threads = '' if args.threads is None else ' --threads %d' % args.threads
            f.write('Produced by `python scripts/benchmark_norms.py --steps %d%s --out %s` (ResNet-32, %d samples per '
                    'step, random data, SGD+momentum; %d warm-up rounds, median of %d interleaved rounds).\n\n'
                    % (args.steps, threads, args.out, BATCH, WARMUP, args.steps))
            f.write('Machine: %s, no GPU%s.\n\n' % (machine(), '' if args.threads is None
                                                      else ', %d thread(s) per session' % args.threads))
            f.write(table + '\n')


if __name__ == '__main__':
    main()
