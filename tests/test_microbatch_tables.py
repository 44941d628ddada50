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
