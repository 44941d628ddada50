"""The study machinery behind ``scripts/reproduce.py``: tables of the paper as lists of runs, the
state of each run on disk, run records, and the Markdown table written from the records only.

Layout (all paths relative to a *root*, the repository by default)::

    configs/tables/<table>.toml             a table: title, claim, seeds per profile, [[rows]], [[claims]]
    configs/<profile>/<table>/<row>.toml    one trainer config per row (profile: cpu or paper)
    train_log/<profile>/<row>/seed<S>/      the trainer's log dir of one (row, seed); run.json at launch
    results/runs/<profile>/<row>/seed<S>/   the run's record: stats.json, options.json, run.json,
                                            status.json (if the trainer wrote one), config.toml
    results/<table>.md, .png                the table and its curves (profile cpu);
    results/<table>-paper.md, -paper.png    the same for the paper profile

A row name is a config file stem and names the run in train_log/ and results/runs/, so a row name
means one config within a profile: several tables may list the same row (the KN study and Fig. 4 share
BN at 2 samples per normalization) and it runs once.  :func:`find_config` refuses a row name
found in two table directories of one profile.

The table file (see ``configs/tables/fig4.toml``)::

    title = "Fig. 4: ..."                  # the table's heading
    claim = "BKN beats BN by 1.5 points"   # the paper's claim, one sentence
    trainer = "cifar"                      # optional: which trainer runs the rows' configs:
                                           # "cifar" (scripts/cifar_resnet.py, default) or
                                           # "imagenet" (scripts/imagenet.py)
    [seeds]                                # seeds planned per profile (seeds 1..N)
    cpu = 3
    paper = 3
    [[rows]]
    row = "bn_b2"                          # config file stem
    label = "BN (bs=2)"
    paper = 89.4                           # the paper's accuracy (%), omitted if it has none
    paper_online = 90.0                    # optional: the paper's number with online statistics (B)
    paper_source = "Table 8"
    metric = "accuracy"                    # the only metric so far
    seeds = 3                              # optional: an int, or {cpu = 3, paper = 2}
    available = false                      # optional: false, or the list of profiles it runs in
    reason = "not run here: no data"       # required when the row is unavailable somewhere
    [[claims]]
    label = "BKN - BN at bs=2"
    a = "bkn_output"                       # claim: accuracy(a) - accuracy(b) ...
    b = "bn_b2"
    paper = 1.5                            # ... is this in the paper (points); 0 = "no gain"
    eval = "moving"                        # optional: which evaluation: "moving" (A, default) or "batch" (B)
    [[figures]]                            # optional: curves of a selection of rows, besides the
    name = "bn_gn_bkn"                     # table's figure of all rows: results/<table>_<name>.png
    title = "BN vs GN vs BKN at batch 2"
    rows = ["bn_b2", "gn16_b2", "bkn_output"]
    eval = "moving"                        # optional, as in claims

Both trainers share one core (kalman_norm/trainer.py): the same stats.json, options.json and
status.json, so states, records and numbers do not depend on the trainer; the config defaults, the
model's name, the budget line and the run-time estimate do.  One command runs one trainer's tables
(one --data serves one trainer), so a row never runs under two trainers.

Numbers: a run's accuracy is 100 × (1 − the validation error of its *last* epoch) (not the best
epoch: choosing the best epoch on the test set flatters every row).  "moving" (option A) is
``val-error-moving``, or ``val-error`` for norms without moving averages (GN, LN, WN: their one
evaluation); "batch" (option B) is ``val-error-batch``.  Over seeds: mean ± sample standard
deviation (ddof 1).  A claim's Δ, 95% CI and p come from Welch's t-test (the paired t-test for
a claim on one row's two evaluations); each table applies Holm's correction over its tests and
judges every claim at the adjusted p (:func:`claim_verdict`).

Run states (:func:`run_state`):
    recorded   results/runs/... holds the record: skipped
    finished   the log dir holds a finished run not yet recorded: collected
    diverged   the trainer's status.json says diverged: recorded as diverged, never as a result
    running    run.json's pid is alive and runs this log dir: left alone
    unfinished the log dir holds a killed or failed run: the same command again (it resumes)
    new        nothing yet: run
"""
import datetime
import glob
import hashlib
import json
import math
import os
import platform
import shutil
import statistics
import subprocess
import tomllib

