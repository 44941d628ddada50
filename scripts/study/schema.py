"""The study's tables and row configs: the table file's typed schema, where a row's config is, and
what the study reads from a config (model, schedule, epochs), filled from the trainers' defaults."""
import glob
import hashlib
import json
import os

try:
    import tomllib
except ImportError:  # Python 3.10
    import tomli as tomllib

from kalman_norm.train import cifar, imagenet
from kalman_norm.train.options import OptionError, read_config


PROFILES = ('cpu', 'paper')


#: the trainers a table's rows can run with (scripts/reproduce.py maps each to its script)
TRAINERS = ('cifar', 'imagenet')


METRICS = ('accuracy',)


EVALS = ('moving', 'batch')


#: the trainer's default depth (kalman_norm.train.cifar.DEFAULTS) and epochs per schedule, for configs
#: that leave them out; the configs in this repository all state their epochs.  Both are read
#: from the trainers themselves, as the ImageNet defaults below.
DEFAULT_DEPTH = next(o.default for o in cifar.TASK.all_options() if o.key == 'depth')


SCHEDULE_EPOCHS = {name: recipe['epochs'] for name, recipe in cifar.SCHEDULE_RECIPES.items()}


#: the ImageNet trainer's defaults of what the study reads (its epochs come from the schedule's
#: recipe, imagenet.SCHEDULE_RECIPES), taken from the trainer itself
IMAGENET_DEFAULTS = {opt.key: opt.default for opt in imagenet.TASK.all_options()
                     if opt.key in ('norm', 'arch', 'image_size', 'schedule', 'gpus', 'total_batch')}


IMAGENET_ARCH_NAMES = {'resnet50': 'ResNet-50', 'resnet101': 'ResNet-101', 'inception_v2': 'Inception-v2'}


class StudyError(ValueError):
    """A bad table, config, or command-line choice; the message says what to fix."""


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


def read_row_config(path):
    """A row config's settings, resolved through its ``base`` (kalman_norm.train.options.read_config, the
    trainer's own reading of --config); a bad one is a StudyError."""
    try:
        return read_config(path)
    except OptionError as e:
        raise StudyError(str(e))


def _is_number(x):
    return isinstance(x, (int, float)) and not isinstance(x, bool)


def table_path(root, table):
    """A table name ('fig4') or a path to a table file."""
    if table.endswith('.toml') or os.sep in table:
        return table
    return os.path.join(root, 'configs', 'tables', table + '.toml')


class Field(object):
    """One key of a table file: its type and range, and the message a bad value gets.

    kind: 'text' (a non-empty string), 'str', 'number', 'accuracy' (a number in 0-100), 'seeds' (a
    positive integer, or {profile: positive integer} when ``per_profile``), 'choice' (one of
    ``choices``), 'available' (true, false or a list of profiles), 'list' (a TOML array), 'table' (a non-empty TOML table)."""

    def __init__(self, kind, message, required=False, default=None, choices=None, per_profile=True):
        self.kind, self.message, self.required, self.default = kind, message, required, default
        self.choices, self.per_profile = choices, per_profile

    def ok(self, v):
        def count(n):
            return isinstance(n, int) and not isinstance(n, bool) and n >= 1
        if self.kind == 'text':
            return isinstance(v, str) and bool(v.strip())
        if self.kind == 'str':
            return isinstance(v, str)
        if self.kind == 'number':
            return _is_number(v)
        if self.kind == 'accuracy':
            return _is_number(v) and 0 <= v <= 100
        if self.kind == 'seeds':
            return count(v) or (self.per_profile and isinstance(v, dict) and bool(v)
                                and all(p in PROFILES and count(n) for p, n in v.items()))
        if self.kind == 'choice':
            return v in self.choices
        if self.kind == 'available':
            return isinstance(v, bool) or (isinstance(v, list) and all(p in PROFILES for p in v))
        if self.kind == 'list':
            return isinstance(v, list)
        if self.kind == 'table':
            return isinstance(v, dict) and bool(v)
        raise ValueError(self.kind)


def check_fields(entry, fields, where, known=True):
    """``entry`` with every field checked and defaults filled; StudyError naming ``where`` and the
    key for the first bad one (and, with ``known``, for a key no field declares)."""
    if known:
        unknown = sorted(set(entry) - set(fields))
        _need(not unknown, '%s: unknown key(s) %s; known: %s' % (where, ', '.join(unknown), ', '.join(sorted(fields))))
    out = dict(entry)
    for key, f in fields.items():
        if key not in entry:
            _need(not f.required, '%s: %s' % (where, f.message.format(key=key, value=None)))
            if f.default is not None:
                out[key] = f.default
            continue
        _need(f.ok(entry[key]), '%s: %s' % (where, f.message.format(key=key, value=entry[key])))
    return out


