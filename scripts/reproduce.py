#!/usr/bin/env python
"""Reproduce tables of the paper: run what is missing, resume what was cut short, record, report.

    python scripts/reproduce.py fig4 --profile cpu --data ../shared/data/cifar10-jpeg.tar.gz
    python scripts/reproduce.py kn_study --dry-run            # what would run, and for how long
    python scripts/reproduce.py fig4 table8 --report-only     # rewrite results/<table>.md from records
    python scripts/reproduce.py imagenet_check --data /tmp/cifar_ilsvrc   # an ImageNet-trainer table

A table (configs/tables/<table>.toml) is a list of rows, each a trainer config
(configs/<profile>/<table>/<row>.toml), run with seeds 1..N by the table's trainer
(scripts/cifar_resnet.py, or scripts/imagenet.py for trainer = "imagenet"; one trainer per
command).  For each (row, seed), one at a time: a record in results/runs/ -> skipped; a finished
log dir in train_log/ -> recorded; a killed or failed one -> the same command again (the trainer
resumes from its checkpoint); none -> run.  Each run's output goes to <logdir>/stdout.log; a
failed run is reported and the next one goes on.  Ctrl-C (or a kill) leaves everything resumable:
run the same command again.  Then results/<table>.md and its curves are written from the records
only (profile paper: results/<table>-paper.md).  The records are committed by you: the script
prints the `git add` line.

The logic is in scripts/study/: schema (tables, configs), records (states, run.json, records),
stats (the claims' tests), render (the Markdown), cost (the dry run's estimate).
"""
import argparse
import contextlib
import os
import queue
import shlex
import signal
import subprocess
import sys
import threading
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

#: a table's trainer (its ``trainer`` key, study.TRAINERS) -> the script that runs its rows
TRAINERS = {'cifar': os.path.join(REPO, 'scripts', 'cifar_resnet.py'),
            'imagenet': os.path.join(REPO, 'scripts', 'imagenet.py')}
#: what --data is, per trainer, in the report's command line when no --data was given
DATA_PLACEHOLDER = {'cifar': '<CIFAR-10 dir or .tar.gz>', 'imagenet': '<ILSVRC-12 style dir>'}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog=__doc__.split('\n\n', 1)[1])
    p.add_argument('tables', nargs='+', metavar='TABLE', help='table name (configs/tables/<TABLE>.toml) or path')
    p.add_argument('--profile', default='cpu', help='cpu (this machine\'s budget) or paper (the authors\' recipe)')
    p.add_argument('--seeds', type=int, help='run seeds 1..N of every row (default: the table\'s seeds)')
    p.add_argument('--rows', help='comma-separated rows to run (default: all); the report covers all')
    p.add_argument('--dry-run', action='store_true', help='list the runs, their state and estimated time; run nothing')
    p.add_argument('--data', help='dataset passed to the trainer (CIFAR: dir or .tar.gz; ImageNet: an ILSVRC-12 '
                   'style dir); default: the trainer\'s')
    p.add_argument('--threads', type=int, help='CPU threads of each run (the trainer\'s --threads); give it when '
                   'another process shares the machine')
    p.add_argument('--report-only', action='store_true', help='run nothing; rewrite the tables from the records')
    p.add_argument('--root', default=REPO, help='directory holding configs/, train_log/, results/ (default: the repo)')
    args = p.parse_args(argv)
    return args


def fail(msg):
    print('error: %s' % msg, file=sys.stderr)
    raise SystemExit(2)


