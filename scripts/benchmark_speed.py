#!/usr/bin/env python
"""What makes a ResNet-20 CIFAR training step faster on a small CPU, without changing the maths.

Each *setting* is one way to run the same training step (ResNet-20, 128 samples per step,
SGD + momentum, the trainer's uint8 → normalised-float input): a norm and grouping (BN or BKN at
64 groups of 2, BN at one group of 128) plus runtime choices — session threads, XLA, oneDNN,
data format, and how the layers compute micro-batch group statistics.  Several settings need
environment variables read when TensorFlow starts (``TF_ENABLE_ONEDNN_OPTS``, ``TF_XLA_FLAGS``),
so every setting runs in its own worker process.  The workers are built one after the other;
then the timing is INTERLEAVED: in each round every worker in turn runs a few steps while the
others wait.  The machine is shared with other jobs (training runs of other engineers), so
absolute images/s drift with their load; interleaving exposes every setting to the same drift,
which is what makes the ratios fair.  Reported: median images/s over the rounds, and its ratio to
the "before" setting of the same norm and grouping (the runtime the trainer used before this
study: tensorpack's session config with every core for intra-op work, the reference group
statistics, NHWC).

    python scripts/benchmark_speed.py                        # the table of the chosen settings
    python scripts/benchmark_speed.py --out results/speed_cifar.md
    python scripts/benchmark_speed.py --models bn2 --settings before,xla_session,threads_2_1

``--list`` prints every setting and what it changes.
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))

BATCH = 128                  # samples per step (the paper's CIFAR protocol)
DEPTH_N = 3                  # ResNet-20
#: model label -> (norm, samples per normalization group)
MODELS = {
    'bn2': ('bn', 2),        # 64 groups of 2
    'bkn2': ('bkn', 2),
    'bn128': ('bn', 128),    # one group of 128
}
#: KN as results/speed_cifar.md measured it (the layers' defaults then): learned R, input hand-on
KN_THEN = dict(process_noise=True, propagate='input')

#: setting -> (what it changes, dict of changes).  Keys of the change dict:
#:   env: environment variables for the worker process (set before TensorFlow starts)
#:   intra, inter: session thread pools (0 = TensorFlow picks: one thread per core)
#:   jit: session-level XLA auto-clustering (OptimizerOptions.global_jit_level ON_1)
#:   group_stats: 'reference' (reshape to [G, g, ...] + tf.nn.moments, the code before this
#:                study) or 'library' (whatever kalman_norm.layers._common does now)
#:   data_format: 'NHWC' or 'NCHW'
#:   runtime: use kalman_norm.runtime's session_config() / configure_environment()
SETTINGS = {
    'before': ('trainer before this study: tensorpack config, intra_op=0 (all cores), inter_op=0, '
               'oneDNN off (TensorFlow\'s default on this CPU), reference group stats, NHWC',
               dict(intra=0, inter=0, group_stats='reference')),
    'threads_1_1': ('intra_op=1, inter_op=1', dict(intra=1, inter=1, group_stats='reference')),
    'threads_2_1': ('intra_op=2, inter_op=1', dict(intra=2, inter=1, group_stats='reference')),
    'threads_1_2': ('intra_op=1, inter_op=2', dict(intra=1, inter=2, group_stats='reference')),
    'threads_2_2': ('intra_op=2, inter_op=2', dict(intra=2, inter=2, group_stats='reference')),
    'omp_1': ('OMP_NUM_THREADS=1 (oneDNN/OpenMP pools), otherwise before',
              dict(env={'OMP_NUM_THREADS': '1'}, group_stats='reference')),
    'onednn_off': ('TF_ENABLE_ONEDNN_OPTS=0 (Eigen kernels), otherwise before',
                   dict(env={'TF_ENABLE_ONEDNN_OPTS': '0'}, group_stats='reference')),
    'onednn_on': ('TF_ENABLE_ONEDNN_OPTS=1, otherwise before',
                  dict(env={'TF_ENABLE_ONEDNN_OPTS': '1'}, group_stats='reference')),
    'xla_session': ('session global_jit_level=ON_1 + TF_XLA_FLAGS=--tf_xla_cpu_global_jit',
                    dict(jit=True, env={'TF_XLA_FLAGS': '--tf_xla_cpu_global_jit'},
                         group_stats='reference')),
    'xla_autojit': ('TF_XLA_FLAGS=--tf_xla_auto_jit=2 --tf_xla_cpu_global_jit',
                    dict(env={'TF_XLA_FLAGS': '--tf_xla_auto_jit=2 --tf_xla_cpu_global_jit'},
                         group_stats='reference')),
    'nchw': ('data_format NCHW, otherwise before', dict(data_format='NCHW', group_stats='reference')),
    'nchw_onednn': ('data_format NCHW with TF_ENABLE_ONEDNN_OPTS=1, otherwise before',
                    dict(data_format='NCHW', env={'TF_ENABLE_ONEDNN_OPTS': '1'}, group_stats='reference')),
    'fast_stats': ('group statistics of kalman_norm.layers._common now, otherwise before',
                   dict(group_stats='library')),
    'onednn_fast_stats': ('TF_ENABLE_ONEDNN_OPTS=1 and the library group stats, otherwise before',
                          dict(env={'TF_ENABLE_ONEDNN_OPTS': '1'}, group_stats='library')),
    'after': ('kalman_norm.runtime: ENVIRONMENT (oneDNN on) + session_config(); library group stats',
              dict(runtime=True, group_stats='library')),
}
DEFAULT_SETTINGS = ['before', 'onednn_on', 'fast_stats', 'after']
WARMUP = 3


# ----------------------------------------------------------------------------------------------
# worker: one setting, one process

def reference_group_moments(layout, x, group_size):
    """The group statistics as computed before this study: reshape to [G, g, ...], tf.nn.moments."""
    import tensorflow as tf
    grouped, axes = layout.group(x, group_size)
    mean, var = tf.nn.moments(grouped, axes=axes)
    return grouped, mean, var


def reference_normalize_grouped(layout, x, group_size, mean, var, gamma, beta, epsilon):
    import tensorflow as tf
    grouped, _ = layout.group(x, group_size)
    scale = gamma * tf.math.rsqrt(var + epsilon)
    offset = beta - mean * scale
    rank = grouped.shape.rank
    out = grouped * layout.broadcast(scale, rank) + layout.broadcast(offset, rank)
    return tf.reshape(out, tf.shape(x))


def build_step(norm, group_size, change, seed=0):
    """A session and the train op of one setting; the inputs are constants (no input pipeline)."""
    import kalman_norm as kn
    import tensorflow as tf
    from tensorpack.tfutils.tower import TowerContext
    from kalman_norm.layers import _common
    from kalman_norm.models.resnet_cifar import resnet_cifar
    tf1 = tf.compat.v1
    if change.get('group_stats', 'library') == 'reference':
        _common.Layout.group_moments = reference_group_moments
        _common.Layout.normalize_grouped = reference_normalize_grouped
    rng = np.random.RandomState(seed)
    images = rng.randint(0, 256, (BATCH, 32, 32, 3)).astype(np.uint8)
    labels = rng.randint(0, 10, BATCH).astype(np.int32)
    graph = tf.Graph()
    with graph.as_default():
        x = (tf.cast(tf.constant(images), tf.float32) - 120.0) / 64.0
        with TowerContext('', is_training=True), kn.norm_scope(norm, group_size=group_size, **(KN_THEN if norm == 'bkn' else {})):
            logits = resnet_cifar(x, DEPTH_N, data_format=change.get('data_format', 'NHWC'))
        loss = tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(
            labels=tf.constant(labels), logits=logits))
        opt = tf1.train.MomentumOptimizer(0.01, 0.9, use_nesterov=True)
        with tf.control_dependencies(tf1.get_collection(tf1.GraphKeys.UPDATE_OPS)):
            step = opt.minimize(loss, global_step=tf1.train.get_or_create_global_step())
        sess = tf1.Session(graph=graph, config=session_config(change))
        sess.run(tf1.global_variables_initializer())
    return sess, step


def session_config(change):
    import tensorflow as tf
    if change.get('runtime'):
        from kalman_norm import runtime
        return runtime.session_config()
    from tensorpack.tfutils.common import get_default_sess_config
    conf = get_default_sess_config()
    conf.intra_op_parallelism_threads = change.get('intra', 0)
    conf.inter_op_parallelism_threads = change.get('inter', 0)
    if change.get('jit'):
        conf.graph_options.optimizer_options.global_jit_level = tf.compat.v1.OptimizerOptions.ON_1
    return conf


def profile_ops(sess, step, steps):
    """{op type: milliseconds per step} from TensorFlow's step trace (RunMetadata), summed over
    the ops' own run times (with several threads they overlap: the sum exceeds the wall time)."""
    import tensorflow as tf
    tf1 = tf.compat.v1
    totals = {}
    for _ in range(steps):
        metadata = tf1.RunMetadata()
        sess.run(step, options=tf1.RunOptions(trace_level=tf1.RunOptions.FULL_TRACE),
                 run_metadata=metadata)
        for device in metadata.step_stats.dev_stats:
            for node in device.node_stats:
                if ' = ' not in node.timeline_label:
                    continue
                op_type = node.timeline_label.split(' = ')[1].split('(')[0]
                totals[op_type] = totals.get(op_type, 0.0) + node.op_end_rel_micros / 1000.0 / steps
    return totals


