"""The micro-batch leaderboard's definition (configs/tables/microbatch*.toml, configs/cpu/microbatch*/)
and scripts/choose_lr.py, which writes each row's lr chosen on the validation split into its config."""
import importlib.util
import json
import os
import shutil

import pytest

import kalman_norm  # noqa: F401
from kalman_norm.train import cifar

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
spec = importlib.util.spec_from_file_location('choose_lr', os.path.join(REPO, 'scripts', 'choose_lr.py'))
choose_lr = importlib.util.module_from_spec(spec)
spec.loader.exec_module(choose_lr)
from study.schema import find_config, load_table, table_path  # noqa: E402  (on sys.path through choose_lr)

LEADERBOARD_NORMS = {'mb_bn_b2': 'bn', 'mb_brn_b2': 'brn', 'mb_gn_b2': 'gn', 'mb_gnws_b2': 'gn', 'mb_frn_b2': 'frn',
                     'mb_evonorm_s0_b2': 'evonorm_s0', 'mb_evonorm_b0_b2': 'evonorm_b0', 'mb_mabn_b2': 'mabn',
                     'mb_bn_precise_b2': 'bn', 'mb_bkn_b2': 'bkn', 'mb_bknws_b2': 'bkn',
                     'mb_bkn_precise_b2': 'bkn', 'mb_bn_b128': 'bn'}


def _options(path):
    return cifar.parse_options(['--config', path, '--logdir', '/tmp/unused-microbatch-test'])


def test_leaderboard_rows_and_their_configs():
    table = load_table(table_path(REPO, 'microbatch'))
    assert [r['row'] for r in table['rows']] == list(LEADERBOARD_NORMS)
    for row, norm in LEADERBOARD_NORMS.items():
        o = _options(find_config(REPO, 'cpu', row))
        assert (o['norm'], o['depth'], o['total_batch'], o['epochs'], o['schedule'], o['dataset']) == \
            (norm, 3, 128, 10, 'short', 'cifar10')
        assert o['batch'] == (128 if row == 'mb_bn_b128' else 2) and o['validation'] == 0
        assert o['spec'].weight_standardization == ('ws' in row)
        assert (o['eval_stats'] == 'all') == ('precise' in row)
    assert _options(find_config(REPO, 'cpu', 'mb_mabn_b2'))['norm_options']['history_mode'] == 'per_device'
    precise_rows = {r['row'] for r in table['rows'] if r.get('moving_stats') == 'precise'}
    assert precise_rows == {'mb_bn_precise_b2', 'mb_bkn_precise_b2'}
    # every row against BKN (default) and against BN
    pairs = {(c['a'], c['b']) for c in table['claims']}
    for row in LEADERBOARD_NORMS:
        if row != 'mb_bkn_b2':
            assert (row, 'mb_bkn_b2') in pairs
        if row not in ('mb_bn_b2', 'mb_bkn_b2'):
            assert (row, 'mb_bn_b2') in pairs


def test_lr_table_runs_every_training_row_at_three_lrs_on_the_validation_split():
    table = load_table(table_path(REPO, 'microbatch_lr'))
    assert table['seeds'] == {'cpu': 1}
    seen = {}
    for r in table['rows']:
        o = _options(find_config(REPO, 'cpu', r['row']))
        assert o['validation'] == 5000 and 'validation' in o['identity']
        target = choose_lr.LR_ROW.match(r['row']).group('row')
        base = _options(find_config(REPO, 'cpu', target))
        assert {k: v for k, v in o['identity'].items() if k not in ('lr', 'validation')} == \
            {k: v for k, v in base['identity'].items() if k != 'lr'}
        seen.setdefault(target, []).append(o['lr'])
    assert set(seen) == set(LEADERBOARD_NORMS) - {'mb_bn_precise_b2', 'mb_bkn_precise_b2'}
    assert all(sorted(lrs) == [0.05, 0.1, 0.2] for lrs in seen.values())