def check_args(args, study):
    """Every bad choice stops here, before any run starts."""
    if args.profile not in study.PROFILES:
        fail('--profile must be one of %s, got %r' % (', '.join(study.PROFILES), args.profile))
    if args.seeds is not None and args.seeds < 1:
        fail('--seeds must be >= 1, got %d' % args.seeds)
    if args.dry_run and args.report_only:
        fail('--dry-run and --report-only exclude each other')
    if args.data is not None and not os.path.exists(args.data):
        fail('--data %s: no such file or directory' % args.data)
    if not os.path.isdir(args.root):
        fail('--root %s: no such directory' % args.root)
    if not args.dry_run:
        # the report (after any run) draws figures and tests the claims: say so now, not after hours
        import importlib.util
        missing = [m for m in ('matplotlib', 'scipy') if importlib.util.find_spec(m) is None]
        if missing:
            fail('the report needs %s: pip install -e ".[plots]"' % ' and '.join(missing))
    rows = [r.strip() for r in args.rows.split(',') if r.strip()] if args.rows else None
    if args.rows is not None and not rows:
        fail('--rows is empty')
    tables, plans = [], []
    for name in args.tables:
        path = study.table_path(args.root, name)
        if not os.path.isfile(path):
            fail('table %s: no such file %s' % (name, path))
        t = study.load_table(path)
        tables.append(t)
    if not args.report_only:            # a report reads records only: it needs no --data
        study.check_one_trainer(tables)
    if rows:
        known = {r['row'] for t in tables for r in t['rows']}
        unknown = [r for r in rows if r not in known]
        if unknown:
            fail('--rows: %s in none of the tables (%s)' % (', '.join(unknown), ', '.join(sorted(known))))
    for t in tables:
        wanted = [r for r in rows if r in {x['row'] for x in t['rows']}] if rows else None
        if rows and not wanted:
            plans.append((t, []))
            continue
        plans.append((t, study.plan(args.root, t, args.profile, args.seeds, wanted)))
    return tables, plans


def command_line(args, tables):
    def by_name(t):
        return os.path.abspath(t['path']) == os.path.abspath(os.path.join(args.root, 'configs', 'tables', t['name'] + '.toml'))

    parts = ['python', 'scripts/reproduce.py'] + [t['name'] if by_name(t) else t['path'] for t in tables]
    parts += ['--profile', args.profile]
    parts += ['--data', args.data or DATA_PLACEHOLDER[tables[0]['trainer']]]    # one trainer per command
    if os.path.abspath(args.root) != REPO:
        parts += ['--root', args.root]
    return ' '.join(shlex.quote(p) if not p.startswith('<') else p for p in parts)


def _rel(path, root):
    """``path`` relative to ``root`` when inside it (commands and records read the same anywhere)."""
    rel = os.path.relpath(path, root)
    return path if rel.startswith('..') else rel


def trainer_command(run, data, root, threads=None):
    """The command line of the run's trainer (its table's), run from ``root``."""
    cmd = [sys.executable, _rel(TRAINERS[run['trainer']], root), '--config', _rel(run['config'], root),
           '--seed', str(run['seed']), '--logdir', _rel(run['logdir'], root)]
    if data:
        cmd += ['--data', os.path.abspath(data)]
    if threads:
        cmd += ['--threads', str(threads)]
    return cmd


def unique_runs(plans):
    """The (row, seed) runs of all tables, each once (tables share rows)."""
    seen, out = set(), []
    for _, runs in plans:
        for r in runs:
            if (r['row'], r['seed']) not in seen:
                seen.add((r['row'], r['seed']))
                out.append(r)
    return out


def dry_run(args, study, runs):
    """The runs, their state and estimated minutes; a run without an estimate (an ImageNet model
    with no record yet) shows '?' and is left out of the total, which says so."""
    from tabulate import tabulate
    rows, total, unknown = [], 0.0, 0
    for r in runs:
        config = study.load_config(r['config'], r['trainer'])
        per_epoch, source = study.minutes_per_epoch(args.root, args.profile, config)
        todo = r['state'] in ('new', 'unfinished')
        stats = study.read_json(os.path.join(r['logdir'], 'stats.json'), []) if r['state'] == 'unfinished' else []
        done = stats[-1].get('epoch_num', 0) if stats else 0        # a resumed run has only the rest to do
        state = r['state'] + (' (%s)' % r['note'] if r.get('note') else '') + (' at epoch %d' % done if done else '')
        minutes = None if per_epoch is None else per_epoch * max(r['epochs'] - done, 0)
        if todo:
            unknown += minutes is None
            total += minutes or 0.0
        rows.append([r['row'], r['seed'], state, r['epochs'], '?' if per_epoch is None else '%.2f' % per_epoch,
                     source, '—' if not todo else '?' if minutes is None else '%.0f' % minutes])
    print(tabulate(rows, headers=['row', 'seed', 'state', 'epochs', 'min/epoch', 'estimate from',
                                  'min to run'], tablefmt='github', disable_numparse=True))
    todo = sum(r['state'] in ('new', 'unfinished') for r in runs)
    print('\n%d runs to start or resume; estimated %.0f CPU minutes (%.1f h) on this machine, one at a time%s. '
          'Nothing was run (--dry-run).' % (todo, total, total / 60, ', not counting the %d without an estimate (?)'
                                           % unknown if unknown else ''))


