"""kalman_norm.provenance: the one JSON writer, timestamp and machine description that the
trainers' run directories, the probe and the study tooling share."""
import datetime
import importlib.util
import inspect
import json
import os
import re
import subprocess
import sys

from kalman_norm import probe, provenance
from kalman_norm.train import rundir

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, 'scripts'))
import study  # noqa: E402  (scripts/study/)


def test_atomic_write_json_replaces_whole_files_and_leaves_no_temporary(tmp_path):
    path = str(tmp_path / 'x.json')
    provenance.atomic_write_json(path, {'b': 1, 'a': [1.5, None]})
    assert open(path).read() == '{\n "a": [\n  1.5,\n  null\n ],\n "b": 1\n}\n'
    provenance.atomic_write_json(path, {'b': 2, 'a': 0}, sort_keys=False)
    assert list(json.load(open(path))) == ['b', 'a']
    assert os.listdir(str(tmp_path)) == ['x.json']


def test_utc_now_is_iso_8601_utc_to_the_second():
    stamp = provenance.utc_now()
    assert re.fullmatch(r'\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ', stamp)
    then = datetime.datetime.strptime(stamp, '%Y-%m-%dT%H:%M:%SZ').replace(tzinfo=datetime.timezone.utc)
    assert abs((datetime.datetime.now(datetime.timezone.utc) - then).total_seconds()) < 5


def test_machine_facts():
    m = provenance.machine()
    assert set(m) == {'platform', 'processor', 'cores', 'gpu'} and m['cores'] == os.cpu_count()
    assert study.describe_machine(m).startswith('%d CPU cores, ' % os.cpu_count())
    assert 'Python %d.%d' % sys.version_info[:2] in provenance.describe_machine()


def test_every_user_writes_through_the_one_module():
    assert rundir.atomic_write_json is provenance.atomic_write_json
    assert study.machine is provenance.machine and study.utc_now is provenance.utc_now
    assert 'atomic_write_json(' in inspect.getsource(study.write_json)
    assert probe.atomic_write_json is provenance.atomic_write_json
    for module in (rundir, probe, study.records):
        source = inspect.getsource(module)
        assert 'os.replace(' not in source and 'datetime.now(' not in source, module.__name__


def test_the_module_does_not_import_tensorflow():
    code = ('import importlib.util, sys; spec = importlib.util.spec_from_file_location("p", %r); '
            'm = importlib.util.module_from_spec(spec); spec.loader.exec_module(m); m.machine(); '
            'print("tensorflow" in sys.modules)' % provenance.__file__)
    out = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, timeout=120)
    assert out.stdout.split() == ['False'], out.stderr
    assert importlib.util.find_spec('kalman_norm.provenance') is not None