from . import cifar, imagenet

PROFILES = ('cpu', 'paper')
#: the trainers a table's rows can run with (scripts/reproduce.py maps each to its script)
TRAINERS = ('cifar', 'imagenet')
METRICS = ('accuracy',)
EVALS = ('moving', 'batch')
RECORD_FILES = ('stats.json', 'options.json', 'run.json', 'status.json')
#: the trainer's default depth (kalman_norm.cifar.DEFAULTS) and epochs per schedule, for configs
#: that leave them out; the configs in this repository all state their epochs.  Both are read
#: from the trainers themselves, as the ImageNet defaults below.
DEFAULT_DEPTH = next(o.default for o in cifar.TASK.all_options() if o.key == 'depth')
SCHEDULE_EPOCHS = {name: recipe['epochs'] for name, recipe in cifar.SCHEDULE_RECIPES.items()}
#: the ImageNet trainer's defaults of what the study reads (its epochs come from the schedule's
#: recipe, imagenet.SCHEDULE_RECIPES), taken from the trainer itself
IMAGENET_DEFAULTS = {opt.key: opt.default for opt in imagenet.TASK.all_options()
                     if opt.key in ('norm', 'arch', 'image_size', 'schedule', 'gpus', 'total_batch')}
IMAGENET_ARCH_NAMES = {'resnet50': 'ResNet-50', 'resnet101': 'ResNet-101', 'inception_v2': 'Inception-v2'}
#: what a rendered table says per trainer: the split its accuracy is measured on, and the paper's
#: budget (a CPU schedule falls short of it)
EVAL_SET = {'cifar': 'test set', 'imagenet': 'validation set'}
PAPER_BUDGET = {'cifar': '~400 epochs on GPUs', 'imagenet': '90+ epochs on 8 GPUs at 224 px'}

#: The run-time estimate of --dry-run when no record of the same model and norm exists yet:
#: minutes per epoch of ResNet-20 with BN at 64 groups of 2 on this 2-core CPU, training and both
#: evaluations: 12.43 min for 10 epochs, the run of commit 55e6012 (results/logs/cpu10_resnet20_bn_b2).
BASE_MINUTES_PER_EPOCH = 1.24
#: Relative step time of each norm vs BN at 64 groups of 2, ResNet-32, from results/benchmark_norms.md.
NORM_COST = {'bn': 1.0, 'bkn': 1.06, 'bkn-mc': 1.86, 'gn': 1.27, 'gkn': 1.61, 'brn': 1.21, 'ln': 1.0,
             'wn': 0.71, 'none': 0.72}
#: The small Inception net vs ResNet-20: ratio of multiply-adds per image (about 230M vs 41M), a
#: count from the layer widths (kalman_norm/models/inception_cifar.py), not a measurement.
INCEPTION_COST = 5.6


class StudyError(ValueError):
    """A bad table, config, or command-line choice; the message says what to fix."""


# ----------------------------------------------------------------------------------------------
# tables and configs

def _need(cond, msg):
    if not cond:
        raise StudyError(msg)


def _load_toml(path):
    _need(os.path.isfile(path), '%s: no such file' % path)
    with open(path, 'rb') as f:
        try:
            return tomllib.load(f)
        except tomllib.TOMLDecodeError as e:
            raise StudyError('%s is not valid TOML: %s' % (path, e))


def _is_number(x):
    return isinstance(x, (int, float)) and not isinstance(x, bool)


