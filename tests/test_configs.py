"""The committed configs and table files: layout, parsing, and what the tables promise.

configs/<profile>/<table>/<row>.toml holds one trainer config per row; configs/tables/<table>.toml
lists the rows and names the trainer that runs them.  Every config parses into valid options of
its table's trainer; the paper profile is the authors' recipe (the trainer's schedule "paper"),
the cpu profile a budget of this machine.
"""
import glob
import os
import sys
import pytest

from kalman_norm import KN_RECIPES
from kalman_norm.train import cifar, classifier, imagenet, core as trainer
from kalman_norm.train.cifar import DEFAULTS, parse_options
from kalman_norm.train.options import read_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, 'scripts'))
import study  # noqa: E402  (scripts/study/)
CONFIGS = os.path.join(ROOT, 'configs')
CPU = sorted(glob.glob(os.path.join(CONFIGS, 'cpu', '*', '*.toml')))
PAPER = sorted(glob.glob(os.path.join(CONFIGS, 'paper', '*', '*.toml')))
TABLES = sorted(glob.glob(os.path.join(CONFIGS, 'tables', '*.toml')))
REPRO_TABLES = ('fig4', 'table7', 'table8', 'largebatch')


def _ids(path):
    return os.path.relpath(path, CONFIGS)


def _toml(path):
    """The config's settings, resolved through its base (as the trainer reads --config)."""
    return read_config(path)


def _trainer_options(path):
    """The options of the config at configs/<profile>/<table>/<row>.toml, parsed by the trainer of
    the table listing its row (the ImageNet trainer needs a --data; its existence is not checked)."""
    profile, _, name = os.path.relpath(path, CONFIGS).split(os.sep)
    row = os.path.splitext(name)[0]
    trainers = {t['trainer'] for t in map(study.load_table, TABLES) for r in t['rows'] if r['row'] == row
                and profile in t['seeds']}
    assert len(trainers) == 1, '%s: run by %s' % (_ids(path), trainers or 'no table')
    if trainers == {'imagenet'}:
        return imagenet.parse_options(['--config', path, '--data', 'unused'])
    return parse_options(['--config', path])


def test_layout():
    assert CPU and PAPER and TABLES
    assert not glob.glob(os.path.join(CONFIGS, '*.toml')), 'configs live in configs/<profile>/<table>/'
    for name in os.listdir(CONFIGS):
        # imagenet/: the ImageNet trainer's configs of the paper's Tables 1, 4, 5 (GPU scale; no table)
        assert name in ('cpu', 'paper', 'tables', 'imagenet'), name
    for t in REPRO_TABLES:
        assert os.path.isfile(os.path.join(CONFIGS, 'tables', t + '.toml'))
    assert os.path.isfile(os.path.join(CONFIGS, 'tables', 'kn_study.toml'))


@pytest.mark.parametrize('path', CPU, ids=_ids)
def test_cpu_config_parses(path):
    o = _trainer_options(path)
    assert o['spec'].kind == o['norm']
    assert o['total_batch'] % (o['batch'] * o['gpus']) == 0
    assert _toml(path).get('epochs') == o['epochs'], 'cpu configs state their epochs'


@pytest.mark.parametrize('path', PAPER, ids=_ids)
def test_paper_config_is_the_authors_recipe(path):
    """The trainer's schedule "paper" is the authors' recipe (400 epochs, lr 0.01 for the first
    epoch then 0.1, 0.01 from epoch 82, 0.001 from 123, 0.0002 from 300; wd 2e-4)."""
    conf = _toml(path)
    assert conf['schedule'] == 'paper' and conf['epochs'] == 400
    assert conf['lr'] == 0.1 and conf['momentum'] == 0.9 and conf['weight_decay'] == 2e-4
    assert set(conf) <= set(DEFAULTS), sorted(set(conf) - set(DEFAULTS))
    o = parse_options(['--config', path])
    assert o['spec'].kind == o['norm'] and o['epochs'] == 400 and o['weight_decay'] == 2e-4
    points, _ = cifar.lr_schedule(o['schedule'], o['lr'], o['epochs'])
    assert points == [(0, 0.01), (1, 0.1), (82, 0.01), (123, 0.001), (300, 0.0002)]   # the authors' list


