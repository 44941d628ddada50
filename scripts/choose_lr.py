#!/usr/bin/env python
"""Set each micro-batch leaderboard row's learning rate from the lr table's records.

configs/tables/microbatch_lr.toml runs every training row of the leaderboard at several learning
rates on a validation split (rows ``<row>_lr<code>``, configs/cpu/microbatch_lr/).  For each
leaderboard row this script takes the lr whose runs reached the highest mean last-epoch accuracy
(moving statistics, or the norm's one evaluation; a diverged run makes its lr ineligible; ties go to
the lr nearer 0.1) and writes it into configs/cpu/microbatch/<row>.toml, with a comment naming the
accuracies it chose from.  A leaderboard row with no lr rows of its own (the PreciseBN rows) takes
the lr of the row whose training settings are the same as its own.  A row whose lr runs are not all
recorded is left as it is, and named.

    python scripts/choose_lr.py --dry-run     # print the choices
    python scripts/choose_lr.py               # write them
"""
import argparse
import os
import re
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from study.records import load_record, record_dir, summarize_row  # noqa: E402
from study.schema import (StudyError, find_config, load_config, load_table, planned_seeds,  # noqa: E402
                          read_row_config, table_path)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
#: settings that change the evaluation, not the training: rows differing only in them share an lr
EVALUATION_ONLY = ('eval_stats', 'precise_batches', 'lr')
LR_ROW = re.compile(r'^(?P<row>.+)_lr(?P<code>\d+)$')
LR_LINE = re.compile(r'^lr\s*=.*$', re.M)


def lr_candidates(root, lr_table, profile):
    """{leaderboard row: [(lr, mean accuracy or None, note)]} from the lr table's records."""
    out = {}
    for r in lr_table['rows']:
        m = LR_ROW.match(r['row'])
        if not m:
            raise StudyError('%s: row %s is not named <row>_lr<code>' % (lr_table['path'], r['row']))
        config = find_config(root, profile, r['row'])
        if config is None:
            raise StudyError('row %s has no config in profile %s' % (r['row'], profile))
        lr = load_config(config)['lr']
        seeds = planned_seeds(lr_table, r, profile)
        recs = [load_record(record_dir(root, profile, r['row'], s)) for s in seeds]
        s = summarize_row([x for x in recs if x])
        if s['n_diverged']:
            entry = (lr, None, 'diverged')
        elif s['n_done'] < len(seeds) or len(s['moving']) < len(seeds):
            entry = (lr, None, 'not run yet (%d / %d seeds)' % (s['n_done'], len(seeds)))
        else:
            entry = (lr, sum(s['moving']) / len(s['moving']), None)
        out.setdefault(m.group('row'), []).append(entry)
    return out


def choose(candidates):
    """(lr, why) or (None, why): the best lr if every candidate is recorded."""
    waiting = [note for _, acc, note in candidates if note and note != 'diverged']
    if waiting:
        return None, 'waiting: ' + '; '.join(waiting)
    scored = [(lr, acc) for lr, acc, _ in candidates if acc is not None]
    if not scored:
        return None, 'every lr diverged'
    best = max(scored, key=lambda t: (t[1], -abs(t[0] - 0.1)))
    why = ', '.join('%g: %s' % (lr, 'diverged' if acc is None else '%.2f%%' % acc)
                    for lr, acc, _ in sorted(candidates))
    return best[0], why


def training_settings(path):
    return {k: v for k, v in read_row_config(path).items() if k.replace('-', '_') not in EVALUATION_ONLY}


def plan(root, table='microbatch', lr_table='microbatch_lr', profile='cpu'):
    """[(row, config path, lr or None, why)] for every row of the leaderboard."""
    board = load_table(table_path(root, table))
    candidates = lr_candidates(root, load_table(table_path(root, lr_table)), profile)
    chosen = {row: choose(c) for row, c in candidates.items()}
    configs = {r['row']: find_config(root, profile, r['row']) for r in board['rows']}
    missing = sorted(row for row, path in configs.items() if path is None)
    if missing:
        raise StudyError('rows without a config in profile %s: %s' % (profile, ', '.join(missing)))
    out = []
    for row, path in configs.items():
        if row in chosen:
            out.append((row, path) + chosen[row])
            continue
        same = [r for r in chosen if training_settings(configs[r]) == training_settings(path)] \
            if all(r in configs for r in chosen) else []
        if len(same) != 1:
            raise StudyError('row %s has no lr rows and %s rows train as it does (%s): name its lr rows'
                             % (row, len(same), ', '.join(same) or 'none'))
        lr, why = chosen[same[0]]
        out.append((row, path, lr, why if lr is None else 'as %s (%s)' % (same[0], why)))
    return out


def write_lr(path, lr, why, lr_table):
    with open(path) as f:
        text = f.read()
    if len(LR_LINE.findall(text)) != 1:
        raise StudyError('%s must hold exactly one "lr = ..." line to replace' % path)
    line = 'lr = %r     # chosen by scripts/choose_lr.py from %s (mean validation accuracy per lr: %s)' % (
        lr, lr_table, why)
    new = LR_LINE.sub(lambda _: line, text)
    if new != text:
        with open(path, 'w') as f:
            f.write(new)
    return new != text


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    p.add_argument('--table', default='microbatch', help='the leaderboard table (default: microbatch)')
    p.add_argument('--lr-table', default='microbatch_lr', help='its lr table (default: microbatch_lr)')
    p.add_argument('--profile', default='cpu')
    p.add_argument('--root', default=REPO, help='directory holding configs/ and results/ (default: the repo)')
    p.add_argument('--dry-run', action='store_true', help='print the choices; write nothing')
    args = p.parse_args(argv)
    try:
        rows = plan(args.root, args.table, args.lr_table, args.profile)
        for row, path, lr, why in rows:
            if lr is None:
                print('%s: unchanged (%s)' % (row, why))
                continue
            changed = not args.dry_run and write_lr(path, lr, why, args.lr_table)
            print('%s: lr %g (%s)%s' % (row, lr, why, ' -> written to %s' % os.path.relpath(path, args.root)
                                        if changed else ''))
    except StudyError as e:
        print('error: %s' % e, file=sys.stderr)
        raise SystemExit(2)
    return rows


if __name__ == '__main__':
    main()