def _record(root, row, accuracy=None, diverged=False):
    d = os.path.join(root, 'results', 'runs', 'cpu', row, 'seed1')
    os.makedirs(d)
    stats = [{'epoch_num': 10, 'train_error': 0.1}]
    if accuracy is not None:
        stats[0]['val-error-moving'] = 1.0 - accuracy / 100.0
    files = {'run.json': {}, 'options.json': {}, 'stats.json': stats,
             'status.json': {'status': 'diverged' if diverged else 'finished'}}
    for name, obj in files.items():
        with open(os.path.join(d, name), 'w') as f:
            json.dump(obj, f)


def test_choose_lr_writes_the_best_validated_lr(tmp_path):
    root = str(tmp_path / 'repo')
    shutil.copytree(os.path.join(REPO, 'configs'), os.path.join(root, 'configs'))
    _record(root, 'mb_bn_b2_lr005', 80.0)
    _record(root, 'mb_bn_b2_lr01', 81.5)
    _record(root, 'mb_bn_b2_lr02', 81.0)
    _record(root, 'mb_gn_b2_lr005', 78.0)
    _record(root, 'mb_gn_b2_lr01', 77.0)
    _record(root, 'mb_gn_b2_lr02', 99.0, diverged=True)       # diverged: never chosen
    _record(root, 'mb_frn_b2_lr005', 70.0)                      # two lrs not run yet: unchanged
    rows = {row: (lr, why) for row, _, lr, why in choose_lr.main(['--root', root])}
    assert rows['mb_bn_b2'][0] == 0.1 and rows['mb_gn_b2'][0] == 0.05
    assert rows['mb_bn_precise_b2'][0] == 0.1 and rows['mb_bn_precise_b2'][1].startswith('as mb_bn_b2')
    assert rows['mb_frn_b2'][0] is None and 'waiting' in rows['mb_frn_b2'][1]
    assert '0.2: diverged' in rows['mb_gn_b2'][1]
    for row, lr in (('mb_gn_b2', 0.05), ('mb_bn_precise_b2', 0.1), ('mb_frn_b2', 0.1)):
        assert _options(find_config(root, 'cpu', row))['lr'] == lr
    with open(find_config(root, 'cpu', 'mb_gn_b2')) as f:
        assert 'lr = 0.05     # chosen by scripts/choose_lr.py from microbatch_lr' in f.read()
    # the lr rows inherit from the row configs but state their own lr: unchanged by the choice
    assert _options(find_config(root, 'cpu', 'mb_gn_b2_lr02'))['lr'] == 0.2
    # a second pass writes the same
    before = open(find_config(root, 'cpu', 'mb_gn_b2')).read()
    choose_lr.main(['--root', root])
    assert open(find_config(root, 'cpu', 'mb_gn_b2')).read() == before


def test_choose_lr_ties_go_to_the_lr_nearer_01():
    assert choose_lr.choose([(0.05, 80.0, None), (0.1, 80.0, None), (0.2, 79.0, None)])[0] == 0.1
    assert choose_lr.choose([(0.05, None, 'diverged'), (0.1, None, 'diverged')]) == (None, 'every lr diverged')


def test_choose_lr_dry_run_writes_nothing(tmp_path):
    root = str(tmp_path / 'repo')
    shutil.copytree(os.path.join(REPO, 'configs'), os.path.join(root, 'configs'))
    for code, acc in (('005', 82.0), ('01', 80.0), ('02', 79.0)):
        _record(root, 'mb_bn_b2_lr' + code, acc)
    before = open(find_config(root, 'cpu', 'mb_bn_b2')).read()
    rows = {row: lr for row, _, lr, _ in choose_lr.main(['--root', root, '--dry-run'])}
    assert rows['mb_bn_b2'] == 0.05
    assert open(find_config(root, 'cpu', 'mb_bn_b2')).read() == before


