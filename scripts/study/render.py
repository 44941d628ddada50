"""The Markdown the study writes: results/<table>.md and the READMEs' generated blocks (claims,
and a table's rows ranked)."""
import os

from .efficiency import COST_HEADERS, cost_cells, cost_note, read_benchmark
from .records import is_diverged, load_record, record_conventions, record_dir, record_is_stale, summarize_row
from .schema import (_need, budget_line, claim_evals, find_config, load_config, load_table, planned_seeds,
                     row_available, table_path)
from .stats import ALPHA, claim_test, claim_verdict, fmt_mean_std, holm, mean_ci, mean_std


#: what a rendered table says per trainer: the split its accuracy is measured on, and the paper's
#: budget (a CPU schedule falls short of it)
EVAL_SET = {'cifar': 'test set', 'imagenet': 'validation set'}


PAPER_BUDGET = {'cifar': '~400 epochs on GPUs', 'imagenet': '90+ epochs on 8 GPUs at 224 px'}


#: what the conventions column means (kalman_norm/train/core.py, CONVENTIONS; README, "Conventions")
CONVENTIONS_NOTE = ('Conventions: the trainer\'s version of what a run means, in its options.json. 1 (records '
                    'without the key): BN\'s and BKN\'s variance moving average biased, `--seed` fixes the data '
                    'order only; 2: that average unbiased, BRN tracks σ, `--seed` also fixes the initial weights. '
                    'A row\'s mean and the claims pool the seeds of both.')


def seed_ranges(seeds):
    """'1–3, 5' for [1, 2, 3, 5]."""
    out, start = [], None
    for k, s in enumerate(seeds):
        if start is None:
            start = s
        if k + 1 == len(seeds) or seeds[k + 1] != s + 1:
            out.append(str(start) if start == s else '%d–%d' % (start, s))
            start = None
    return ', '.join(out)


def _signed(x):
    return ('+%.2f' % x) if x >= 0 else ('−%.2f' % -x)


def _p(p):
    return '—' if p is None else '< 0.001' if p < 0.001 else '%.3f' % p


def claim_rows(claims, summaries, not_run=None):
    """The claims' table rows (Markdown cells) and the number of claims with a test."""
    results = [claim_test(c, summaries, not_run) for c in claims]
    adjusted = holm([r['test']['p'] if r['test'] else None for r in results])
    option = {'moving': 'A', 'batch': 'B'}
    rows = []
    for c, r, p_holm in zip(claims, results, adjusted):
        which_a, which_b = claim_evals(c)
        paper = c.get('paper')
        verdict = claim_verdict(c, r, p_holm)
        test = r['test']
        if paper is None:
            paper_txt = '— (no paper number)'
        else:
            paper_txt = 'no gain (0)' if paper == 0 else _signed(paper)
        per_seed = '%s vs %s' % (', '.join('%.2f' % v for v in r['a']) or '—', ', '.join('%.2f' % v for v in r['b']) or '—')
        n = ('%d pairs' % len(r['a'])) if r['paired'] else '%d, %d' % (len(r['a']), len(r['b']))
        note = ''
        if test is None:
            note = r['reason']
            diff = _signed(mean_std(r['a'])[0] - mean_std(r['b'])[0]) if r['a'] and r['b'] else '—'
            ci = '—'
        else:
            diff, ci = _signed(test['diff']), '[%s, %s]' % (_signed(test['low']), _signed(test['high']))
            if paper == 0:
                note = ('rules out gains above %s' % _signed(test['high']) if test['high'] > 0
                        else 'rules out any gain: a − b is below %s' % _signed(test['high']))
            elif paper is None:
                note = '%s: a − b %s 0' % ('the difference' if verdict == 'holds' else 'observed direction',
                                           '>' if test['diff'] > 0 else '<')
        kind = ('—' if test is None else 'paired t, df %d' % round(test['df']) if r['paired']
                else 'Welch, df %.1f' % test['df'])
        rows.append([c['label'], option[which_a] if which_a == which_b else '%s − %s' % (option[which_a], option[which_b]),
                     paper_txt, diff, ci, kind, _p(test and test['p']), _p(p_holm), n, per_seed,
                     '**%s**%s' % (verdict, ' (%s)' % note if note else '')])
    return rows, sum(r['test'] is not None for r in results)


def results_stem(root, table_name, profile):
    return os.path.join(root, 'results', table_name + ('' if profile == 'cpu' else '-' + profile))