@pytest.mark.parametrize('path', CPU + PAPER, ids=_ids)
def test_seed_and_logdir_come_from_the_runner(path):
    conf = _toml(path)
    assert 'seed' not in conf and 'logdir' not in conf and 'data' not in conf


@pytest.mark.parametrize('path', TABLES, ids=_ids)
def test_table_structure(path):
    t = study.load_table(path)
    assert t['claim'].strip().endswith(('.', ')'))
    for profile in t['seeds']:
        for r in t['rows']:
            config = study.find_config(ROOT, profile, r['row'])   # at most one config per row name
            if study.row_available(r, profile):
                assert config is not None, '%s: row %s has no %s config' % (t['name'], r['row'], profile)
                assert study.planned_seeds(t, r, profile)
            else:
                assert r['reason'].startswith('not run here: ')
        for row in {c['a'] for c in t['claims']} | {c['b'] for c in t['claims']}:
            assert row in {r['row'] for r in t['rows']}


def test_every_config_is_in_a_table():
    listed = {(p, r['row']) for path in TABLES for t in [study.load_table(path)] for p in study.PROFILES
              for r in t['rows']}
    for path in CPU + PAPER:
        profile = os.path.relpath(path, CONFIGS).split(os.sep)[0]
        row = os.path.splitext(os.path.basename(path))[0]
        assert (profile, row) in listed, '%s is in no table' % _ids(path)


def test_reproduction_tables_run_in_both_profiles_with_the_same_settings():
    """A cpu row and its paper row differ in the budget only (schedule, epochs, wd, momentum; the
    ResNet rows also in depth, the cpu profile running them on the KN study's ResNet-20)."""
    budget = {'schedule', 'epochs', 'lr', 'momentum', 'weight_decay', 'depth', 'keep_checkpoints'}
    for name in REPRO_TABLES:
        t = study.load_table(os.path.join(CONFIGS, 'tables', name + '.toml'))
        assert set(t['seeds']) == {'cpu', 'paper'}
        for r in t['rows']:
            cpu, paper = (study.find_config(ROOT, p, r['row']) for p in ('cpu', 'paper'))
            if paper is None:     # a cpu-only row (the records of an earlier convention) says why
                assert not study.row_available(r, 'paper') and r['reason'].startswith('not run here: '), r['row']
                continue
            if cpu is None:
                assert not study.row_available(r, 'cpu')
                continue
            a, b = _toml(cpu), _toml(paper)
            same_a = {k: v for k, v in a.items() if k not in budget}
            assert same_a == {k: v for k, v in b.items() if k not in budget}, r['row']


def test_table8_shares_table7_runs_and_fig4_cpu_budget():
    t7 = study.load_table(os.path.join(CONFIGS, 'tables', 'table7.toml'))
    t8 = study.load_table(os.path.join(CONFIGS, 'tables', 'table8.toml'))
    shared = {r['row'] for r in t7['rows']} & {r['row'] for r in t8['rows']}
    assert shared == {'inception_bn_b2', 'inception_bn_b128', 'inception_bkn_b2'}
    unavailable = [r for r in t8['rows'] if not study.row_available(r, 'cpu')]
    assert len(unavailable) == 14 and all('no data' in r['reason'] for r in unavailable)


