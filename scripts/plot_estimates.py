#!/usr/bin/env python
"""Plot estimate quality over training, from the estimate_quality.json of one or more runs.

One figure, six panels; several runs overlay (one colour per run, one line style per estimate):
  * mean error and variance error |log(v / v_ref)|, averaged over layers, of (a) the micro-batch
    group statistics, (b) KN's prior, (c) KN's posterior, (d) the moving averages, over epochs;
  * KN's guard trip rate (fraction of groups whose prior was rejected), averaged over layers;
  * the gain q and the process noise (R, or r for a relative R; see kalman_norm.probe.noise_param),
    averaged over layers; a learned q also per layer (thin lines);
  * per layer, at each run's last measured checkpoint, the variance error of each estimate.
Run ``scripts/estimate_quality.py RUN_DIR`` first.  ``--markdown`` also writes the numbers behind
the figure (per run: per checkpoint the layer averages, and per layer the last checkpoint; the
tables of :func:`kalman_norm.probe.format_summary`) with a link to the PNG and this command.

    python scripts/plot_estimates.py train_log/bn-b2 train_log/bkn-b2 --out results/estimates.png
    python scripts/plot_estimates.py results/runs/cpu/bn_b2/seed2 results/runs/cpu/bkn_output/seed2 \
        --out results/kn_study_estimates.png --markdown results/kn_study_estimates.md
"""
import argparse
import json
import os
import sys

import matplotlib

matplotlib.use('Agg')
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402

ESTIMATES = ('group', 'prior', 'posterior', 'moving')          # as kalman_norm.probe.ESTIMATES
LABELS = {'group': '(a) group', 'prior': '(b) prior', 'posterior': '(c) posterior', 'moving': '(d) moving avg'}
STYLES = {'group': '-', 'prior': ':', 'posterior': '--', 'moving': '-.'}


def load(run):
    """The estimate_quality.json of a run directory (or the file itself)."""
    path = run if run.endswith('.json') else os.path.join(run, 'estimate_quality.json')
    if not os.path.isfile(path):
        raise ValueError('%s not found: run scripts/estimate_quality.py %s first' % (path, run))
    try:
        with open(path) as f:
            result = json.load(f)
    except ValueError as e:
        raise ValueError('%s is not valid JSON: %s' % (path, e))
    if not isinstance(result, dict) or not result.get('checkpoints'):
        raise ValueError('%s holds no measured checkpoint' % path)
    result['source_dir'] = os.path.dirname(os.path.abspath(path))
    return result


def budget(result, study):
    """The run's budget and machine, from its record (results/runs/...: config.toml, run.json)."""
    d = result.get('source_dir', '')
    rec = study.load_record(d)
    if not rec or not os.path.isfile(os.path.join(d, 'config.toml')):
        return 'Budget: not recorded here (a log dir, not a run record: see its options.json).'
    config = study.load_config(os.path.join(d, 'config.toml'), study.record_trainer(rec))
    return 'Budget: %s; machine: %s (a CPU schedule, not the paper\'s).' % (
        study.budget_line(config), study.describe_machine((rec.get('run') or {}).get('machine')))


def run_name(result):
    """The run directory's last two parts: '<row>/seed<S>' for the study's runs."""
    parts = os.path.normpath(result.get('logdir', '')).split(os.sep)
    return '/'.join(parts[-2:])


def label(result):
    """'<norm>@<group size> <row>/<seed> (<N> img)'."""
    run = result.get('run', {})
    name = run_name(result)
    return '%s@%s %s (%s img)' % (run.get('norm', '?'), run.get('batch', '?'), name,
                                  result.get('settings', {}).get('images', '?'))


def x_values(result):
    cps = result['checkpoints']
    if all(c.get('epoch') is not None for c in cps):
        return [c['epoch'] for c in cps], 'epoch'
    return [c['step'] for c in cps], 'step'