def table_path(root, table):
    """A table name ('fig4') or a path to a table file."""
    if table.endswith('.toml') or os.sep in table:
        return table
    return os.path.join(root, 'configs', 'tables', table + '.toml')


def load_table(path):
    """The table file at ``path``, validated; ``name`` is the file stem."""
    t = _load_toml(path)
    name = os.path.splitext(os.path.basename(path))[0]
    where = path
    for key in ('title', 'claim'):
        _need(isinstance(t.get(key), str) and t[key].strip(), '%s: needs %s = "..." (a string)' % (where, key))
    seeds = t.get('seeds')
    _need(isinstance(seeds, dict) and seeds and all(p in PROFILES for p in seeds),
          '%s: needs a [seeds] table with seeds per profile (%s)' % (where, ', '.join(PROFILES)))
    for p, n in seeds.items():
        _need(isinstance(n, int) and not isinstance(n, bool) and n >= 1,
              '%s: seeds.%s must be a positive integer, got %r' % (where, p, n))
    rows = t.get('rows')
    _need(isinstance(rows, list) and rows, '%s: needs at least one [[rows]] entry' % where)
    known = {'row', 'label', 'paper', 'paper_online', 'paper_source', 'metric', 'seeds', 'available', 'reason'}
    names = set()
    for r in rows:
        _need(isinstance(r.get('row'), str) and r['row'],
              '%s: every [[rows]] entry needs row = "<config stem>"' % where)
        w = '%s, row %s' % (where, r['row'])
        _need(r['row'] not in names, '%s: listed twice' % w)
        names.add(r['row'])
        unknown = sorted(set(r) - known)
        _need(not unknown, '%s: unknown key(s) %s; known: %s' % (w, ', '.join(unknown), ', '.join(sorted(known))))
        _need(isinstance(r.get('label'), str) and r['label'], '%s: needs label = "..."' % w)
        _need(r.get('metric') in METRICS,
              '%s: metric must be one of %s, got %r' % (w, ', '.join(METRICS), r.get('metric')))
        for key in ('paper', 'paper_online'):
            _need(key not in r or (_is_number(r[key]) and 0 <= r[key] <= 100),
                  '%s: %s must be an accuracy in %% (0-100), got %r' % (w, key, r.get(key)))
        _need(('paper' not in r and 'paper_online' not in r) or isinstance(r.get('paper_source'), str),
              '%s: a paper number needs paper_source = "..." (e.g. "Table 8"; without a number: why there is none)' % w)
        s = r.get('seeds')
        _need(s is None or (isinstance(s, int) and not isinstance(s, bool) and s >= 1)
              or (isinstance(s, dict) and all(p in PROFILES and isinstance(n, int) and n >= 1 for p, n in s.items())),
              '%s: seeds must be a positive integer or {cpu = N, paper = N}, got %r' % (w, s))
        a = r.get('available', True)
        _need(isinstance(a, bool) or (isinstance(a, list) and all(p in PROFILES for p in a)),
              '%s: available must be true, false or a list of profiles, got %r' % (w, a))
        if a is not True:
            _need(isinstance(r.get('reason'), str) and r['reason'].startswith('not run here: '),
                  '%s: an unavailable row needs reason = "not run here: <why>"' % w)
    claims = t.get('claims', [])
    _need(isinstance(claims, list), '%s: claims must be [[claims]] entries' % where)
    for c in claims:
        w = '%s, claim %r' % (where, c.get('label'))
        _need(isinstance(c.get('label'), str), '%s: a [[claims]] entry needs label = "..."' % where)
        unknown = sorted(set(c) - {'label', 'a', 'b', 'paper', 'eval', 'eval_a', 'eval_b'})
        _need(not unknown, '%s: unknown key(s) %s; known: label, a, b, paper, eval, eval_a, eval_b'
              % (w, ', '.join(unknown)))
        for key in ('a', 'b'):
            _need(c.get(key) in names, '%s: %s must be one of the table\'s rows, got %r' % (w, key, c.get(key)))
        _need('paper' not in c or _is_number(c['paper']), '%s: paper must be a number (points)' % w)
        for key in ('eval', 'eval_a', 'eval_b'):
            _need(c.get(key, 'moving') in EVALS, '%s: %s must be moving or batch' % (w, key))
        _need(c['a'] != c['b'] or claim_evals(c)[0] != claim_evals(c)[1],
              '%s: a claim on one row compares its two evaluations: set eval_a and eval_b apart' % w)
    figures = t.get('figures', [])
    _need(isinstance(figures, list), '%s: figures must be [[figures]] entries' % where)
    for f in figures:
        _need(isinstance(f.get('name'), str) and f['name'].replace('_', '').isalnum(),
              '%s: a [[figures]] entry needs name = "<letters, digits, _>" (the PNG is results/<table>_<name>.png)'
              % where)
        w = '%s, figure %s' % (where, f['name'])
        _need(isinstance(f.get('rows'), list) and f['rows'] and all(r in names for r in f['rows']),
              "%s: rows must be a list of the table's rows" % w)
        _need(f.get('eval', 'moving') in EVALS, '%s: eval must be moving or batch' % w)
    t.setdefault('trainer', 'cifar')
    _need(t['trainer'] in TRAINERS,
          '%s: trainer must be one of %s, got %r' % (where, ', '.join(TRAINERS), t['trainer']))
    t['name'] = name
    t['path'] = path
    t.setdefault('claims', [])
    t.setdefault('figures', [])
    # prose under the claims (what the runs mean, links to measurements); numbers belong in the
    # rows and claims, which the records fill in, not here
    _need(isinstance(t.get('discussion', ''), str), '%s: discussion must be a string (Markdown)' % where)
    return t


