#!/usr/bin/env python
"""Training-step time of every norm relative to BN, measured side by side in one process.

ResNet-32 (n=5; ``--depth 3``: ResNet-20, the leaderboard's net) on 128 random 32x32 images per
step, normalised either as 64 micro-batch groups of 2 (the paper's CIFAR protocol) or as one group
of 128.  Every configuration gets its own graph and session; after a warm-up, steps are
*interleaved* (one step of each configuration per round), so that whatever else the machine does
affects all of them alike.  Reported: median step time over the rounds and its ratio to BN with
the same grouping; ``--json`` also writes them as a record (command, machine, load, per label and
grouping), which results/microbatch.md reads for its step-time column.

    python scripts/benchmark_norms.py                      # prints the table
    python scripts/benchmark_norms.py --out results/benchmark_norms.md
"""
import argparse
import os
import shlex
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
DEPTH_N = 5                  # ResNet-32 (6n+2 layers); --depth changes it
BATCH = 128                  # samples per step
GROUPINGS = [2, 128]         # samples per normalization: 64 groups of 2, one group of 128
#: KN as results/benchmark_norms.md measured it (the layers' defaults then): learned R, input hand-on
KN_THEN = dict(process_noise=True, propagate='input')
#: KN as the library ships it (the trainer's default, the leaderboard's BKN rows)
KN_DEFAULT = dict(kn.KN_RECIPES['library'])
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
    # the micro-batch field beside KN
    ('GN+WS', 'gn', dict(weight_standardization=True)),
    ('BN+WS', 'bn', dict(weight_standardization=True)),
    ('BKN+WS analytic prior', 'bkn', dict(prior_method='analytic', weight_standardization=True, **KN_THEN)),
    ('BKN default recipe', 'bkn', KN_DEFAULT),
    ('BKN+WS default recipe', 'bkn', dict(KN_DEFAULT, weight_standardization=True)),
    ('FRN+TLU', 'frn', {}),
    ('EvoNorm-S0', 'evonorm_s0', {}),
    ('EvoNorm-B0', 'evonorm_b0', {}),
    ('MABN per device', 'mabn', {}),
    ('MABN official simulation', 'mabn', dict(history_mode='official_simulation')),
]
WARMUP = 15                  # untimed rounds first (graph optimisation, allocator warm-up)
LABELS = [label for label, _, _ in NORMS]
# -------------------------------------------------------------------------------------------


class Run(object):
    def __init__(self, norm, group_size, options, images, labels, config=None, depth=DEPTH_N):
        self.graph = tf.Graph()
        with self.graph.as_default():
            x = tf.constant(images)
            y = tf.constant(labels)
            with TowerContext('', is_training=True), kn.norm_scope(norm, group_size=group_size, **options):
                logits = resnet_cifar(x, depth)
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


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    p.add_argument('--steps', type=int, default=20, help='timed rounds (median over them)')
    p.add_argument('--warmup', type=int, default=WARMUP, help='untimed rounds before them (default %d)' % WARMUP)
    p.add_argument('--norms', help='comma-separated labels subset, with BN, e.g. "BN,BKN default recipe,MABN per '
                   'device"; labels: %s' % ', '.join(LABELS))
    p.add_argument('--groupings', default=','.join(map(str, GROUPINGS)),
                   help='samples per normalization, comma-separated, each dividing %d' % BATCH)
    p.add_argument('--depth', type=int, default=DEPTH_N, help='ResNet-CIFAR n (6n+2 layers; default %d: '
                   'ResNet-%d; 3: ResNet-20)' % (DEPTH_N, 6 * DEPTH_N + 2))
    p.add_argument('--out', help='also write the table as Markdown here')
    p.add_argument('--json', help='also write the measurements as a JSON record here (atomically)')
    p.add_argument('--note', default='', help='what else ran on the machine, stated in both outputs')
    p.add_argument('--threads', type=int, help='intra- and inter-op threads of every session (default: '
                   "TensorFlow's); set it when the machine is shared, as the ratios assume equal conditions")
    args = p.parse_args(argv)
    if args.threads is not None and args.threads < 1:
        p.error('--threads must be >= 1, got %d' % args.threads)
    if args.steps < 1 or args.warmup < 0:
        p.error('--steps must be >= 1 and --warmup >= 0, got %d and %d' % (args.steps, args.warmup))
    if args.depth < 1:
        p.error('--depth must be >= 1, got %d' % args.depth)
    if args.norms is not None:
        wanted = [n.strip() for n in args.norms.split(',')]
        unknown = [n for n in wanted if n not in LABELS]
        if unknown:
            p.error('--norms: unknown label(s) %s; labels: %s' % (', '.join(map(repr, unknown)), ', '.join(LABELS)))
        if 'BN' not in wanted:
            p.error('--norms must include BN: every ratio is to BN')
        args.norms = wanted
    try:
        args.groupings = [int(g) for g in args.groupings.split(',')]
    except ValueError:
        p.error('--groupings must be comma-separated integers, got %r' % args.groupings)
    bad = [g for g in args.groupings if g < 1 or BATCH % g]
    if bad or len(set(args.groupings)) != len(args.groupings):
        p.error('--groupings must be distinct divisors of %d, got %s' % (BATCH, ','.join(map(str, args.groupings))))
    for path in (args.out, args.json):
        if path and not os.path.isdir(os.path.dirname(os.path.abspath(path))):
            p.error('directory of %s does not exist' % path)
    args.command = shlex.join(['python', 'scripts/benchmark_norms.py'] + list(sys.argv[1:] if argv is None else argv))
    return args


