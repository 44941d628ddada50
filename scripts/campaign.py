#!/usr/bin/env python
"""Run a queue of table rows from a fixed-commit worktree, and commit each finished record here as
it finishes: the record, the reports rewritten from the records, and its numbers in the message.

    git worktree add --detach ../rt HEAD
    python scripts/campaign.py --worktree ../rt --threads 1 --data ../shared/data/cifar10-jpeg.tar.gz \\
        --layout "two queues side by side, --threads 1 each" kn_study:bn_b2:6 kn_study:bkn_output:6 &

The runs' code stays the worktree's commit (each record pins it) while this checkout changes.
Two queues may run side by side: their commits take turns under a lock.  A queue stops before its
next run once ``--stop-file`` exists; a run cut short resumes when its item is queued again.
"""
import argparse
import fcntl
import glob
import os
import shutil
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import study  # noqa: E402  (scripts/study/: a record's reading and its conventions, one definition)
PROFILE = 'cpu'
#: what a commit of a record holds besides the record: every report and the READMEs' blocks
REPORTS = ['results/*.md', 'results/*.png', 'README.md', 'results/README.md']


def parse_item(text):
    """'table:row:seed' -> (table, row, seed); ValueError with one line otherwise."""
    parts = text.split(':')
    if len(parts) != 3 or not all(parts) or not parts[2].isdigit() or int(parts[2]) < 1:
        raise ValueError('a queue item is TABLE:ROW:SEED with SEED >= 1, got %r' % text)
    return parts[0], parts[1], int(parts[2])


def build_parser():
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    p.add_argument('items', nargs='+', metavar='TABLE:ROW:SEED',
                   help="the queue, in order; an item runs the row's missing seeds up to SEED (reproduce.py --seeds)")
    p.add_argument('--worktree', required=True, help='checkout of the commit the runs use (git worktree add)')
    p.add_argument('--threads', type=int, required=True,
                   help="each run's CPU threads (the trainer's --threads; give 1 per queue when two run side by side)")
    p.add_argument('--data', required=True, help='the dataset, passed to reproduce.py')
    p.add_argument('--layout', required=True, help='how the machine was shared, for the commit messages')
    p.add_argument('--repo', default=REPO, help='the checkout that receives the records (default: this one)')
    p.add_argument('--stop-file', default=os.path.join(REPO, 'train_log', 'campaign.stop'),
                   help='a queue stops before its next run while this file exists (default: %(default)s)')
    p.add_argument('--log', default=os.path.join(REPO, 'train_log', 'campaign.log'),
                   help='one line per start, end and commit (default: %(default)s)')
    return p


def check_arguments(args):
    """One line per problem, before anything runs."""
    items = [parse_item(x) for x in args.items]
    if args.threads < 1:
        raise ValueError('--threads must be >= 1, got %d' % args.threads)
    if not os.path.isfile(os.path.join(args.worktree, 'scripts', 'reproduce.py')):
        raise ValueError('--worktree %s holds no scripts/reproduce.py: give a checkout of this repository'
                         % args.worktree)
    if os.path.realpath(args.worktree) == os.path.realpath(args.repo):
        raise ValueError('--worktree is this checkout: the runs need a fixed commit of their own (git worktree add)')
    for table, _, _ in items:
        if not os.path.isfile(os.path.join(args.worktree, 'configs', 'tables', table + '.toml')):
            raise ValueError('the worktree has no table %s (configs/tables/%s.toml)' % (table, table))
    return items


def record_message(record, row, seed, layout):
    """The commit message of a record: its accuracies, epochs, wall time, conventions and commit."""
    rec = study.load_record(record)
    run = rec['run'] or {}
    status = (rec['status'] or {}).get('status', 'finished')
    conventions = study.record_conventions(rec)
    last = rec['stats'][-1] if rec['stats'] else {}
    accuracies = ['%s %.2f' % (name, 100 * (1 - last[tag])) for tag, name in
                  (('val-error-moving', 'moving'), ('val-error-batch', 'online'), ('val-error-precise', 'precise'),
                   ('val-error', 'eval')) if tag in last]
    attempts = len(run.get('attempts', [])) or 1
    return ('%s seed %d (conventions %d, %s): %s%% after %s epochs, %s min wall over %d attempt(s) (%s); commit %s'
            % (row, seed, conventions, status, ' / '.join(accuracies) or 'no evaluation', last.get('epoch_num', 0),
               run.get('wall_minutes'), attempts, layout, (run.get('git_commit') or '?')[:7]))


