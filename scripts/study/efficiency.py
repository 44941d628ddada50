"""A table's cost columns (the micro-batch leaderboard's): each row's training-step time relative to
BN, read from scripts/benchmark_norms.py's JSON record under the row's ``benchmark`` label; whether
its norm folds into the conv at inference (the registry's ``folds_at_inference``); and its extra
trainable parameters over the same net with BN, counted by scripts/count_params.py from the row's
own config.  Nothing here is typed by hand: a label the record lacks is "not measured"."""
import importlib.util
import inspect
import json
import os
import tempfile

from .schema import StudyError, _need, find_config, row_available

SCRIPTS_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
COST_HEADERS = ['step time (× BN)', 'inference folds into the conv', 'extra parameters vs BN']
_loaded = {}


def _script(name):
    """scripts/<name>.py as a module (loaded by path once: the study does not rely on sys.path)."""
    if name not in _loaded:
        spec = importlib.util.spec_from_file_location('_study_' + name, os.path.join(SCRIPTS_DIR, name + '.py'))
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        _loaded[name] = module
    return _loaded[name]


def benchmark_labels():
    """{label: (norm, spec options)} of scripts/benchmark_norms.py."""
    return {label: (norm, options) for label, norm, options in _script('benchmark_norms').NORMS}


#: options that set a schedule's length, not the work of a step (BRN's r/d warm-up is sized to each
#: run): a benchmark label matches a row whatever they are
SCHEDULE_OPTIONS = ('warmup',)


def effective_settings(spec):
    """Everything a NormSpec builds with: the layer's defaults overridden by the spec's options, and
    the prior's method for a Kalman norm; schedule lengths left out."""
    params = inspect.signature(spec.norm.layer).parameters
    settings = {k: p.default for k, p in params.items()
                if p.default is not inspect.Parameter.empty and k not in ('prior', 'group_size')}
    settings.update(spec.options)
    settings.setdefault('weight_standardization', False)
    if spec.propagates:
        settings.update(prior_method=spec.prior_method, prior_samples=spec.prior_samples)
    return {k: v for k, v in settings.items() if k not in SCHEDULE_OPTIONS}


def read_benchmark(root, path):
    """The benchmark record at ``path`` (relative to ``root``), or None if there is none yet."""
    full = os.path.join(root, path)
    if not os.path.isfile(full):
        return None
    with open(full) as f:
        try:
            return json.load(f)
        except ValueError as e:
            raise StudyError('%s is not valid JSON: %s' % (path, e))


def _row_options(config):
    from kalman_norm.train import cifar
    from kalman_norm.train.options import OptionError
    try:
        # the trainer's own reading of the config; the log dir is only checked (never created)
        return cifar.parse_options(['--config', config, '--logdir', os.path.join(tempfile.gettempdir(), 'unused-logdir')])
    except OptionError as e:
        raise StudyError('%s: %s' % (config, e))


def step_time_cell(row, options, record, record_path):
    """The row's median step time over BN's at its grouping, or "not measured (why)"."""
    import kalman_norm as kn
    norm, label_options = benchmark_labels()[row['benchmark']]
    label_spec = kn.NormSpec(norm, group_size=options['batch'], **label_options)
    ours, theirs = effective_settings(options['spec']), effective_settings(label_spec)
    differ = ['norm %r vs %r' % (options['norm'], norm)] if options['norm'] != norm else []
    differ += ['%s %r vs %r' % (k, ours.get(k), theirs.get(k)) for k in sorted(set(ours) | set(theirs))
               if ours.get(k, '?') != theirs.get(k, '?')]
    _need(not differ, "row %s: benchmark label %r is not the row's configuration (row vs label: %s)"
          % (row['row'], row['benchmark'], '; '.join(differ)))
    if record is None:
        return 'not measured (no %s yet)' % record_path
    if options['model'] != 'resnet' or record['depth_n'] != options['depth'] or record['batch'] != options['total_batch']:
        return 'not measured (the record is %s at %d per step)' % (record['model'], record['batch'])
    for m in record['measurements']:
        if m['label'] == row['benchmark'] and m['group_size'] == options['batch']:
            return '%.2f×' % m['ratio_to_bn']
    return 'not measured (groups of %d)' % options['batch']


def cost_cells(root, table, profile):
    """{row: [step time, folds, extra parameters]} of the table's rows that run in ``profile`` (and
    have a config there)."""
    from kalman_norm.norms import get_norm
    import kalman_norm as kn
    from tensorpack.models.registry import disable_layer_logging
    disable_layer_logging()         # tensorpack would log every layer of every net counted
    counter = _script('count_params')
    record = read_benchmark(root, table['benchmark_record'])
    counts, cells = {}, {}

    def count(options, spec):
        # rows that build one net (the PreciseBN rows as their training rows; BN for every row) count it once
        key = repr((options['model'], options['depth'], options['model_options'], options['tower_batch'], spec))
        if key not in counts:
            counts[key] = counter.count_trainable_parameters(counter.build_run(options, spec))
        return counts[key]

    for r in table['rows']:
        config = find_config(root, profile, r['row'])
        if not row_available(r, profile) or config is None:
            continue
        options = _row_options(config)
        extra = count(options, options['spec']) - count(options, kn.NormSpec('bn', group_size=options['batch']))
        cells[r['row']] = [step_time_cell(r, options, record, table['benchmark_record']),
                           'yes' if get_norm(options['norm']).folds_at_inference else 'no',
                           '{:+,}'.format(extra)]
    return cells


def cost_note(table, record):
    """The paragraph under the table that says where each cost column comes from."""
    path = table['benchmark_record']
    if record is None:
        source = 'no benchmark record yet (`%s`, written by `scripts/benchmark_norms.py --json`)' % path
    else:
        bn = [m for m in record['measurements'] if m['label'] == 'BN']
        load = record['load_average_1min']
        source = ('`%s`, made by `%s` (%s, %d random images per step, SGD+momentum, median of %d interleaved '
                  'rounds after %d warm-up rounds, %s thread(s) per session; %s; load average (1 min) %.2f '
                  'before and %.2f after the timed rounds on %d cores%s%s)' % (
                      path, record['command'], record['model'], record['batch'], record['timed_rounds'],
                      record['warmup_rounds'], record['threads_per_session'] or "TensorFlow's default",
                      record['machine_description'], load['before_timed_rounds'], load['after_timed_rounds'],
                      record['machine']['cores'], '; %s' % record['note'] if record['note'] else '',
                      ''.join('; BN: %.1f ms/step at %s' % (m['ms_per_step'], m['grouping']) for m in bn)))
    return ('**Cost columns.** *Step time*: the row\'s median training-step time over BN\'s at the same '
            'grouping, measured side by side, from %s; each row names its configuration there '
            '(`benchmark` in configs/tables/%s.toml, checked against the row\'s config), and a PreciseBN row '
            'trains as its training row. *Inference folds into the conv*: with moving statistics the norm is '
            'a per-channel a·x + b, so it folds into the preceding conv\'s kernel and bias (the registry\'s '
            '`folds_at_inference`, `kalman_norm/norms.py`). *Extra parameters*: trainable parameters of the '
            'row\'s net minus those of the same net with BN, both counted from graphs built from the row\'s '
            'config (`scripts/count_params.py`).' % (source, table['name']))