def row_available(row, profile):
    a = row.get('available', True)
    return a if isinstance(a, bool) else profile in a


def planned_seeds(table, row, profile, override=None):
    """Seeds 1..N of a row in a profile: --seeds, else the row's seeds, else the table's."""
    if override is not None:
        return list(range(1, override + 1))
    s = row.get('seeds')
    if isinstance(s, dict):
        s = s.get(profile)
    if s is None:
        s = table['seeds'].get(profile)
    _need(s is not None, '%s: no seeds for profile %s' % (table['path'], profile))
    return list(range(1, s + 1))


def find_config(root, profile, row):
    """configs/<profile>/<some table>/<row>.toml; exactly one per profile (the row names the run)."""
    found = sorted(glob.glob(os.path.join(root, 'configs', profile, '*', row + '.toml')))
    _need(len(found) <= 1, 'row %s has %d configs in profile %s (%s): a row name must name one config'
          % (row, len(found), profile, ', '.join(found)))
    return found[0] if found else None


def check_one_trainer(tables):
    """StudyError if ``tables`` name two trainers: one command passes one --data, which cannot be
    both a CIFAR archive and an ILSVRC-12 folder (and a row shared by such tables would run twice
    into one log dir)."""
    first = tables[0]
    for t in tables[1:]:
        _need(t['trainer'] == first['trainer'],
              'tables %s (trainer %s) and %s (trainer %s) in one command: one --data cannot serve two '
              'trainers; run them in separate commands' % (first['name'], first['trainer'], t['name'], t['trainer']))


