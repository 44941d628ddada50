"""Runs on disk: log dirs and their states, run.json (launch facts, the code it ran), the records
copied to results/runs/, and the numbers a record gives (last-epoch accuracies, per row)."""
import glob
import hashlib
import json
import math
import os
import shutil
import subprocess

from kalman_norm.train.options import dump_toml
from kalman_norm.provenance import atomic_write_json, machine, utc_now

from .schema import (EVALS, PROFILES, StudyError, _is_number, _load_toml, _need, config_settings_sha256,
                     file_sha256, find_config, load_config, planned_seeds, read_row_config, row_available,
                     tomllib)
from .stats import mean_std


RECORD_FILES = ('stats.json', 'options.json', 'run.json', 'status.json')


def logdir_of(root, profile, row, seed):
    return os.path.join(root, 'train_log', profile, row, 'seed%d' % seed)


def record_dir(root, profile, row, seed):
    return os.path.join(root, 'results', 'runs', profile, row, 'seed%d' % seed)


def read_json(path, default=None):
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return default


def write_json(path, obj):
    """run.json and the records' files, in the order written (atomically: see kalman_norm.provenance)."""
    atomic_write_json(path, obj, sort_keys=False)


def _pid_runs(pid, command):
    """Whether process ``pid`` is alive and runs ``command`` (a list), not a reused pid."""
    try:
        os.kill(pid, 0)
    except (OSError, TypeError, ValueError):
        return False
    try:
        with open('/proc/%d/cmdline' % pid, 'rb') as f:
            return f.read().split(b'\0')[:-1] == [c.encode() for c in command or []]
    except OSError:
        return True


