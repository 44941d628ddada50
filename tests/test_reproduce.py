"""The study machinery: scripts/study/ on synthetic records, and scripts/reproduce.py end to
end on a tiny generated image folder (two trainer runs: one fresh, one resumed after a kill).

Nothing here reads /work/shared or the repository's results/: every root is a tmp_path.
"""
import importlib.util
import os
import shutil
import sys

import cv2
import numpy as np
import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO, 'scripts'))
import study  # noqa: E402  (scripts/study/: the study tooling lives with the scripts, not in the library)
try:            # the trainer takes a tiny image folder as dataset "folder" (a "cifar10" must be complete)
    from kalman_norm.data.common import DATASETS
except ImportError:
    from kalman_norm.datasets import DATASETS
TINY_DATASET = 'folder' if 'folder' in DATASETS else 'cifar10'


def _load_script(name):
    spec = importlib.util.spec_from_file_location(name, os.path.join(REPO, 'scripts', name + '.py'))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


reproduce = _load_script('reproduce')

TABLE = '''
title = "Tiny table"
claim = "A beats B by 1.5 points."
[seeds]
cpu = 2
paper = 1
[[rows]]
row = "tiny_bn"
label = "BN (bs=2)"
paper = 91.3
paper_online = 90.0
paper_source = "Table 0"
metric = "accuracy"
[[rows]]
row = "tiny_gn"
label = "GN (bs=2)"
metric = "accuracy"
seeds = 3
[[rows]]
row = "tiny_c100"
label = "BN (bs=2), CIFAR-100"
paper = 63.8
paper_source = "Table 0"
metric = "accuracy"
available = false
reason = "not run here: no data"
[[claims]]
label = "BN - GN"
a = "tiny_bn"
b = "tiny_gn"
paper = 1.5
'''
CONFIG = '''# tiny: ResNet-8, 8 samples per step in groups of 2, 2 epochs of 2 steps
model = "resnet"
depth = 1
dataset = "%s"
norm = "%%s"
batch = 2
total_batch = 8
schedule = "short"
epochs = 2
steps_per_epoch = 2
num_proc = 0
''' % TINY_DATASET


#: the same table run by the ImageNet trainer, and a tiny config of it (ResNet-50 at 32 px, 2 towers)
IMAGENET_TABLE = TABLE.replace('[seeds]', 'trainer = "imagenet"\n[seeds]')
IMAGENET_CONFIG = '''arch = "resnet50"
image_size = 32
norm = "%s"
batch = 2
gpus = 2
total_batch = 8
schedule = "short"
epochs = 2
steps_per_epoch = 3
num_proc = 0
'''
IMAGENET_OPTIONS = {'arch': 'resnet50', 'data': '/x/cifar_ilsvrc'}     # what an ImageNet record's options.json has


def make_root(tmp_path, table=TABLE, rows=('tiny_bn', 'tiny_gn'), config=CONFIG):
    root = tmp_path / 'root'
    (root / 'configs' / 'tables').mkdir(parents=True)
    (root / 'configs' / 'tables' / 'tiny.toml').write_text(table)
    d = root / 'configs' / 'cpu' / 'tiny'
    d.mkdir(parents=True)
    for row in rows:
        norm = row.split('_')[1]
        extra = 'eval_stats = "both"\n' if norm == 'bn' else ''
        (d / (row + '.toml')).write_text(config % norm + extra)
    return str(root)


def write_record(root, row, seed, errors, batch_errors=None, train_error=0.2, minutes=10.0, status=None,
                 profile='cpu', config_text=None, options=None):
    """A synthetic record: one stats entry per epoch with the given validation errors (fractions);
    its config.toml is the row's config under root (default), else ``config_text``; ``options``
    are added to its options.json."""
    if config_text is None:
        config = study.find_config(root, profile, row)
        config_text = open(config).read() if config else CONFIG % 'bn'
    d = study.record_dir(root, profile, row, seed)
    os.makedirs(d)
    stats = []
    for i, e in enumerate(errors):
        s = {'epoch_num': i + 1, 'train_error': train_error, 'wall_minutes': minutes * (i + 1) / len(errors)}
        if batch_errors is None:
            s['val-error'] = e
        else:
            s['val-error-moving'], s['val-error-batch'] = e, batch_errors[i]
        stats.append(s)
    study.write_json(os.path.join(d, 'stats.json'), stats)
    study.write_json(os.path.join(d, 'options.json'),
                     dict({'data': '/x/cifar10-jpeg.tar.gz', 'epochs': len(errors)}, **(options or {})))
    study.write_json(os.path.join(d, 'run.json'), {'row': row, 'seed': seed, 'wall_minutes': minutes,
                                                   'machine': {'cores': 2, 'gpu': 'none'}})
    if status:
        study.write_json(os.path.join(d, 'status.json'), {'status': status})
    with open(os.path.join(d, 'config.toml'), 'w') as f:
        f.write(config_text)
    return d


# ----------------------------------------------------------------------------------------------
# numbers

def test_mean_std_against_numpy():
    values = [77.65, 71.76, 74.1]
    m, s, n = study.mean_std(values)
    assert n == 3 and m == pytest.approx(np.mean(values)) and s == pytest.approx(np.std(values, ddof=1))
    assert study.mean_std([80.0]) == (80.0, None, 1) and study.mean_std([]) == (None, None, 0)
    assert study.fmt_mean_std([80.0, 82.0]) == '81.00 ± 1.41'
    assert study.fmt_mean_std([80.0]) == '80.00 (1 seed)' and study.fmt_mean_std([]) is None


def test_summary_takes_last_epoch_and_leaves_diverged_runs_out(tmp_path):
    root = str(tmp_path)
    write_record(root, 'r', 1, [0.5, 0.30], batch_errors=[0.5, 0.25])
    write_record(root, 'r', 2, [0.5, 0.20], batch_errors=[0.5, 0.35])
    write_record(root, 'r', 3, [0.5, 0.10], batch_errors=[0.5, 0.10], status='diverged')
    write_record(root, 'r', 4, [0.5, float('nan')], batch_errors=[0.5, 0.1])      # NaN: diverged too
    recs = [study.load_record(study.record_dir(root, 'cpu', 'r', s)) for s in (1, 2, 3, 4)]
    s = study.summarize_row(recs)
    assert (s['n_done'], s['n_diverged']) == (2, 2)
    assert s['moving'] == pytest.approx([70.0, 80.0]) and s['batch'] == pytest.approx([75.0, 65.0])
    assert s['train_error'] == pytest.approx([20.0, 20.0]) and s['epochs'] == [2]
    assert s['data'] == ['cifar10-jpeg.tar.gz'] and s['machine'] == ['2 CPU cores, no GPU']


def _summaries(a, b):
    return {'a': {'moving': a, 'batch': []}, 'b': {'moving': b, 'batch': []}}


@pytest.mark.parametrize('na, nb, shift, seed', [(2, 2, 0.0, 0), (2, 3, 1.5, 1), (3, 3, 2.1, 2), (8, 8, 0.7, 3),
                                                   (5, 2, -3.0, 4), (4, 7, 0.1, 5)])
def test_welch_against_scipy(na, nb, shift, seed):
    from scipy import stats
    rng = np.random.RandomState(seed)
    a, b = list(78 + shift + rng.randn(na) * 1.3), list(78 + rng.randn(nb) * rng.uniform(0.3, 3))
    got = study.welch(a, b)
    ref = stats.ttest_ind(a, b, equal_var=False)
    ci = ref.confidence_interval(0.95)
    assert got['diff'] == pytest.approx(np.mean(a) - np.mean(b), rel=1e-12)
    assert got['p'] == pytest.approx(ref.pvalue, rel=1e-9) and got['df'] == pytest.approx(ref.df, rel=1e-12)
    assert (got['low'], got['high']) == (pytest.approx(ci.low, rel=1e-9), pytest.approx(ci.high, rel=1e-9))