def load_config(path, trainer='cifar'):
    """The trainer config as a dict, with what the study reads (model, schedule, epochs, ...)
    filled from ``trainer``'s defaults; ``dataset`` is "imagenet" for the ImageNet trainer (which
    has no such option: its data is an ILSVRC-12 style folder)."""
    _need(trainer in TRAINERS, 'trainer must be one of %s, got %r' % (', '.join(TRAINERS), trainer))
    c = _load_toml(path)
    c = {k.replace('-', '_'): v for k, v in c.items()}
    if trainer == 'imagenet':
        c = dict(IMAGENET_DEFAULTS, **c)
        c['dataset'] = 'imagenet'
        c.setdefault('epochs', imagenet.SCHEDULE_RECIPES.get(c['schedule'], {}).get('epochs'))
        return c
    c.setdefault('model', 'resnet')
    c.setdefault('depth', DEFAULT_DEPTH)
    c.setdefault('schedule', 'short')
    c.setdefault('norm', 'bn')
    c.setdefault('dataset', 'cifar10')
    if 'epochs' not in c:
        c['epochs'] = SCHEDULE_EPOCHS.get(c['schedule'])
    return c


def is_imagenet(config):
    """Whether a config of :func:`load_config` is the ImageNet trainer's."""
    return config.get('dataset') == 'imagenet'


def model_name(config):
    if is_imagenet(config):
        name = IMAGENET_ARCH_NAMES.get(config['arch'], config['arch'])
        size = config.get('image_size', IMAGENET_DEFAULTS['image_size'])
        return name if size == IMAGENET_DEFAULTS['image_size'] else '%s at %d px' % (name, size)
    if config.get('model', 'resnet') == 'resnet':
        return 'ResNet-%d' % (6 * config.get('depth', DEFAULT_DEPTH) + 2)
    return 'Inception (Sect. 4.3.2)'


def file_sha256(path):
    with open(path, 'rb') as f:
        return hashlib.sha256(f.read()).hexdigest()


def config_settings_sha256(path):
    """sha256 of what a config sets (its parsed TOML, keys sorted), not of its text: correcting a
    config's comments neither refuses a resume nor marks its records as made with another config."""
    settings = json.dumps(_load_toml(path), sort_keys=True, default=str)
    return hashlib.sha256(settings.encode()).hexdigest()


# ----------------------------------------------------------------------------------------------
# runs on disk

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
    """Write through a temporary file and rename: a kill never leaves half a file."""
    tmp = path + '.tmp'
    with open(tmp, 'w') as f:
        json.dump(obj, f, indent=1)
        f.write('\n')
    os.replace(tmp, path)


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


def machine():
    """platform, cores and GPUs (names from nvidia-smi when it exists, else "none")."""
    gpus = 'none'
    if shutil.which('nvidia-smi'):
        try:
            out = subprocess.run(['nvidia-smi', '--query-gpu=name', '--format=csv,noheader'],
                                 capture_output=True, text=True, timeout=30).stdout.strip()
            gpus = ', '.join(out.splitlines()) or 'none'
        except (OSError, subprocess.SubprocessError):
            pass
    return {'platform': platform.platform(), 'processor': platform.machine(), 'cores': os.cpu_count(),
            'gpu': gpus}


def utc_now():
    return datetime.datetime.now(datetime.timezone.utc).replace(microsecond=0).isoformat()


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
    shutil.copy2(config_path, os.path.join(tmp, 'config.toml'))
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


# ----------------------------------------------------------------------------------------------
# numbers from records

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


def mean_std(values):
    """(mean, sample std or None for one value, n); (None, None, 0) for none."""
    n = len(values)
    if not n:
        return None, None, 0
    m = sum(values) / n
    if n == 1:
        return m, None, 1
    return m, math.sqrt(sum((v - m) ** 2 for v in values) / (n - 1)), n


def fmt_mean_std(values, digits=2):
    m, s, n = mean_std(values)
    if n == 0:
        return None
    if s is None:
        return '%.*f (1 seed)' % (digits, m)
    return '%.*f ± %.*f' % (digits, m, digits, s)


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


#: what the conventions column means (kalman_norm/trainer.py, CONVENTIONS; README, "Conventions")
CONVENTIONS_NOTE = ('Conventions: the trainer\'s version of what a run means, in its options.json. 1 (records '
                    'without the key): BN\'s and BKN\'s variance moving average biased, `--seed` fixes the data '
                    'order only; 2: that average unbiased, BRN tracks σ, `--seed` also fixes the initial weights. '
                    'A row\'s mean and the claims pool the seeds of both.')


