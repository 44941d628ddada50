#!/usr/bin/env python
"""Evaluate finished CIFAR runs' checkpoints on their test images with moving statistics, writing
nothing into the runs: as saved; with PreciseBN's recomputed statistics (``--precise``, Wu &
Johnson 2021, as the trainer's ``--eval-stats precise``); for BN, under either convention of its
moving variance (``--variance-ema``, README "Conventions").

    python scripts/evaluate_checkpoint.py results/runs/cpu/bn_b2/seed1 --precise --batches 200 \\
        --data ../shared/data/cifar10-jpeg.tar.gz
    python scripts/evaluate_checkpoint.py train_log/cpu/bn_b2/seed4 --variance-ema unbiased biased \\
        --data ../shared/data/cifar10-jpeg.tar.gz --markdown results/conventions_bn.md

The test images and batches are those of the run's own epoch evaluations, so an unchanged
checkpoint scores exactly its recorded ``val-error-moving`` (and ``val-error-precise``).

Why ``--variance-ema`` converts exactly: BN's ``variance/EMA`` is the EMA of n/(n-1)·S under
conventions 2 and of S under conventions 1 (n = g·H·W values per group statistic).  Training never
reads it, so once the initial value has decayed (0.9^steps) the two differ by n/(n-1) per layer,
and the checkpoint with its moving variances rescaled scores what the run would have scored
under the other convention.
"""
import argparse
import json
import os
import sys

import kalman_norm  # noqa: F401  (sets up the TF/tensorpack stack first)
import numpy as np
import tensorflow as tf

from kalman_norm import data as datasets, probe, runtime
from kalman_norm.norms import norms_where
from kalman_norm.precise_bn import DEFAULT_BATCHES, evaluate_moving
from kalman_norm.train import cifar, evaluation, core as trainer

tf1 = tf.compat.v1
CONVENTIONS = ('unbiased', 'biased')


def build_parser():
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    p.add_argument('logdir', nargs='+', help='log directories of training runs (options.json, model-<step> checkpoints)')
    p.add_argument('--checkpoint', help='checkpoint prefix (default: the last in LOGDIR; one LOGDIR only)')
    p.add_argument('--precise', action='store_true',
                   help='also evaluate with PreciseBN: the moving statistics recomputed with the final weights')
    p.add_argument('--batches', type=int, default=None,
                   help="PreciseBN's training batches of the run's tower size (default: the run's "
                        "--precise-batches, else %d)" % DEFAULT_BATCHES)
    p.add_argument('--variance-ema', nargs='+', choices=CONVENTIONS, default=None,
                   help="BN only: evaluate under these conventions of the moving variance (the run's own "
                        "as saved, the other rescaled)")
    p.add_argument('--data', help="dataset location; default: the run's own (options.json 'data')")
    p.add_argument('--threads', type=int, default=None, help='CPU threads (default: every core)')
    p.add_argument('--markdown', help='with --variance-ema: write the Markdown table of every run given to this file')
    return p


def check_arguments(args):
    """One line per problem (ProbeError) before anything loads."""
    if args.batches is not None and args.batches < 1:
        raise probe.ProbeError('--batches must be >= 1, got %d' % args.batches)
    if args.batches is not None and not args.precise:
        raise probe.ProbeError('--batches applies to --precise only')
    if args.threads is not None and args.threads < 1:
        raise probe.ProbeError('--threads must be >= 1, got %d' % args.threads)
    if args.checkpoint and len(args.logdir) > 1:
        raise probe.ProbeError('--checkpoint names one checkpoint; give one LOGDIR with it')
    if args.markdown and not args.variance_ema:
        raise probe.ProbeError('--markdown writes the --variance-ema table; give --variance-ema')


def run_convention(options):
    """The BN variance convention a run trained under (its identity's ``conventions``)."""
    return 'unbiased' if (options.get('identity') or {}).get('conventions', 1) >= 2 else 'biased'


