#!/usr/bin/env python
"""Re-evaluate a finished CIFAR run's checkpoint with PreciseBN (Wu & Johnson 2021): the moving
statistics recomputed with the final weights over training batches (kalman_norm.precise_bn says
what each norm recomputes), next to the statistics as saved, on the same test images.

Reads the run's log directory and prints one JSON object; it writes nothing (run records under
results/runs stay as they are).  The recomputation is the trainer's ``--eval-stats precise``, so
both give the same number for the same checkpoint and batch count.

    python scripts/evaluate_precise.py results/runs/cpu/bn_b2/seed1 --batches 200 \\
        --data ../shared/data/cifar10-jpeg.tar.gz
"""
import argparse
import json
import sys

import kalman_norm  # noqa: F401  (sets up the TF/tensorpack stack first)
import numpy as np
import tensorflow as tf

from kalman_norm import data as datasets, probe, runtime
from kalman_norm.train import cifar, core as trainer
from kalman_norm.norms import norms_where
from kalman_norm.precise_bn import DEFAULT_BATCHES, evaluate_moving


def build_parser():
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    p.add_argument('logdir', help='log directory of a training run (options.json, model-<step> checkpoints)')
    p.add_argument('--checkpoint', help='checkpoint prefix (default: the last in LOGDIR)')
    p.add_argument('--batches', type=int, default=None,
                   help="training batches of the run's tower size to average (default: the run's "
                        "--precise-batches, else %d)" % DEFAULT_BATCHES)
    p.add_argument('--data', help="dataset location; default: the run's own (options.json 'data')")
    p.add_argument('--threads', type=int, default=None, help='CPU threads (default: every core)')
    return p


def run_options(args):
    """The run's options as the trainer had them, with this command's overrides; one line per
    problem (ProbeError) before anything is built."""
    if args.batches is not None and args.batches < 1:
        raise probe.ProbeError('--batches must be >= 1, got %d' % args.batches)
    if args.threads is not None and args.threads < 1:
        raise probe.ProbeError('--threads must be >= 1, got %d' % args.threads)
    o, spec = probe.load_run(args.logdir)
    if o['norm'] not in norms_where('moving_averages'):
        raise probe.ProbeError('%s: norm %s keeps no moving averages; PreciseBN applies to %s'
                               % (args.logdir, o['norm'], ', '.join(norms_where('moving_averages'))))
    o = dict(o, spec=spec, threads=args.threads, num_proc=0)
    o.setdefault('worker_index', 0)
    o.setdefault('tower_batch', o['total_batch'] // (o['gpus'] * o.get('workers', 1)))
    o['precise_batches'] = args.batches or o.get('precise_batches') or DEFAULT_BATCHES
    return o


def evaluate(args):
    o = run_options(args)
    prefix = args.checkpoint or (probe.list_checkpoints(args.logdir) or [(None, None)])[-1][1]
    if prefix is None:
        raise probe.ProbeError('%s holds no checkpoint (model-<step>.index)' % args.logdir)
    ds = datasets.load_dataset(o['dataset'], args.data or o.get('data'),
                               strict_counts=not o.get('partial_data', False))
    data = cifar.TASK.data_from(ds, o)
    precise = trainer.precise_result(cifar.TASK, o, data, prefix, o['precise_batches'])

    # the statistics as saved, on the same test flow
    mean, std = np.asarray(data.channel_mean, np.float32), np.asarray(data.channel_std, np.float32)
    whole_groups_of = o['batch'] if any(tag.endswith('batch') for _, tag in trainer.eval_tags(o)) else 1
    test = data.test(cifar.TASK.eval_batch_size(o), whole_groups_of)
    test.reset_state()
    wrong, seen = evaluate_moving(
        lambda images: cifar.TASK.build_logits(o, (tf.cast(images, tf.float32) - mean) / std, data.num_classes),
        o['spec'], lambda sess: tf.compat.v1.train.Saver().restore(sess, prefix), None, test,
        runtime.session_config(o['threads']))
    result = dict(logdir=args.logdir, checkpoint=prefix, norm=o['norm'], spec=repr(o['spec']),
                  precise_batches=precise['batches'], batch_images=o['tower_batch'],
                  images=seen, error_moving=wrong / float(seen), error_precise=precise['error'])
    if precise['images'] != seen:
        raise probe.ProbeError('the two evaluations saw %d and %d images' % (precise['images'], seen))
    return result


def main(argv=None):
    args = build_parser().parse_args(argv)
    try:
        result = evaluate(args)
    except (probe.ProbeError, datasets.DataError, trainer.OptionError) as e:
        print('error: %s' % e, file=sys.stderr)
        raise SystemExit(2)
    print(json.dumps(result, indent=1, sort_keys=True), flush=True)
    return result


if __name__ == '__main__':
    main()