def worker(spec):
    """Build the step, warm up, then answer 'run K' lines on stdin with the seconds K steps took."""
    change = SETTINGS[spec['setting']][1]
    norm, group_size = MODELS[spec['model']]
    sess, step = build_step(norm, group_size, change)
    for _ in range(WARMUP):
        sess.run(step)
    print('ready', flush=True)
    for line in sys.stdin:
        cmd = line.split()
        if cmd[0] == 'quit':
            break
        if cmd[0] == 'profile':
            print(json.dumps(profile_ops(sess, step, int(cmd[1]))), flush=True)
            continue
        t = time.perf_counter()
        for _ in range(int(cmd[1])):
            sess.run(step)
        print('%.6f' % (time.perf_counter() - t), flush=True)


# ----------------------------------------------------------------------------------------------
# driver

class Worker(object):
    def __init__(self, model, setting):
        self.model, self.setting = model, setting
        env = dict(os.environ)
        for key in ('TF_XLA_FLAGS', 'OMP_NUM_THREADS'):
            env.pop(key, None)
        # oneDNN off unless the setting says otherwise: TensorFlow's own default on this AMD CPU,
        # stated explicitly because importing kalman_norm now turns it on where it is not set
        env['TF_ENABLE_ONEDNN_OPTS'] = '0'
        env.update(SETTINGS[setting][1].get('env', {}))
        if SETTINGS[setting][1].get('runtime'):
            # what a trainer calling runtime.configure_environment() before TensorFlow starts gets
            from kalman_norm import runtime
            env.pop('TF_ENABLE_ONEDNN_OPTS')
            runtime.configure_environment(env)
        env.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
        spec = json.dumps(dict(model=model, setting=setting))
        self.log = tempfile.TemporaryFile(mode='w+')
        self.proc = subprocess.Popen([sys.executable, os.path.abspath(__file__), '--worker', spec],
                                     env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=self.log, text=True, bufsize=1)
        self.rates = []

    def wait_ready(self):
        for line in self.proc.stdout:
            if line.strip() == 'ready':
                return True
        self.proc.wait()
        self.log.seek(0)
        lines = [l.strip() for l in self.log.read().splitlines() if l.strip()]
        self.error = lines[-1] if lines else 'exit code %s' % self.proc.returncode
        return False

    def run(self, steps):
        self.proc.stdin.write('run %d\n' % steps)
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError('worker %s/%s died while timing' % (self.model, self.setting))
        self.rates.append(BATCH * steps / float(line))

    def profile(self, steps):
        self.proc.stdin.write('profile %d\n' % steps)
        self.proc.stdin.flush()
        self.ops = json.loads(self.proc.stdout.readline())

    def close(self):
        try:
            self.proc.stdin.write('quit\n')
            self.proc.stdin.flush()
        except (BrokenPipeError, ValueError):
            pass
        self.proc.wait(timeout=60)