def run_options(args, logdir):
    """The run's options as the trainer had them, with this command's overrides."""
    o, spec = probe.load_run(logdir)
    if args.precise and o['norm'] not in norms_where('moving_averages'):
        raise probe.ProbeError('%s: norm %s keeps no moving averages; PreciseBN applies to %s'
                               % (logdir, o['norm'], ', '.join(norms_where('moving_averages'))))
    if args.variance_ema and spec.kind != 'bn':
        raise probe.ProbeError('%s: norm %s; the variance conventions convert exactly for bn only'
                               % (logdir, spec.kind))
    o = dict(o, spec=spec, threads=args.threads, num_proc=0)
    o.setdefault('worker_index', 0)
    o.setdefault('tower_batch', o['total_batch'] // (o['gpus'] * o.get('workers', 1)))
    o['precise_batches'] = args.batches or o.get('precise_batches') or DEFAULT_BATCHES
    return o


def rescaling_restore(prefix, group_size, factor_of_count):
    """restore(sess): the checkpoint, then every ``variance/EMA`` times ``factor_of_count(n)``, n the
    values behind each of its group statistics (group size × H × W of the layer's output)."""
    counts = []

    def restore(sess):
        tf1.train.Saver().restore(sess, prefix)
        for v in tf1.global_variables():
            if v.op.name.endswith('/variance/EMA'):
                shape = sess.graph.get_tensor_by_name(v.op.name[:-len('/variance/EMA')] + '/output:0').shape.as_list()
                n = float(group_size * (int(np.prod(shape[1:-1])) if len(shape) == 4 else 1))
                counts.append(n)
                v.load(sess.run(v) * factor_of_count(n), sess)
    restore.counts = counts
    return restore


def evaluate(args, logdir=None):
    logdir = logdir or args.logdir[0]
    o = run_options(args, logdir)
    prefix = args.checkpoint or (probe.list_checkpoints(logdir) or [(None, None)])[-1][1]
    if prefix is None:
        raise probe.ProbeError('%s holds no checkpoint (model-<step>.index)' % logdir)
    ds = datasets.load_dataset(o['dataset'], args.data or o.get('data'),
                               strict_counts=not o.get('partial_data', False))
    data = cifar.TASK.data_from(ds, o)
    mean, std = np.asarray(data.channel_mean, np.float32), np.asarray(data.channel_std, np.float32)

    def moving_error(restore):
        test = evaluation.test_batches(cifar.TASK, o, data)
        test.reset_state()
        return evaluate_moving(
            lambda images: cifar.TASK.build_logits(o, (tf.cast(images, tf.float32) - mean) / std, data.num_classes),
            o['spec'], restore, None, test, runtime.session_config(o['threads']))

    saved = run_convention(o)
    wrong, seen = moving_error(lambda sess: tf1.train.Saver().restore(sess, prefix))
    result = dict(logdir=logdir, checkpoint=prefix, norm=o['norm'], spec=repr(o['spec']), images=seen,
                  error_moving=wrong / float(seen), saved_convention=saved)
    if args.variance_ema:
        result['accuracy'] = {}
        for convention in args.variance_ema:
            if convention == saved:
                result['accuracy'][convention] = 100.0 * (1 - result['error_moving'])
                continue
            restore = rescaling_restore(prefix, o['spec'].group_size or o['tower_batch'],
                                        lambda n: (n - 1.0) / n if saved == 'unbiased' else n / (n - 1.0))
            wrong, _ = moving_error(restore)
            result['accuracy'][convention] = 100.0 * (1 - wrong / float(seen))
            result.update(layers=len(restore.counts), min_values_per_statistic=min(restore.counts))
    if args.precise:
        precise = evaluation.precise_result(cifar.TASK, o, data, prefix, o['precise_batches'])
        if precise['images'] != seen:
            raise probe.ProbeError('the two evaluations saw %d and %d images' % (precise['images'], seen))
        result.update(error_precise=precise['error'], precise_batches=precise['batches'],
                      batch_images=o['tower_batch'])
    return result


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
        check_arguments(args)
        results = [evaluate(args, logdir) for logdir in args.logdir]
    except (probe.ProbeError, datasets.DataError, trainer.OptionError) as e:
        print('error: %s' % e, file=sys.stderr)
        raise SystemExit(2)
    print(json.dumps(results, indent=1, sort_keys=True), flush=True)
    if args.markdown:
        with open(args.markdown, 'w') as f:
            command = 'python scripts/evaluate_checkpoint.py ' + ' '.join(argv if argv is not None else sys.argv[1:])
            f.write(markdown(results, tuple(args.variance_ema), command))
    return results


if __name__ == '__main__':
    main()