def record_conventions(rec):
    """The conventions a record was made under: its identity's ``conventions``, 1 before the key."""
    return ((rec.get('options') or {}).get('identity') or {}).get('conventions', 1)


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


def describe_machine(m):
    if not m:
        return 'unknown'
    gpu = m.get('gpu', 'none')
    return '%s CPU cores, %s' % (m.get('cores', '?'), 'no GPU' if gpu == 'none' else gpu)


def claim_evals(claim):
    """(evaluation of a, evaluation of b): ``eval`` for both, unless ``eval_a`` / ``eval_b`` set one."""
    which = claim.get('eval', 'moving')
    return claim.get('eval_a', which), claim.get('eval_b', which)


#: the level of every test; a table's verdicts use its Holm-adjusted p-values at this level
ALPHA = 0.05


def welch(a, b):
    """Welch's two-sample t on a and b: {diff, low, high, p, df, se} with the (1 - ALPHA) CI of
    mean(a) - mean(b); None when a sample has fewer than 2 values or both have no spread (the
    test is undefined)."""
    from scipy import stats
    na, nb = len(a), len(b)
    if na < 2 or nb < 2:
        return None
    (ma, sa, _), (mb, sb, _) = mean_std(a), mean_std(b)
    va, vb = sa * sa / na, sb * sb / nb
    if va + vb == 0:
        return None
    se = math.sqrt(va + vb)
    # Welch-Satterthwaite degrees of freedom
    df = (va + vb) ** 2 / (va * va / (na - 1) + vb * vb / (nb - 1))
    return _t_result(ma - mb, se, df, stats)


def paired(a, b):
    """The paired t on a[i] - b[i] (two numbers of one trained network): as :func:`welch`, df n - 1."""
    from scipy import stats
    d = [x - y for x, y in zip(a, b)]
    if len(d) < 2:
        return None
    m, s, n = mean_std(d)
    if s == 0:
        return None
    return _t_result(m, s / math.sqrt(n), n - 1, stats)


def _t_result(diff, se, df, stats):
    half = stats.t.ppf(1 - ALPHA / 2, df) * se
    return {'diff': diff, 'low': diff - half, 'high': diff + half, 'se': se, 'df': df,
            'p': float(2 * stats.t.sf(abs(diff) / se, df))}


def holm(pvalues):
    """Holm's step-down adjustment of the p-values (None entries are not tests and stay None)."""
    tested = sorted((p, i) for i, p in enumerate(pvalues) if p is not None)
    m, out, running = len(tested), list(pvalues), 0.0
    for rank, (p, i) in enumerate(tested):
        # the k-th smallest p is multiplied by the number of hypotheses not yet rejected, and the
        # adjusted values are made monotone, so rejecting at ALPHA is Holm's procedure
        running = max(running, min(1.0, (m - rank) * p))
        out[i] = running
    return out


def claim_values(claim, summaries):
    """(values of a, values of b, is_paired) of a claim; a claim on one row compares its two
    evaluations seed by seed (both numbers of a seed come from one trained network)."""
    which_a, which_b = claim_evals(claim)
    if claim['a'] == claim['b']:
        pairs = summaries[claim['a']]['paired']
        return [p[EVALS.index(which_a)] for p in pairs], [p[EVALS.index(which_b)] for p in pairs], True
    return summaries[claim['a']][which_a], summaries[claim['b']][which_b], False


