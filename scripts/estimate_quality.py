#!/usr/bin/env python
"""How well does each norm layer of a trained run estimate its population statistics?

For every checkpoint of a run's log directory (``model-<step>.index``; ``--last``: the last one),
rebuild the run's model from ``LOGDIR/options.json``, restore the weights, feed N training images
(default 1024, fixed seed, no augmentation, normalised as the trainer does) in micro-batch groups
of the run's group size, with training-mode statistics and nothing updated, and measure per
layer, against the statistics of that layer's input over all N images (the reference):
(a) the group statistics, (b) KN's prior, (c) KN's posterior, (d) the moving averages — mean
error in reference stds and variance error |log(v / v_ref)|, mean and median over channels and
groups — plus KN's guard trip rate and its gain q and process noise R.  BN runs have (a), (d).

Writes LOGDIR/estimate_quality.json (checkpoints already measured with the same settings are
kept and skipped) and prints a summary.  Details: kalman_norm/probe.py.

    python scripts/estimate_quality.py train_log/cifar10-resnet20-bkn-b2-g1 --data ../shared/data/cifar10-jpeg.tar.gz
"""
import argparse
import os
import sys


import kalman_norm  # noqa: E402,F401
from kalman_norm import data as datasets, probe  # noqa: E402


def build_parser():
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument('logdir', help='log directory of a training run (options.json, model-<step> checkpoints)')
    p.add_argument('--images', type=int, default=1024,
                   help='training images fed (a multiple of the run\'s group size); the reference '
                        'statistics are over all of them')
    p.add_argument('--seed', type=int, default=0, help='which images (and their grouping)')
    p.add_argument('--last', action='store_true', help='only the last checkpoint')
    p.add_argument('--data', help="dataset location; default: the run's own (options.json 'data')")
    p.add_argument('--cache-dir', help='where decoded image folders are cached')
    p.add_argument('--chunk', type=int, default=256, help='images per forward pass (memory)')
    p.add_argument('--out', help='JSON file to write (default LOGDIR/estimate_quality.json)')
    p.add_argument('--redo', action='store_true',
                   help='measure every checkpoint again and replace the JSON, even if it holds '
                        'results for other settings')
    return p


def main(argv=None):
    args = build_parser().parse_args(argv)
    try:
        if args.images < 1 or args.chunk < 1:
            raise probe.ProbeError('--images and --chunk must be positive, got %d and %d' % (args.images, args.chunk))
        options, spec = probe.load_run(args.logdir)
        checkpoints = probe.list_checkpoints(args.logdir)
        if not checkpoints:
            raise probe.ProbeError('%s holds no checkpoint (model-<step>.index)' % args.logdir)
        if args.images % spec.group_size:
            raise probe.ProbeError('--images (%d) must be a multiple of the run\'s group size %d'
                                   % (args.images, spec.group_size))
        ds = datasets.load_dataset(options['dataset'], args.data or options.get('data'),
                                   cache_dir=args.cache_dir or options.get('cache_dir'))
        images = probe.pick_images(ds.train_images, args.images, args.seed)
        result = probe.measure_run(args.logdir, images, ds.num_classes, ds.channel_mean, ds.channel_std,
                                   checkpoints=checkpoints[-1:] if args.last else checkpoints,
                                   seed=args.seed, chunk_images=args.chunk, out_path=args.out, redo=args.redo)
    except (probe.ProbeError, datasets.DataError) as e:
        print('error: %s' % e, file=sys.stderr)
        raise SystemExit(2)
    print(probe.format_summary(result), flush=True)
    return result


if __name__ == '__main__':
    main()
