"""Config inheritance: ``base = "<path>"`` and what differs (tables merged, scalars replaced), read
the same by the trainers (--config) and the study (records, run.json's settings hash)."""
import glob
import json
import os
import sys
import tomllib

import pytest

from kalman_norm.train import cifar
from kalman_norm.train.options import OptionError, dump_toml, read_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, 'scripts'))
import study  # noqa: E402  (scripts/study/)

CONFIGS = sorted(glob.glob(os.path.join(ROOT, 'configs', '**', '*.toml'), recursive=True))
#: the settings of the paper configs as they were written out in full, before they named a base
BEFORE = os.path.join(ROOT, 'tests', 'data', 'paper_configs_before_base.json')


def _raw(path):
    with open(path, 'rb') as f:
        return tomllib.load(f)


def test_configs_restated_through_a_base_resolve_to_their_old_settings():
    with open(BEFORE) as f:
        before = json.load(f)
    assert before
    for rel, settings in before.items():
        path = os.path.join(ROOT, rel)
        assert 'base' in _raw(path), rel
        assert read_config(path) == settings, rel


@pytest.mark.parametrize('path', CONFIGS, ids=lambda p: os.path.relpath(p, ROOT))
def test_every_config_resolves_and_writes_back(path):
    settings = read_config(path)
    assert 'base' not in settings
    if 'base' not in _raw(path):
        assert settings == _raw(path)
    assert tomllib.loads(dump_toml(settings)) == settings


def test_paper_rows_based_on_cpu_rows_change_the_budget_only():
    for path in glob.glob(os.path.join(ROOT, 'configs', 'paper', '*', '*.toml')):
        base = _raw(path).get('base')
        if base and base.startswith('../../cpu/'):
            own = {k: v for k, v in _raw(path).items() if k != 'base'}
            assert own == {'schedule': 'paper', 'epochs': 400, 'momentum': 0.9, 'weight_decay': 2e-4}, path


def _write(path, text):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return str(path)


def test_tables_merge_and_scalars_override_through_two_levels(tmp_path):
    _write(tmp_path / 'a.toml', 'norm = "bkn"\nlr = 0.1\nepochs = 3\n[norm_options]\nguard_ratio = 100.0\n'
                                'pooled_variance = true\n')
    _write(tmp_path / 'sub' / 'b.toml', 'base = "../a.toml"\nlr = 0.2\n[norm_options]\npooled_variance = false\n')
    c = _write(tmp_path / 'c.toml', 'base = "sub/b.toml"\nepochs = 5\n[norm_options]\nprocess_noise = true\n')
    assert read_config(c) == {'norm': 'bkn', 'lr': 0.2, 'epochs': 5,
                              'norm_options': {'guard_ratio': 100.0, 'pooled_variance': False, 'process_noise': True}}
    o = cifar.parse_options(['--config', c, '--epochs', '4'])      # the command line still wins
    assert (o['norm'], o['lr'], o['epochs'], o['norm_options']['pooled_variance']) == ('bkn', 0.2, 4, False)


def test_a_missing_base_or_a_cycle_is_one_line(tmp_path):
    missing = _write(tmp_path / 'm.toml', 'base = "nowhere.toml"\nlr = 0.2\n')
    with pytest.raises(OptionError, match=r'm.toml: base .*nowhere.toml: no such file') as e:
        read_config(missing)
    assert '\n' not in str(e.value)
    _write(tmp_path / 'x.toml', 'base = "y.toml"\n')
    _write(tmp_path / 'y.toml', 'base = "x.toml"\n')
    with pytest.raises(OptionError, match=r'base cycle .*x.toml -> .*y.toml -> .*x.toml') as e:
        read_config(str(tmp_path / 'x.toml'))
    assert '\n' not in str(e.value)
    with pytest.raises(OptionError, match='base must be a path'):
        read_config(_write(tmp_path / 'n.toml', 'base = 3\n'))
    with pytest.raises(OptionError, match='base .*nowhere.toml: no such file'):   # the trainer reads it so
        cifar.parse_options(['--config', missing])


def test_study_records_and_hashes_compare_resolved_settings(tmp_path):
    full = 'model = "resnet"\ndepth = 1\nnorm = "bn"\nbatch = 2\ntotal_batch = 8\nepochs = 2\nlr = 0.1\n'
    d = tmp_path / 'configs' / 'cpu' / 't'
    written_out = _write(d / 'full.toml', full)
    _write(d / 'base.toml', full.replace('lr = 0.1\n', 'lr = 0.3\n'))
    based = _write(d / 'based.toml', '# the same settings, as a base and what differs\nbase = "base.toml"\nlr = 0.1\n')
    assert study.config_settings_sha256(based) == study.config_settings_sha256(written_out)
    assert study.load_config(based) == study.load_config(written_out)
    logdir, record = str(tmp_path / 'log'), str(tmp_path / 'rec')
    os.makedirs(logdir)
    study.write_json(os.path.join(logdir, 'stats.json'), [{'epoch_num': 2, 'val-error': 0.3}])
    study.write_json(os.path.join(logdir, 'options.json'), {'epochs': 2})
    assert study.collect(logdir, record, based, 'based', 'cpu', 1)
    # the record holds the settings it ran with (its base path would not resolve from there)
    assert _raw(os.path.join(record, 'config.toml')) == read_config(based)
    assert not study.record_is_stale(record, based) and not study.record_is_stale(record, written_out)
    _write(d / 'base.toml', full.replace('lr = 0.1\n', 'lr = 0.3\n').replace('depth = 1', 'depth = 2'))
    assert study.record_is_stale(record, based)                 # the base changed a setting
