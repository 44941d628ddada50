#!/usr/bin/env python
"""Test accuracy of a run's checkpoint with moving statistics, as saved or under the other
variance convention of BN's moving averages (README, "Conventions").

BN's ``variance/EMA`` under conventions 2 is the EMA of n/(n-1)·S (n = g·H·W values per group
statistic); under conventions 1 it was the EMA of S.  Training never reads it, so once the initial
value has decayed (0.9^steps) the two differ by the factor n/(n-1) per layer, exactly: evaluating a
checkpoint with ``variance/EMA × (n-1)/n`` gives what the same run would have scored under the
other convention.  ``--variance-ema`` names the convention to evaluate under.

    python scripts/evaluate_checkpoint.py train_log/cpu/bn_b2/seed4 --variance-ema biased unbiased \\
        --data ../shared/data/cifar10-jpeg.tar.gz --markdown results/conventions_bn.md

``--markdown`` writes the table of every run given (one invocation, all runs at once).
"""
import argparse
import json
import os
import sys

import kalman_norm  # noqa: F401  (sets up the TF/tensorpack stack first)
import numpy as np
import tensorflow as tf
from tensorpack.tfutils.common import get_global_step_var
from tensorpack.tfutils.tower import TowerContext

from kalman_norm import data as datasets, probe
from kalman_norm.models import get_model

tf1 = tf.compat.v1
CONVENTIONS = ('unbiased', 'biased')


def build_parser():
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    p.add_argument('logdir', nargs='+', help='log directories of training runs (options.json, model-<step> checkpoints)')
    p.add_argument('--checkpoint', help='checkpoint prefix (default: the last in LOGDIR)')
    p.add_argument('--variance-ema', nargs='+', choices=CONVENTIONS, default=['unbiased'],
                   help="the BN variance convention(s) to evaluate under; the run's own is used as saved")
    p.add_argument('--data', help="dataset location; default: the run's own (options.json 'data')")
    p.add_argument('--batch', type=int, default=500, help='test images per forward pass')
    p.add_argument('--threads', type=int, default=None, help='CPU threads (default: every core)')
    p.add_argument('--markdown', help='write a Markdown table of the results to this file')
    return p


def run_convention(options):
    return 'unbiased' if (options.get('identity') or {}).get('conventions', 1) >= 2 else 'biased'


def build(options, spec, num_classes, mean, std):
    graph = tf.Graph()
    with graph.as_default():
        images = tf1.placeholder(tf.uint8, [None, 32, 32, 3])
        with TowerContext('', is_training=False), spec.replace(eval_stats='moving'):
            get_global_step_var()
            image = (tf.cast(images, tf.float32) - np.asarray(mean, np.float32)) / np.asarray(std, np.float32)
            logits = get_model(options['model']).build(image, num_classes, options)
        # n = g·H·W of each layer: its output has its input's shape
        counts = {}
        for v in tf1.global_variables():
            if v.op.name.endswith('/variance/EMA'):
                scope = v.op.name[:-len('/variance/EMA')]
                shape = graph.get_tensor_by_name(scope + '/output:0').shape.as_list()
                spatial = int(np.prod(shape[1:-1])) if len(shape) == 4 else 1
                counts[v] = float(spec.group_size * spatial)
    return graph, images, logits, counts


def evaluate(args, logdir=None):
    logdir = logdir or args.logdir[0]
    options, spec = probe.load_run(logdir)
    if spec.kind != 'bn':
        raise probe.ProbeError('%s: norm %s; the variance conventions convert exactly for bn only'
                               % (logdir, spec.kind))
    prefix = args.checkpoint or (probe.list_checkpoints(logdir) or [(None, None)])[-1][1]
    if prefix is None:
        raise probe.ProbeError('%s holds no checkpoint (model-<step>.index)' % logdir)
    ds = datasets.load_dataset(options['dataset'], args.data or options.get('data'),
                               strict_counts=not options.get('partial_data', False))
    graph, images, logits, counts = build(options, spec, ds.num_classes, ds.channel_mean, ds.channel_std)
    saved = run_convention(options)
    config = tf1.ConfigProto()
    if args.threads:
        config.intra_op_parallelism_threads = config.inter_op_parallelism_threads = args.threads
    results = {}
    with graph.as_default(), tf1.Session(config=config) as sess:
        tf1.train.Saver().restore(sess, prefix)
        stored = {v: sess.run(v) for v in counts}
        for convention in args.variance_ema:
            for v, value in stored.items():
                n = counts[v]
                factor = 1.0 if convention == saved else ((n - 1.0) / n if saved == 'unbiased' else n / (n - 1.0))
                v.load(value * factor, sess)
            correct = 0
            for i in range(0, len(ds.test_labels), args.batch):
                pred = sess.run(logits, {images: ds.test_images[i:i + args.batch]}).argmax(1)
                correct += int((pred == ds.test_labels[i:i + args.batch]).sum())
            results[convention] = 100.0 * correct / len(ds.test_labels)
    return dict(logdir=logdir, checkpoint=prefix, saved_convention=saved, accuracy=results,
                layers=len(counts), min_values_per_statistic=min(counts.values()))


def markdown(results, conventions, command=''):
    """A table: one run per line, its accuracy under each convention and the difference."""
    head = ['run', 'checkpoint', 'trained under'] + ['accuracy, %s EMA (%%)' % c for c in conventions]
    if len(conventions) == 2:
        head.append('%s − %s (points)' % conventions)
    lines = ['| ' + ' | '.join(head) + ' |', '|' + '---|' * len(head)]
    for r in results:
        row = [r['logdir'], os.path.basename(r['checkpoint']), r['saved_convention']]
        row += ['%.2f' % r['accuracy'][c] for c in conventions]
        if len(conventions) == 2:
            row.append('%+.2f' % (r['accuracy'][conventions[0]] - r['accuracy'][conventions[1]]))
        lines.append('| ' + ' | '.join(row) + ' |')
    return ('# BN\'s moving variance: unbiased (conventions 2) vs biased (conventions 1)\n\n'
            'Written by `scripts/evaluate_checkpoint.py --markdown`: each run\'s checkpoint evaluated on the '
            'whole test set with moving statistics, its BN moving variances as saved and rescaled by '
            '(n−1)/n or n/(n−1) per layer (n = g·H·W values per group statistic), which is what the '
            'same run would have stored under the other convention (training never reads them).\n\n'
            + ('Command: `%s`\n\n' % command if command else '') + '\n'.join(lines) + '\n')


def main(argv=None):
    args = build_parser().parse_args(argv)
    try:
        results = [evaluate(args, logdir) for logdir in args.logdir]
    except (probe.ProbeError, datasets.DataError) as e:
        print('error: %s' % e, file=sys.stderr)
        raise SystemExit(2)
    print(json.dumps(results, indent=1), flush=True)
    if args.markdown:
        with open(args.markdown, 'w') as f:
            command = 'python scripts/evaluate_checkpoint.py ' + ' '.join(argv if argv is not None else sys.argv[1:])
            f.write(markdown(results, tuple(args.variance_ema), command))
    return results


if __name__ == '__main__':
    main()