def test_fig4_and_largebatch_cpu_rows_share_the_kn_study_budget_and_runs():
    """In the cpu profile the ResNet tables run on the KN study's budget, so a row both list (BN@2,
    BKN with either recipe, BN@128) is one run; in the paper profile they are ResNet-32 at 400 epochs."""
    study_budget = ('resnet', 3, 'cifar10', 'short', 10, 128, 0.1)
    kn_study = {r['row'] for r in study.load_table(os.path.join(CONFIGS, 'tables', 'kn_study.toml'))['rows']}
    shared = {}
    for name, n_batch in (('fig4', 2), ('largebatch', 128)):
        t = study.load_table(os.path.join(CONFIGS, 'tables', name + '.toml'))
        rows = [r['row'] for r in t['rows'] if study.row_available(r, 'cpu')]
        shared[name] = set(rows) & kn_study
        for row in rows:
            c = _toml(study.find_config(ROOT, 'cpu', row))
            assert (c['model'], c['depth'], c['dataset'], c['schedule'], c['epochs'], c['total_batch'],
                    c['lr']) == study_budget, row
            assert c['batch'] == n_batch, row
            p = _toml(study.find_config(ROOT, 'paper', row))
            assert (p['depth'], p['schedule'], p['epochs']) == (5, 'paper', 400), row
    assert shared == {'fig4': {'bn_b2', 'gn16_b2', 'bkn_output', 'bkn_authors'}, 'largebatch': {'bn_b128'}}


@pytest.mark.parametrize('path', [p for p in CPU + PAPER if p.split(os.sep)[-2] in REPRO_TABLES
                                  and _toml(p)['norm'] in trainer.KALMAN_NORMS], ids=_ids)
def test_paper_table_kn_rows_measure_the_shipped_recipe_and_fig4_the_authors_too(path):
    """The paper's tables measure the KN this package ships (KN_RECIPES['library']); Fig. 4 also
    has the authors' recipe as its own row (bkn_authors, beside bkn_output)."""
    conf = _toml(path)
    recipe = KN_RECIPES['authors' if path.endswith('_authors.toml') else 'library']
    assert conf['prior'] == recipe['prior_method'] and conf.get('prior_samples', 1) == recipe['prior_samples']
    assert conf['gain'] == (recipe['gain'] if conf['batch'] <= 16 else 0.95), _ids(path)
    assert {k: conf['norm_options'][k] for k in recipe if k in conf['norm_options']} == \
        {k: v for k, v in recipe.items() if k not in ('prior_method', 'prior_samples', 'gain')}
    if os.sep + 'fig4' + os.sep in path and conf['norm'] == 'bkn':
        assert {os.path.basename(p) for p in glob.glob(os.path.join(os.path.dirname(path), 'bkn_*.toml'))} \
            == {'bkn_output.toml', 'bkn_authors.toml'}


def test_kn_study_rows_share_one_budget():
    t = study.load_table(os.path.join(CONFIGS, 'tables', 'kn_study.toml'))
    assert set(t['seeds']) == {'cpu'}
    seen = {}
    for r in t['rows']:
        c = _toml(study.find_config(ROOT, 'cpu', r['row']))
        assert (c['model'], c['depth'], c['dataset'], c['schedule'], c['epochs'], c['total_batch'], c['lr']) == \
            ('resnet', 3, 'cifar10', 'short', 10, 128, 0.1), r['row']
        seen[r['row']] = c
        if c['norm'] in ('bn', 'bkn', 'brn'):
            assert c['eval_stats'] == 'both', r['row']
    assert seen['bn_b128']['batch'] == 128
    assert all(c['batch'] == 2 for name, c in seen.items() if name != 'bn_b128')
    assert seen['bkn_noguard']['norm_options']['guard_ratio'] == 'none'
    assert seen['bkn_nopool']['norm_options']['pooled_variance'] is False
    assert seen['bkn_authors']['prior'] == 'mc' and seen['bkn_authors']['prior_samples'] == 1
    assert seen['bkn_qlearned']['gain'] == 'learned' and seen['bkn_r']['norm_options']['process_noise'] is True
    assert (t['rows'][0]['row'], t['rows'][0].get('seeds')) == ('bn_b2', 8)      # the headline rows: 8 seeds