def reported_tables(repo, table):
    """The tables whose reports results/ holds, and the run's own."""
    names = {os.path.basename(p)[:-len('.toml')] for p in glob.glob(os.path.join(repo, 'configs', 'tables', '*.toml'))}
    return sorted(n for n in names if n == table or os.path.isfile(os.path.join(repo, 'results', n + '.md')))


def commit_record(repo, worktree, table, row, seed, layout, log):
    """Copy a finished record from the worktree, rewrite the reports and commit both (under a lock:
    two queues take turns).  False when there is no new record to commit."""
    relative = os.path.join('results', 'runs', PROFILE, row, 'seed%d' % seed)
    source, target = os.path.join(worktree, relative), os.path.join(repo, relative)
    if not os.path.isdir(source) or os.path.exists(target):
        return False
    with open(os.path.join(repo, '.git', 'campaign.lock') if os.path.isdir(os.path.join(repo, '.git'))
              else os.path.join(repo, 'campaign.lock'), 'w') as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        shutil.copytree(source, target + '.tmp')
        os.rename(target + '.tmp', target)
        report = subprocess.run([sys.executable, os.path.join(repo, 'scripts', 'reproduce.py')]
                                + reported_tables(repo, table) + ['--report-only'],
                                cwd=repo, capture_output=True, text=True, env=dict(os.environ, OMP_NUM_THREADS='1'))
        if report.returncode != 0:
            log('report failed (%s seed %d); the record is committed alone: %s'
                % (row, seed, report.stdout[-300:] + report.stderr[-300:]))
        paths = [relative] + [os.path.relpath(p, repo) for pattern in REPORTS for p in glob.glob(os.path.join(repo, pattern))]
        message = record_message(target, row, seed, layout)
        for _ in range(10):        # another process's git command may hold the index for a moment
            if (subprocess.run(['git', 'add', '--'] + paths, cwd=repo).returncode == 0 and
                    subprocess.run(['git', 'commit', '-q', '-m', message, '--'] + paths, cwd=repo).returncode == 0):
                log('committed: ' + message)
                return True
            time.sleep(7)
        log('commit failed: %s seed %d is copied but not committed' % (row, seed))
        return False


def main(argv=None):
    args = build_parser().parse_args(argv)
    try:
        items = check_arguments(args)
    except ValueError as e:
        print('error: %s' % e, file=sys.stderr)
        return 2
    os.makedirs(os.path.dirname(os.path.abspath(args.log)), exist_ok=True)

    def log(line):
        with open(args.log, 'a') as f:
            f.write('[%s %d] %s\n' % (time.strftime('%H:%M', time.gmtime()), os.getpid(), line))

    env = dict(os.environ, PYTHONPATH=os.path.abspath(args.worktree), OMP_NUM_THREADS=str(args.threads))
    for table, row, seed in items:
        if os.path.exists(args.stop_file):
            log('stop file %s: not starting %s seed %d' % (args.stop_file, row, seed))
            return 0
        log('start %s %s seed %d' % (table, row, seed))
        with open(os.path.join(os.path.dirname(os.path.abspath(args.log)), 'campaign_%s_s%d.log' % (row, seed)), 'ab') as out:
            code = subprocess.call([sys.executable, os.path.join(args.worktree, 'scripts', 'reproduce.py'), table,
                                    '--rows', row, '--seeds', str(seed), '--threads', str(args.threads),
                                    '--data', args.data], cwd=args.worktree, env=env, stdout=out, stderr=out)
        log('end %s seed %d: exit %d' % (row, seed, code))
        for done in range(1, seed + 1):          # reproduce's --seeds N runs every missing seed up to N
            commit_record(args.repo, args.worktree, table, row, done, args.layout, log)
    return 0


if __name__ == '__main__':
    sys.exit(main())