@pytest.mark.parametrize('n, seed', [(2, 0), (3, 1), (8, 2)])
def test_paired_against_scipy(n, seed):
    from scipy import stats
    rng = np.random.RandomState(seed)
    a = list(75 + rng.randn(n) * 2)
    b = [x + 1.3 + rng.randn() * 0.4 for x in a]
    got, ref = study.paired(a, b), stats.ttest_rel(a, b)
    ci = ref.confidence_interval(0.95)
    assert got['diff'] == pytest.approx(np.mean(np.subtract(a, b)), rel=1e-12) and got['df'] == n - 1
    assert got['p'] == pytest.approx(ref.pvalue, rel=1e-9)
    assert (got['low'], got['high']) == (pytest.approx(ci.low, rel=1e-9), pytest.approx(ci.high, rel=1e-9))


def test_no_test_below_two_values_or_without_spread():
    assert study.welch([80.0], [78.0, 78.5]) is None and study.welch([80.0, 81.0], []) is None
    assert study.welch([80.0, 80.0], [78.0, 78.0]) is None
    assert study.paired([80.0], [78.0]) is None and study.paired([80.0, 81.0], [79.0, 80.0]) is None


def test_holm_is_the_step_down_procedure():
    # by hand: m = 4, sorted p 0.01, 0.02, 0.03, 0.5 -> 0.04, 0.06, 0.06 (monotone), 0.5
    assert study.holm([0.03, None, 0.5, 0.01, 0.02]) == [pytest.approx(0.06), None, pytest.approx(0.5),
                                                         pytest.approx(0.04), pytest.approx(0.06)]
    assert study.holm([]) == [] and study.holm([None]) == [None] and study.holm([0.7, 0.9]) == [1.0, 1.0]
    rng = np.random.RandomState(0)
    for _ in range(200):
        p = list(rng.uniform(0, 0.1, rng.randint(1, 9)) ** rng.uniform(0.5, 2))
        alpha = rng.choice([0.01, 0.05, 0.1])
        # Holm (1979): reject the k-th smallest while p_(k) <= alpha / (m - k + 1); stop at the first not
        rejected, m = set(), len(p)
        for k, i in enumerate(np.argsort(p, kind='stable')):
            if p[i] > alpha / (m - k):
                break
            rejected.add(i)
        assert {i for i, q in enumerate(study.holm(p)) if q <= alpha} == rejected


def _verdict(a, b, paper, others=()):
    """The verdict of claim a - b in a table with further claims whose p-values are ``others``."""
    claim = {'label': 'A - B', 'a': 'a', 'b': 'b', 'paper': paper}
    result = study.claim_test(claim, _summaries(a, b))
    p = study.holm([result['test']['p'] if result['test'] else None] + list(others))[0]
    return study.claim_verdict(claim, result, p)


@pytest.mark.parametrize('a, b, paper, verdict', [
    ([80.0, 81.0, 80.5], [78.0, 78.5, 78.2], 1.5, 'holds'),
    ([76.0, 76.5, 76.2], [78.0, 78.5, 78.2], 1.5, 'reversed'),
    ([76.0, 76.5, 76.2], [78.0, 78.5, 78.2], -0.6, 'holds'),
    ([78.0, 80.0], [78.5, 79.0], 1.5, 'not established'),
    ([80.0], [78.0, 78.5], 1.5, 'not established'),                 # n < 2: no test
    ([80.0, 80.2], [], 1.5, 'not established'),
    ([80.0, 80.2, 80.1], [78.0, 78.1, 78.3], 0.0, 'reversed'),      # a gain where the paper says none
    ([76.0, 76.2, 76.1], [78.0, 78.1, 78.3], 0.0, 'not established'),   # no gain: never "holds"
    ([76.0, 76.5, 76.2], [78.0, 78.5, 78.2], None, 'holds'),        # this project's question: a difference
    ([78.0, 80.0], [78.5, 79.0], None, 'not established'),
])
def test_claim_verdicts(a, b, paper, verdict):
    assert _verdict(a, b, paper) == verdict


def test_verdicts_use_the_holm_adjusted_p():
    a, b = [80.0, 81.3, 80.4], [78.0, 79.4, 78.6]
    p = study.welch(a, b)['p']
    assert 0.05 / 3 < p < 0.05 and _verdict(a, b, 1.5) == "holds"
    assert _verdict(a, b, 1.5, others=[0.3, 0.6]) == 'not established'        # the smallest of 3: 3p > 0.05
    assert _verdict(a, b, 1.5, others=[0.001, 0.002]) == 'holds'       # the largest of 3: p itself


def test_claim_rows_state_the_statistics():
    from scipy import stats
    a, b = [79.20, 81.32, 78.85], [76.61, 79.22, 77.26]
    claims = [{'label': 'BKN - BN', 'a': 'a', 'b': 'b', 'paper': 1.5},
              {'label': 'GN - BN', 'a': 'b', 'b': 'a', 'paper': 0.0},
              {'label': 'q0 - q01', 'a': 'a', 'b': 'b'},
              {'label': 'not run', 'a': 'a', 'b': 'c', 'paper': 0.5}]
    summaries = dict(_summaries(a, b), c={'moving': [], 'batch': []})
    rows, tested = study.claim_rows(claims, summaries, not_run={'c': 'not run here: no data'})
    assert tested == 3
    ref = stats.ttest_ind(a, b, equal_var=False)
    ci = ref.confidence_interval(0.95)
    assert rows[0][:8] == ['BKN - BN', 'A', '+1.50', '%+.2f' % (np.mean(a) - np.mean(b)),
                           '[%s, %s]' % (('%+.2f' % ci.low).replace('-', '−'), '%+.2f' % ci.high),
                           'Welch, df %.1f' % ref.df, '%.3f' % ref.pvalue, '%.3f' % min(1, 3 * ref.pvalue)]
    assert rows[0][8:] == ['3, 3', '79.20, 81.32, 78.85 vs 76.61, 79.22, 77.26', '**not established**']
    assert rows[1][2] == 'no gain (0)' and rows[1][-1] == '**not established** (rules out gains above +%.2f)' % -ci.low
    assert rows[2][2] == '— (no paper number)' and rows[2][-1] == '**not established** (observed direction: a − b > 0)'
    assert rows[3][3:8] == ['—', '—', '—', '—', '—'] and rows[3][-1] == '**not established** (not run here: no data)'