def test_a_precise_row_reports_precisebn_as_its_a_column():
    from study.render import row_summary
    recs = [{'stats': [{'epoch_num': 10, 'val-error-moving': 0.25, 'val-error-batch': 0.3,
                        'val-error-precise': 0.2, 'train_error': 0.1}], 'options': {}, 'run': {}, 'status': {}}
            for _ in range(2)]
    assert row_summary({'row': 'x'}, recs)['moving'] == [pytest.approx(75.0)] * 2
    precise = row_summary({'row': 'x', 'moving_stats': 'precise'}, recs)
    assert precise['moving'] == [pytest.approx(80.0)] * 2 and precise['batch'] == [pytest.approx(70.0)] * 2
    assert precise['paired'] == [(pytest.approx(80.0), pytest.approx(70.0))] * 2


# ---- the cost columns (step time vs BN, folding, extra parameters) ----------------------------

from study import efficiency  # noqa: E402
from study.schema import StudyError  # noqa: E402

LEADERBOARD_BENCHMARKS = {'mb_bn_b2': 'BN', 'mb_brn_b2': 'BRN', 'mb_gn_b2': 'GN', 'mb_gnws_b2': 'GN+WS',
                          'mb_frn_b2': 'FRN+TLU', 'mb_evonorm_s0_b2': 'EvoNorm-S0', 'mb_evonorm_b0_b2': 'EvoNorm-B0',
                          'mb_mabn_b2': 'MABN per device', 'mb_bn_precise_b2': 'BN', 'mb_bkn_b2': 'BKN default recipe',
                          'mb_bknws_b2': 'BKN+WS default recipe', 'mb_bkn_precise_b2': 'BKN default recipe',
                          'mb_bn_b128': 'BN'}
#: the channels of ResNet-20's norm layers that an activation follows: the stem (16) and the first
#: of each block's two, 3 blocks per stage of 16, 32, 64 channels (the second enters the residual sum)
RESNET20_ACTIVATED_NORM_CHANNELS = 16 + 3 * (16 + 32 + 64)


def test_every_row_names_the_benchmark_configuration_of_its_config():
    table = load_table(table_path(REPO, 'microbatch'))
    assert table['benchmark_record'] == 'results/benchmark_norms.json'
    assert {r['row']: r['benchmark'] for r in table['rows']} == LEADERBOARD_BENCHMARKS
    for r in table['rows']:
        # the label's norm and settings equal the row config's (else a StudyError); no record: not measured
        cell = efficiency.step_time_cell(r, _options(find_config(REPO, 'cpu', r['row'])), None, 'x.json')
        assert cell == 'not measured (no x.json yet)'


def test_a_label_that_is_not_the_rows_configuration_is_refused():
    row = {'row': 'mb_gn_b2', 'benchmark': 'GN+WS'}
    with pytest.raises(StudyError, match=r"^row mb_gn_b2: benchmark label 'GN\+WS' is not the row's configuration "
                                         r"\(row vs label: weight_standardization False vs True\)$"):
        efficiency.step_time_cell(row, _options(find_config(REPO, 'cpu', 'mb_gn_b2')), None, 'x.json')
    row = {'row': 'mb_bkn_b2', 'benchmark': 'BKN analytic prior'}       # the older recipe: R learned, input hand-on
    with pytest.raises(StudyError, match="process_noise False vs True; propagate 'output' vs 'input'"):
        efficiency.step_time_cell(row, _options(find_config(REPO, 'cpu', 'mb_bkn_b2')), None, 'x.json')
    row = {'row': 'mb_bn_b2', 'benchmark': 'GN'}
    with pytest.raises(StudyError, match="norm 'bn' vs 'gn'"):
        efficiency.step_time_cell(row, _options(find_config(REPO, 'cpu', 'mb_bn_b2')), None, 'x.json')


