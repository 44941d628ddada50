"""scripts/campaign.py: a queue of table rows run from a fixed-commit worktree, each finished record
committed in the receiving checkout with the reports rewritten and its numbers in the message."""
import importlib.util
import json
import os
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
spec = importlib.util.spec_from_file_location('campaign', os.path.join(REPO, 'scripts', 'campaign.py'))
campaign = importlib.util.module_from_spec(spec)
spec.loader.exec_module(campaign)

#: a stand-in for reproduce.py: in a worktree it "trains" (writes the record of every seed up to
#: --seeds); with --report-only it rewrites results/<table>.md, naming the records it saw
FAKE_REPRODUCE = r'''
import glob, json, os, sys
args = sys.argv[1:]
if '--report-only' in args:
    runs = sorted(glob.glob('results/runs/cpu/*/seed*'))
    for table in [a for a in args if not a.startswith('--')]:
        open('results/%s.md' % table, 'w').write('%s: %d records\n' % (table, len(runs)))
    sys.exit(0)
table, row, seeds = args[0], args[args.index('--rows') + 1], int(args[args.index('--seeds') + 1])
assert os.environ['OMP_NUM_THREADS'] == args[args.index('--threads') + 1]
for seed in range(1, seeds + 1):
    d = 'results/runs/cpu/%s/seed%d' % (row, seed)
    if not os.path.isdir(d):
        os.makedirs(d)
        json.dump([{'epoch_num': 10, 'val-error-moving': 0.2, 'val-error-batch': 0.25}], open(d + '/stats.json', 'w'))
        json.dump({'wall_minutes': 12.5, 'git_commit': 'abcdef0123', 'attempts': [{}]}, open(d + '/run.json', 'w'))
        json.dump({'identity': {'conventions': 2}}, open(d + '/options.json', 'w'))
'''


def git(cwd, *args):
    return subprocess.run(['git'] + list(args), cwd=cwd, capture_output=True, text=True, check=True).stdout


def checkout(path):
    os.makedirs(os.path.join(path, 'scripts'))
    os.makedirs(os.path.join(path, 'configs', 'tables'))
    os.makedirs(os.path.join(path, 'results'))
    open(os.path.join(path, 'scripts', 'reproduce.py'), 'w').write(FAKE_REPRODUCE)
    for table in ('kn_study', 'budget'):
        open(os.path.join(path, 'configs', 'tables', table + '.toml'), 'w').write('title = "t"\n')
    open(os.path.join(path, 'results', 'kn_study.md'), 'w').write('kn_study: 0 records\n')
    open(os.path.join(path, 'README.md'), 'w').write('readme\n')
    return str(path)


@pytest.fixture
def repo(tmp_path):
    path = checkout(tmp_path / 'repo')
    git(path, 'init', '-q')
    git(path, '-c', 'user.name=t', '-c', 'user.email=t@t', 'commit', '-q', '--allow-empty', '-m', 'start')
    git(path, 'config', 'user.name', 't')
    git(path, 'config', 'user.email', 't@t')
    git(path, 'add', '.')
    git(path, 'commit', '-q', '-m', 'files')
    return path


@pytest.mark.parametrize('item', ['kn_study:bn_b2', 'kn_study:bn_b2:0', 'kn_study::3', 'a:b:c', 'a:b:1:2'])
def test_a_bad_item_fails_with_one_line(item):
    with pytest.raises(ValueError, match='TABLE:ROW:SEED'):
        campaign.parse_item(item)
    assert campaign.parse_item('kn_study:bn_b2:6') == ('kn_study', 'bn_b2', 6)


def test_bad_arguments_fail_before_anything_runs(repo, tmp_path, capsys):
    worktree = checkout(tmp_path / 'wt')
    base = ['--threads', '1', '--data', 'd', '--layout', 'l', '--repo', repo, '--log', str(tmp_path / 'log')]
    for argv, message in (([ 'kn_study:bn_b2:1', '--worktree', str(tmp_path / 'none')], 'holds no scripts/reproduce.py'),
                          (['kn_study:bn_b2:1', '--worktree', repo], 'is this checkout'),
                          (['table9:bn_b2:1', '--worktree', worktree], 'has no table table9'),
                          (['kn_study:bn_b2:1', '--worktree', worktree, '--threads', '0'], '--threads must be >= 1')):
        assert campaign.main(base + argv) == 2
        assert message in capsys.readouterr().err
    assert not os.path.exists(str(tmp_path / 'log'))


def test_queue_runs_in_the_worktree_and_commits_each_record_with_its_numbers(repo, tmp_path):
    worktree = checkout(tmp_path / 'wt')
    log = str(tmp_path / 'logs' / 'campaign.log')
    argv = ['kn_study:bn_b2:2', 'budget:bn_b2_e30:1', '--worktree', worktree, '--threads', '1', '--data', 'd',
            '--layout', 'two queues, --threads 1 each', '--repo', repo, '--log', log,
            '--stop-file', str(tmp_path / 'stop')]
    assert campaign.main(argv) == 0
    subjects = git(repo, 'log', '--format=%s').splitlines()
    assert subjects[:3] == [
        'bn_b2_e30 seed 1 (conventions 2, finished): moving 80.00 / online 75.00% after 10 epochs, 12.5 min wall '
        'over 1 attempt(s) (two queues, --threads 1 each); commit abcdef0'] + [
        'bn_b2 seed %d (conventions 2, finished): moving 80.00 / online 75.00%% after 10 epochs, 12.5 min wall '
        'over 1 attempt(s) (two queues, --threads 1 each); commit abcdef0' % s for s in (2, 1)]
    # the report rewritten with each record, and committed with it; budget has a report from its first record
    assert open(os.path.join(repo, 'results', 'kn_study.md')).read() == 'kn_study: 3 records\n'
    assert open(os.path.join(repo, 'results', 'budget.md')).read() == 'budget: 3 records\n'
    assert git(repo, 'status', '--porcelain') == ''
    assert 'results/kn_study.md' in git(repo, 'show', '--name-only', '--format=', 'HEAD~1')
    # queued again: nothing new, nothing committed; a stop file stops the queue before its next run
    assert campaign.main(argv) == 0 and len(git(repo, 'log', '--format=%s').splitlines()) == len(subjects)
    open(str(tmp_path / 'stop'), 'w').close()
    assert campaign.main(argv[:1] + ['kn_study:bn_b2:3'] + argv[2:]) == 0
    assert not os.path.isdir(os.path.join(worktree, 'results', 'runs', 'cpu', 'bn_b2', 'seed3'))
    assert 'stop file' in open(log).read().splitlines()[-1]