def test_claim_on_one_row_compares_its_two_evaluations_seed_by_seed():
    # Table 7's question: does a row score the same with moving (A) and online (B) statistics?
    # Both numbers of a seed come from one network: a paired t-test on the per-seed differences
    from scipy import stats
    row = {'moving': [78.0, 80.0, 79.0], 'batch': [78.5, 80.6, 79.4],
           'paired': [(78.0, 78.5), (80.0, 80.6), (79.0, 79.4)]}
    claim = {'label': 'KN: moving - online', 'a': 'kn', 'b': 'kn', 'eval_a': 'moving', 'eval_b': 'batch',
             'paper': 0.0}
    rows, tested = study.claim_rows([claim], {'kn': row})
    ref = stats.ttest_rel([78.0, 80.0, 79.0], [78.5, 80.6, 79.4])
    assert tested == 1 and rows[0][1] == 'A − B' and rows[0][3] == '−0.50' and rows[0][5] == 'paired t, df 2'
    assert rows[0][6] == '%.3f' % ref.pvalue and rows[0][8] == '3 pairs'
    assert rows[0][-1] == '**not established** (rules out any gain: a − b is below %s)' % (
        '%+.2f' % ref.confidence_interval().high).replace('-', '−')
    result = study.claim_test(dict(claim, paper=-0.6), {'kn': row})
    assert study.claim_verdict(dict(claim, paper=-0.6), result, result['test']['p']) == 'holds'
    # the pairs come from the records: only runs with both evaluations
    assert study.claim_test(claim, {'kn': dict(row, paired=[(78.0, 78.5)])})['test'] is None


def test_summary_pairs_the_two_evaluations_of_each_run(tmp_path):
    root = str(tmp_path)
    write_record(root, 'r', 1, [0.5, 0.30], batch_errors=[0.5, 0.25])
    write_record(root, 'r', 2, [0.5, 0.20])                  # no online evaluation: no pair
    recs = [study.load_record(study.record_dir(root, 'cpu', 'r', s)) for s in (1, 2)]
    assert study.summarize_row(recs)['paired'] == [pytest.approx((70.0, 75.0))]


def test_rendered_table_from_records_only(tmp_path):
    root = make_root(tmp_path)
    write_record(root, 'tiny_bn', 1, [0.5, 0.22], batch_errors=[0.5, 0.24])
    write_record(root, 'tiny_bn', 2, [0.5, 0.20], batch_errors=[0.5, 0.26])
    write_record(root, 'tiny_gn', 1, [0.5, 0.25])
    table = study.load_table(os.path.join(root, 'configs', 'tables', 'tiny.toml'))
    text, summaries = study.render_table(root, table, 'cpu', 'python scripts/reproduce.py tiny',
                                         [('All rows', 'x/tiny.png')])
    lines = {line.split('|')[1].strip(): [c.strip() for c in line.split('|')[2:-1]]
             for line in text.splitlines() if line.startswith('| ')}
    assert lines['BN (bs=2)'][:6] == ['91.30 (B: 90.00), Table 0', '79.00 ± 1.41', '75.00 ± 1.41', '20.00 ± 0.00',
                                      '2 / 2', '2']
    assert lines['GN (bs=2)'][1:5] == ['75.00 (1 seed)', '— (no online evaluation in this config)', '20.00 (1 seed)',
                                       '1 / 3']
    assert lines['GN (bs=2)'][0] == '— (no number in the paper)'
    assert lines['BN (bs=2), CIFAR-100'][1] == 'not run here: no data'
    assert all(all(cell for cell in cells) for cells in lines.values()), 'an empty cell'
    assert 'does not reach the paper\'s absolute numbers' in text and 'ResNet-8, 2 epochs (schedule short)' in text
    assert _row_cells(text, 'BN - GN') == ['BN - GN', 'A', '+1.50', '+4.00', '—', '—', '—', '—', '2, 1',
                                           '78.00, 80.00 vs 75.00', '**not established** (fewer than 2 seeds in a row)']
    assert 'This table tests 0 of its 1 claims' in text
    assert _row_cells(text, 'BN (bs=2)')[-1] == '1: 1–2' and _row_cells(text, 'GN (bs=2)')[-1] == '1: 1'
    assert '![All rows](tiny.png)' in text and 'python scripts/reproduce.py tiny' in text
    paper_text, _ = study.render_table(root, table, 'paper', 'cmd')
    assert 'does not reach' not in paper_text and 'not run yet' in paper_text


def test_discussion_is_rendered_under_the_claims(tmp_path):
    root = make_root(tmp_path)
    path = os.path.join(root, 'configs', 'tables', 'tiny.toml')
    with open(path) as f:
        text = f.read()
    with open(path, 'w') as f:
        f.write(text.replace('[seeds]', 'discussion = """\nWhy: see [the probe](p.md).\n"""\n[seeds]'))
    rendered, _ = study.render_table(root, study.load_table(path), 'cpu', 'cmd')
    assert '## Claims' in rendered and '## Discussion\n\nWhy: see [the probe](p.md).\n' in rendered
    assert rendered.index('## Claims') < rendered.index('## Discussion') < rendered.index('Reproduce')


def test_unrun_rows_say_why(tmp_path):
    root = make_root(tmp_path)
    table = study.load_table(os.path.join(root, 'configs', 'tables', 'tiny.toml'))
    text, _ = study.render_table(root, table, 'cpu', 'cmd')
    row = [line for line in text.splitlines() if line.startswith('| GN (bs=2)')][0]
    assert row.count('not run yet') >= 3 and '0 / 3' in row
    assert _row_cells(text, 'BN - GN')[-1] == '**not established** (fewer than 2 seeds in a row)'
    # a claim on a row this profile never runs says why
    table['claims'].append({'label': 'BN - BN, CIFAR-100', 'a': 'tiny_c100', 'b': 'tiny_bn', 'paper': 0.5})
    text, _ = study.render_table(root, table, 'cpu', 'cmd')
    assert _row_cells(text, 'BN - BN, CIFAR-100')[-1] == '**not established** (not run here: no data)'


# ----------------------------------------------------------------------------------------------
# tables, states, records

@pytest.mark.parametrize('edit, message', [
    (lambda t: t.replace('title = "Tiny table"\n', ''), 'needs title'),
    (lambda t: t.replace('cpu = 2\n', 'cpu = 0\n'), 'seeds.cpu must be a positive integer'),
    (lambda t: t.replace('reason = "not run here: no data"\n', ''), 'needs reason = "not run here: <why>"'),
    (lambda t: t.replace('b = "tiny_gn"', 'b = "tiny_ln"'), "b must be one of the table's rows"),
    (lambda t: t.replace('b = "tiny_gn"', 'b = "tiny_gn"\nevala = "batch"'), 'unknown key(s) evala'),
    (lambda t: t.replace('b = "tiny_gn"', 'b = "tiny_gn"\neval_b = "best"'), 'eval_b must be moving or batch'),
    (lambda t: t.replace('b = "tiny_gn"', 'b = "tiny_bn"\neval = "batch"'),
     'a claim on one row compares its two evaluations: set eval_a and eval_b apart'),
    (lambda t: t.replace('paper = 91.3', 'paper = 191.3'), 'paper must be an accuracy'),
    (lambda t: t.replace('metric = "accuracy"\n[[rows]]\nrow = "tiny_gn"',
                         'metric = "loss"\n[[rows]]\nrow = "tiny_gn"'),
     'metric must be one of accuracy'),
    (lambda t: t.replace('row = "tiny_gn"', 'row = "tiny_bn"'), 'listed twice'),
    (lambda t: t + 'x = [', 'is not valid TOML'),
    (lambda t: t + '[[figures]]\nname = "f"\nrows = ["tiny_ln"]\n', "rows must be a list of the table's rows"),
    (lambda t: t + '[[figures]]\nname = "a b"\nrows = ["tiny_bn"]\n', 'needs name = "<letters, digits, _>"'),
    (lambda t: t.replace('[seeds]', 'trainer = "mnist"\n[seeds]'),
     "trainer must be one of cifar, imagenet, got 'mnist'"),
    (lambda t: t.replace('[seeds]', 'discussion = 3\n[seeds]'), 'discussion must be a string'),
])
def test_bad_table_files_are_refused(tmp_path, edit, message):
    path = tmp_path / 't.toml'
    path.write_text(edit(TABLE))
    with pytest.raises(study.StudyError, match=message.replace('(', r'\(').replace(')', r'\)')):
        study.load_table(str(path))


