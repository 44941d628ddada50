#!/usr/bin/env python
"""Table 3 of the KN paper as a ratio: training examples/s of KN and BN on the ImageNet models.

The paper: Inception-v2, 4 Titan X, 32 images per GPU: BN 325.74, KN 320.94 examples/s
(KN/BN = 0.985).  A 2-core CPU cannot run that setting in minutes, so this measures the same
ratio at a small one: Inception-v2 and ResNet-50, ``--batch`` images of ``--image-size`` pixels
per step (default 8 at 112 px), one normalization group per step (``--group-size`` defaults to
the batch, as one GPU normalizes its own 32 images in the paper), plain SGD with momentum.

Configurations (``--norms``): BN; KN as this package ships it (``bkn`` with its defaults,
``KN_RECIPES['library']``: analytic prior, output hand-on, no R); the paper's KN as Table 3 times
it (process noise R, input hand-on) with the analytic prior and with the Monte-Carlo prior
(``prior_method='mc'``, 1 sample per group as the authors).  On a CPU-only machine the analytic
prior runs in the fused CPU op (kalman_norm/ops) unless ``KALMAN_NORM_FUSED_PRIOR=0``; the
output says which.  Data are constant random tensors
in the graph (no input pipeline).  All configurations live in ONE process, each with its own
graph and session; after a warm-up, steps are interleaved round-robin (one step of each
configuration per round, ``--rounds`` rounds), so that whatever else runs on the machine slows
all of them alike.  Reported: the median step time of each, KN/BN as the ratio of the medians,
and the median over rounds of the same round's BN step / KN step (paired: a slow spell that
hits one round hits both steps of the pair).

    python scripts/benchmark_imagenet.py                          # prints the table
    python scripts/benchmark_imagenet.py --out results/table3_speed.md
    python scripts/benchmark_imagenet.py --profile                # + where the time goes (op types)
"""
import argparse
import collections
import os
import shlex
import sys
import time


import kalman_norm as kn  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from tabulate import tabulate  # noqa: E402
from tensorpack.models.registry import disable_layer_logging  # noqa: E402
from tensorpack.tfutils.tower import TowerContext  # noqa: E402

from kalman_norm import ops, provenance  # noqa: E402
from kalman_norm.models import get_model  # noqa: E402

tf1 = tf.compat.v1

PAPER = {'BN': 325.74, 'KN': 320.94}          # Table 3: Inception-v2, examples/s on 4 Titan X
ARCHITECTURES = collections.OrderedDict((get_model(name).title, get_model(name).make)
                                        for name in ('inception_v2', 'resnet50'))
#: KN as the paper times it in Table 3: with its process noise R and the input hand-on (the
#: layers' defaults have neither), the gain fixed
_PAPER_KN = {'process_noise': True, 'propagate': 'input'}
#: label -> (norm, spec options)
NORMS = collections.OrderedDict([
    ('BN', ('bn', {})),
    ('KN package', ('bkn', {})),
    ('KN analytic', ('bkn', dict(_PAPER_KN, prior_method='analytic'))),
    ('KN MC', ('bkn', dict(_PAPER_KN, prior_method='mc', prior_samples=1))),
])
NUM_CLASSES = 1000


class Config(object):
    """One (architecture, norm) training graph and its session."""

    def __init__(self, arch, label, batch, image_size, group_size, seed=0):
        self.arch, self.label, self.batch = arch, label, batch
        norm, options = NORMS[label]
        rng = np.random.RandomState(seed)
        self.graph = tf.Graph()
        with self.graph.as_default():
            tf1.set_random_seed(seed)
            image = tf.constant(rng.randn(batch, image_size, image_size, 3).astype(np.float32))
            labels = tf.constant(rng.randint(0, NUM_CLASSES, size=batch))
            with TowerContext('', is_training=True), kn.norm_scope(norm, group_size=group_size, **options):
                logits = ARCHITECTURES[arch](image, NUM_CLASSES)
            loss = tf.reduce_mean(tf1.nn.sparse_softmax_cross_entropy_with_logits(labels=labels, logits=logits))
            with tf.control_dependencies(tf1.get_collection(tf1.GraphKeys.UPDATE_OPS)):
                self.step = tf1.train.MomentumOptimizer(0.01, 0.9).minimize(loss)
            self.loss = loss
            self.sess = tf1.Session(graph=self.graph)
            self.sess.run(tf1.global_variables_initializer())
        self.times = []

    def run(self, record=True, **kwargs):
        start = time.perf_counter()
        loss = self.sess.run([self.step, self.loss], **kwargs)[1]
        elapsed = time.perf_counter() - start
        if not np.isfinite(loss):
            raise FloatingPointError('%s / %s: the loss is %s' % (self.arch, self.label, loss))
        if record:
            self.times.append(elapsed)
        return elapsed

    def op_type_times(self, steps=3):
        """Microseconds per op type, summed over all ops, median over ``steps`` traced steps;
        also sets ``self.executed_ops``, the number of ops one training step runs (a count that,
        unlike times, does not depend on what else the machine is doing)."""
        per_step = []
        for _ in range(steps):
            meta = tf1.RunMetadata()
            self.run(record=False, options=tf1.RunOptions(trace_level=tf1.RunOptions.FULL_TRACE),
                     run_metadata=meta)
            totals = collections.Counter()
            for dev in meta.step_stats.dev_stats:
                for node in dev.node_stats:
                    name = node.node_name.split(':')[0]
                    try:
                        op_type = self.graph.get_operation_by_name(name).type
                    except KeyError:
                        op_type = name
                    totals[op_type] += node.op_end_rel_micros - node.op_start_rel_micros
            per_step.append(totals)
            self.executed_ops = sum(len(dev.node_stats) for dev in meta.step_stats.dev_stats)
        keys = set().union(*per_step)
        return {k: float(np.median([t.get(k, 0) for t in per_step])) for k in keys}