def _budget(root, table, profile):
    parts = set()
    for r in table['rows']:
        if not row_available(r, profile):
            continue
        path = find_config(root, profile, r['row'])
        if path:
            parts.add(budget_line(load_config(path, table['trainer'])))
    return sorted(parts)


def table_summaries(root, table, profile):
    """({row: summarize_row(...)} of the rows this profile runs, {row: reason} of the others)."""
    summaries, not_run = {}, {}
    for r in table['rows']:
        if not row_available(r, profile):
            not_run[r['row']] = r['reason']
            summaries[r['row']] = summarize_row([])
            continue
        recs = [load_record(record_dir(root, profile, r['row'], s)) for s in planned_seeds(table, r, profile)]
        summaries[r['row']] = row_summary(r, [x for x in recs if x])
    return summaries, not_run


def row_summary(row, records):
    """summarize_row, with PreciseBN's accuracies as the A column of a ``moving_stats = 'precise'``
    row (a run without that evaluation gives none: the row then says no such evaluation)."""
    s = summarize_row(records)
    if row.get('moving_stats') == 'precise':
        ok = [x for x in records if not is_diverged(x) and x['stats']]
        s['moving'] = [100.0 * (1.0 - x['stats'][-1]['val-error-precise']) for x in ok
                       if 'val-error-precise' in x['stats'][-1]]
        s['paired'] = [(a, b) for a, b in zip(s['moving'], s['batch'])] if len(s['moving']) == len(s['batch']) else []
    return s


#: a generated block of a Markdown file: ``<!-- reproduce: KIND ARGUMENT ... -->`` ... ``<!-- /reproduce -->``,
#: KIND ``claims`` (SELECTOR ...: :func:`claims_block`) or ``ranking`` (TABLE: :func:`ranking_block`)
BLOCK_START, BLOCK_END = '<!-- reproduce: ', '<!-- /reproduce -->'


def _claim_selected(claim, selector):
    """Whether ``claim`` is picked by a selector's 'a/b' or 'a/b/eval' part (eval: moving, batch or
    moving-batch for a claim on one row's two evaluations)."""
    parts = selector.split('/')
    if (claim['a'], claim['b']) != tuple(parts[:2]):
        return False
    evals = claim_evals(claim)
    want = parts[2] if len(parts) > 2 else 'moving'
    return want == ('%s-%s' % evals if evals[0] != evals[1] else evals[0])


def claims_block(root, selectors, link_prefix, profile='cpu'):
    """The Markdown table of the claims the selectors pick ('table' = all its claims, 'table/a/b' or
    'table/a/b/eval' = one), each with its table's statistics and Holm-adjusted verdict."""
    from tabulate import tabulate
    tables, picked = {}, []
    for sel in selectors:
        name = sel.split('/')[0]
        if name not in tables:
            t = load_table(table_path(root, name))
            summaries, not_run = table_summaries(root, t, profile)
            tables[name] = (t, claim_rows(t['claims'], summaries, not_run)[0])
        t, rows = tables[name]
        chosen = [row for c, row in zip(t['claims'], rows) if sel == name or _claim_selected(c, sel.split('/', 1)[1])]
        _need(chosen, 'generated block: %s picks no claim of table %s' % (sel, name))
        picked += [['[%s](%s%s.md)' % (name, link_prefix, name)] + [row[k] for k in (0, 1, 2, 3, 4, 6, 7, 8)]
                   + [row[-1]] for row in chosen]
    return tabulate(picked, headers=['table', 'claim (a − b)', 'eval', 'paper', 'Δ ours', '95% CI', 'p', 'p (Holm)',
                                     'n', 'verdict (Holm-adjusted p < %g)' % ALPHA],
                    tablefmt='github', disable_numparse=True)