def claim_test(claim, summaries, not_run=None):
    """The statistics of one claim: {values, paired, test (see :func:`welch`) or None, reason}.
    ``reason`` says why there is no test (a row not run in this profile, fewer than 2 seeds)."""
    reasons = [(not_run or {})[r] for r in (claim['a'], claim['b']) if r in (not_run or {})]
    if reasons:
        return {'a': [], 'b': [], 'paired': claim['a'] == claim['b'], 'test': None, 'reason': reasons[0]}
    a, b, is_paired = claim_values(claim, summaries)
    test = paired(a, b) if is_paired else welch(a, b)
    reason = None
    if test is None:
        reason = ('fewer than 2 seeds in a row' if min(len(a), len(b)) < 2
                  else 'no spread in either row: the t-test is undefined')
    return {'a': a, 'b': b, 'paired': is_paired, 'test': test, 'reason': reason}


def claim_verdict(claim, result, p_holm):
    """One of 'holds', 'reversed', 'not established' (module doc): from the Holm-adjusted p.

    A directional paper claim holds when the difference is established with the paper's sign,
    and is reversed when it is established with the other.  "No gain" (paper = 0) cannot be
    established by a test of difference: it is reversed by an established gain, otherwise not
    established (the line states the gain the CI rules out).  A claim without a paper number
    (this project's question) holds when a difference is established, in the observed direction,
    which the line names."""
    test = result['test']
    if test is None or p_holm is None or not p_holm < ALPHA:
        return 'not established'
    paper = claim.get('paper')
    if paper is None:
        return 'holds'
    if paper == 0:
        return 'reversed' if test['diff'] > 0 else 'not established'
    return 'holds' if (test['diff'] > 0) == (paper > 0) else 'reversed'


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


# ----------------------------------------------------------------------------------------------
# planning and estimates

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
    """Whether the record's config.toml sets anything other than the row's config file now
    (comments aside: a corrected comment does not make a record another config's)."""
    rec = load_record(record)
    if not rec or rec['config_text'] is None:
        return False
    try:
        made_with = tomllib.loads(rec['config_text'])
    except tomllib.TOMLDecodeError:
        return True
    return made_with != _load_toml(config)


def record_trainer(rec):
    """The trainer that made a record, from its options.json: only the ImageNet trainer has --arch."""
    return 'imagenet' if 'arch' in rec['options'] else 'cifar'


def _cost_key(config):
    """What sets the minutes of an epoch, trainer first (a CIFAR record never estimates an ImageNet
    run): CIFAR: model, depth, norm.  ImageNet: the architecture at its image size, and the steps
    and samples per step, which only a step cap fixes (an epoch is the --data folder, unknown here)."""
    norm = config.get('norm', 'bn')
    if norm in ('bkn', 'gkn') and config.get('prior') == 'mc':
        norm += '-mc'
    if is_imagenet(config):
        return ('imagenet', config['arch'], config['image_size'], config.get('steps_per_epoch'),
                config['total_batch'], norm)
    return ('cifar', config.get('model', 'resnet'), config.get('depth', DEFAULT_DEPTH), norm)