def learned_gains(checkpoints):
    """Per KN layer, its q at every checkpoint, if q differs between layers (a learned gain); else []."""
    per_layer = {}
    for c in checkpoints:
        for layer in c['layers']:
            if layer.get('gain') is not None:
                per_layer.setdefault(layer['layer'], []).append(layer['gain'])
    trajectories = [t for t in per_layer.values() if len(t) == len(checkpoints)]
    if len({round(t[-1], 6) for t in trajectories}) <= 1:
        return []
    return trajectories


def plot(results, out, stat='mean'):
    fig, axes = plt.subplots(2, 3, figsize=(17, 9))
    ax_mean, ax_var, ax_trip, ax_gain, ax_noise, ax_layers = axes.ravel()
    xlabel = 'epoch'
    runs, used = [], set()                  # (name, colour) per run; the estimates drawn
    for i, result in enumerate(results):
        colour = 'C%d' % (i % 10)
        name = label(result)
        runs.append((name, colour))
        xs, xlabel_i = x_values(result)
        xlabel = xlabel if xlabel_i == 'epoch' and xlabel == 'epoch' else xlabel_i
        cps = result['checkpoints']
        for est in ESTIMATES:
            if any(c['average'].get(est) is None for c in cps):
                continue
            used.add(est)
            for ax, key in ((ax_mean, 'mean_err_' + stat), (ax_var, 'var_err_' + stat)):
                ax.plot(xs, [c['average'][est][key] for c in cps], STYLES[est], color=colour, marker='.',
                        label='%s %s' % (name, LABELS[est]))
        for ax, key in ((ax_trip, 'guard_trip_rate'), (ax_gain, 'gain'), (ax_noise, 'process_noise')):
            if all(c['average'].get(key) is not None for c in cps):
                noise = result.get('noise_param')
                suffix = '' if key != 'process_noise' or not noise else (' (r)' if noise == 'relative' else ' (R)')
                ax.plot(xs, [c['average'][key] for c in cps], '-', color=colour, marker='.', label=name + suffix)
        for trajectory in learned_gains(cps):     # a learned q differs between layers: each one, thin
            ax_gain.plot(xs, trajectory, '-', color=colour, linewidth=0.7, alpha=0.45)
        last = cps[-1]
        for est in ESTIMATES:
            values = [l[est]['var_err_' + stat] if l.get(est) else float('nan') for l in last['layers']]
            if all(v != v for v in values):
                continue
            used.add(est)
            ax_layers.plot(range(len(values)), values, STYLES[est], color=colour, marker='.',
                           label='%s %s' % (name, LABELS[est]))
    titles = [(ax_mean, '|m - m_ref| / sd_ref (%s over groups, channels; mean over layers)' % stat),
              (ax_var, '|log(v / v_ref)| (%s over groups, channels; mean over layers)' % stat),
              (ax_trip, 'guard trip rate (fraction of groups, mean over KN layers)'),
              (ax_gain, 'gain q (mean over KN layers; thin lines: each layer, where q is learned)'),
              (ax_noise, 'process noise R, or r of R = r·AΣAᵀ (mean over channels, layers)'),
              (ax_layers, '|log(v / v_ref)| per layer, last checkpoint')]
    for ax, title in titles:
        ax.set_title(title, fontsize=9)
        ax.set_xlabel('layer (input to output)' if ax is ax_layers else xlabel)
        ax.grid(alpha=0.3)
        if not ax.lines:
            ax.text(0.5, 0.5, 'no run has this measure', ha='center', va='center', transform=ax.transAxes)
    if ax_noise.lines:
        ax_noise.set_yscale('log')
        ax_noise.legend(fontsize=7)         # says which runs learn R and which r
    # Two legends for the whole figure, below the panels: the colour is the run, the line style
    # the estimate (one legend per panel repeated runs x estimates entries over the curves).
    bottom = 0.025 * max(len(runs), len(used)) + 0.05
    fig.legend(handles=[Line2D([], [], color=c, marker='.', label=n) for n, c in runs], title='run (colour)',
               loc='lower left', bbox_to_anchor=(0.05, 0.0), fontsize=8, title_fontsize=8, frameon=False)
    fig.legend(handles=[Line2D([], [], color='0.25', ls=STYLES[e], label=LABELS[e]) for e in ESTIMATES if e in used],
               title='estimate (line style)', loc='lower left', bbox_to_anchor=(0.55, 0.0), fontsize=8,
               title_fontsize=8, frameon=False)
    counts = sorted({str(r.get('settings', {}).get('images', '?')) for r in results})
    fig.suptitle('Estimates of each layer\'s statistics vs the statistics of all %s training images of the '
                 'same run (same weights)' % ' / '.join(counts), fontsize=11)
    fig.tight_layout(rect=(0, bottom, 1, 0.96))
    fig.savefig(out, dpi=110)
    plt.close(fig)


