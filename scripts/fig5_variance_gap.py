#!/usr/bin/env python
"""The paper's Fig. 5: |batch variance - moving variance| per channel and test batch, per model.

For each trained run (its last checkpoint), one normalisation layer (default: the model's last;
``--layer`` picks another, e.g. ``res2.0/bn1``) is run online on ``--batches`` test batches of the
run's group size (e.g. 50 batches of 2 images; the test set in a fixed random order), and the
heat map shows |batch variance - moving variance| with channels as rows and test batches as
columns, side by side for the runs, on one colour scale.

"Batch variance" is the variance the layer normalises with when run online on the test batch
(the paper's option B): for BN the group's own variance; for KN the *posterior* variance of
Eq. 7 (prior from the layers below, run on the same batch, updated with the group's variance).
For KN the gap of the raw group variance is printed too.  One summary number per model, in the
panel title and printed: the mean of the map, and that mean relative to the mean moving variance.

    python scripts/fig5_variance_gap.py --logdir train_log/bn-b2 --logdir train_log/bkn-b2 \\
        --data ../shared/data/cifar10-jpeg.tar.gz --out results/fig5_variance_gap.png
"""
import argparse
import os
import sys


import matplotlib  # noqa: E402

matplotlib.use('Agg')
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

import kalman_norm  # noqa: E402,F401
from kalman_norm import data as datasets, probe  # noqa: E402
from kalman_norm.norms import norms_where  # noqa: E402


def run_label(logdir, options):
    """'<norm>@<group size> (<row>/<seed>)': the run directory's last two parts."""
    name = '/'.join(os.path.normpath(logdir).split(os.sep)[-2:])
    return '%s@%s (%s)' % (options['norm'], options['batch'], name)


def summary_line(name, gap):
    line = ('%s, layer %s: mean |%s variance - moving variance| = %.4g (%.3f of the mean moving variance)'
            % (name, gap['layer'], gap['normalises_with'], gap['mean_gap'], gap['relative_gap']))
    if gap['normalises_with'] == 'posterior':
        line += ('; raw group variance: %.4g (%.3f)' % (gap['raw_mean_gap'], gap['raw_relative_gap']))
    return line


def plot_variance_gaps(gaps, out):
    """gaps: [(label, kalman_norm.probe.variance_gap(...))]; writes the figure, returns the summary lines."""
    vmax = max(float(np.percentile(g['gap'], 99)) for _, g in gaps) or 1.0
    fig, axes = plt.subplots(1, len(gaps), figsize=(5.5 * len(gaps), 5.2), squeeze=False)
    image = None
    for ax, (name, gap) in zip(axes[0], gaps):
        image = ax.imshow(gap['gap'], aspect='auto', cmap='viridis', vmin=0.0, vmax=vmax, interpolation='nearest')
        title = ('%s, %s %s\nmean |Δvar| = %.3g (%.3f × mean moving var)'
                 % (name, os.path.basename(gap.get('checkpoint') or ''), gap['layer'], gap['mean_gap'],
                    gap['relative_gap']))
        if gap['normalises_with'] == 'posterior':
            title += '\nraw group variance: %.3g (%.3f ×)' % (gap['raw_mean_gap'], gap['raw_relative_gap'])
        ax.set_title(title, fontsize=9)
        ax.set_xlabel('test batch')
        ax.set_ylabel('channel')
    fig.colorbar(image, ax=axes[0].tolist(), extend='max', label='|batch variance − moving variance|')
    fig.text(0.01, 0.01, 'Batch variance: what the layer normalises with online on the test batch (option B): '
             "BN's group variance, KN's posterior variance (Eq. 7). Colour scale shared, capped at the "
             "largest 99th percentile.", fontsize=7)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return [summary_line(name, gap) for name, gap in gaps]


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument('--logdir', action='append', required=True, help='a trained run (repeat for each model)')
    p.add_argument('--out', required=True, help='PNG to write')
    p.add_argument('--markdown', help='also write the summary numbers, the PNG link and this command here')
    p.add_argument('--layer', help='normalisation layer, e.g. res3.4/bn2 (default: the last of the model)')
    p.add_argument('--batches', type=int, default=50, help='test batches (columns), each one group of the run')
    p.add_argument('--seed', type=int, default=1234, help='order of the test set (1234: the trainer\'s)')
    p.add_argument('--data', help="dataset location; default: each run's own (options.json 'data')")
    p.add_argument('--cache-dir', help='where decoded image folders are cached')
    args = p.parse_args(argv)
    try:
        if args.batches < 1:
            raise probe.ProbeError('--batches must be >= 1, got %d' % args.batches)
        for path in filter(None, (args.out, args.markdown)):
            if not os.path.isdir(os.path.dirname(os.path.abspath(path))):
                raise probe.ProbeError('%s: its directory does not exist' % path)
        runs = []
        for logdir in args.logdir:
            options, spec = probe.load_run(logdir)
            if not probe.list_checkpoints(logdir):
                raise probe.ProbeError('%s holds no checkpoint (model-<step>.index)' % logdir)
            if not spec.norm.moving_averages:
                raise probe.ProbeError('%s: norm %s has no moving variance; Fig. 5 needs one of %s'
                                       % (logdir, spec.kind, ', '.join(norms_where('moving_averages'))))
            runs.append((logdir, options, spec))
        loaded, gaps = {}, []
        for logdir, options, spec in runs:
            key = (options['dataset'], args.data or options.get('data'))
            if key not in loaded:
                loaded[key] = datasets.load_dataset(key[0], key[1], cache_dir=args.cache_dir or options.get('cache_dir'))
            ds = loaded[key]
            count = args.batches * spec.group_size
            if count > len(ds.test_images):
                raise probe.ProbeError('%d batches of %d need %d test images; the test set holds %d'
                                       % (args.batches, spec.group_size, count, len(ds.test_images)))
            images = ds.test_images[np.random.RandomState(args.seed).permutation(len(ds.test_images))[:count]]
            _, _, rec = probe.probe_checkpoint(logdir, images, ds.num_classes, ds.channel_mean, ds.channel_std,
                                               layer=args.layer)
            gaps.append((run_label(logdir, options), probe.variance_gap(rec)))
    except (probe.ProbeError, datasets.DataError) as e:
        print('error: %s' % e, file=sys.stderr)
        raise SystemExit(2)
    lines = plot_variance_gaps(gaps, args.out)
    for line in lines:
        print(line)
    print('wrote %s' % args.out)
    if args.markdown:
        command = ' '.join(['python scripts/fig5_variance_gap.py'] + list(argv if argv is not None else sys.argv[1:]))
        with open(args.markdown, 'w') as f:
            f.write(markdown(lines, args.out, args.batches, command))
        print('wrote %s' % args.markdown)


def markdown(lines, figure, batches, command):
    return '\n'.join([
        "# The paper's Fig. 5: batch variance vs moving variance at test time", '',
        'Per channel (rows) and test batch (columns, %d batches of one group each), |the variance the '
        'layer normalises with online (option B) - its moving variance (option A)|: the gap between '
        'what the network sees in training and at inference with moving statistics. For KN the online '
        'variance is the posterior of Eq. 7; the raw group variance is given too.' % batches, '',
        '![Fig. 5](%s)' % os.path.basename(figure), ''] + ['* ' + line for line in lines] + [
        '', 'Written by:', '', '```', command, '```', ''])


if __name__ == '__main__':
    main()