def minutes_per_epoch(root, profile, config):
    """(minutes, source): the median over this profile's records of the same trainer, model and norm
    (wall minutes / epochs, see :func:`_cost_key`); else the median over records of the same model
    with other norms, each scaled by the norms' relative step time (:data:`NORM_COST`); else, for
    CIFAR, the documented default model.  Minutes per epoch hardly depend on the number of epochs; a
    CIFAR config with --steps-per-epoch is scaled by its share of an epoch.  An ImageNet config has
    no measured base: without a record of its model, minutes is None."""
    key = _cost_key(config)
    same, scaled = [], []
    for run in glob.glob(os.path.join(root, 'results', 'runs', profile, '*', 'seed*', 'run.json')):
        d = os.path.dirname(run)
        rec = load_record(d)
        cfg = os.path.join(d, 'config.toml')
        if not rec or not rec['stats'] or not os.path.isfile(cfg):
            continue
        # run.json's minutes add up every attempt; a run launched by hand has only the trainer's
        # own clock (the last process's minutes: right unless it was resumed)
        minutes = rec['run'].get('wall_minutes')
        if not _is_number(minutes):
            minutes = rec['stats'][-1].get('wall_minutes')
        if not _is_number(minutes):
            continue
        per_epoch = minutes / rec['stats'][-1]['epoch_num']
        rec_key = _cost_key(load_config(cfg, record_trainer(rec)))
        if rec_key == key:
            same.append(per_epoch)
        elif rec_key[:-1] == key[:-1]:
            # the same model with another norm: its minutes times the ratio of the two norms'
            # step times, so a new row of a measured model does not fall back to the default
            scaled.append(per_epoch * NORM_COST.get(key[-1], 1.0) / NORM_COST.get(rec_key[-1], 1.0))
    # the median: records made while the machine was shared run slower, and a few do not make
    # every estimate slow
    if same:
        return float(statistics.median(same)), 'measured (median of %d records)' % len(same)
    if scaled:
        return (float(statistics.median(scaled)),
                'scaled from %d records of the model with other norms' % len(scaled))
    if is_imagenet(config):
        return None, 'no estimate (no record of this model yet)'
    _, model, depth, norm = key
    base = BASE_MINUTES_PER_EPOCH * (INCEPTION_COST if model == 'inception' else depth / 3.0)
    batch_scale = 1.0
    steps = config.get('steps_per_epoch')
    if steps:
        batch_scale = min(1.0, steps / (50000.0 / config.get('total_batch', 128)))
    return base * NORM_COST.get(norm, 1.0) * batch_scale, 'default estimate'


# ----------------------------------------------------------------------------------------------
# the Markdown table

def results_stem(root, table_name, profile):
    return os.path.join(root, 'results', table_name + ('' if profile == 'cpu' else '-' + profile))


def budget_line(c):
    """One config's budget, e.g. 'ResNet-20, 10 epochs (schedule short), 128 samples per step,
    CIFAR10'; an ImageNet config adds its step cap and towers, which set its cost on a CPU."""
    if not is_imagenet(c):
        return '%s, %s epochs (schedule %s), %s samples per step, %s' % (
            model_name(c), c['epochs'], c['schedule'], c.get('total_batch', 128), c['dataset'].upper())
    steps = ' of %d steps' % c['steps_per_epoch'] if c.get('steps_per_epoch') else ''
    towers = '%d tower%s of %d' % (c['gpus'], 's' if c['gpus'] > 1 else '', c['total_batch'] // c['gpus'])
    return '%s, %s epochs%s (schedule %s), %s samples per step on %s, %s-style folder' % (
        model_name(c), c['epochs'], steps, c['schedule'], c['total_batch'], towers, c['dataset'].upper())


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
        summaries[r['row']] = summarize_row([x for x in recs if x])
    return summaries, not_run


#: a generated block of a Markdown file: ``<!-- reproduce: claims SELECTOR ... -->`` ... ``<!-- /reproduce -->``
BLOCK_START, BLOCK_END = '<!-- reproduce: claims ', '<!-- /reproduce -->'


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


def rewrite_blocks(root, path, profile='cpu'):
    """Rewrite every generated claims block of the Markdown file ``path`` from the records; True
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
        selectors = text[start + len(BLOCK_START):head_end - len('-->')].split()
        out += [text[pos:head_end], '\n', claims_block(root, selectors, prefix, profile), '\n']
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
        summaries[name] = s = summarize_row(recs)
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
              'statistics.' % EVAL_SET[table['trainer']], '']
    headers = ['row', 'paper', 'ours A (moving)', 'ours B (online)', 'train error (%)', 'seeds done / planned',
               'epochs', 'data', 'machine', 'conventions: seeds']
    lines.append(tabulate(rows, headers=headers, tablefmt='github', disable_numparse=True))
    lines += ['', CONVENTIONS_NOTE, '']
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
              'Every number above is computed by `scripts/reproduce.py` (`kalman_norm/study.py`) from the '
              'records in `results/runs/%s/<row>/seed<S>/`.' % profile, '']
    return '\n'.join(lines), summaries
