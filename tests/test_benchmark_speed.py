"""scripts/benchmark_speed.py: bad options fail at once with one line; the report's tables.

The benchmark itself (minutes of ResNet-20 training steps) is not run here; its pieces are:
option checking, the ratio table and the profile table from recorded timings.
"""
import os
import subprocess
import sys

import pytest

SCRIPT = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), 'scripts',
                      'benchmark_speed.py')
sys.path.insert(0, os.path.dirname(SCRIPT))

import benchmark_speed as bs  # noqa: E402


@pytest.mark.parametrize('argv, message', [
    (['--models', 'bn3'], 'unknown model(s) bn3'),
    (['--models', ''], 'unknown model(s) (none given)'),
    (['--settings', 'before,warp'], 'unknown setting(s) warp; see --list'),
    (['--settings', 'before,before'], 'must not repeat'),
    (['--rounds', '2'], '--rounds must be >= 3'),
    (['--steps', '0'], '--steps >= 1'),
    (['--profile', '-1'], '--profile >= 0'),
    (['--out', '/no/such/dir/speed.md'], 'directory does not exist'),
])
def test_bad_options_fail_with_one_line(argv, message, capsys):
    with pytest.raises(SystemExit) as e:
        bs.parse_args(argv)
    assert e.value.code == 2
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert message in last, last


def test_bad_option_exits_before_tensorflow_starts():
    """The check runs before any worker is built or TensorFlow imported (fast, nothing written)."""
    out = subprocess.run([sys.executable, SCRIPT, '--models', 'bn3'], capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 2 and 'unknown model(s) bn3' in out.stderr
    assert 'built' not in out.stdout


def test_every_setting_is_described_and_known_keys_only():
    known = {'env', 'intra', 'inter', 'jit', 'group_stats', 'data_format', 'runtime'}
    for name, (what, change) in bs.SETTINGS.items():
        assert what and set(change) <= known, name
        assert change.get('group_stats', 'library') in ('reference', 'library'), name
    assert bs.DEFAULT_SETTINGS[0] == 'before' and set(bs.DEFAULT_SETTINGS) <= set(bs.SETTINGS)


class _Recorded(object):
    """A worker's recorded results, without a process."""

    def __init__(self, model, setting, rates, ops=None):
        self.model, self.setting, self.rates, self.ops = model, setting, rates, ops


def test_profile_table_splits_convolutions_from_the_rest():
    w = _Recorded('bn2', 'before', [1.0], {'Conv2D': 30.0, 'Conv2DBackpropFilter': 50.0, 'Mul': 15.0,
                                           'Tile': 5.0})
    table = bs.profile_table([w])
    row = [l for l in table.splitlines() if 'BN, 64 groups of 2' in l][0]
    cells = [c.strip() for c in row.strip('|').split('|')]
    assert cells[2:6] == ['100', '80', '20', '80']         # total, conv, other, conv %
    assert cells[6] == 'Mul 15, Tile 5'