def machine():
    from kalman_norm import provenance   # here, not at the top: workers set TensorFlow's environment first
    return provenance.describe_machine()


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    p.add_argument('--models', default=','.join(MODELS), help='comma-separated subset of %s' % ', '.join(MODELS))
    p.add_argument('--settings', default=','.join(DEFAULT_SETTINGS),
                   help='comma-separated settings (see --list); the first is the baseline of the ratios')
    p.add_argument('--rounds', type=int, default=15, help='interleaved timing rounds (median over them)')
    p.add_argument('--steps', type=int, default=2, help='training steps per worker per round')
    p.add_argument('--profile', type=int, default=0, metavar='STEPS',
                   help='after the timing, trace STEPS steps of each setting and break its op time '
                        'down into convolutions and the rest')
    p.add_argument('--out', help='also write the report (Markdown) here')
    p.add_argument('--list', action='store_true', help='print the settings and exit')
    p.add_argument('--worker', help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker or args.list:
        return args
    args.models = [m.strip() for m in args.models.split(',') if m.strip()]
    args.settings = [s.strip() for s in args.settings.split(',') if s.strip()]
    bad = [m for m in args.models if m not in MODELS]
    if bad or not args.models:
        p.error('unknown model(s) %s; choose from %s' % (', '.join(bad) or '(none given)', ', '.join(MODELS)))
    bad = [s for s in args.settings if s not in SETTINGS]
    if bad or not args.settings:
        p.error('unknown setting(s) %s; see --list' % (', '.join(bad) or '(none given)'))
    if len(set(args.settings)) != len(args.settings) or len(set(args.models)) != len(args.models):
        p.error('--models and --settings must not repeat an entry')
    if args.rounds < 3 or args.steps < 1 or args.profile < 0:
        p.error('--rounds must be >= 3 (a median needs several), --steps >= 1, --profile >= 0')
    if args.out and not os.path.isdir(os.path.dirname(os.path.abspath(args.out))):
        p.error('--out %s: directory does not exist' % args.out)
    return args


def describe_model(model):
    norm, g = MODELS[model]
    return '%s, %s' % (norm.upper(), '%d groups of %d' % (BATCH // g, g) if g < BATCH else 'one group of %d' % g)


def main(argv=None):
    args = parse_args(argv)
    if args.worker:
        return worker(json.loads(args.worker))
    if args.list:
        for name, (what, _) in SETTINGS.items():
            print('%-12s %s' % (name, what))
        return
    from tabulate import tabulate
    workers, failed = [], []
    started = time.time()
    try:
        for model in args.models:
            for setting in args.settings:
                w = Worker(model, setting)
                if not w.wait_ready():  # one build at a time: builds do not overlap any timing
                    failed.append((describe_model(model), setting, w.error))
                    print('FAILED %-6s %s: %s' % (model, setting, w.error), flush=True)
                    continue
                workers.append(w)
                print('built %-6s %s' % (model, setting), flush=True)
        for r in range(args.rounds):
            for w in workers:
                w.run(args.steps)
            print('round %d/%d done' % (r + 1, args.rounds), flush=True)
        if args.profile:
            for w in workers:
                w.profile(args.profile)
    finally:
        for w in workers:
            w.close()
    minutes = (time.time() - started) / 60.0
    rows = []
    for w in workers:
        base = [b for b in workers if b.model == w.model and b.setting == args.settings[0]]
        med = np.median(w.rates)
        base_med = np.median(base[0].rates) if base else float('nan')
        lo, hi = np.percentile(w.rates, [25, 75])
        rows.append([describe_model(w.model), w.setting, med, '%.0f–%.0f' % (lo, hi), med / base_med])
    headers = ['model (ResNet-20, 128/step)', 'setting', 'images/s (median)', 'IQR',
               '× %s' % args.settings[0]]
    table = tabulate(rows, headers=headers, floatfmt='.2f', tablefmt='github')
    print(table)
    profile = profile_table(workers) if args.profile else None
    if profile:
        print(profile)
    for model, setting, error in failed:
        print('not measured: %s, %s: %s' % (model, setting, error))
    if args.out:
        write_report(args, table, profile, failed, minutes)
    return rows


def profile_table(workers):
    """Per setting: summed op time per step, the convolutions' share, the biggest other ops."""
    from tabulate import tabulate
    rows = []
    for w in workers:
        total = sum(w.ops.values())
        conv = sum(v for k, v in w.ops.items() if 'Conv2D' in k)
        others = sorted(((v, k) for k, v in w.ops.items() if 'Conv2D' not in k), reverse=True)[:5]
        rows.append([describe_model(w.model), w.setting, total, conv, total - conv, 100.0 * conv / total,
                     ', '.join('%s %.0f' % (k, v) for v, k in others)])
    return tabulate(rows, headers=['model', 'setting', 'op ms/step', 'conv ms', 'other ms', 'conv %',
                                   'largest other ops (ms)'], floatfmt='.0f', tablefmt='github')


def write_report(args, table, profile, failed, minutes):
    argv = ' '.join(['python scripts/benchmark_speed.py',
                     '--models', ','.join(args.models), '--settings', ','.join(args.settings),
                     '--rounds', str(args.rounds), '--steps', str(args.steps)]
                    + (['--profile', str(args.profile)] if args.profile else []) + ['--out', args.out])
    with open(args.out, 'w') as f:
        f.write('# ResNet-20 CIFAR training speed on the CPU: settings that keep the maths\n\n')
        f.write('Produced by `%s` in %.0f minutes.\n\n' % (argv, minutes))
        f.write('Machine: %s, no GPU, %d cores visible; shared with other jobs while measuring '
                '(load average at the end: %s).\n\n' % (machine(), os.cpu_count(),
                                                        ', '.join('%.2f' % v for v in os.getloadavg())))
        f.write('Each setting runs in its own process (some need environment variables read at '
                'TensorFlow start-up); after %d warm-up steps the processes take turns, %d training '
                'steps each per round, %d rounds: the images/s are medians over the rounds. Because '
                'other jobs share the CPU, absolute images/s depend on their load; interleaving '
                'gives every setting the same share of that load, so the ratios are the fair '
                'comparison.\n\n' % (WARMUP, args.steps, args.rounds))
        f.write('Settings:\n\n')
        for s in args.settings:
            f.write('* `%s`: %s\n' % (s, SETTINGS[s][0]))
        f.write('\n' + table + '\n')
        if profile:
            f.write('\nWhere the time goes: op run times from TensorFlow\'s step trace (RunMetadata, '
                    '%d traced step(s) per setting after the timing), summed per op type; ops on '
                    'parallel threads overlap, so the sums exceed the wall time per step.\n\n'
                    % args.profile + profile + '\n')
        for model, setting, error in failed:
            f.write('\nNot measured: %s, `%s` failed to build: `%s`\n' % (model, setting, error))


if __name__ == '__main__':
    main()
