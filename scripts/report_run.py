#!/usr/bin/env python
"""Turn a training log directory into a results entry: a Markdown summary and a curve.

    python scripts/report_run.py --logdir train_log/real-cifar10-resnet20-bn128-short \
        --config configs/cifar10_resnet20_bn128_short.toml --out results/cifar10_resnet20_bn128_short

writes ``<out>.md`` (budget, per-epoch table, best/last error, time to reach a target accuracy,
the paper's number for comparison) and ``<out>.png`` (test error and training error per epoch).
"""
import argparse
import json
import os
import platform


def load(logdir):
    with open(os.path.join(logdir, 'stats.json')) as f:
        stats = json.load(f)
    with open(os.path.join(logdir, 'options.json')) as f:
        options = json.load(f)
    return stats, options


def error_keys(stats):
    keys = sorted({k for s in stats for k in s if k.startswith('val-error')})
    if not keys:
        raise SystemExit('no validation error in stats.json yet')
    return keys


def plot(stats, keys, path, title):
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(6, 4))
    epochs = [s['epoch_num'] for s in stats]
    for k in keys:
        ax.plot([s['epoch_num'] for s in stats if k in s], [100 * s[k] for s in stats if k in s], label='test ' + k)
    if all('train_error' in s for s in stats):
        ax.plot(epochs, [100 * s['train_error'] for s in stats], '--', label='train error (moving avg)')
    ax.set_xlabel('epoch')
    ax.set_ylabel('error (%)')
    ax.set_ylim(0, min(100, max(40, 100 * min(s[keys[0]] for s in stats if keys[0] in s) * 3)))
    ax.grid(alpha=0.3)
    ax.legend()
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main():
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    p.add_argument('--logdir', required=True)
    p.add_argument('--out', required=True, help='path prefix for .md and .png')
    p.add_argument('--config', help='the committed config the run used')
    p.add_argument('--command', help='the command line the run used')
    p.add_argument('--target', type=float, default=0.85, help='accuracy whose first arrival is reported')
    p.add_argument('--paper', default='', help="the paper's comparable number, as text")
    p.add_argument('--note', default='', help='budget/label note, e.g. "short CPU schedule"')
    args = p.parse_args()
    stats, o = load(args.logdir)
    keys = error_keys(stats)
    title = '%s %s, %s, batch %s per norm., %s epochs (%s schedule)' % (
        o['dataset'], 'ResNet-%d' % (6 * o['depth'] + 2) if o['model'] == 'resnet' else o['model'],
        o['norm'].upper(), o['batch'], stats[-1]['epoch_num'], o['schedule'])
    plot(stats, keys, args.out + '.png', title)
    lines = ['# ' + title, '']
    if args.note:
        lines += ['**%s**' % args.note, '']
    lines += ['- Command: `%s`' % (args.command or 'python scripts/cifar_resnet.py --config %s' % args.config),
              '- Config: `%s`' % args.config if args.config else '- Options: see options.json',
              '- Budget: %d epochs of %s steps (%d samples per step, %d per normalization, %s tower(s)), '
              'lr %s, weight decay %s; data: %s' % (stats[-1]['epoch_num'], o.get('steps_per_epoch') or 'all',
                                                    o['total_batch'], o['batch'], o['gpus'], o['lr'],
                                                    o['weight_decay'], o['data']),
              '- Machine: %s, %d CPU cores, no GPU; wall time %.1f min (training + evaluation)'
              % (platform.machine(), os.cpu_count(), stats[-1].get('wall_minutes', float('nan'))),
              '']
    for k in keys:
        series = [(s['epoch_num'], s[k], s.get('wall_minutes')) for s in stats if k in s]
        best = min(series, key=lambda t: t[1])
        reached = [t for t in series if 1 - t[1] >= args.target]
        lines.append('- **%s**: best %.2f%% (accuracy %.2f%%, epoch %d), last %.2f%% (accuracy %.2f%%)'
                     % (k, 100 * best[1], 100 - 100 * best[1], best[0], 100 * series[-1][1], 100 - 100 * series[-1][1]))
        if reached:
            lines.append('  - first reached %.0f%% accuracy at epoch %d, after %.1f minutes'
                         % (100 * args.target, reached[0][0], reached[0][2] or float('nan')))
        else:
            lines.append('  - did not reach %.0f%% accuracy' % (100 * args.target))
    if args.paper:
        lines += ['', "- Paper's number for comparison: %s" % args.paper]
    lines += ['', '![curve](%s)' % os.path.basename(args.out + '.png'), '', '| epoch | wall min | train error (%) | '
              + ' | '.join('test %s (%%)' % k for k in keys) + ' |', '|---' * (3 + len(keys)) + '|']
    for s in stats:
        lines.append('| %d | %.1f | %.2f | ' % (s['epoch_num'], s.get('wall_minutes', float('nan')),
                                              100 * s.get('train_error', float('nan')))
                     + ' | '.join('%.2f' % (100 * s[k]) if k in s else '' for k in keys) + ' |')
    with open(args.out + '.md', 'w') as f:
        f.write('\n'.join(lines) + '\n')
    print('\n'.join(lines[:12]))


if __name__ == '__main__':
    main()