def _locked(logdir):
    """Whether a live trainer holds the log dir's ``.lock`` (the trainer flocks it while it runs;
    the kernel drops the lock when the process dies, however it dies)."""
    path = os.path.join(logdir, '.lock')
    if not os.path.isfile(path):
        return False
    import fcntl
    with open(path) as f:
        try:
            fcntl.flock(f, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except OSError:
            return True
        fcntl.flock(f, fcntl.LOCK_UN)
    return False


def run_state(logdir, record, config_epochs):
    """One of recorded, finished, diverged, running, unfinished, new (see the module doc)."""
    if os.path.isfile(os.path.join(record, 'run.json')):
        return 'recorded'
    if not os.path.isdir(logdir):
        return 'new'
    run = read_json(os.path.join(logdir, 'run.json'), {})
    if _locked(logdir) or (run.get('pid') and 'finished' not in run and _pid_runs(run['pid'], run.get('command'))):
        return 'running'
    status = read_json(os.path.join(logdir, 'status.json'), {})
    if status.get('status') == 'diverged':
        return 'diverged'
    if status.get('status') == 'finished':
        return 'finished'
    stats = read_json(os.path.join(logdir, 'stats.json'), [])
    epochs = read_json(os.path.join(logdir, 'options.json'), {}).get('epochs', config_epochs)
    done = bool(stats) and stats[-1].get('epoch_num') == epochs
    # before the trainer writes status.json: finished = all epochs recorded and a clean exit
    # (a run launched without run.json has no exit code: its last epoch is taken as the end)
    if done and run.get('exit_code', 0) == 0 and not status:
        return 'finished'
    if not os.listdir(logdir):
        return 'new'
    return 'unfinished'


#: paths whose changes do not make a run's code dirty: the records and reports themselves
NOT_CODE = ('results',)


def git_commit(repo):
    """``git rev-parse HEAD``, + "-dirty" when tracked files outside results/ differ from it (changed
    code, not a regenerated report); "unknown" outside git."""
    state = code_state(repo)
    return state['git_commit']


def code_state(repo):
    """{git_commit, code_diff_sha256, results_differ}: the commit (+ "-dirty" as :func:`git_commit`),
    the sha256 of ``git diff HEAD`` over tracked files outside results/ (None when the code is the
    commit's), and whether tracked files under results/ differ.  The diff's hash pins a dirty run's
    code: two runs with the same commit and hash ran the same code."""
    def git(*args):
        return subprocess.run(['git'] + list(args), cwd=repo, capture_output=True, timeout=60).stdout

    try:
        head = git('rev-parse', 'HEAD').decode().strip()
        if not head:
            return {'git_commit': 'unknown', 'code_diff_sha256': None, 'results_differ': None}
        excluded = [':(exclude)%s' % p for p in NOT_CODE]
        diff = git('diff', 'HEAD', '--binary', '--', '.', *excluded)
        results = git('diff', 'HEAD', '--name-only', '--', *NOT_CODE)
    except (OSError, subprocess.SubprocessError):
        return {'git_commit': 'unknown', 'code_diff_sha256': None, 'results_differ': None}
    return {'git_commit': head + ('-dirty' if diff else ''),
            'code_diff_sha256': hashlib.sha256(diff).hexdigest() if diff else None,
            'results_differ': bool(results.strip())}


def check_logdir_config(logdir, config_file):
    """StudyError if the log dir's run.json names another config than ``config_file`` has now:
    other settings (a run.json that has their hash), else, for older log dirs, another text."""
    old = read_json(os.path.join(logdir, 'run.json'), {})
    key, sha = (('config_settings_sha256', config_settings_sha256(config_file))
                if 'config_settings_sha256' in old else ('config_sha256', file_sha256(config_file)))
    if old.get(key) not in (None, sha):
        raise StudyError('%s was made with another config (%s %s, now %s): a log dir is never reused '
                         'for another config; move it away or restore the config'
                         % (logdir, key, old[key][:12], sha[:12]))


def start_run_json(logdir, row, profile, config, seed, command, repo, config_file=None, started=None):
    """Write run.json at launch (``config``: the path as recorded, ``config_file``: where to read it).

    A resumed run keeps the first launch's fields and adds an attempt; a log dir made with another
    config is refused."""
    path = os.path.join(logdir, 'run.json')
    old = read_json(path, {})
    check_logdir_config(logdir, config_file or config)
    sha = file_sha256(config_file or config)
    code = code_state(repo)
    run = dict(old) if old else dict({
        'row': row, 'profile': profile, 'config': config, 'config_sha256': sha,
        'config_settings_sha256': config_settings_sha256(config_file or config), 'seed': seed,
        'command': command}, **code, started=started or utc_now(), machine=machine())
    for key in ('finished', 'exit_code'):
        run.pop(key, None)
    run.setdefault('attempts', [])
    # each attempt (a resume) pins its own code: a resumed run may have run two versions
    run['attempts'].append(dict({'started': started or utc_now()}, **code))
    run['command'] = command
    write_json(path, run)
    return run


def set_run_pid(logdir, pid):
    """The trainer's pid, while it runs: another invocation leaves a running log dir alone."""
    path = os.path.join(logdir, 'run.json')
    run = read_json(path, {})
    run['pid'] = pid
    write_json(path, run)


def finish_run_json(logdir, exit_code, minutes):
    """Add finished, exit_code and wall_minutes (summed over attempts) when the trainer exits."""
    path = os.path.join(logdir, 'run.json')
    run = read_json(path, {})
    run['attempts'][-1].update(finished=utc_now(), exit_code=exit_code, wall_minutes=round(minutes, 2))
    run.update(finished=utc_now(), exit_code=exit_code,
               wall_minutes=round(sum(a.get('wall_minutes', 0) for a in run['attempts']), 2))
    run.pop('pid', None)
    write_json(path, run)
    return run


def collect(logdir, record, config_path, row, profile, seed):
    """Copy a finished (or diverged) run into its record directory; never overwrites a record.

    Written into a temporary directory, then renamed: a kill leaves no partial record."""
    if os.path.exists(record):
        return False
    for name in ('stats.json', 'options.json'):
        _need(os.path.isfile(os.path.join(logdir, name)), '%s has no %s: nothing to record' % (logdir, name))
    tmp = record + '.tmp'
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(tmp)
    for name in RECORD_FILES:
        if os.path.isfile(os.path.join(logdir, name)):
            shutil.copy2(os.path.join(logdir, name), os.path.join(tmp, name))
    if not os.path.isfile(os.path.join(tmp, 'run.json')):
        # launched by hand, not through reproduce.py: say so rather than invent launch facts
        write_json(os.path.join(tmp, 'run.json'), {
            'row': row, 'profile': profile, 'config': config_path, 'config_sha256': file_sha256(config_path),
            'config_settings_sha256': config_settings_sha256(config_path),
            'seed': seed, 'command': None, 'git_commit': None, 'started': None, 'machine': machine(),
            'note': 'no run.json in the log dir: launched outside reproduce.py; collected %s' % utc_now()})
    settings = read_row_config(config_path)
    if settings == _load_toml(config_path):
        shutil.copy2(config_path, os.path.join(tmp, 'config.toml'))
    else:
        # a config stated as a base and what differs: its base path would not resolve from the
        # record, so the record keeps the settings it ran with
        with open(os.path.join(tmp, 'config.toml'), 'w') as f:
            f.write('# %s, resolved through its base\n%s' % (config_path, dump_toml(settings)))
    os.makedirs(os.path.dirname(record), exist_ok=True)
    os.rename(tmp, record)
    return True


def load_record(record):
    """{'stats', 'options', 'run', 'status', 'config_text'} of a record dir, or None."""
    if not os.path.isfile(os.path.join(record, 'run.json')):
        return None
    rec = {k.split('.')[0]: read_json(os.path.join(record, k)) for k in RECORD_FILES}
    rec['stats'] = rec['stats'] or []
    rec['options'] = rec['options'] or {}
    try:
        with open(os.path.join(record, 'config.toml')) as f:
            rec['config_text'] = f.read()
    except OSError:
        rec['config_text'] = None
    return rec


def is_diverged(rec):
    if (rec.get('status') or {}).get('status') == 'diverged':
        return True
    last = rec['stats'][-1] if rec['stats'] else {}
    errors = [v for k, v in last.items() if k.startswith('val-error')]
    return not errors or any(not _is_number(v) or not math.isfinite(v) for v in errors)


def error_key(stats_entry, which):
    """The stats key of an evaluation: moving (A; val-error for norms without moving averages) or batch (B)."""
    if which == 'batch':
        return 'val-error-batch' if 'val-error-batch' in stats_entry else None
    for k in ('val-error-moving', 'val-error'):
        if k in stats_entry:
            return k
    return None


def final_accuracy(rec, which='moving'):
    """100 × (1 − the last epoch's validation error), or None if the run has no such evaluation."""
    if not rec['stats']:
        return None
    key = error_key(rec['stats'][-1], which)
    return None if key is None else 100.0 * (1.0 - rec['stats'][-1][key])


def summarize_row(records):
    """Aggregates over a row's records (diverged runs counted apart, never averaged)."""
    ok = [r for r in records if not is_diverged(r)]
    out = {'n_done': len(ok), 'n_diverged': len(records) - len(ok)}
    accuracies = [tuple(final_accuracy(r, which) for which in EVALS) for r in ok]
    for i, which in enumerate(EVALS):
        out[which] = [acc[i] for acc in accuracies if acc[i] is not None]
    # (moving, batch) of each run with both evaluations: a claim on one row compares them run by run
    out['paired'] = [acc for acc in accuracies if None not in acc]
    out['train_error'] = [100.0 * r['stats'][-1]['train_error'] for r in ok if 'train_error' in r['stats'][-1]]
    out['epochs'] = sorted({r['stats'][-1].get('epoch_num') for r in ok if r['stats']})
    out['data'] = sorted({os.path.basename(str(r['options'].get('data'))) if r['options'].get('data')
                          else 'default download' for r in ok})
    out['machine'] = sorted({describe_machine((r.get('run') or {}).get('machine')) for r in ok})
    out['minutes'] = [r['run']['wall_minutes'] for r in ok if _is_number((r.get('run') or {}).get('wall_minutes'))]
    return out


def record_conventions(rec):
    """The conventions a record was made under: its identity's ``conventions``, 1 before the key."""
    return ((rec.get('options') or {}).get('identity') or {}).get('conventions', 1)


def describe_machine(m):
    if not m:
        return 'unknown'
    gpu = m.get('gpu', 'none')
    return '%s CPU cores, %s' % (m.get('cores', '?'), 'no GPU' if gpu == 'none' else gpu)


def plan(root, table, profile, seeds=None, rows=None):
    """[{row, seed, config, trainer, logdir, record, state, epochs}] of the table's available rows."""
    _need(profile in PROFILES, 'profile must be one of %s, got %r' % (', '.join(PROFILES), profile))
    names = [r['row'] for r in table['rows']]
    if rows:
        unknown = [r for r in rows if r not in names]
        _need(not unknown, '--rows: %s not in table %s (rows: %s)'
              % (', '.join(unknown), table['name'], ', '.join(names)))
    out = []
    for r in table['rows']:
        if (rows and r['row'] not in rows) or not row_available(r, profile):
            continue
        config = find_config(root, profile, r['row'])
        _need(config is not None, 'table %s, row %s: no config configs/%s/*/%s.toml'
              % (table['name'], r['row'], profile, r['row']))
        epochs = load_config(config, table['trainer'])['epochs']
        for s in planned_seeds(table, r, profile, seeds):
            logdir, record = logdir_of(root, profile, r['row'], s), record_dir(root, profile, r['row'], s)
            state = run_state(logdir, record, epochs)
            # a record is never overwritten, even when the config changed since: --dry-run says so
            rec_note = 'made with an earlier config' if state == 'recorded' and record_is_stale(record, config) else ''
            out.append(dict(row=r['row'], seed=s, config=config, trainer=table['trainer'], logdir=logdir,
                            record=record, epochs=epochs, state=state, note=rec_note))
    return out


def record_is_stale(record, config):
    """Whether the record's config.toml sets anything other than the row's config file now, both
    resolved through their bases (comments aside: a corrected comment, or a config restated as a
    base and what differs, does not make a record another config's)."""
    rec = load_record(record)
    if not rec or rec['config_text'] is None:
        return False
    try:
        made_with = tomllib.loads(rec['config_text'])
    except tomllib.TOMLDecodeError:
        return True
    return made_with != read_row_config(config)


def record_trainer(rec):
    """The trainer that made a record, from its options.json: only the ImageNet trainer has --arch."""
    return 'imagenet' if 'arch' in rec['options'] else 'cifar'