def ranking_block(root, table_name, link_prefix, profile='cpu'):
    """A table's rows ranked by their mean accuracy A (moving statistics, or the norm's one
    evaluation), each with the 95% t-interval of its mean, its seeds and, where the table has a
    benchmark record, its cost columns; rows with fewer than 2 seeds follow, unranked."""
    from tabulate import tabulate
    t = load_table(table_path(root, table_name))
    summaries, not_run = table_summaries(root, t, profile)
    costs = cost_cells(root, t, profile) if t.get('benchmark_record') else {}
    ranked, unranked = [], []
    for r in t['rows']:
        if r['row'] in not_run:
            continue
        ci = mean_ci(summaries[r['row']]['moving'])
        cells = [r['label'],
                 '—' if ci['n'] == 0 else '%.2f' % ci['mean'],
                 '—' if ci['low'] is None else '[%.2f, %.2f]' % (ci['low'], ci['high']),
                 str(ci['n'])] + list(costs.get(r['row'], []))
        (ranked if ci['n'] >= 2 else unranked).append((ci['mean'], cells))
    ranked.sort(key=lambda x: -x[0])
    rows = [[str(k + 1)] + cells for k, (_, cells) in enumerate(ranked)] + [['—'] + cells for _, cells in unranked]
    headers = ['rank', 'row ([%s](%s%s.md))' % (table_name, link_prefix, table_name), 'accuracy A (%)',
               '95% CI of the mean', 'seeds'] + (list(COST_HEADERS) if costs else [])
    return tabulate(rows, headers=headers, tablefmt='github', disable_numparse=True)


def rewrite_blocks(root, path, profile='cpu'):
    """Rewrite every generated block of the Markdown file ``path`` from the records; True
    if the file changed.  The links are relative to the file (results/<table>.md)."""
    with open(path) as f:
        text = f.read()
    prefix = os.path.relpath(os.path.join(root, 'results'), os.path.dirname(os.path.abspath(path)))
    prefix = '' if prefix == '.' else prefix + '/'
    out, pos = [], 0
    while True:
        start = text.find(BLOCK_START, pos)
        if start < 0:
            break
        head_end = text.index('-->', start) + len('-->')
        end = text.find(BLOCK_END, head_end)
        _need(end >= 0, '%s: a generated block opened at character %d is not closed by %s' % (path, start, BLOCK_END))
        kind, *arguments = text[start + len(BLOCK_START):head_end - len('-->')].split()
        _need(kind in ('claims', 'ranking') and arguments and (kind == 'claims' or len(arguments) == 1),
              '%s: a generated block must be "claims SELECTOR ..." or "ranking TABLE", got %r'
              % (path, ' '.join([kind] + arguments)))
        block = (claims_block(root, arguments, prefix, profile) if kind == 'claims'
                 else ranking_block(root, arguments[0], prefix, profile))
        out += [text[pos:head_end], '\n', block, '\n']
        pos = end
    out.append(text[pos:])
    new = ''.join(out)
    if new != text:
        with open(path, 'w') as f:
            f.write(new)
    return new != text