#: the table file's schema: the table's own keys, a [[rows]] entry, a [[claims]] entry, a
#: [[figures]] entry (the references between them are checked in load_table)
TABLE_FIELDS = {
    'title': Field('text', 'needs title = "..." (a string)', required=True),
    'claim': Field('text', 'needs claim = "..." (a string)', required=True),
    'trainer': Field('choice', 'trainer must be one of %s, got {value!r}' % ', '.join(TRAINERS), default='cifar',
                     choices=TRAINERS),
    # prose under the claims (what the runs mean, links to measurements); numbers belong in the
    # rows and claims, which the records fill in, not here
    'discussion': Field('str', 'discussion must be a string (Markdown)', default=''),
    # what the accuracies are measured on, when not the trainer's test set (a --validation split)
    'eval_set': Field('text', 'eval_set must be a non-empty string, e.g. "validation split (...)"'),
    # the cost columns (step time vs BN, folding, extra parameters; study/efficiency.py): the JSON
    # record of scripts/benchmark_norms.py --json, relative to the repository; every row then names
    # its configuration there (a row's ``benchmark``)
    'benchmark_record': Field('text', 'benchmark_record must be a path, e.g. "results/benchmark_norms.json"'),
    'seeds': Field('table', 'needs a [seeds] table with seeds per profile (%s)' % ', '.join(PROFILES), required=True),
    'rows': Field('list', 'needs at least one [[rows]] entry', required=True),
    'claims': Field('list', 'claims must be [[claims]] entries', default=[]),
    'figures': Field('list', 'figures must be [[figures]] entries', default=[]),
}
SEEDS_FIELD = Field('seeds', 'seeds.{key} must be a positive integer, got {value!r}', per_profile=False)
ROW_FIELDS = {
    'row': Field('text', 'every [[rows]] entry needs row = "<config stem>"', required=True),
    'label': Field('text', 'needs label = "..."', required=True),
    'paper': Field('accuracy', '{key} must be an accuracy in % (0-100), got {value!r}'),
    'paper_online': Field('accuracy', '{key} must be an accuracy in % (0-100), got {value!r}'),
    'paper_source': Field('str', 'paper_source must be a string'),
    'metric': Field('choice', 'metric must be one of %s, got {value!r}' % ', '.join(METRICS), required=True,
                    choices=METRICS),
    'seeds': Field('seeds', 'seeds must be a positive integer or {{cpu = N, paper = N}}, got {value!r}'),
    'available': Field('available', 'available must be true, false or a list of profiles, got {value!r}'),
    'reason': Field('str', 'reason must be a string'),
    # 'precise': the row's A column is PreciseBN's evaluation (the trainer's val-error-precise)
    'moving_stats': Field('choice', "moving_stats must be 'ema' or 'precise', got {value!r}", choices=('ema', 'precise')),
    # the row's label in scripts/benchmark_norms.py (its step-time column)
    'benchmark': Field('text', 'benchmark must be a label of scripts/benchmark_norms.py, got {value!r}'),
}
CLAIM_FIELDS = {
    'label': Field('str', 'a [[claims]] entry needs label = "..."', required=True),
    'a': Field('str', "a must be one of the table's rows, got {value!r}", required=True),
    'b': Field('str', "b must be one of the table's rows, got {value!r}", required=True),
    'paper': Field('number', 'paper must be a number (points)'),
    'eval': Field('choice', '{key} must be moving or batch', choices=EVALS),
    'eval_a': Field('choice', '{key} must be moving or batch', choices=EVALS),
    'eval_b': Field('choice', '{key} must be moving or batch', choices=EVALS),
}
FIGURE_FIELDS = {
    'name': Field('str', 'a [[figures]] entry needs name = "<letters, digits, _>" (the PNG is '
                  'results/<table>_<name>.png)', required=True),
    'title': Field('str', 'title must be a string'),
    'rows': Field('list', "rows must be a list of the table's rows", required=True),
    'eval': Field('choice', 'eval must be moving or batch', choices=EVALS),
    # a budget figure: final accuracy against the rows' epochs, one line per series of rows
    'series': Field('table', 'series must be a table {{label = [rows]}}'),
}