def grouping_name(group_size):
    return '%d groups of %d' % (BATCH // group_size, group_size) if group_size < BATCH else 'one group of %d' % BATCH


def measure(chosen, groupings, depth, steps, warmup, config):
    """{(label, group size): [seconds of each timed round]}, the rounds interleaved over configurations,
    and the 1-minute load average before and after the timed rounds."""
    rng = np.random.RandomState(0)
    images = rng.randn(BATCH, 32, 32, 3).astype(np.float32)
    labels = rng.randint(0, 10, BATCH).astype(np.int32)
    runs = {}
    for g in groupings:
        for label, norm, opts in chosen:
            runs[(label, g)] = Run(norm, g, opts, images, labels, config, depth)
            print('built %-32s groups of %d' % (label, g), flush=True)
    for _ in range(warmup):
        for r in runs.values():
            r.run(record=False)
    load_start = os.getloadavg()[0]
    for _ in range(steps):
        for r in runs.values():
            r.run()
    return {key: r.times for key, r in runs.items()}, (load_start, os.getloadavg()[0])


def record(args, chosen, times, load):
    """The JSON record: the command and conditions, and per (label, grouping) the median ms/step and
    its ratio to BN's median at the same grouping."""
    measurements = []
    for label, norm, opts in chosen:
        for g in args.groupings:
            median = float(np.median(times[(label, g)]))
            # a round runs every configuration once, so the round's ratio compares like conditions;
            # its quartiles show how much the shared machine moved the ratio
            per_round = np.asarray(times[(label, g)]) / np.asarray(times[('BN', g)])
            measurements.append({
                'label': label, 'norm': norm, 'options': opts, 'group_size': g, 'grouping': grouping_name(g),
                'ms_per_step': 1000 * median, 'ratio_to_bn': median / float(np.median(times[('BN', g)])),
                'ratio_per_round_quartiles': [float(q) for q in np.percentile(per_round, [25, 75])],
                'ms_per_round': [1000 * t for t in times[(label, g)]]})
    return {'command': args.command, 'created': provenance.utc_now(), 'machine': provenance.machine(),
            'machine_description': provenance.describe_machine(), 'threads_per_session': args.threads,
            'note': args.note, 'load_average_1min': {'before_timed_rounds': load[0], 'after_timed_rounds': load[1]},
            'model': 'ResNet-%d' % (6 * args.depth + 2), 'depth_n': args.depth, 'batch': BATCH,
            'data': 'random', 'optimizer': 'SGD+momentum', 'warmup_rounds': args.warmup, 'timed_rounds': args.steps,
            'statistic': 'median over the timed rounds', 'measurements': measurements}


def markdown_table(rec, groupings):
    by_key = {(m['label'], m['group_size']): m for m in rec['measurements']}
    labels = list(dict.fromkeys(m['label'] for m in rec['measurements']))
    rows = []
    for label in labels:
        row = [label]
        for g in groupings:
            m = by_key[(label, g)]
            row += ['%.2f' % m['ms_per_step'], '%.2f' % m['ratio_to_bn'],
                    '%.2f–%.2f' % tuple(m['ratio_per_round_quartiles'])]
        rows.append(row)
    headers = ['norm'] + [h for g in groupings for h in ('ms/step (%s)' % grouping_name(g), '× BN (%s)' % grouping_name(g),
                                                         '× BN per round, quartiles')]
    return tabulate(rows, headers=headers, tablefmt='github', disable_numparse=True)


def markdown(rec, table):
    threads = rec['threads_per_session']
    lines = ['# Training-step time of each norm relative to BN', '',
             'Produced by `%s` (%s, %d samples per step, random data, SGD+momentum; %d warm-up rounds, median of %d '
             'interleaved rounds; "× BN" is the ratio of the medians, its quartiles those of the ratios within '
             'each round).' % (rec['command'], rec['model'], rec['batch'], rec['warmup_rounds'], rec['timed_rounds']),
             '',
             'Machine: %s, no GPU%s. Load average (1 min) %.2f before and %.2f after the timed rounds, on %d cores%s.'
             % (rec['machine_description'], '' if threads is None else ', %d thread(s) per session' % threads,
                rec['load_average_1min']['before_timed_rounds'], rec['load_average_1min']['after_timed_rounds'],
                rec['machine']['cores'], '; %s' % rec['note'] if rec['note'] else ''), '',
             table, '']
    return '\n'.join(lines)


def main(argv=None):
    args = parse_args(argv)
    config = None if args.threads is None else tf.compat.v1.ConfigProto(
        intra_op_parallelism_threads=args.threads, inter_op_parallelism_threads=args.threads)
    chosen = [n for n in NORMS if args.norms is None or n[0] in args.norms]
    times, load = measure(chosen, args.groupings, args.depth, args.steps, args.warmup, config)
    rec = record(args, chosen, times, load)
    table = markdown_table(rec, args.groupings)
    print(table)
    if args.out:
        tmp = '%s.tmp.%d' % (args.out, os.getpid())
        with open(tmp, 'w') as f:
            f.write(markdown(rec, table))
        os.replace(tmp, args.out)
    if args.json:
        provenance.atomic_write_json(args.json, rec, sort_keys=False)
    return rec


if __name__ == '__main__':
    main()