def test_kn_study_ablations_change_one_option_of_the_leading_recipe():
    """Each ablation row is bkn_output with exactly the option it names changed, so that its gap to
    bkn_output measures that option alone."""
    def flat(row):
        c = _toml(study.find_config(ROOT, 'cpu', row))
        c.update(('norm_options.' + k, v) for k, v in c.pop('norm_options').items())
        return c
    base = flat('bkn_output')
    changed = {'bkn_q0': {'gain': 0.0}, 'bkn_q03': {'gain': 0.3}, 'bkn_q05': {'gain': 0.5}, 'bkn_qlearned': {'gain': 'learned'},
               'bkn_r': {'norm_options.process_noise': True, 'norm_options.noise_param': 'relative'},
               'bkn_nopool': {'norm_options.pooled_variance': False},
               'bkn_noguard': {'norm_options.guard_ratio': 'none'},
               'bkn_movingprior': {'norm_options.prior_source': 'moving'},
               'bkn_calibrated': {'norm_options.prior_source': 'calibrated'},
               'bkn_priornograd': {'norm_options.prior_gradient': False}}
    for row, diff in changed.items():
        c = flat(row)
        got = {k: c.get(k) for k in set(c) | set(base) if c.get(k) != base.get(k)}
        assert got == diff, row
    calibrated, c = flat('bkn_calibrated'), flat('bkn_calibrated_q03')     # an ablation of an ablation
    assert {k: c.get(k) for k in set(c) | set(calibrated) if c.get(k) != calibrated.get(k)} == {'gain': 0.3}


#: the CIFAR trainer's KN configs (the ImageNet trainer's graphs take minutes to build)
CIFAR_KN = [p for p in CPU + PAPER if _toml(p)['norm'] in trainer.KALMAN_NORMS
            and os.sep + 'imagenet_check' + os.sep not in p]


@pytest.mark.parametrize('path', CIFAR_KN, ids=_ids)
def test_cifar_kn_configs_state_every_kn_option_and_build(path):
    """A run's config states every option a KN recipe sets, so that its record keeps its meaning
    when the library's defaults change; and the model builds with it (the trainer's dry build)."""
    conf = _toml(path)
    recipe = set(KN_RECIPES['library']) - {'prior_method', 'prior_samples', 'gain'}
    assert {'prior', 'gain'} <= set(conf) and recipe <= set(conf['norm_options']), _ids(path)
    o = parse_options(['--config', path])
    classifier.check_graph(cifar.TASK, o)


def test_a_row_is_run_by_one_trainer():
    """A row names one log dir and one record: tables of two trainers never share it."""
    trainer = {}
    for t in map(study.load_table, TABLES):
        for r in t['rows']:
            assert trainer.setdefault(r['row'], t['trainer']) == t['trainer'], r['row']


def test_imagenet_check_rows_share_one_budget():
    """BN vs BKN on the ImageNet path: the norm is the only difference; the peak lr is 0.1."""
    t = study.load_table(os.path.join(CONFIGS, 'tables', 'imagenet_check.toml'))
    assert t['trainer'] == 'imagenet' and set(t['seeds']) == {'cpu'}
    paths = {r['row']: study.find_config(ROOT, 'cpu', r['row']) for r in t['rows']}
    configs = {row: study.load_config(path, 'imagenet') for row, path in paths.items()}
    assert {study.budget_line(c) for c in configs.values()} == {
        'ResNet-50 at 32 px, 4 epochs of 300 steps (schedule short), 32 samples per step on 2 towers of 16, '
        'IMAGENET-style folder'}
    bn, bkn = (_toml(paths[row]) for row in ('r50_bn_b4', 'r50_bkn_b4'))
    assert (bn.pop('norm'), bkn.pop('norm')) == ('bn', 'bkn') and bn == bkn
    for path in paths.values():
        o = _trainer_options(path)
        points, _ = imagenet.lr_schedule(o['schedule'], o['lr'], o['epochs'], o['total_batch'])
        assert max(lr for _, lr in points) == 0.1 and o['tower_batch'] == 16 and o['batch'] == 4