def render_table(root, table, profile, command, figures=()):
    """The Markdown text of results/<table>.md, from the records under results/runs/ only."""
    from tabulate import tabulate
    summaries, rows = {}, []
    all_data, all_machines = set(), set()
    costs = cost_cells(root, table, profile) if table.get('benchmark_record') else None
    for r in table['rows']:
        name = r['row']
        available = row_available(r, profile)
        recs = []
        seeds = planned_seeds(table, r, profile) if available else []
        stale = 0
        conventions = {}
        if available:
            by_seed = [(seed, load_record(record_dir(root, profile, name, seed))) for seed in seeds]
            recs = [x for _, x in by_seed if x]
            for seed, x in by_seed:
                if x:
                    conventions.setdefault(record_conventions(x), []).append(seed)
            config = find_config(root, profile, name)
            if config:
                stale = sum(record_is_stale(record_dir(root, profile, name, seed), config) for seed in seeds)
        summaries[name] = s = row_summary(r, recs)
        all_data.update(s['data'])
        all_machines.update(s['machine'])
        paper = '%.2f' % r['paper'] if 'paper' in r else '— (%s)' % r.get('paper_source', 'no number in the paper')
        if 'paper_online' in r:
            paper += ' (B: %.2f)' % r['paper_online']
        if 'paper' in r:
            paper += ', ' + r['paper_source']
        if not available:
            rows.append([r['label'], paper, r['reason'], '— (not run)', '— (not run)', '—', '—', '—', '—', '—'])
            continue
        waiting = 'not run yet' if not s['n_done'] else None
        a = fmt_mean_std(s['moving']) or waiting or 'no such evaluation'
        has_ema = any('val-error-batch' in (x['stats'][-1] if x['stats'] else {}) for x in recs)
        b = fmt_mean_std(s['batch']) or (waiting if waiting else '— (%s)' % (
            'no online evaluation in this config' if not has_ema else 'no value'))
        done = '%d / %d' % (s['n_done'], len(seeds))
        if s['n_diverged']:
            done += ' (+%d diverged)' % s['n_diverged']
        if stale:
            done += ' (%d made with an earlier version of the config: see its config.toml)' % stale
        rows.append([r['label'], paper, a, b, fmt_mean_std(s['train_error']) or waiting or 'not logged', done,
                     ', '.join(map(str, s['epochs'])) or waiting, ', '.join(s['data']) or waiting,
                     ', '.join(s['machine']) or waiting,
                     '; '.join('%d: %s' % (c, seed_ranges(conventions[c])) for c in sorted(conventions)) or waiting])
    lines = ['# %s' % table['title'], '',
             'The paper: %s' % table['claim'], '',
             'Profile **%s**. Budget: %s. Data: %s. Hardware: %s.' % (
                 profile, '; '.join(_budget(root, table, profile)) or 'no runnable row',
                 ', '.join(sorted(all_data)) or 'no run recorded yet',
                 ', '.join(sorted(all_machines)) or 'no run recorded yet'), '']
    if profile == 'cpu':
        lines += ['**A short CPU schedule does not reach the paper\'s absolute numbers** (the paper trains '
                  '%s). The claims under test here are the orderings and the gaps between '
                  'rows.' % PAPER_BUDGET[table['trainer']], '']
    lines += ['Accuracy (%%) of the last epoch on the %s, mean ± sample std over seeds. A: moving '
              'statistics (for norms without moving averages, their one evaluation); B: online batch '
              'statistics.' % (table.get('eval_set') or EVAL_SET[table['trainer']]), '']
    headers = ['row', 'paper', 'ours A (moving)', 'ours B (online)', 'train error (%)', 'seeds done / planned',
               'epochs', 'data', 'machine', 'conventions: seeds']
    if costs is not None:       # after the train error, as the leaderboard orders its columns
        rows = [cells[:5] + costs.get(r['row'], ['—'] * len(COST_HEADERS)) + cells[5:]
                for r, cells in zip(table['rows'], rows)]
        headers = headers[:5] + COST_HEADERS + headers[5:]
    lines.append(tabulate(rows, headers=headers, tablefmt='github', disable_numparse=True))
    lines += ['', CONVENTIONS_NOTE, '']
    if costs is not None:
        lines += [cost_note(table, read_benchmark(root, table['benchmark_record'])), '']
    if table['claims']:
        not_run = {r['row']: r['reason'] for r in table['rows'] if not row_available(r, profile)}
        claim_cells, tested = claim_rows(table['claims'], summaries, not_run)
        lines += ['## Claims', '',
                  'This table tests %d of its %d claims%s. '
                  'Δ = mean(a) − mean(b) in points, its 95%% CI and the two-sided p-value of Welch\'s t-test; a '
                  'claim on one row\'s two evaluations pairs them by seed (both come from one trained network: '
                  'a paired t-test). Holm\'s correction runs over the %d tests of this table, and **the verdict '
                  'uses the Holm-adjusted p < %g**: **holds** (the difference is established with the claimed '
                  'sign), **reversed** (established with the other sign), **not established** (otherwise, and '
                  'whenever a row has fewer than 2 seeds). "No gain" (paper 0) is never "holds": the line '
                  'gives the gain its 95%% CI rules out; a question of this project\'s (no paper number) holds when '
                  'a difference is established, in the direction the line names.'
                  % (tested, len(table['claims']), ' (the others lack 2 seeds in a row, or are not run here)'
                     if tested < len(table['claims']) else '', tested, ALPHA), '']
        lines.append(tabulate(claim_cells, headers=['claim (a − b)', 'eval', 'paper', 'Δ ours', '95% CI', 'test',
                                                    'p', 'p (Holm)', 'n', 'per seed (a vs b)', 'verdict'],
                              tablefmt='github', disable_numparse=True))
        lines.append('')
    if table.get('discussion', '').strip():
        lines += ['## Discussion', '', table['discussion'].strip(), '']
    for title, fig in figures:
        lines += ['%s:' % title, '', '![%s](%s)' % (title, os.path.basename(fig)), '']
    lines += ['Reproduce (runs what is missing, resumes what was cut short, then rewrites this file):', '',
              '```', command, '```', '',
              'Every number above is computed by `scripts/reproduce.py` (`scripts/study/`) from the '
              'records in `results/runs/%s/<row>/seed<S>/`.' % profile, '']
    return '\n'.join(lines), summaries