def test_a_row_name_means_one_config_per_profile(tmp_path):
    root = make_root(tmp_path)
    other = os.path.join(root, 'configs', 'cpu', 'other')
    os.makedirs(other)
    shutil.copy(os.path.join(root, 'configs', 'cpu', 'tiny', 'tiny_bn.toml'), other)
    with pytest.raises(study.StudyError, match='row tiny_bn has 2 configs in profile cpu'):
        study.find_config(root, 'cpu', 'tiny_bn')


def test_run_states(tmp_path):
    root = make_root(tmp_path)
    logdir, record = study.logdir_of(root, 'cpu', 'r', 1), study.record_dir(root, 'cpu', 'r', 1)
    assert study.run_state(logdir, record, 2) == 'new'
    os.makedirs(logdir)
    assert study.run_state(logdir, record, 2) == 'new'
    study.write_json(os.path.join(logdir, 'stats.json'), [{'epoch_num': 1}])
    assert study.run_state(logdir, record, 2) == 'unfinished'                    # killed after epoch 1
    study.write_json(os.path.join(logdir, 'stats.json'), [{'epoch_num': 1}, {'epoch_num': 2}])
    assert study.run_state(logdir, record, 2) == 'finished'                      # by hand, no run.json
    study.write_json(os.path.join(logdir, 'run.json'), {'exit_code': 1, 'finished': 'x'})
    assert study.run_state(logdir, record, 2) == 'unfinished'                    # failed at the end
    study.write_json(os.path.join(logdir, 'options.json'), {'epochs': 3})
    study.write_json(os.path.join(logdir, 'run.json'), {'exit_code': 0})
    assert study.run_state(logdir, record, 2) == 'unfinished'                    # the resolved epochs win
    study.write_json(os.path.join(logdir, 'status.json'), {'status': 'diverged'})
    assert study.run_state(logdir, record, 2) == 'diverged'
    study.write_json(os.path.join(logdir, 'status.json'), {'status': 'finished'})
    assert study.run_state(logdir, record, 2) == 'finished'
    with open('/proc/self/cmdline', 'rb') as f:
        me = [c.decode() for c in f.read().split(b'\0')[:-1]]
    study.write_json(os.path.join(logdir, 'run.json'), {'pid': os.getpid(), 'command': me})
    assert study.run_state(logdir, record, 2) == 'running'
    study.write_json(os.path.join(logdir, 'run.json'), {'pid': os.getpid(), 'command': ['other']})
    assert study.run_state(logdir, record, 2) == 'finished'                      # a reused pid: not ours
    os.makedirs(record)
    study.write_json(os.path.join(record, 'run.json'), {})
    assert study.run_state(logdir, record, 2) == 'recorded'


def test_collect_never_overwrites_a_record(tmp_path):
    root = make_root(tmp_path)
    config = os.path.join(root, 'configs', 'cpu', 'tiny', 'tiny_bn.toml')
    logdir, record = study.logdir_of(root, 'cpu', 'tiny_bn', 1), study.record_dir(root, 'cpu', 'tiny_bn', 1)
    os.makedirs(logdir)
    study.write_json(os.path.join(logdir, 'stats.json'), [{'epoch_num': 2, 'val-error-moving': 0.3}])
    study.write_json(os.path.join(logdir, 'options.json'), {'epochs': 2})
    assert study.collect(logdir, record, config, 'tiny_bn', 'cpu', 1)
    assert sorted(os.listdir(record)) == ['config.toml', 'options.json', 'run.json', 'stats.json']
    run = study.read_json(os.path.join(record, 'run.json'))
    assert run['config_sha256'] == study.file_sha256(config) and 'launched outside reproduce.py' in run['note']
    study.write_json(os.path.join(logdir, 'stats.json'), [{'epoch_num': 2, 'val-error-moving': 0.9}])
    assert not study.collect(logdir, record, config, 'tiny_bn', 'cpu', 1)
    assert study.read_json(os.path.join(record, 'stats.json'))[0]['val-error-moving'] == 0.3


def test_run_json_lifecycle_and_another_config_is_refused(tmp_path):
    root = make_root(tmp_path)
    config = os.path.join(root, 'configs', 'cpu', 'tiny', 'tiny_bn.toml')
    logdir = study.logdir_of(root, 'cpu', 'tiny_bn', 1)
    os.makedirs(logdir)
    run = study.start_run_json(logdir, 'tiny_bn', 'cpu', 'configs/cpu/tiny/tiny_bn.toml', 1, ['python', 'x'], REPO,
                               config_file=config)
    for key in ('row', 'profile', 'config', 'config_sha256', 'seed', 'command', 'git_commit', 'started', 'machine'):
        assert key in run, key
    assert run['machine']['cores'] == os.cpu_count() and run['machine']['gpu'] == 'none'
    assert len(run['git_commit']) >= 40
    study.finish_run_json(logdir, 1, 1.5)
    study.start_run_json(logdir, 'tiny_bn', 'cpu', 'configs/cpu/tiny/tiny_bn.toml', 1, ['python', 'x'], REPO,
                         config_file=config)
    run = study.finish_run_json(logdir, 0, 2.25)
    assert run['exit_code'] == 0 and run['wall_minutes'] == 3.75 and len(run['attempts']) == 2
    with open(config, 'a') as f:
        f.write('lr = 0.2\n')
    with pytest.raises(study.StudyError, match='was made with another config'):
        study.start_run_json(logdir, 'tiny_bn', 'cpu', 'c', 1, ['python', 'x'], REPO, config_file=config)


def test_records_pin_their_code_not_their_reports(tmp_path):
    import hashlib
    import subprocess
    repo = tmp_path / 'repo'
    (repo / 'results').mkdir(parents=True)
    (repo / 'code.py').write_text('x = 1\n')
    (repo / 'results' / 't.md').write_text('table\n')

    def git(*args):
        return subprocess.run(['git', '-c', 'user.name=t', '-c', 'user.email=t@t'] + list(args), cwd=repo,
                              check=True, capture_output=True).stdout
    git('init', '-q')
    git('add', '.')
    git('commit', '-qm', 'start')
    head = git('rev-parse', 'HEAD').decode().strip()
    assert study.code_state(str(repo)) == {'git_commit': head, 'code_diff_sha256': None, 'results_differ': False}
    (repo / 'results' / 't.md').write_text('regenerated\n')            # a report: the code is the commit's
    assert study.code_state(str(repo)) == {'git_commit': head, 'code_diff_sha256': None, 'results_differ': True}
    (repo / 'untracked.py').write_text('y = 2\n')                       # untracked files are not the run's code
    assert study.git_commit(str(repo)) == head
    (repo / 'code.py').write_text('x = 2\n')
    state = study.code_state(str(repo))
    diff = git('diff', 'HEAD', '--binary', '--', '.', ':(exclude)results')
    assert b'+x = 2' in diff and state['git_commit'] == head + '-dirty'
    assert state['code_diff_sha256'] == hashlib.sha256(diff).hexdigest() and state['results_differ']
    logdir = tmp_path / 'log'
    logdir.mkdir()
    config = tmp_path / 'c.toml'
    config.write_text('norm = "bn"\n')
    run = study.start_run_json(str(logdir), 'r', 'cpu', 'c.toml', 1, ['python'], str(repo), config_file=str(config))
    assert {k: run[k] for k in state} == state and {k: run['attempts'][0][k] for k in state} == state
    assert study.code_state(str(logdir))['git_commit'] == 'unknown'                  # outside git