def _table_with(tmp_path, record_line, rows):
    text = 'title = "t"\nclaim = "c"\n%s\n[seeds]\ncpu = 1\n' % record_line
    for row, extra in rows:
        text += '[[rows]]\nrow = "%s"\nlabel = "%s"\nmetric = "accuracy"\n%s\n' % (row, row, extra)
    path = tmp_path / 't.toml'
    path.write_text(text)
    return str(path)


@pytest.mark.parametrize('record_line, extra, message', [
    ('benchmark_record = "r.json"', 'benchmark = "GNN"', "benchmark 'GNN' is not a label of scripts/benchmark_norms.py"),
    ('benchmark_record = "r.json"', '', 'the row needs benchmark = '),
    ('', 'benchmark = "GN"', "benchmark = ... needs the table's benchmark_record"),
])
def test_schema_checks_the_benchmark_labels_with_one_line(tmp_path, record_line, extra, message):
    with pytest.raises(StudyError) as e:
        load_table(_table_with(tmp_path, record_line, [('mb_gn_b2', extra)]))
    assert message in str(e.value) and '\n' not in str(e.value)


def test_cost_cells_read_the_record_and_count_the_rows_nets(tmp_path):
    root = str(tmp_path / 'repo')
    shutil.copytree(os.path.join(REPO, 'configs'), os.path.join(root, 'configs'))
    os.makedirs(os.path.join(root, 'results'))
    rows = ['mb_bn_b2', 'mb_frn_b2', 'mb_evonorm_b0_b2', 'mb_mabn_b2', 'mb_bknws_b2', 'mb_bn_b128']
    table = load_table(_table_with(tmp_path, 'benchmark_record = "results/b.json"',
                                   [(r, 'benchmark = "%s"' % LEADERBOARD_BENCHMARKS[r]) for r in rows]))
    record = {'command': 'python scripts/benchmark_norms.py --depth 3', 'model': 'ResNet-20', 'depth_n': 3,
              'batch': 128, 'timed_rounds': 20, 'warmup_rounds': 15, 'threads_per_session': 1,
              'machine_description': 'a CPU', 'machine': {'cores': 2}, 'note': 'shared',
              'load_average_1min': {'before_timed_rounds': 3.0, 'after_timed_rounds': 3.5},
              'measurements': [{'label': 'BN', 'group_size': 2, 'grouping': '64 groups of 2', 'ms_per_step': 200.0,
                                'ratio_to_bn': 1.0},
                               {'label': 'FRN+TLU', 'group_size': 2, 'grouping': '64 groups of 2',
                                'ms_per_step': 250.0, 'ratio_to_bn': 1.25},
                               {'label': 'MABN per device', 'group_size': 2, 'grouping': '64 groups of 2',
                                'ms_per_step': 300.0, 'ratio_to_bn': 1.5}]}
    with open(os.path.join(root, 'results', 'b.json'), 'w') as f:
        json.dump(record, f)
    cells = efficiency.cost_cells(root, table, 'cpu')
    assert [cells[r][0] for r in rows] == [
        '1.00×', '1.25×', 'not measured (groups of 2)', '1.50×', 'not measured (groups of 2)',
        'not measured (groups of 128)']
    assert [cells[r][1] for r in rows] == ['yes', 'no', 'no', 'yes', 'yes', 'yes']
    # FRN's τ and EvoNorm's v: one per channel of every norm layer an activation follows; WS and
    # MABN's centring: none
    extra = '{:+,}'.format(RESNET20_ACTIVATED_NORM_CHANNELS)
    assert [cells[r][2] for r in rows] == ['+0', extra, extra, '+0', '+0', '+0']
    note = efficiency.cost_note(table, record)
    assert record['command'] in note and 'BN: 200.0 ms/step at 64 groups of 2' in note and 'shared' in note
    record.update(depth_n=5, model='ResNet-32')
    with open(os.path.join(root, 'results', 'b.json'), 'w') as f:
        json.dump(record, f)
    assert efficiency.cost_cells(root, table, 'cpu')['mb_bn_b2'][0] == 'not measured (the record is ResNet-32 at 128 per step)'