def load():
    try:
        return '%.1f / %.1f / %.1f' % os.getloadavg()
    except OSError:
        return 'unknown'


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--batch', type=int, default=8, help='images per step (default 8)')
    p.add_argument('--image-size', type=int, default=112, help='image side in pixels (default 112, at least 32)')
    p.add_argument('--group-size', type=int, help='samples per normalization (default: the batch)')
    p.add_argument('--rounds', type=int, default=15, help='interleaved measured rounds (default 15, at least 3)')
    p.add_argument('--warmup', type=int, default=3, help='unmeasured steps per configuration first (default 3)')
    p.add_argument('--archs', default=','.join(ARCHITECTURES),
                   help='comma-separated subset of: %s' % ', '.join(ARCHITECTURES))
    p.add_argument('--norms', default=','.join(NORMS),
                   help='comma-separated subset of: %s (BN is always measured)' % ', '.join(NORMS))
    p.add_argument('--profile', action='store_true',
                   help='also trace 3 steps per configuration and print where KN spends its extra time')
    p.add_argument('--out', help='write the results (markdown, with this command) to this file')
    args = p.parse_args(argv)
    if args.batch < 1:
        p.error('--batch must be at least 1, got %d' % args.batch)
    if args.image_size < 32:
        p.error('--image-size must be at least 32 (the nets downsample by 32), got %d' % args.image_size)
    if args.group_size is None:
        args.group_size = args.batch
    if args.group_size < 1 or args.batch % args.group_size:
        p.error('--group-size must be a positive divisor of --batch %d, got %d' % (args.batch, args.group_size))
    if args.rounds < 3:
        p.error('--rounds must be at least 3 (a median of fewer says little), got %d' % args.rounds)
    if args.warmup < 0:
        p.error('--warmup must be >= 0, got %d' % args.warmup)
    args.archs = [a.strip() for a in args.archs.split(',') if a.strip()]
    unknown = [a for a in args.archs if a not in ARCHITECTURES]
    if unknown or not args.archs:
        p.error('--archs: unknown architecture(s) %s; choose from %s' % (unknown, ', '.join(ARCHITECTURES)))
    args.norms = ['BN'] + [n.strip() for n in args.norms.split(',') if n.strip() and n.strip() != 'BN']
    unknown = [n for n in args.norms if n not in NORMS]
    if unknown:
        p.error('--norms: unknown configuration(s) %s; choose from %s' % (unknown, ', '.join(NORMS)))
    if args.out and not os.path.isdir(os.path.dirname(os.path.abspath(args.out))):
        p.error('--out: directory %s does not exist' % os.path.dirname(os.path.abspath(args.out)))
    return args


def results_table(configs):
    rows = []
    for arch in dict.fromkeys(c.arch for c in configs):
        mine = [c for c in configs if c.arch == arch]
        bn_times = next(c for c in mine if c.label == 'BN').times
        bn = np.median(bn_times)
        for c in mine:
            med = float(np.median(c.times))
            paired = float(np.median(np.asarray(bn_times) / np.asarray(c.times)))
            paper = ''
            if arch == 'Inception-v2' and c.label in ('BN', 'KN analytic'):
                paper = '%.2f' % PAPER['BN' if c.label == 'BN' else 'KN']
            paper_ratio = '%.3f' % (PAPER['KN'] / PAPER['BN']) if (arch == 'Inception-v2' and c.label != 'BN') else ''
            rows.append([arch, c.label, '%.3f' % med, '%.2f' % (np.percentile(c.times, 75) - np.percentile(c.times, 25)),
                         '%.2f' % (c.batch / med), '%.3f' % (bn / med), '%.3f' % paired, paper,
                         paper_ratio])
    return tabulate(rows, headers=['architecture', 'norm', 'median step (s)', 'IQR (s)', 'examples/s',
                                   'speed vs BN (KN/BN)', 'KN/BN paired by round', 'paper examples/s',
                                   'paper KN/BN'],
                    tablefmt='github')


