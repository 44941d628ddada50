"""Every committed config parses into valid trainer options."""
import glob
import os

import pytest

from kalman_norm.cifar import parse_options

CONFIGS = sorted(glob.glob(os.path.join(os.path.dirname(__file__), '..', 'configs', '*.toml')))


def test_there_are_configs():
    assert CONFIGS


@pytest.mark.parametrize('path', CONFIGS, ids=os.path.basename)
def test_config_parses(path):
    o = parse_options(['--config', path])
    assert o['spec'].kind == o['norm']
    assert o['total_batch'] % (o['batch'] * o['gpus']) == 0
