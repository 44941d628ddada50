"""scripts/benchmark_norms.py: bad options fail with one line before any graph is built; every
label is a valid norm configuration; a tiny interleaved run writes the JSON record whose ratios
the leaderboard reads (each the label's median over BN's at the same grouping)."""
import json
import os
import shlex
import sys

import pytest

import kalman_norm as kn

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO, 'scripts'))
import benchmark_norms as bn_bench  # noqa: E402


@pytest.mark.parametrize('argv, message', [
    (['--norms', 'BN,GNN'], "unknown label(s) 'GNN'"),
    (['--norms', 'GN'], 'must include BN'),
    (['--groupings', '3'], 'distinct divisors of 128'),
    (['--groupings', '2,2'], 'distinct divisors of 128'),
    (['--groupings', 'two'], 'comma-separated integers'),
    (['--steps', '0'], '--steps must be >= 1'),
    (['--depth', '0'], '--depth must be >= 1'),
    (['--threads', '0'], '--threads must be >= 1'),
    (['--json', '/no/such/dir/b.json'], 'does not exist'),
])
def test_bad_options_fail_with_one_line(argv, message, capsys):
    with pytest.raises(SystemExit) as e:
        bn_bench.parse_args(argv)
    assert e.value.code == 2
    assert message in capsys.readouterr().err.strip().splitlines()[-1]


@pytest.mark.parametrize('label, norm, options', bn_bench.NORMS, ids=bn_bench.LABELS)
def test_every_label_is_a_valid_norm_configuration(label, norm, options):
    spec = kn.NormSpec(norm, group_size=2, **options)
    assert spec.kind == norm


def test_default_recipe_labels_are_the_library_recipe():
    labels = {label: (norm, options) for label, norm, options in bn_bench.NORMS}
    assert labels['BKN default recipe'] == ('bkn', dict(kn.KN_RECIPES['library']))
    assert labels['BKN+WS default recipe'] == ('bkn', dict(kn.KN_RECIPES['library'], weight_standardization=True))


def test_a_tiny_run_writes_the_record(tmp_path):
    out, record = str(tmp_path / 'b.md'), str(tmp_path / 'b.json')
    argv = ['--depth', '1', '--steps', '3', '--warmup', '1', '--groupings', '2', '--norms', 'BN,GN+WS',
            '--threads', '1', '--note', 'a test', '--out', out, '--json', record]
    bn_bench.main(argv)
    with open(record) as f:
        rec = json.load(f)
    assert shlex.split(rec['command']) == ['python', 'scripts/benchmark_norms.py'] + argv
    assert (rec['model'], rec['depth_n'], rec['batch'], rec['threads_per_session'], rec['timed_rounds']) == \
        ('ResNet-8', 1, 128, 1, 3)
    by_label = {m['label']: m for m in rec['measurements']}
    assert set(by_label) == {'BN', 'GN+WS'}
    for m in rec['measurements']:
        assert m['group_size'] == 2 and len(m['ms_per_round']) == 3
        assert m['ms_per_step'] == pytest.approx(sorted(m['ms_per_round'])[1])
        assert m['ratio_to_bn'] == pytest.approx(m['ms_per_step'] / by_label['BN']['ms_per_step'])
        per_round = sorted(a / b for a, b in zip(m['ms_per_round'], by_label['BN']['ms_per_round']))
        assert m['ratio_per_round_quartiles'] == pytest.approx([(per_round[0] + per_round[1]) / 2,
                                                                (per_round[1] + per_round[2]) / 2])
    assert by_label['BN']['ratio_to_bn'] == 1.0
    assert by_label['GN+WS']['options'] == {'weight_standardization': True}
    with open(out) as f:
        text = f.read()
    assert rec['command'] in text and '1 thread(s) per session' in text and 'a test' in text
    assert '%.2f' % by_label['GN+WS']['ratio_to_bn'] in text