def test_estimates_measured_from_records_else_default(tmp_path):
    root = make_root(tmp_path)
    bn = study.load_config(os.path.join(root, 'configs', 'cpu', 'tiny', 'tiny_bn.toml'))
    gn = study.load_config(os.path.join(root, 'configs', 'cpu', 'tiny', 'tiny_gn.toml'))
    minutes, source = study.minutes_per_epoch(root, 'cpu', gn)
    assert source == 'default estimate'
    # ResNet-8 (depth 1) at 2 of 390 steps an epoch, GN's relative cost
    assert minutes == pytest.approx(study.BASE_MINUTES_PER_EPOCH / 3 * study.NORM_COST['gn'] * 2 / (50000 / 8))
    write_record(root, 'tiny_bn', 1, [0.5, 0.4], batch_errors=[0.5, 0.4], minutes=3.0)
    assert study.minutes_per_epoch(root, 'cpu', bn) == (1.5, 'measured (fastest of 1 records)')
    # the fastest: runs slowed by a shared machine do not move it
    write_record(root, 'tiny_bn', 2, [0.5, 0.4], batch_errors=[0.5, 0.4], minutes=3.4)
    write_record(root, 'tiny_bn', 3, [0.5, 0.4], batch_errors=[0.5, 0.4], minutes=20.0)
    assert study.minutes_per_epoch(root, 'cpu', bn) == (1.5, 'measured (fastest of 3 records)')
    # a row of a measured model with another norm: the model's records times the norms' cost ratio
    minutes, source = study.minutes_per_epoch(root, 'cpu', gn)
    assert source == 'scaled from 3 records of the model with other norms'
    assert minutes == pytest.approx(1.5 * study.NORM_COST['gn'] / study.NORM_COST['bn'])
    write_record(root, 'tiny_gn', 1, [0.5, 0.4], minutes=5.0)
    assert study.minutes_per_epoch(root, 'cpu', gn) == (2.5, 'measured (fastest of 1 records)')


# ----------------------------------------------------------------------------------------------
# the scripts

def test_bad_command_lines_fail_before_any_run(tmp_path, capsys):
    root = make_root(tmp_path)
    for argv, message in ((['nope'], 'table nope: no such file'),
                          (['tiny', '--profile', 'gpu'], '--profile must be one of cpu, paper'),
                          (['tiny', '--seeds', '0'], '--seeds must be >= 1'),
                          (['tiny', '--rows', 'tiny_ln'], '--rows: tiny_ln in none of the tables'),
                          (['tiny', '--data', str(tmp_path / 'missing')], 'no such file or directory'),
                          (['tiny', '--dry-run', '--report-only'], 'exclude each other')):
        with pytest.raises(SystemExit) as e:
            reproduce.main(argv + ['--root', root])
        assert e.value.code == 2
        assert message in capsys.readouterr().err
    os.remove(os.path.join(root, 'configs', 'cpu', 'tiny', 'tiny_gn.toml'))
    with pytest.raises(SystemExit):
        reproduce.main(['tiny', '--root', root, '--dry-run'])
    assert 'row tiny_gn: no config configs/cpu/*/tiny_gn.toml' in capsys.readouterr().err
    assert not os.path.exists(os.path.join(root, 'train_log'))


def write_folder(root, n_train=2, n_test=1):
    """train/<class>/*.png + test/<class>/*.png, 10 classes, random pixels."""
    rng = np.random.RandomState(0)
    for split, n in (('train', n_train), ('test', n_test)):
        for c in range(10):
            d = os.path.join(root, split, 'c%d' % c)
            os.makedirs(d)
            for i in range(n):
                assert cv2.imwrite(os.path.join(d, '%d.png' % i), rng.randint(0, 256, (32, 32, 3)).astype(np.uint8))
    return root


def test_reproduce_end_to_end(tmp_path, monkeypatch, capsys):
    """dry run -> seed 1 runs and is recorded -> seed 2 killed after epoch 1 (simulated) is resumed,
    seed 1 skipped -> the table and the figure come from the two records."""
    monkeypatch.setenv('KALMAN_NORM_CACHE', str(tmp_path / 'cache'))
    monkeypatch.setenv('TF_CPP_MIN_LOG_LEVEL', '2')
    table = TABLE.replace('[[rows]]\nrow = "tiny_gn"', '[[rows]]\nrow = "tiny_gn"\navailable = false\n'
                          'reason = "not run here: budget"').replace(
        '[[claims]]\nlabel = "BN - GN"\na = "tiny_bn"\nb = "tiny_gn"\npaper = 1.5\n', '')
    table += '[[figures]]\nname = "bn_online"\ntitle = "BN alone, option B"\nrows = ["tiny_bn"]\neval = "batch"\n'
    root = make_root(tmp_path, table, rows=('tiny_bn',))
    data = write_folder(str(tmp_path / 'data'))
    args = ['tiny', '--root', root, '--data', data]

    assert reproduce.main(args + ['--dry-run']) == 0
    out = capsys.readouterr().out
    assert 'tiny_bn | 1      | new' in out and '2 runs to start or resume' in out and 'Nothing was run' in out
    assert not os.path.exists(os.path.join(root, 'train_log'))

    assert reproduce.main(args + ['--seeds', '1']) == 0
    out = capsys.readouterr().out
    rec1 = study.record_dir(root, 'cpu', 'tiny_bn', 1)
    assert set(os.listdir(rec1)) - {'status.json'} == {'config.toml', 'options.json', 'run.json', 'stats.json'}
    run = study.read_json(os.path.join(rec1, 'run.json'))
    assert run['exit_code'] == 0 and run['seed'] == 1
    assert run['config'] == os.path.join('configs', 'cpu', 'tiny', 'tiny_bn.toml')
    assert run['command'][1:] == [os.path.join(REPO, 'scripts', 'cifar_resnet.py'),
                                  '--config', run['config'], '--seed', '1', '--logdir',
                                  os.path.join('train_log', 'cpu', 'tiny_bn', 'seed1'), '--data', data]
    assert [s['epoch_num'] for s in study.read_json(os.path.join(rec1, 'stats.json'))] == [1, 2]
    assert 'to commit: git add results/runs/cpu/tiny_bn/seed1 results/tiny.md results/tiny.png' in out

    # seed 2 "killed" after its first epoch: seed 1's log dir with stats.json cut to epoch 1, the
    # status a killed trainer leaves ("running"), and seed 2 where the trainer records its seed
    log1, log2 = study.logdir_of(root, 'cpu', 'tiny_bn', 1), study.logdir_of(root, 'cpu', 'tiny_bn', 2)
    shutil.copytree(log1, log2)
    stats = study.read_json(os.path.join(log2, 'stats.json'))
    study.write_json(os.path.join(log2, 'stats.json'), stats[:1])
    options = study.read_json(os.path.join(log2, 'options.json'))
    options['seed'] = 2
    options.get('identity', {})['seed'] = 2
    study.write_json(os.path.join(log2, 'options.json'), options)
    if os.path.exists(os.path.join(log2, 'status.json')):
        study.write_json(os.path.join(log2, 'status.json'), {'status': 'running', 'epochs_done': 1})
    run2 = study.read_json(os.path.join(log2, 'run.json'))
    run2.update(seed=2, exit_code=-9)
    study.write_json(os.path.join(log2, 'run.json'), run2)
    assert study.run_state(log2, study.record_dir(root, 'cpu', 'tiny_bn', 2), 2) == 'unfinished'
    assert reproduce.main(args + ['--dry-run']) == 0
    out = capsys.readouterr().out
    assert 'recorded' in out and 'unfinished at epoch 1' in out and '1 runs to start or resume' in out

    before = os.path.getmtime(os.path.join(rec1, 'stats.json'))
    assert reproduce.main(args) == 0
    out = capsys.readouterr().out
    assert 'tiny_bn seed 1: recorded, skipped' in out and 'tiny_bn seed 2: finished, recorded' in out
    assert os.path.getmtime(os.path.join(rec1, 'stats.json')) == before
    rec2 = study.record_dir(root, 'cpu', 'tiny_bn', 2)
    assert [s['epoch_num'] for s in study.read_json(os.path.join(rec2, 'stats.json'))] == [1, 2]
    run2 = study.read_json(os.path.join(rec2, 'run.json'))
    assert len(run2['attempts']) == 2 and run2['exit_code'] == 0
    assert 'resum' in open(os.path.join(log2, 'stdout.log')).read().lower()

    md = open(os.path.join(root, 'results', 'tiny.md')).read()
    bn = [line for line in md.splitlines() if line.startswith('| BN (bs=2) ')][0]
    accs = [100 * (1 - study.read_json(os.path.join(r, 'stats.json'))[-1]['val-error-moving']) for r in (rec1, rec2)]
    assert study.fmt_mean_std(accs) in bn and '91.30 (B: 90.00), Table 0' in bn and '2 / 2' in bn
    assert 'not run here: budget' in md and 'not run here: no data' in md
    assert '![All rows](tiny.png)' in md and '![BN alone, option B](tiny_bn_online.png)' in md
    for png in ('tiny.png', 'tiny_bn_online.png'):
        assert cv2.imread(os.path.join(root, 'results', png)).shape[2] == 3

    # a third call runs nothing and writes the same table
    assert reproduce.main(args + ['--report-only']) == 0
    assert open(os.path.join(root, 'results', 'tiny.md')).read() == md