def load_table(path):
    """The table file at ``path``, checked against its schema (the ``*_FIELDS`` above); ``name``
    is the file stem."""
    where = path
    t = check_fields(_load_toml(path), TABLE_FIELDS, where, known=False)
    _need(all(p in PROFILES for p in t['seeds']), '%s: %s' % (where, TABLE_FIELDS['seeds'].message))
    for p, n in t['seeds'].items():
        check_fields({p: n}, {p: SEEDS_FIELD}, where)
    _need(t['rows'], '%s: %s' % (where, TABLE_FIELDS['rows'].message))
    names = set()
    for r in t['rows']:
        _need(isinstance(r.get('row'), str) and r['row'], '%s: %s' % (where, ROW_FIELDS['row'].message))
        w = '%s, row %s' % (where, r['row'])
        _need(r['row'] not in names, '%s: listed twice' % w)
        names.add(r['row'])
        check_fields(r, ROW_FIELDS, w)
        _need(('paper' not in r and 'paper_online' not in r) or isinstance(r.get('paper_source'), str),
              '%s: a paper number needs paper_source = "..." (e.g. "Table 8"; without a number: why there is none)' % w)
        if r.get('available', True) is not True:
            _need(isinstance(r.get('reason'), str) and r['reason'].startswith('not run here: '),
                  '%s: an unavailable row needs reason = "not run here: <why>"' % w)
        _check_benchmark_label(t, r, w)
    for c in t['claims']:
        _need(isinstance(c.get('label'), str), '%s: %s' % (where, CLAIM_FIELDS['label'].message))
        w = '%s, claim %r' % (where, c['label'])
        check_fields(c, CLAIM_FIELDS, w)
        for key in ('a', 'b'):
            _need(c[key] in names, '%s: %s' % (w, CLAIM_FIELDS[key].message.format(key=key, value=c[key])))
        _need(c['a'] != c['b'] or claim_evals(c)[0] != claim_evals(c)[1],
              '%s: a claim on one row compares its two evaluations: set eval_a and eval_b apart' % w)
    for f in t['figures']:
        _need(isinstance(f.get('name'), str) and f['name'].replace('_', '').isalnum(),
              '%s: %s' % (where, FIGURE_FIELDS['name'].message))
        w = '%s, figure %s' % (where, f['name'])
        check_fields(f, FIGURE_FIELDS, w)
        _need(f['rows'] and all(r in names for r in f['rows']), '%s: %s' % (w, FIGURE_FIELDS['rows'].message))
        for label, members in f.get('series', {}).items():
            _need(isinstance(members, list) and members and all(r in f['rows'] for r in members),
                  "%s: series %r must list some of the figure's rows" % (w, label))
    t['name'] = os.path.splitext(os.path.basename(path))[0]
    t['path'] = path
    return t


def _check_benchmark_label(table, row, where):
    """A table with cost columns names every row's benchmark label; a label must be one of
    scripts/benchmark_norms.py's (imported only for such a table: it loads TensorFlow's graph code)."""
    if 'benchmark_record' not in table:
        _need('benchmark' not in row, '%s: benchmark = ... needs the table\'s benchmark_record = "<json path>"' % where)
        return
    _need(table.get('trainer', 'cifar') == 'cifar', '%s: cost columns (benchmark_record) are for CIFAR tables only'
          % where)
    _need('benchmark' in row, '%s: the table has cost columns (benchmark_record): the row needs benchmark = '
          '"<label of scripts/benchmark_norms.py>"' % where)
    from .efficiency import benchmark_labels
    labels = benchmark_labels()
    _need(row['benchmark'] in labels, '%s: benchmark %r is not a label of scripts/benchmark_norms.py; labels: %s'
          % (where, row['benchmark'], ', '.join(labels)))


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
    c = read_row_config(path)
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
    """sha256 of what a config sets (its parsed TOML resolved through its base, keys sorted), not of
    its text: correcting a config's comments, or stating it as a base and what differs, neither
    refuses a resume nor marks its records as made with another config."""
    settings = json.dumps(read_row_config(path), sort_keys=True, default=str)
    return hashlib.sha256(settings.encode()).hexdigest()


def claim_evals(claim):
    """(evaluation of a, evaluation of b): ``eval`` for both, unless ``eval_a`` / ``eval_b`` set one."""
    which = claim.get('eval', 'moving')
    return claim.get('eval_a', which), claim.get('eval_b', which)


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