#: what the summary's Batch Renorm column means (said only where a run has it)
RENORM_NOTE = (' r/d clipped (Batch Renorm): the fraction of groups and channels whose correction r = σ_B/σ '
               'or d = (µ_B - µ)/σ falls outside the clip at the checkpoint\'s step; where neither is '
               'clipped the layer trains with exactly its moving statistics.')


def markdown(results, figure, command):
    """The numbers behind the figure, one section per run, with the command that wrote them."""
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))     # scripts/study/
    import study                                       # TensorFlow: only when the Markdown is asked for
    from kalman_norm.probe import format_summary, has_renorm_clipping
    counts = sorted({str(r.get('settings', {}).get('images', '?')) for r in results})
    lines = ['# How well each layer estimates its statistics over training', '',
             'Per normalisation layer, the error of each estimate against the statistics of the same layer '
             'over all %s training images (same weights, no augmentation): (a) `group`: the statistics of '
             'the micro-batch group the layer normalises with; (b) `prior`: KN\'s prediction from the '
             'layers below; (c) `posterior`: KN\'s Eq. 7 mix of both; (d) `moving`: the moving averages '
             'used at inference. Mean error in reference standard deviations and |log(v / v_ref)|, '
             'means over groups and channels, then over layers; guard trips: the fraction of groups '
             'whose prior the guard rejected.%s Measured by `scripts/estimate_quality.py` on every kept '
             'checkpoint of each run.' % (' / '.join(counts),
                                          RENORM_NOTE if any(map(has_renorm_clipping, results)) else ''),
             '',
             '![estimates](%s)' % os.path.basename(figure), '']
    for r in results:
        lines += ['## %s' % label(r), '', budget(r, study), '', format_summary(r), '']
    lines += ['Written by:', '', '```', command, '```', '']
    return '\n'.join(lines)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    p.add_argument('runs', nargs='+', metavar='RUN_DIR', help='run directories (or estimate_quality.json files)')
    p.add_argument('--out', required=True, help='PNG to write')
    p.add_argument('--markdown', help='also write the numbers behind the figure to this Markdown file')
    p.add_argument('--stat', choices=['mean', 'median'], default='mean',
                   help='summary of the errors over groups and channels')
    args = p.parse_args(argv)
    try:
        results = [load(run) for run in args.runs]
        for path in filter(None, (args.out, args.markdown)):
            if not os.path.isdir(os.path.dirname(os.path.abspath(path))):
                raise ValueError('%s: its directory does not exist' % path)
    except ValueError as e:
        print('error: %s' % e, file=sys.stderr)
        raise SystemExit(2)
    plot(results, args.out, args.stat)
    print('wrote %s' % args.out)
    if args.markdown:
        command = ' '.join(['python scripts/plot_estimates.py'] + list(argv if argv is not None else sys.argv[1:]))
        with open(args.markdown, 'w') as f:
            f.write(markdown(results, args.out, command))
        print('wrote %s' % args.markdown)


if __name__ == '__main__':
    main()