# ----------------------------------------------------------------------------------------------
# the runner's control flow, with a stand-in trainer (no TensorFlow: fast)

FAKE_TRAINER = r'''
import json, os, sys, time
args = dict(zip(sys.argv[1::2], sys.argv[2::2]))
mode = os.environ['FAKE_MODE_SEED' + args['--seed']]
print('fake trainer', mode, flush=True)
if mode == 'bad-option':                     # stops before taking the log dir
    print('error: --lr must be > 0', flush=True)
    sys.exit(2)
os.makedirs(args['--logdir'], exist_ok=True)
with open(os.path.join(args['--logdir'], 'options.json'), 'w') as f:
    json.dump({'epochs': 2, 'data': args.get('--data')}, f)
if mode == 'hang':
    try:
        time.sleep(60)
    except KeyboardInterrupt:
        sys.exit(130)
stats = [{'epoch_num': e, 'val-error': 0.5 - 0.1 * e, 'train_error': 0.4} for e in (1, 2)]
with open(os.path.join(args['--logdir'], 'stats.json'), 'w') as f:
    json.dump(stats if mode == 'finish' else stats[:1], f)
sys.exit(0 if mode == 'finish' else 1)
'''


@pytest.fixture
def fake_trainer(tmp_path, monkeypatch):
    path = tmp_path / 'fake_trainer.py'
    path.write_text(FAKE_TRAINER)
    monkeypatch.setitem(reproduce.TRAINERS, 'cifar', str(path))
    return monkeypatch


def test_failed_runs_are_reported_and_the_next_goes_on(tmp_path, fake_trainer, capsys):
    root = make_root(tmp_path, TABLE.replace('cpu = 2', 'cpu = 3'), rows=('tiny_bn', 'tiny_gn'))
    for seed, mode in ((1, 'bad-option'), (2, 'crash'), (3, 'finish')):
        fake_trainer.setenv('FAKE_MODE_SEED%d' % seed, mode)
    assert reproduce.main(['tiny', '--root', root, '--rows', 'tiny_bn']) == 1
    captured = capsys.readouterr()
    assert 'error: --lr must be > 0' in captured.err                          # seed 1's own message
    assert 'tiny_bn seed 1 exited 2 without finishing' in captured.err
    assert not os.path.exists(study.logdir_of(root, 'cpu', 'tiny_bn', 1))    # nothing left behind
    log2 = study.logdir_of(root, 'cpu', 'tiny_bn', 2)
    run2 = study.read_json(os.path.join(log2, 'run.json'))
    assert run2['exit_code'] == 1 and 'pid' not in run2
    assert 'fake trainer crash' in open(os.path.join(log2, 'stdout.log')).read()
    assert study.run_state(log2, study.record_dir(root, 'cpu', 'tiny_bn', 2), 2) == 'unfinished'
    assert not os.path.exists(study.record_dir(root, 'cpu', 'tiny_bn', 2))
    assert os.path.isfile(os.path.join(study.record_dir(root, 'cpu', 'tiny_bn', 3), 'run.json'))
    assert '2 run(s) failed: tiny_bn seed 1, tiny_bn seed 2' in captured.err
    assert 'git add results/runs/cpu/tiny_bn/seed3 results/tiny.md' in captured.out
    assert not os.path.exists(study.logdir_of(root, 'cpu', 'tiny_gn', 1))    # --rows: tiny_bn only


def test_a_killed_runner_leaves_the_run_resumable(tmp_path, fake_trainer, capsys):
    import signal
    import threading
    root = make_root(tmp_path, TABLE.replace('cpu = 2', 'cpu = 1'), rows=('tiny_bn', 'tiny_gn'))
    fake_trainer.setenv('FAKE_MODE_SEED1', 'hang')
    log = study.logdir_of(root, 'cpu', 'tiny_bn', 1)

    def kill_when_started():
        for _ in range(600):
            if os.path.isfile(os.path.join(log, 'run.json')):
                break
            threading.Event().wait(0.05)
        os.kill(os.getpid(), signal.SIGTERM)

    killer = threading.Thread(target=kill_when_started)
    killer.start()
    code = reproduce.main(['tiny', '--root', root, '--rows', 'tiny_bn'])
    killer.join()
    assert code == 130
    assert 'left resumable' in capsys.readouterr().out
    run = study.read_json(os.path.join(log, 'run.json'))
    assert run['exit_code'] == 'interrupted' and 'pid' not in run
    assert study.run_state(log, study.record_dir(root, 'cpu', 'tiny_bn', 1), 2) == 'unfinished'
    assert not os.path.exists(os.path.join(root, 'results'))                   # nothing reported
    assert signal.getsignal(signal.SIGTERM) is not reproduce._interrupt       # handler restored
    fake_trainer.setenv('FAKE_MODE_SEED1', 'finish')                          # the same command again
    assert reproduce.main(['tiny', '--root', root, '--rows', 'tiny_bn']) == 0
    assert len(study.read_json(os.path.join(study.record_dir(root, 'cpu', 'tiny_bn', 1), 'run.json'))['attempts']) == 2


