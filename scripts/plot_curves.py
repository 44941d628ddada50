#!/usr/bin/env python
"""Validation-error curves from run records: mean over seeds with a min-max band, per epoch.

    python scripts/plot_curves.py --table fig4 --out results/fig4.png
    python scripts/plot_curves.py --rows bn_b2,gn16_b2,bkn_output \\
        --labels "BN,GN,BKN" --title "CIFAR-10, ResNet-32, batch 2" --out results/fig4_bn_gn_bkn.png

Reads results/runs/<profile>/<row>/seed<S>/stats.json (never a log dir): the curves show recorded
runs only.  The error is option A (moving statistics; a norm's one evaluation when it has no moving
averages), in %, per epoch; diverged runs are left out.  ``scripts/reproduce.py`` draws one figure
per table with this module's :func:`plot_rows`.
"""
import argparse
import os
import sys
import textwrap

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# the study package (scripts/study/) sits next to this script
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))


#: more curves than this put the legend below the axes
LEGEND_INSIDE = 6
LINE_STYLES = ('-', '--', ':')


def curves(root, profile, row, seeds=None, which='moving'):
    """{seed: (epochs, error %)} of a row's records, diverged runs left out.  ``which``: moving
    (option A, or a norm's one evaluation) or batch (option B)."""
    import study
    base = os.path.join(root, 'results', 'runs', profile, row)
    out = {}
    if not os.path.isdir(base):
        return out
    for name in sorted(os.listdir(base)):
        if not name.startswith('seed') or not name[4:].isdigit():
            continue
        seed = int(name[4:])
        if seeds is not None and seed not in seeds:
            continue
        rec = study.load_record(os.path.join(base, name))
        if not rec or study.is_diverged(rec):
            continue
        points = [(s['epoch_num'], 100.0 * s[study.error_key(s, which)]) for s in rec['stats']
                  if study.error_key(s, which)]
        if points:
            out[seed] = ([p[0] for p in points], [p[1] for p in points])
    return out


def data_digest(data, title, which):
    """sha256 of what a figure draws: labels, each seed's epochs and errors, title, evaluation."""
    import hashlib
    import json
    blob = json.dumps([title, which, [[label, sorted((int(s), list(e), [round(v, 10) for v in err])
                                                     for s, (e, err) in by_seed.items())]
                                      for label, by_seed in data]])
    return hashlib.sha256(blob.encode()).hexdigest()


def final_accuracies(root, profile, row, seeds=None, which='moving'):
    """(epochs, [final accuracy of each seed]) of a row's finished records (diverged runs left out)."""
    import study
    base = os.path.join(root, 'results', 'runs', profile, row)
    epochs, values = None, []
    for name in sorted(os.listdir(base)) if os.path.isdir(base) else []:
        if not name.startswith('seed') or not name[4:].isdigit() or (seeds is not None and int(name[4:]) not in seeds):
            continue
        rec = study.load_record(os.path.join(base, name))
        if rec and not study.is_diverged(rec) and study.final_accuracy(rec, which) is not None:
            epochs = rec['stats'][-1]['epoch_num']
            values.append(study.final_accuracy(rec, which))
    return epochs, values


def plot_budget(root, profile, series, out, title='', seeds=None, which='moving'):
    """One PNG: final accuracy against the training budget (epochs), a line per series of rows,
    the mean over seeds with its 95% t confidence interval (rows with one seed: the point alone).
    Returns ``out``, or None if no row has a record."""
    import scipy.stats
    data = []
    for label, rows in series.items():
        points = [final_accuracies(root, profile, row, (seeds or {}).get(row), which) for row in rows]
        points = sorted((e, v) for e, v in points if v)
        if points:
            data.append((label, {int(e): (e, v) for e, v in points}))
    if not data:
        return None
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    import numpy as np
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for k, (label, by_epochs) in enumerate(data):
        epochs = sorted(by_epochs)
        # series side by side at each budget (a few per cent apart on the log axis), not on top
        shift = 1.0 + 0.03 * (k - (len(data) - 1) / 2.0)
        means = [float(np.mean(by_epochs[e][1])) for e in epochs]
        half = [float(scipy.stats.t.ppf(0.975, len(by_epochs[e][1]) - 1) * np.std(by_epochs[e][1], ddof=1)
                      / np.sqrt(len(by_epochs[e][1]))) if len(by_epochs[e][1]) > 1 else 0.0 for e in epochs]
        counts = '/'.join(str(len(by_epochs[e][1])) for e in epochs)
        ax.errorbar([e * shift for e in epochs], means, yerr=half, marker='o', capsize=3,
                    label='%s (seeds %s)' % (label, counts))
    ax.set_xscale('log')
    ax.set_xticks(sorted({e for _, b in data for e in b}))
    ax.get_xaxis().set_major_formatter(matplotlib.ticker.ScalarFormatter())
    ax.set_xlabel('training budget (epochs)')
    ax.set_ylabel('final test accuracy (%%), %s' % ('online batch statistics (B)' if which == 'batch'
                                                     else 'moving statistics (A)'))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title(textwrap.fill(title, 80) + '\nmean over seeds, bars: 95% t confidence interval', fontsize=9)
    digest = data_digest([(label, {e: ([e], v) for e, (_, v) in b.items()}) for label, b in data], title, which)
    fig.savefig(out, dpi=100, bbox_inches='tight', metadata={'Description': 'data sha256 ' + digest})
    plt.close(fig)
    return out