def execute(args, study, run):
    """Run (or resume) one (row, seed) in a subprocess; returns the exit code.

    The trainer accepts a log dir only if it is empty or holds its own options.json, so run.json
    and stdout.log are written once the trainer has taken the directory (options.json exists;
    at once when resuming); the launch time is taken before.  A trainer that stops before (a bad
    option, a missing dataset) leaves nothing in the log dir: its output is printed instead."""
    cmd = trainer_command(run, args.data, args.root, args.threads)
    study.check_logdir_config(run['logdir'], run['config'])
    launched = study.utc_now()
    print('[%s] %s seed %d: %s' % (launched, run['row'], run['seed'], ' '.join(map(shlex.quote, cmd))), flush=True)
    os.makedirs(os.path.dirname(run['logdir']), exist_ok=True)
    options = os.path.join(run['logdir'], 'options.json')
    start = time.time()
    proc = subprocess.Popen(cmd, cwd=args.root, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    pending, log = [], None

    def take_dir():
        study.start_run_json(run['logdir'], run['row'], args.profile, _rel(run['config'], args.root), run['seed'],
                             cmd, REPO, config_file=run['config'], started=launched)
        study.set_run_pid(run['logdir'], proc.pid)
        out = open(os.path.join(run['logdir'], 'stdout.log'), 'ab')
        out.write(b''.join(pending))
        out.flush()
        return out

    lines = queue.Queue()

    def read_output():                       # a thread, so that the log dir is taken on time even
        for line in proc.stdout:             # when the trainer is quiet
            lines.put(line)
        lines.put(None)

    threading.Thread(target=read_output, daemon=True).start()
    try:
        try:
            while True:
                try:
                    line = lines.get(timeout=0.5)
                except queue.Empty:
                    line = b''
                if log is None and os.path.isfile(options):
                    with _holding_interrupts():
                        log = take_dir()
                if line is None:
                    break
                if log is None:
                    pending.append(line)
                elif line:
                    log.write(line)
                    log.flush()
            code = proc.wait()
        except BaseException:
            # Ctrl-C reaches the trainer too (same process group), a kill of this script does not:
            # ask the trainer to stop, give it a moment, then end it.
            if proc.poll() is None:
                proc.send_signal(signal.SIGINT)
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            if log is not None:
                study.finish_run_json(run['logdir'], 'interrupted', (time.time() - start) / 60.0)
            raise
        if log is None and os.path.isfile(options):
            with _holding_interrupts():
                log = take_dir()
        if log is None:
            sys.stderr.write(b''.join(pending[-20:]).decode(errors='replace'))
            return code
        study.finish_run_json(run['logdir'], code, (time.time() - start) / 60.0)
        return code
    finally:
        if log is not None:
            log.close()


def main(argv=None):
    args = parse_args(argv)
    args.root = os.path.abspath(args.root)
    import kalman_norm  # noqa: F401  (sets up the stack for the plots' and the study's imports)
    import study
    try:
        tables, plans = check_args(args, study)
    except study.StudyError as e:
        fail(str(e))
    runs = unique_runs(plans)
    if args.dry_run:
        dry_run(args, study, runs)
        return 0
    failed, recorded = [], []
    if not args.report_only:
        # a kill (SIGTERM) stops like Ctrl-C: the trainer is stopped and the run stays resumable
        previous = signal.signal(signal.SIGTERM, _interrupt)
        try:
            code = run_all(args, study, runs, failed, recorded)
        finally:
            signal.signal(signal.SIGTERM, previous)
        if code:
            return code
    written = report(args, study, tables)
    if args.profile == 'cpu':
        # the READMEs' claim summaries are generated from the same records (their marked blocks)
        for doc in (os.path.join(args.root, 'README.md'), os.path.join(args.root, 'results', 'README.md')):
            try:
                if os.path.isfile(doc) and study.rewrite_blocks(args.root, doc):
                    written.append(doc)
            except study.StudyError as e:
                fail(str(e))
    paths = [os.path.relpath(p, args.root) for p in recorded + written]
    if paths:
        print('\nto commit: git add %s' % ' '.join(map(shlex.quote, paths)))
    if failed:
        print('%d run(s) failed: %s' % (len(failed), ', '.join('%s seed %d' % (r['row'], r['seed']) for r in failed)),
              file=sys.stderr)
        return 1
    return 0


#: while a run directory is being taken (run.json started, the pid written) a SIGTERM is held
#: back, so that an interrupted run always has the run.json it can be finished and resumed from
_HELD = {'holding': False, 'pending': False}


def _interrupt(*_):
    if _HELD['holding']:
        _HELD['pending'] = True
        return
    raise KeyboardInterrupt()


@contextlib.contextmanager
def _holding_interrupts():
    _HELD.update(holding=True, pending=False)
    try:
        yield
    finally:
        _HELD['holding'] = False
        if _HELD['pending']:
            _HELD['pending'] = False
            raise KeyboardInterrupt()


def run_all(args, study, runs, failed, recorded):
    """Each (row, seed) in turn: skip, collect, or run then collect.  130 when interrupted."""
    for r in runs:
        if r['state'] in ('recorded', 'running'):
            print('%s seed %d: %s, skipped' % (r['row'], r['seed'], r['state']))
            continue
        if r['state'] in ('new', 'unfinished'):
            try:
                code = execute(args, study, r)
            except study.StudyError as e:
                print('error: %s seed %d: %s' % (r['row'], r['seed'], e), file=sys.stderr)
                failed.append(r)
                continue
            except KeyboardInterrupt:
                print('\ninterrupted: %s seed %d is left resumable; run the same command again' % (r['row'], r['seed']))
                return 130
            r['state'] = study.run_state(r['logdir'], r['record'], r['epochs'])
            if r['state'] not in ('finished', 'diverged'):
                print('error: %s seed %d exited %s without finishing; see %s'
                      % (r['row'], r['seed'], code, os.path.join(r['logdir'], 'stdout.log')), file=sys.stderr)
                failed.append(r)
                continue
        if r['state'] in ('finished', 'diverged'):
            study.collect(r['logdir'], r['record'], r['config'], r['row'], args.profile, r['seed'])
            print('%s seed %d: %s, recorded in %s' % (r['row'], r['seed'], r['state'], r['record']))
            recorded.append(r['record'])
    return 0


def report(args, study, tables):
    """results/<table>.md and its figures (one of all rows, one per [[figures]] entry)."""
    from plot_curves import plot_budget, plot_rows
    written = []
    for t in tables:
        command = command_line(args, [t])          # the command that makes this table, whatever was run
        stem = study.results_stem(args.root, t['name'], args.profile)
        os.makedirs(os.path.dirname(stem), exist_ok=True)
        rows = {r['row']: r for r in t['rows'] if study.row_available(r, args.profile)}
        seeds = {name: study.planned_seeds(t, r, args.profile) for name, r in rows.items()}
        wanted = [('All rows', stem + '.png', list(rows), 'moving', None)]
        wanted += [(f.get('title', f['name']), '%s_%s.png' % (stem, f['name']), [r for r in f['rows'] if r in rows],
                    f.get('eval', 'moving'), f.get('series')) for f in t['figures']]
        figures = []
        for title, path, names, which, series in wanted:
            full_title = '%s (profile %s)' % (t['title'] if title == 'All rows' else title, args.profile)
            if series:
                fig = plot_budget(args.root, args.profile, {k: [r for r in v if r in rows] for k, v in series.items()},
                                  path, title=full_title, seeds=seeds, which=which)
            else:
                fig = plot_rows(args.root, args.profile, [(n, rows[n]['label']) for n in names], path,
                                title=full_title, seeds=seeds, which=which)
            if fig:
                figures.append((title, fig))
        text, _ = study.render_table(args.root, t, args.profile, command, figures)
        with open(stem + '.md', 'w') as f:
            f.write(text)
        print('wrote %s' % ', '.join([stem + '.md'] + [f for _, f in figures]))
        written += [stem + '.md'] + [f for _, f in figures]
    return written


if __name__ == '__main__':
    sys.exit(main())