def test_a_kill_while_the_run_directory_is_taken_waits_until_it_is(tmp_path, fake_trainer, capsys):
    """A SIGTERM between run.json's start and the pid (the race the test above can hit) is held
    until the directory is taken, so the run still ends 'interrupted', with no pid left."""
    import signal
    root = make_root(tmp_path, TABLE.replace('cpu = 2', 'cpu = 1'), rows=('tiny_bn', 'tiny_gn'))
    fake_trainer.setenv('FAKE_MODE_SEED1', 'hang')
    set_run_pid = study.set_run_pid

    def sigterm_then_set_pid(logdir, pid):
        os.kill(os.getpid(), signal.SIGTERM)
        set_run_pid(logdir, pid)

    fake_trainer.setattr(study, 'set_run_pid', sigterm_then_set_pid)
    assert reproduce.main(['tiny', '--root', root, '--rows', 'tiny_bn']) == 130
    run = study.read_json(os.path.join(study.logdir_of(root, 'cpu', 'tiny_bn', 1), 'run.json'))
    assert run['exit_code'] == 'interrupted' and 'pid' not in run
    assert 'left resumable' in capsys.readouterr().out


def test_estimate_of_a_run_launched_by_hand_uses_the_trainers_clock(tmp_path):
    root = make_root(tmp_path)
    d = write_record(root, 'tiny_bn', 1, [0.5, 0.4], batch_errors=[0.5, 0.4], minutes=5.0)
    study.write_json(os.path.join(d, 'run.json'), {'note': 'launched outside reproduce.py'})
    bn = study.load_config(os.path.join(root, 'configs', 'cpu', 'tiny', 'tiny_bn.toml'))
    assert study.minutes_per_epoch(root, 'cpu', bn) == (2.5, 'measured (fastest of 1 records)')


def test_plot_curves_command_line(tmp_path, capsys):
    plot_curves = _load_script('plot_curves')
    root = make_root(tmp_path)
    out = str(tmp_path / 'c.png')
    for argv, message in (([], 'give --table or --rows'),
                          (['--table', 'tiny', '--rows', 'tiny_bn'], 'give --table or --rows'),
                          (['--rows', 'tiny_bn', '--labels', 'a,b'], '--labels has 2 entries for 1 rows'),
                          (['--rows', 'tiny_bn', '--eval', 'best'], '--eval must be moving or batch'),
                          (['--table', 'tiny'], 'no records in results/runs/cpu/ for tiny_bn, tiny_gn')):
        with pytest.raises(SystemExit) as e:
            plot_curves.main(argv + ['--root', root, '--out', out])
        assert e.value.code == 2 and message in capsys.readouterr().err
    with pytest.raises(SystemExit):
        plot_curves.main(['--rows', 'tiny_bn', '--root', root, '--out', str(tmp_path / 'c.jpg')])
    assert '--out must be a .png path' in capsys.readouterr().err
    write_record(root, 'tiny_bn', 1, [0.5, 0.3, 0.2], batch_errors=[0.6, 0.4, 0.3])
    write_record(root, 'tiny_bn', 2, [0.5, 0.35, 0.25], batch_errors=[0.6, 0.5, 0.35])
    write_record(root, 'tiny_bn', 3, [0.5, 0.1, float('nan')], batch_errors=[0.6, 0.1, 0.1])   # diverged: left out
    assert plot_curves.curves(root, 'cpu', 'tiny_bn', which='batch') == {
        1: ([1, 2, 3], pytest.approx([60.0, 40.0, 30.0])), 2: ([1, 2, 3], pytest.approx([60.0, 50.0, 35.0]))}
    plot_curves.main(['--rows', 'tiny_bn', '--labels', 'BN', '--eval', 'batch', '--root', root, '--out', out])
    height, width = cv2.imread(out).shape[:2]
    assert 350 < height <= 460 and 600 < width <= 710          # 7 x 4.5 in at 100 dpi, margins cropped
    # more curves than fit in the axes (the KN study has ~20): the legend goes below the axes and
    # the image grows to hold it, one line per curve
    many = str(tmp_path / 'many.png')
    n = plot_curves.LEGEND_INSIDE + 2
    plot_curves.main(['--rows', ','.join(['tiny_bn'] * n), '--labels', ','.join('row %d' % k for k in range(n)),
                      '--root', root, '--out', many])
    assert cv2.imread(many).shape[0] > height + n * 10


def test_a_record_made_with_an_earlier_config_is_kept_and_flagged(tmp_path, capsys):
    root = make_root(tmp_path)
    write_record(root, 'tiny_bn', 1, [0.5, 0.2], batch_errors=[0.5, 0.2], config_text='norm = "bn"\nlr = 0.2\n')
    table = study.load_table(os.path.join(root, 'configs', 'tables', 'tiny.toml'))
    text, _ = study.render_table(root, table, 'cpu', 'cmd')
    assert '1 / 2 (1 made with an earlier version of the config: see its config.toml)' in text
    runs = study.plan(root, table, 'cpu')
    assert [(r['row'], r['seed'], r['state'], r['note']) for r in runs][:2] == [
        ('tiny_bn', 1, 'recorded', 'made with an earlier config'), ('tiny_bn', 2, 'new', '')]
    assert reproduce.main(['tiny', '--root', root, '--dry-run']) == 0
    assert 'recorded (made with an earlier config)' in capsys.readouterr().out
    stats = study.read_json(os.path.join(study.record_dir(root, 'cpu', 'tiny_bn', 1), 'stats.json'))
    assert stats[-1]['val-error-moving'] == 0.2                                # kept as recorded


def test_a_corrected_comment_is_not_another_config(tmp_path):
    # configs carry comments (budgets, estimates) that go out of date: correcting one must neither
    # flag the records made with it nor refuse to resume its log dirs; a changed setting does both
    root = make_root(tmp_path)
    config = os.path.join(root, 'configs', 'cpu', 'tiny', 'tiny_bn.toml')
    write_record(root, 'tiny_bn', 1, [0.5, 0.2])                            # made with the config's text
    logdir = study.logdir_of(root, 'cpu', 'tiny_bn', 2)
    os.makedirs(logdir)
    study.start_run_json(logdir, 'tiny_bn', 'cpu', 'c', 2, ['python', 'x'], REPO, config_file=config)
    text = open(config).read()
    with open(config, 'w') as f:
        f.write('# about 3 minutes a run, measured\n' + text.replace('\n', '  # a note\n', 1))
    record = study.record_dir(root, 'cpu', 'tiny_bn', 1)
    assert not study.record_is_stale(record, config)
    study.start_run_json(logdir, 'tiny_bn', 'cpu', 'c', 2, ['python', 'x'], REPO, config_file=config)
    with open(config, 'a') as f:
        f.write('lr = 0.2\n')
    assert study.record_is_stale(record, config)
    with pytest.raises(study.StudyError, match='was made with another config'):
        study.start_run_json(logdir, 'tiny_bn', 'cpu', 'c', 2, ['python', 'x'], REPO, config_file=config)


def test_a_log_dir_from_before_settings_hashes_is_checked_by_its_text(tmp_path):
    root = make_root(tmp_path)
    config = os.path.join(root, 'configs', 'cpu', 'tiny', 'tiny_bn.toml')
    logdir = study.logdir_of(root, 'cpu', 'tiny_bn', 1)
    os.makedirs(logdir)
    study.write_json(os.path.join(logdir, 'run.json'), {'config_sha256': study.file_sha256(config)})
    study.check_logdir_config(logdir, config)
    with open(config, 'a') as f:
        f.write('# a comment\n')
    with pytest.raises(study.StudyError, match='config_sha256'):
        study.check_logdir_config(logdir, config)


# ----------------------------------------------------------------------------------------------
# tables of the ImageNet trainer: the same records and states; its own script, defaults, wording,
# and no run-time estimate before a record of the model exists.  (No end-to-end run here: one tiny
# ImageNet training run alone takes over a minute on this machine.)

