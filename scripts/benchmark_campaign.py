#!/usr/bin/env python
"""Which finishes more runs per hour on this machine: one run at a time on every core, or several
side by side with a share of the cores each?

Times the training steps of a row's config (tensorpack's "Epoch 1 finished, time: ..." line, which
leaves out start-up and evaluation) in two layouts measured back to back in one invocation:
``serial``, one trainer with ``--threads CORES``; ``parallel``, CORES trainers at once with
``--threads 1`` each.  Prints steps per second of the machine in each layout and their ratio.
Run it on an otherwise idle machine (stop other runs first): anything beside it is measured too.

    python scripts/benchmark_campaign.py --config configs/cpu/kn_study/bn_b2.toml \\
        --data ../shared/data/cifar10-jpeg.tar.gz --steps 60
"""
import argparse
import os
import re
import subprocess
import sys
import tempfile

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TRAINER = os.path.join(REPO, 'scripts', 'cifar_resnet.py')
EPOCH_TIME = re.compile(r'Epoch 1 \(global_step \d+\) finished, time:\s*(.+)$', re.M)


def seconds(text):
    """tensorpack's humanized duration ('1 minute 49 seconds', '55.2 seconds') in seconds."""
    total = 0.0
    for value, unit in re.findall(r'([\d.]+)\s*(hour|minute|second)', text):
        total += float(value) * {'hour': 3600, 'minute': 60, 'second': 1}[unit]
    return total


def launch(config, data, steps, threads, logdir):
    cmd = [sys.executable, TRAINER, '--config', config, '--data', data, '--epochs', '1',
           '--steps-per-epoch', str(steps), '--threads', str(threads), '--logdir', logdir, '--seed', '1',
           '--eval-stats', 'moving']
    return subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def train_seconds(logdir):
    with open(os.path.join(logdir, 'log.log')) as f:
        found = EPOCH_TIME.findall(f.read())
    if not found:
        raise RuntimeError('%s: no epoch time in log.log' % logdir)
    return seconds(found[-1])


def measure(config, data, steps, threads, copies, root, tag):
    logdirs = [os.path.join(root, '%s-%d' % (tag, i)) for i in range(copies)]
    procs = [launch(config, data, steps, threads, d) for d in logdirs]
    codes = [p.wait() for p in procs]
    if any(codes):
        raise RuntimeError('a trainer failed (exit codes %s); see %s' % (codes, root))
    times = [train_seconds(d) for d in logdirs]
    return copies * steps / max(times), times


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    p.add_argument('--config', required=True, help='a row config (configs/cpu/<table>/<row>.toml)')
    p.add_argument('--data', required=True, help='the data set the row trains on')
    p.add_argument('--steps', type=int, default=60, help='training steps timed per trainer')
    p.add_argument('--cores', type=int, default=os.cpu_count(), help='cores of the machine')
    args = p.parse_args(argv)
    if args.steps < 10 or args.cores < 2:
        p.error('--steps must be >= 10 and --cores >= 2')
    with tempfile.TemporaryDirectory() as root:
        serial, serial_times = measure(args.config, args.data, args.steps, args.cores, 1, root, 'serial')
        parallel, parallel_times = measure(args.config, args.data, args.steps, 1, args.cores, root, 'parallel')
    print('config %s, %d steps per trainer, %d cores' % (os.path.relpath(args.config, REPO), args.steps, args.cores))
    print('serial   (1 trainer, --threads %d):  %.3f steps/s  (train time %s s)'
          % (args.cores, serial, ', '.join('%.1f' % t for t in serial_times)))
    print('parallel (%d trainers, --threads 1): %.3f steps/s  (train times %s s)'
          % (args.cores, parallel, ', '.join('%.1f' % t for t in parallel_times)))
    print('parallel / serial: %.2f' % (parallel / serial))


if __name__ == '__main__':
    main()