def profile_table(configs):
    lines = []
    for arch in dict.fromkeys(c.arch for c in configs):
        mine = {c.label: c for c in configs if c.arch == arch}
        base = mine['BN'].profile
        for label in [n for n in mine if n != 'BN']:
            prof = mine[label].profile
            keys = set(base) | set(prof)
            diff = sorted(((prof.get(k, 0) - base.get(k, 0)) / 1e3, k) for k in keys)[::-1]
            total_bn, total_kn = sum(base.values()) / 1e3, sum(prof.values()) / 1e3
            rows = [[k, '%.1f' % (base.get(k, 0) / 1e3), '%.1f' % (prof.get(k, 0) / 1e3), '%+.1f' % d]
                    for d, k in diff[:10]]
            lines.append('%s, %s vs BN: summed op time %.0f ms vs %.0f ms (ops overlap on several threads); '
                         'ops executed per training step: %d vs %d. The op types KN adds most time to:'
                         % (arch, label, total_kn, total_bn, mine[label].executed_ops, mine['BN'].executed_ops))
            lines.append('')
            lines.append(tabulate(rows, headers=['op type', 'BN (ms)', label + ' (ms)', 'difference (ms)'],
                                  tablefmt='github'))
            lines.append('')
    return '\n'.join(lines)


def main(argv=None):
    args = parse_args(argv)
    disable_layer_logging()
    started, load_before = time.time(), load()
    configs = []
    for arch in args.archs:
        for label in args.norms:
            t = time.time()
            cfg = Config(arch, label, args.batch, args.image_size, args.group_size)
            configs.append(cfg)
            print('built %-12s %-12s in %.0f s' % (arch, label, time.time() - t), flush=True)
    for cfg in configs:
        for _ in range(args.warmup):
            cfg.run(record=False)
    for r in range(args.rounds):
        for cfg in configs:
            cfg.run()
        print('round %d/%d: %s' % (r + 1, args.rounds, '  '.join('%.2f' % c.times[-1] for c in configs)), flush=True)
    text = results_table(configs)
    print()
    print(text)
    profile = ''
    if args.profile:
        for cfg in configs:
            cfg.profile = cfg.op_type_times()
        profile = profile_table(configs)
        print()
        print(profile)
    if args.out:
        command = shlex.join(['python', 'scripts/benchmark_imagenet.py'] + (argv if argv is not None else sys.argv[1:]))
        doc = [
            '# Table 3 as a ratio: training speed of KN vs BN',
            '',
            'Made by `%s` in %.0f s.' % (command, time.time() - started),
            '',
            '* Machine: %s, %d logical cores.' % (provenance.describe_machine(), os.cpu_count() or 0),
            '* Load average (1/5/15 min) before: %s, after: %s. The machine is shared with other '
            'processes; the configurations are interleaved round-robin in one process, so such load '
            'slows all of them alike and the ratios stay comparable, while the absolute examples/s '
            'depend on it.' % (load_before, load()),
            '* Settings: %d images of %d×%d per step, %s, 1000 classes, momentum SGD, fake data '
            '(constant random tensors in the graph); %d warm-up steps per configuration, then %d '
            'interleaved rounds; median step time (IQR = interquartile range).'
            % (args.batch, args.image_size, args.image_size,
               'one normalization group of %d' % args.group_size if args.group_size == args.batch
               else 'groups of %d' % args.group_size, args.warmup, args.rounds),
            "* KN package = `bkn` as this package ships it (analytic prior, output hand-on, no R, fixed "
            "gain); KN analytic / KN MC = the paper's KN as Table 3 times it (with the process noise R "
            "and the input hand-on) with the analytic prior and with the Monte-Carlo prior (one sampled "
            "feature map per group, as the authors' code). KN/BN paired by round: the median over "
            "rounds of the same round's BN step / KN step.",
            '* The analytic prior\'s kernel-sized work: %s.' % (
                'in the fused CPU op (kalman_norm/ops; `%s=0` times TensorFlow\'s ops instead)' % ops.ENV_SWITCH
                if ops.fused_prior_enabled() else
                'in TensorFlow\'s ops (the fused CPU op is off or unavailable: `%s`)' % ops.ENV_SWITCH),
            '* Paper (Table 3): Inception-v2 on 4 Titan X, 32 images per GPU: BN 325.74, KN 320.94 '
            'examples/s, KN/BN = %.3f. Only the ratio is comparable here.' % (PAPER['KN'] / PAPER['BN']),
            '',
            text,
            '']
        if profile:
            doc += ['## Where the time goes (`--profile`)', '', profile, '']
        tmp = args.out + '.tmp'
        with open(tmp, 'w') as f:
            f.write('\n'.join(doc))
        os.replace(tmp, args.out)
        print('wrote', args.out)
    return 0


if __name__ == '__main__':
    sys.exit(main())