def _row_cells(text, first):
    """The cells of the Markdown (or dry-run) table line starting with ``first``."""
    line = [x for x in text.splitlines() if x.startswith('| %s ' % first)][0]
    return [c.strip() for c in line.split('|')[1:-1]]


def test_a_table_names_its_trainer(tmp_path):
    root = make_root(tmp_path)
    assert study.load_table(os.path.join(root, 'configs', 'tables', 'tiny.toml'))['trainer'] == 'cifar'
    path = tmp_path / 'inet.toml'
    path.write_text(IMAGENET_TABLE)
    assert study.load_table(str(path))['trainer'] == 'imagenet'
    assert set(reproduce.TRAINERS) == set(study.TRAINERS) == set(reproduce.DATA_PLACEHOLDER)


def test_config_defaults_per_trainer(tmp_path):
    from kalman_norm.train.imagenet import SCHEDULE_RECIPES
    path = tmp_path / 'c.toml'
    path.write_text('norm = "bkn"\n')
    c = study.load_config(str(path), 'imagenet')
    assert {k: c[k] for k in ('arch', 'schedule', 'epochs', 'dataset', 'image_size', 'gpus', 'norm')} == {
        'arch': 'resnet50', 'schedule': 'paper', 'epochs': SCHEDULE_RECIPES['paper']['epochs'],
        'dataset': 'imagenet', 'image_size': 224, 'gpus': 1, 'norm': 'bkn'}
    assert 'model' not in c and 'depth' not in c and study.model_name(c) == 'ResNet-50'
    c = study.load_config(str(path))                                              # the CIFAR trainer's, as before
    assert {k: c[k] for k in ('model', 'depth', 'schedule', 'epochs', 'dataset')} == {
        'model': 'resnet', 'depth': 5, 'schedule': 'short', 'epochs': 30, 'dataset': 'cifar10'}
    assert 'arch' not in c and study.model_name(c) == 'ResNet-32'
    path.write_text('arch = "inception_v2"\nschedule = "short"\nimage_size = 128\n')
    c = study.load_config(str(path), 'imagenet')
    assert c['epochs'] == SCHEDULE_RECIPES['short']['epochs'] and study.model_name(c) == 'Inception-v2 at 128 px'
    with pytest.raises(study.StudyError, match='trainer must be one of cifar, imagenet'):
        study.load_config(str(path), 'mnist')


def test_an_imagenet_table_runs_the_imagenet_trainer(tmp_path):
    root = make_root(tmp_path, IMAGENET_TABLE, config=IMAGENET_CONFIG)
    table = study.load_table(os.path.join(root, 'configs', 'tables', 'tiny.toml'))
    runs = study.plan(root, table, 'cpu')
    assert {r['trainer'] for r in runs} == {'imagenet'} and runs[0]['epochs'] == 2
    config = os.path.join('configs', 'cpu', 'tiny', 'tiny_bn.toml')
    logdir = os.path.join('train_log', 'cpu', 'tiny_bn', 'seed1')
    assert reproduce.trainer_command(runs[0], None, root)[1:] == [
        os.path.join(REPO, 'scripts', 'imagenet.py'), '--config', config, '--seed', '1', '--logdir', logdir]
    args = reproduce.parse_args(['tiny', '--root', root])
    assert '--data <ILSVRC-12 style dir>' in reproduce.command_line(args, [table])
    cifar = dict(table, trainer='cifar')
    assert '--data <CIFAR-10 dir or .tar.gz>' in reproduce.command_line(args, [cifar])


def test_tables_of_two_trainers_are_refused_in_one_command(tmp_path, capsys):
    root = make_root(tmp_path)
    with open(os.path.join(root, 'configs', 'tables', 'inet.toml'), 'w') as f:
        f.write(IMAGENET_TABLE)                                    # shares the rows tiny_bn and tiny_gn
    with pytest.raises(SystemExit) as e:
        reproduce.main(['tiny', 'inet', '--root', root, '--dry-run'])
    assert e.value.code == 2
    assert 'tables tiny (trainer cifar) and inet (trainer imagenet) in one command' in capsys.readouterr().err


def test_dry_run_of_an_imagenet_table_estimates_from_its_own_records_only(tmp_path, capsys):
    root = make_root(tmp_path, IMAGENET_TABLE, config=IMAGENET_CONFIG)
    assert reproduce.main(['tiny', '--root', root, '--dry-run']) == 0
    out = capsys.readouterr().out
    assert _row_cells(out, 'tiny_bn | 1') == ['tiny_bn', '1', 'new', '2', '?',
                                              'no estimate (no record of this model yet)', '?']
    assert ('5 runs to start or resume; estimated 0 CPU minutes (0.0 h) on this machine, one at a time, '
            'not counting the 5 without an estimate (?). Nothing was run') in out
    inet_bn = study.load_config(study.find_config(root, 'cpu', 'tiny_bn'), 'imagenet')
    cifar_path = tmp_path / 'cifar_bn.toml'
    cifar_path.write_text(CONFIG % 'bn')
    cifar_bn = study.load_config(str(cifar_path))
    write_record(root, 'cifar_bn', 1, [0.5, 0.4], minutes=4.0, config_text=CONFIG % 'bn')
    assert study.minutes_per_epoch(root, 'cpu', inet_bn) == (None, 'no estimate (no record of this model yet)')
    write_record(root, 'tiny_bn', 1, [0.5, 0.4], batch_errors=[0.5, 0.4], minutes=3.0, options=IMAGENET_OPTIONS)
    assert study.minutes_per_epoch(root, 'cpu', inet_bn) == (1.5, 'measured (fastest of 1 records)')
    assert study.minutes_per_epoch(root, 'cpu', cifar_bn) == (2.0, 'measured (fastest of 1 records)')
    assert reproduce.main(['tiny', '--root', root, '--dry-run']) == 0
    out = capsys.readouterr().out
    assert _row_cells(out, 'tiny_bn | 2')[4:] == ['1.50', 'measured (fastest of 1 records)', '3']
    # the table's other norms on the same model: scaled from that record by the norms' costs
    assert _row_cells(out, 'tiny_gn | 1')[4:] == ['%.2f' % (1.5 * study.NORM_COST['gn']),
                                              'scaled from 1 records of the model with other norms', '4']
    assert 'estimated 14 CPU minutes (0.2 h) on this machine, one at a time. Nothing was run' in out


def test_rendered_imagenet_table_says_validation_set_and_its_budget(tmp_path):
    root = make_root(tmp_path, IMAGENET_TABLE, config=IMAGENET_CONFIG)
    write_record(root, 'tiny_bn', 1, [0.5, 0.3], batch_errors=[0.5, 0.35], options=IMAGENET_OPTIONS, status='finished')
    table = study.load_table(os.path.join(root, 'configs', 'tables', 'tiny.toml'))
    text, _ = study.render_table(root, table, 'cpu', 'cmd')
    assert 'Accuracy (%) of the last epoch on the validation set' in text and 'test set' not in text
    assert '(the paper trains 90+ epochs on 8 GPUs at 224 px)' in text and '~400 epochs' not in text
    assert ('Budget: ResNet-50 at 32 px, 2 epochs of 3 steps (schedule short), 8 samples per step on 2 towers of 4, '
            'IMAGENET-style folder. Data: cifar_ilsvrc.') in text
    assert _row_cells(text, 'BN (bs=2)')[2:7] == ['70.00 (1 seed)', '65.00 (1 seed)', '20.00 (1 seed)', '1 / 2', '2']