def plot_rows(root, profile, rows, out, title='', seeds=None, which='moving'):
    """One PNG with a curve per (row, label) that has records; returns ``out``, or None if no row has any.

    Mean over seeds at each epoch every seed reached; the band spans min to max over seeds."""
    data = [(label, curves(root, profile, row, (seeds or {}).get(row), which)) for row, label in rows]
    data = [(label, c) for label, c in data if c]
    if not data:
        return None
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    import numpy as np
    # Up to LEGEND_INSIDE curves: the legend sits in the axes.  More (the KN study has ~20 rows):
    # the legend goes below the axes (the saved image grows to hold it), and colours repeat with
    # another line style, so that no curve is hidden under the legend and no two look alike.
    many = len(data) > LEGEND_INSIDE
    fig, ax = plt.subplots(figsize=(8, 4.5) if many else (7, 4.5))
    colours = plt.rcParams['axes.prop_cycle'].by_key()['color']
    top = 0.0
    for k, (label, by_seed) in enumerate(data):
        n = min(len(e) for e, _ in by_seed.values())
        epochs = np.asarray(next(iter(by_seed.values()))[0][:n])
        errors = np.asarray([err[:n] for _, err in by_seed.values()])
        n = len(by_seed)
        colour, style = colours[k % len(colours)], LINE_STYLES[(k // len(colours)) % len(LINE_STYLES)]
        ax.plot(epochs, errors.mean(0), color=colour, ls=style,
                label='%s (%d seed%s)' % (label, n, 's' * (n > 1)))
        if len(by_seed) > 1:
            ax.fill_between(epochs, errors.min(0), errors.max(0), color=colour, alpha=0.08 if many else 0.2, lw=0)
        top = max(top, float(np.median(errors.mean(0))))
    ax.set_xlabel('epoch')
    ax.set_ylabel('test error (%%), %s' % ('online batch statistics (B)' if which == 'batch'
                                            else 'moving statistics (A)'))
    ax.set_ylim(0, min(100.0, max(10.0, 2.0 * top)))
    ax.grid(alpha=0.3)
    if many:
        ax.legend(fontsize=7, loc='upper left', bbox_to_anchor=(0.0, -0.13), frameon=False)
    else:
        ax.legend(fontsize=8)
    # long table titles wrap instead of running off the figure
    ax.set_title(textwrap.fill(title, 80) + '\nmean over seeds, band: min-max', fontsize=9)
    # the PNG names the numbers it draws (a hash): a figure redrawn by another matplotlib version
    # may differ in pixels, never in this (tests/test_results_regenerate.py)
    fig.savefig(out, dpi=100, bbox_inches='tight',     # 'tight': the outside legend is kept
                metadata={'Description': 'data sha256 ' + data_digest(data, title, which)})
    plt.close(fig)
    return out


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    p.add_argument('--table', help='plot every row of configs/tables/<TABLE>.toml')
    p.add_argument('--rows', help='comma-separated rows instead (their records, any table)')
    p.add_argument('--labels', help='comma-separated legend labels for --rows (default: the row names)')
    p.add_argument('--profile', default='cpu', help='cpu or paper')
    p.add_argument('--title', default='')
    p.add_argument('--eval', default='moving', help='moving (option A) or batch (option B)')
    p.add_argument('--out', required=True, help='PNG path')
    p.add_argument('--root', default=REPO, help='directory holding configs/ and results/')
    args = p.parse_args(argv)
    import kalman_norm  # noqa: F401
    import study

    def fail(msg):
        print('error: %s' % msg, file=sys.stderr)
        raise SystemExit(2)

    if args.profile not in study.PROFILES:
        fail('--profile must be one of %s' % ', '.join(study.PROFILES))
    if args.eval not in study.EVALS:
        fail('--eval must be moving or batch, got %r' % args.eval)
    if bool(args.table) == bool(args.rows):
        fail('give --table or --rows (one of them)')
    if not args.out.endswith('.png'):
        fail('--out must be a .png path, got %s' % args.out)
    seeds = None
    if args.table:
        try:
            t = study.load_table(study.table_path(args.root, args.table))
        except study.StudyError as e:
            fail(str(e))
        rows = [(r['row'], r['label']) for r in t['rows'] if study.row_available(r, args.profile)]
        seeds = {r['row']: study.planned_seeds(t, r, args.profile)
                 for r in t['rows'] if study.row_available(r, args.profile)}
        title = args.title or t['title']
    else:
        names = [r.strip() for r in args.rows.split(',') if r.strip()]
        labels = [x.strip() for x in args.labels.split(',')] if args.labels else names
        if len(labels) != len(names):
            fail('--labels has %d entries for %d rows' % (len(labels), len(names)))
        rows, title = list(zip(names, labels)), args.title
    out = plot_rows(args.root, args.profile, rows, args.out, title, seeds, args.eval)
    if out is None:
        fail('no records in results/runs/%s/ for %s' % (args.profile, ', '.join(r for r, _ in rows)))
    print('wrote %s' % out)


if __name__ == '__main__':
    main()
