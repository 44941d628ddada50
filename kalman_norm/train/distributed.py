"""Training on several machines with TensorFlow's own gRPC runtime: parameter servers + workers.

Horovod 0.28.1 does not build against TensorFlow 2.21, so a cluster here is TensorFlow's
``tf.distribute.Server`` processes: ``ps`` tasks hold the variables, ``worker`` tasks compute::

    CLUSTER="--cluster ps=host0:2222 --cluster worker=host1:2222,host2:2222"
    (host0)$ python scripts/cifar_resnet.py ... $CLUSTER --task ps:0
    (host1)$ python scripts/cifar_resnet.py ... $CLUSTER --task worker:0
    (host2)$ python scripts/cifar_resnet.py ... $CLUSTER --task worker:1

or the same cluster in the standard ``TF_CONFIG`` environment variable (see :func:`parse_cluster`).
Worker 0 is the chief: it initialises (or restores) the variables, saves checkpoints and runs
the validation; the other workers wait for it and only train.

What one synchronous step does (:class:`SyncDistributedTrainer`):
  1. each worker runs its towers on its own samples; every tower normalises only its own
     samples (per-GPU statistics, as the paper: nothing about the batch statistics is shared);
  2. the worker averages its towers' gradients and hands the average to a gradient accumulator
     on the parameter server (one per variable);
  3. the chief takes the mean over the workers (all workers hold the same number of towers and
     samples, so this is the mean over all towers of the cluster), applies it once with the
     model's optimizer, then releases the other workers for the next step.  No worker computes
     a gradient on weights another worker already changed, so W workers × T towers of B samples
     take exactly the SGD step of one machine with W·T towers.
The moving averages of the normalisation statistics (EMA, for inference) live on the parameter
server and are updated by the chief's first tower only, as tensorpack's one-machine trainers
update them from the first tower only.  A non-chief's step starts only after the chief applied
the previous step's update (BRN reads them in training); the chief's first tower applies the
current step's update without waiting for the others, so a non-chief may already see it.  Checkpoints (saved by the chief) hold the shared
variables under the names a one-machine run gives them.

What the user must keep equal on every worker: the towers per worker (``gpus_per_worker``) and
the tower batch (the mean over workers weighs each worker equally), the steps per epoch and the
number of epochs (checked when training starts: a worker that resumed at another epoch than the
chief follows the chief, see :func:`follow_chief`).  Each worker should read *different* samples
(its own shard, or at least its own shuffling seed).  Limits: training is synchronous, so a
worker that dies leaves the others waiting (stop the cluster and start it again; the chief
resumes from its checkpoint); with a layer option ``ema_update='internal'`` every worker's first
tower updates the shared moving averages (the default, ``'collection'``, is chief-only).

Why not tensorpack's ``DistributedTrainerParameterServer`` / ``DistributedTrainerReplicated``:
on TF 2.21 they fail at construction, and their arithmetic is not synchronous SGD.
  * Names that TF 2 no longer has (tensorpack/graph_builder/distributed.py and
    tfutils/distributed.py use ``import tensorflow as tf`` directly): ``tf.train.replica_device_setter``,
    ``tf.contrib.training.GreedyLoadBalancingStrategy`` (contrib is gone), ``tf.FIFOQueue``,
    ``tf.get_variable``, ``tf.model_variables``, ``tf.local_variables``,
    ``tf.train.SessionManager``, ``tf.train.SessionCreator``, ``tf.global_variables_initializer``,
    ``tf.report_uninitialized_variables``, ``tf.logging``; the docstrings' ``tf.train.Server``
    is ``tf.distribute.Server``.
  * Parameter-server averaging: each worker applies its own tower-averaged gradient to the
    shared variables (their docstrings say so: "Gradients are not averaged across workers").
    With W workers plain SGD moves by lr·(g₁ + … + g_W), W times the averaged step, and the only
    barrier comes *after* the updates, so a worker may compute its gradient on weights another
    worker has already moved.  tests/test_distributed.py checks the step against the average.
  * Replicated: ``build()`` computes the tower average and then discards it,
    ``avg_grads = [(g, v) for g, v in zip(all_grads, all_vars[0])]``, pairing tower k's whole
    gradient list with variable k.
  * Session creation: the chief initialises the variables and restores a checkpoint only
    afterwards (``Trainer.initialize`` runs ``session_init`` after ``create_session``), while
    the other workers start as soon as the variables are initialised: they may read the
    initial weights instead of the checkpoint's.  Here they wait for the chief's explicit
    "ready", set after the restore.
The trainer below is written for this project (a subclass of tensorpack's ``SingleCostTrainer``,
reusing its tower builder and in-worker averaging); nothing in tensorpack is patched.
"""
import collections
import json
import os
import re
import socket
import time

import kalman_norm  # noqa: F401  (sets up the TF/tensorpack stack first)
from kalman_norm import runtime
from kalman_norm.train.rundir import RunFailed
import tensorflow as tf
from tensorpack.graph_builder.training import DataParallelBuilder
from tensorpack.graph_builder.utils import allreduce_grads_naive, split_grad_list
from tensorpack.input_source import FeedfreeInput
from tensorpack.tfutils.sesscreate import NewSessionCreator
from tensorpack.train.tower import SingleCostTrainer
from tensorpack.callbacks import RunOp
from tensorpack.utils import logger

tfv1 = tf.compat.v1

__all__ = ['ClusterError', 'ClusterTimeout', 'ClusterTask', 'wait_for_tasks', 'DEFAULT_TIMEOUT', 'parse_cluster', 'start_server', 'run_parameter_server',
           'make_distributed_trainer', 'SyncDistributedTrainer', 'follow_chief', 'horovod_trainer', 'JOBS',
           'MODES']

#: the jobs of a cluster: parameter servers and workers (worker 0 is the chief)
JOBS = ('ps', 'worker')
#: where a worker's towers read the weights: 'ps' — straight from the parameter servers (cached
#: once per step on the worker); 'replicated' — from a copy kept on the worker, refreshed after
#: every update (tensorpack's "distributed_replicated" variable update)
MODES = ('ps', 'replicated')
_JOB_NAMES = {'ps': 'ps', 'worker': 'worker', 'workers': 'worker'}
#: seconds a worker waits for the parameter servers (and a non-chief for the chief) by default
DEFAULT_TIMEOUT = 600.0
_ADDRESS = re.compile(r'^(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9][A-Za-z0-9_.-]*):([0-9]+)$')


class ClusterError(ValueError):
    """A bad cluster description or distributed option; the message says what to pass."""


#: The result of :func:`parse_cluster`: a ``tf.train.ClusterSpec``, this process's job and index.
ClusterTask = collections.namedtuple('ClusterTask', ['cluster', 'job', 'index'])


# ----------------------------------------------------------------------------------------------
# cluster description

class ClusterTimeout(RunFailed):
    """A task of the cluster did not answer within the worker's timeout (``--cluster-timeout``)."""


def _job_name(name, where):
    job = _JOB_NAMES.get(str(name).strip())
    if job is None:
        raise ClusterError("%s: unknown job %r; the jobs are 'ps' and 'worker' (worker 0 is the chief)"
                           % (where, name))
    return job


def _address(text, where):
    if not isinstance(text, str) or not _ADDRESS.match(text.strip()):
        raise ClusterError('%s: %r is not HOST:PORT (e.g. 10.0.0.1:2222)' % (where, text))
    port = int(_ADDRESS.match(text.strip()).group(2))
    if not 1 <= port <= 65535:
        raise ClusterError('%s: port %d of %r is not in 1..65535' % (where, port, text))
    return text.strip()


def _check_jobs(jobs, where):
    """Both jobs present, no address twice."""
    for job in JOBS:
        if not jobs.get(job):
            raise ClusterError('%s: the cluster has no %s task; it needs at least one ps and one worker'
                               % (where, job))
    seen = set()
    for job in JOBS:
        for addr in jobs[job]:
            if addr in seen:
                raise ClusterError('%s: address %s is given twice; every task needs its own port' % (where, addr))
            seen.add(addr)
    return jobs


def _cluster_from_args(cluster_args):
    if isinstance(cluster_args, str):
        cluster_args = [cluster_args]
    jobs = {}
    for item in cluster_args:
        if not isinstance(item, str) or '=' not in item:
            raise ClusterError('--cluster takes JOB=HOST:PORT[,HOST:PORT...] (e.g. ps=h0:2222), got %r' % (item,))
        name, addresses = item.split('=', 1)
        job = _job_name(name, '--cluster %s' % item)
        if job in jobs:
            raise ClusterError('--cluster: job %r is given twice; list all its tasks in one '
                               '--cluster %s=HOST:PORT,HOST:PORT' % (job, job))
        jobs[job] = [_address(a, '--cluster %s' % item) for a in addresses.split(',')]
    return _check_jobs(jobs, '--cluster')


def _task_from_arg(task):
    if not isinstance(task, str) or task.count(':') != 1:
        raise ClusterError('--task takes JOB:INDEX (e.g. worker:0 or ps:0), got %r' % (task,))
    name, index = task.split(':')
    job = _job_name(name, '--task %s' % task)
    if not index.strip().isdigit():
        raise ClusterError('--task %s: the index must be a non-negative integer, got %r' % (task, index))
    return job, int(index)


def _from_tf_config(text):
    try:
        conf = json.loads(text)
    except ValueError as e:
        raise ClusterError('TF_CONFIG is not valid JSON (%s): %r' % (e, text[:80]))
    if not isinstance(conf, dict) or not isinstance(conf.get('cluster'), dict):
        raise ClusterError('TF_CONFIG needs {"cluster": {"ps": [...], "worker": [...]}, '
                           '"task": {"type": ..., "index": ...}}, got %r' % (text[:80],))
    jobs = {}
    for name, addresses in conf['cluster'].items():
        if name in ('chief', 'evaluator', 'master'):
            raise ClusterError("TF_CONFIG job %r is not used here: worker 0 is the chief; list every "
                               "training task under 'worker'" % name)
        job = _job_name(name, 'TF_CONFIG cluster')
        if isinstance(addresses, str):
            addresses = [addresses]
        if not isinstance(addresses, list):
            raise ClusterError('TF_CONFIG cluster %r must be a list of HOST:PORT, got %r' % (name, addresses))
        if job in jobs:
            raise ClusterError('TF_CONFIG cluster: job %r is given twice' % job)
        jobs[job] = [_address(a, 'TF_CONFIG cluster %s' % name) for a in addresses]
    _check_jobs(jobs, 'TF_CONFIG')
    task = conf.get('task')
    if not isinstance(task, dict) or 'type' not in task or 'index' not in task:
        raise ClusterError('TF_CONFIG has no "task": {"type": "worker" or "ps", "index": N}')
    job = _job_name(task['type'], 'TF_CONFIG task')
    index = task['index']
    if isinstance(index, str) and index.isdigit():
        index = int(index)
    if not isinstance(index, int) or isinstance(index, bool) or index < 0:
        raise ClusterError('TF_CONFIG task index must be a non-negative integer, got %r' % (index,))
    return jobs, (job, index)


def parse_cluster(cluster_args, task, env=os.environ):
    """The cluster and this process's place in it, from the command line or ``TF_CONFIG``.

    Args:
        cluster_args: the ``--cluster`` values, e.g. ``['ps=h0:2222', 'worker=h1:2222,h2:2222']``
            (``workers=`` is accepted too), or None/[] when not given.
        task: the ``--task`` value, ``'JOB:INDEX'`` (``'worker:0'``, ``'ps:0'``), or None.
        env: where to look for ``TF_CONFIG``, the standard JSON description::

            {"cluster": {"ps": ["h0:2222"], "worker": ["h1:2222", "h2:2222"]},
             "task": {"type": "worker", "index": 0}}

    Both sources may be given only if they describe the same cluster and task.

    Returns:
        ``ClusterTask(cluster, job, index)`` (a ``tf.train.ClusterSpec``, 'ps' or 'worker', int),
        or None when neither ``--cluster``, ``--task`` nor ``TF_CONFIG`` is given (one machine).

    Raises:
        ClusterError: with a one-line message, for any malformed or inconsistent description.
    """
    tf_config = env.get('TF_CONFIG', '').strip()
    from_env = _from_tf_config(tf_config) if tf_config else None
    if not cluster_args and task is None:
        if from_env is None:
            return None
        jobs, (job, index) = from_env
    elif not cluster_args:
        if from_env is None:
            raise ClusterError('--task %s needs --cluster JOB=HOST:PORT,... (or the TF_CONFIG environment '
                               'variable)' % (task,))
        jobs, env_task = from_env
        job, index = _task_from_arg(task)
        if (job, index) != env_task:
            raise ClusterError('--task %s and TF_CONFIG\'s task %s:%d differ; give one of them'
                               % (task, env_task[0], env_task[1]))
    else:
        jobs = _cluster_from_args(cluster_args)
        if task is None:
            raise ClusterError('--cluster needs --task JOB:INDEX (e.g. --task worker:0) to say which task this is')
        job, index = _task_from_arg(task)
        if from_env is not None and from_env != (jobs, (job, index)):
            raise ClusterError('--cluster/--task and TF_CONFIG describe different clusters or tasks; '
                               'give one of them (or unset TF_CONFIG)')
    if index >= len(jobs[job]):
        raise ClusterError('task %s:%d is out of range: the cluster has %d %s task(s), indices 0..%d'
                           % (job, index, len(jobs[job]), job, len(jobs[job]) - 1))
    return ClusterTask(tf.train.ClusterSpec(jobs), job, index)


def _check_task(cluster, job, index):
    if not isinstance(cluster, tf.train.ClusterSpec):
        raise ClusterError('cluster must be a tf.train.ClusterSpec (see parse_cluster), got %r' % (cluster,))
    if job not in JOBS or job not in cluster.jobs:
        raise ClusterError("job must be 'ps' or 'worker' and in the cluster (%s), got %r"
                           % (', '.join(cluster.jobs), job))
    if not isinstance(index, int) or isinstance(index, bool) or not 0 <= index < cluster.num_tasks(job):
        raise ClusterError('task index %r is out of range: the cluster has %d %s task(s)'
                           % (index, cluster.num_tasks(job), job))
    for needed in JOBS:
        if needed not in cluster.jobs:
            raise ClusterError('the cluster has no %s task; it needs at least one ps and one worker' % needed)


# ----------------------------------------------------------------------------------------------
# processes

def default_server_config():
    """The trainers' session config (tensorpack's defaults, every core per op on CPU-only machines)."""
    return runtime.session_config()


def start_server(cluster, job, index, config=None):
    """Start this process's ``tf.distribute.Server`` (gRPC, on the address the cluster gives it)."""
    _check_task(cluster, job, index)
    logger.info('Starting the %s:%d server on %s' % (job, index, cluster.task_address(job, index)))
    return tf.distribute.Server(cluster, job_name=job, task_index=index,
                                config=config or default_server_config(), start=True)


def run_parameter_server(cluster, index, config=None):
    """Serve the variables of a ps task until the process is killed (never returns)."""
    server = start_server(cluster, 'ps', index, config)
    logger.info('Parameter server ps:%d is serving (pid %d); stop it with kill %d'
                % (index, os.getpid(), os.getpid()))
    server.join()
    raise RuntimeError('tf.distribute.Server.join() returned; it should block forever')


def wait_for_tasks(cluster, tasks, timeout, poll_seconds=1.0, report_seconds=30.0, who='this worker'):
    """Wait until every ``(job, index)`` of ``tasks`` accepts connections on its address.

    TensorFlow's session creation waits for them forever, and its "still waiting" lines are
    hidden at the trainers' log level, so a parameter server that never started would leave a
    worker silent.  Here the wait is logged (every ``report_seconds``) naming the task and
    address, and ends with :class:`ClusterTimeout` after ``timeout`` seconds."""
    start = time.time()
    last_report = None
    for job, index in tasks:
        address = cluster.task_address(job, index)
        host, port = address.rsplit(':', 1)
        while True:
            try:
                with socket.create_connection((host.strip('[]'), int(port)), timeout=min(poll_seconds, 5.0)):
                    break
            except OSError as e:
                waited = time.time() - start
                if waited >= timeout:
                    raise ClusterTimeout('%s waited %.0f s for %s:%d at %s, which does not answer (%s): start it, '
                                         'check the address, or give a longer --cluster-timeout'
                                         % (who, waited, job, index, address, e.strerror or e))
                if last_report is None or time.time() - last_report >= report_seconds:
                    logger.info('%s is waiting for %s:%d at %s (not answering yet; giving up after %.0f s, '
                                '--cluster-timeout)' % (who.capitalize(), job, index, address, timeout))
                    last_report = time.time()
                time.sleep(poll_seconds)


def make_distributed_trainer(cluster, job, index, gpus_per_worker=1, mode='ps', config=None,
                             timeout=DEFAULT_TIMEOUT):
    """A tensorpack trainer for this task of the cluster, for ``launch_train_with_config``.

    Args:
        cluster, job, index: from :func:`parse_cluster`.  A ``ps`` task does not train: this
            function then serves its variables and never returns (:func:`run_parameter_server`).
        gpus_per_worker: towers per worker, each normalising its own samples (on CPU-only
            machines they all run on the CPU).  Every worker must use the same number.
        mode: one of :data:`MODES`.
        config: the server's ``tf.compat.v1.ConfigProto`` (default :func:`default_server_config`).
        timeout: seconds a worker waits for the parameter servers, and a non-chief worker for
            the chief's initialised variables, before :class:`ClusterTimeout`.
    """
    if mode not in MODES:
        raise ClusterError("mode must be 'ps' or 'replicated', got %r" % (mode,))
    if not isinstance(gpus_per_worker, int) or isinstance(gpus_per_worker, bool) or gpus_per_worker < 1:
        raise ClusterError('gpus_per_worker must be a positive integer, got %r' % (gpus_per_worker,))
    _check_task(cluster, job, index)
    if job == 'ps':
        run_parameter_server(cluster, index, config)
    server = start_server(cluster, job, index, config)
    return SyncDistributedTrainer(server, gpus_per_worker, mode, timeout=timeout)


def horovod_trainer(average=True):
    """tensorpack's HorovodTrainer, if ``horovod.tensorflow`` imports (``--trainer horovod``).

    Horovod 0.28.1 (the last release) does not build against TensorFlow 2.21, so on this
    project's stack this raises ClusterError; use a ``--cluster`` (this module) instead.
    """
    try:
        import horovod.tensorflow  # noqa: F401
    except Exception as e:  # ImportError, or a build made for another TF failing to load
        raise ClusterError('--trainer horovod: horovod.tensorflow is not importable with TensorFlow %s '
                           '(%s: %s); Horovod 0.28.1 does not build against TF 2.21, train on several '
                           'machines with --cluster (TensorFlow\'s gRPC runtime) instead'
                           % (tf.__version__, type(e).__name__, e))
    from tensorpack import HorovodTrainer
    return HorovodTrainer(average=average)


# ----------------------------------------------------------------------------------------------
# the trainer

def follow_chief(chief_plan, worker, steps_per_epoch, starting_epoch, max_epoch):
    """The starting epoch of a non-chief worker, given the chief's (first step, end step, steps
    per epoch): the chief's, which may differ after a resume (the chief holds the checkpoints).
    A different epoch length or end cannot be followed: ClusterError."""
    first, end, chief_steps = (int(v) for v in chief_plan)
    if chief_steps != steps_per_epoch:
        raise ClusterError('worker %d has %d steps per epoch but the chief %d: give every worker the same '
                           'training-set size and batch (the chief is now waiting; stop the cluster)'
                           % (worker, steps_per_epoch, chief_steps))
    if end != max_epoch * steps_per_epoch:
        raise ClusterError('worker %d would stop after epoch %d but the chief after epoch %d: give every worker '
                           'the same number of epochs (the chief is now waiting; stop the cluster)'
                           % (worker, max_epoch, end // chief_steps))
    chief_epoch = first // steps_per_epoch + 1
    if chief_epoch != starting_epoch:
        logger.warn('Worker %d: the chief starts at epoch %d (step %d); following it instead of starting at '
                    'epoch %d' % (worker, chief_epoch, first, starting_epoch))
    return chief_epoch


def _is_trainable(getter_kwargs):
    # get_variable's default trainable=None means True (except for ON_READ synchronisation).
    return getter_kwargs.get('trainable') is not False


class SyncDistributedTrainer(SingleCostTrainer):
    """Synchronous data-parallel SGD over the workers of a cluster (see the module docstring).

    Variables are placed round-robin on the ps tasks.  Each step, every tower's gradient is
    averaged within its worker, then over the workers by one ``ConditionalAccumulator`` per
    variable on the parameter server; the chief applies the mean once and releases the other
    workers through one token queue per worker.  Use :func:`make_distributed_trainer`.

    Attributes:
        devices: tower ids (tensorpack's convention; more than one makes it stage the input).
        is_chief: worker 0; it runs the chief-only callbacks (saving, validation).
    """

    def __init__(self, server, towers=1, mode='ps', timeout=DEFAULT_TIMEOUT):
        if mode not in MODES:
            raise ClusterError("mode must be 'ps' or 'replicated', got %r" % (mode,))
        server_def = server.server_def
        if server_def.job_name != 'worker':
            raise ClusterError('SyncDistributedTrainer runs on worker tasks, got a %s server'
                               % server_def.job_name)
        super(SyncDistributedTrainer, self).__init__()
        self.server = server
        self.cluster = tf.train.ClusterSpec(server_def.cluster)
        self.task_index = server_def.task_index
        self.num_workers = self.cluster.num_tasks('worker')
        self.is_chief = self.task_index == 0
        self.mode = mode
        self.timeout = timeout
        self.devices = list(range(towers))
        self._worker_cpu = '/job:worker/task:%d/cpu:0' % self.task_index
        on_gpu = bool(tf.config.list_physical_devices('GPU'))
        self._tower_devices = ['/job:worker/task:%d/%s' % (self.task_index, 'gpu:%d' % k if on_gpu else 'cpu:0')
                               for k in self.devices]
        self._replica_of = collections.OrderedDict()   # shared variable name -> (shared, local copy)
        logger.info('Synchronous distributed training (%s mode), worker %d of %d, %d tower(s); cluster %s'
                    % (mode, self.task_index, self.num_workers, towers, self.cluster.as_dict()))

    # -- graph ---------------------------------------------------------------------------------

    def _on_ps(self, worker_device):
        """Device function: variables round-robin on the ps tasks, computation on worker_device."""
        return tfv1.train.replica_device_setter(worker_device=worker_device, cluster=self.cluster)

    def _setup_input(self, input_signature, input):
        # The global step is per worker: tensorpack's MaintainStepCounter increments it in every
        # worker's session.run, so a shared one would advance W times per step.  (Steps applied to
        # the shared weights are counted by 'sync/step' on the parameter server.)
        with tfv1.device(self._worker_cpu), tfv1.variable_scope(tfv1.VariableScope(reuse=False, name='')):
            tfv1.get_variable('global_step', [], tf.int64, initializer=tf.zeros_initializer(), trainable=False,
                              collections=[tfv1.GraphKeys.LOCAL_VARIABLES, tfv1.GraphKeys.GLOBAL_STEP])
        with tfv1.device(self._worker_cpu):
            return input.setup(input_signature)

    def _cache_on_worker(self, getter, name, *args, **kwargs):
        """'ps' mode: read each trainable variable once per step into the worker, for all towers."""
        if _is_trainable(kwargs):
            kwargs['caching_device'] = self._worker_cpu
        return getter(name, *args, **kwargs)

    def _replicate_on_worker(self, getter, name, *args, **kwargs):
        """'replicated' mode: the towers train a worker-local copy ('replica/<name>') of each
        trainable variable; the shared variable <name> on the ps (the one checkpoints hold) is
        updated by the chief and copied back after every step."""
        if not _is_trainable(kwargs):
            return getter(name, *args, **kwargs)        # statistics, counters: one copy, on the ps
        master = getter(name, *args, **dict(kwargs, trainable=False))
        local_kwargs = dict(kwargs, collections=[tfv1.GraphKeys.LOCAL_VARIABLES, tfv1.GraphKeys.TRAINABLE_VARIABLES])
        with tfv1.device(self._worker_cpu):
            local = getter('replica/' + name, *args, **local_kwargs)
        self._replica_of[master.op.name] = (master, local)
        return local

    def _master_of(self, var):
        if self.mode == 'ps':
            return var
        for master, local in self._replica_of.values():
            if local is var:
                return master
        raise AssertionError('%s has no shared copy on the parameter server' % var.name)

    def _setup_graph(self, input, get_cost_fn, get_opt_fn):
        if not isinstance(input, FeedfreeInput):
            raise ClusterError('distributed training needs a feed-free input (e.g. QueueInput), got %s'
                               % type(input).__name__)
        ps0 = '/job:ps/task:0/cpu:0'
        with tfv1.device(ps0), tfv1.variable_scope('sync'):
            # Steps applied to the shared weights; also the accumulators' staleness clock.
            self._sync_step = tfv1.get_variable('step', [], tf.int64, initializer=tf.zeros_initializer(),
                                                trainable=False)
            # Set by the chief once the weights are initialised *and* restored; in no collection,
            # so that neither the initialisers nor the savers touch it.
            self._chief_ready = tfv1.Variable(False, name='chief_ready', trainable=False, collections=[])
            # The chief's (first step, end step, steps per epoch), published before chief_ready:
            # the other workers follow it (a resumed chief restarts at its checkpoint's epoch).
            self._plan = tfv1.Variable(tf.zeros([3], tf.int64), name='plan', trainable=False, collections=[])
            self._plan_value = tfv1.placeholder(tf.int64, [3], name='plan_value')
            self._publish_plan = self._plan.assign(self._plan_value)
            # Worker w waits on tokens[w] until the chief has applied the step.
            tokens = [tfv1.FIFOQueue(self.num_workers, [tf.bool], shapes=[[]], shared_name='sync_tokens_%d' % w,
                                     name='tokens_%d' % w) for w in range(self.num_workers)]

        getter = self._cache_on_worker if self.mode == 'ps' else self._replicate_on_worker
        with tfv1.variable_scope(tfv1.get_variable_scope(), custom_getter=getter):
            grad_list = DataParallelBuilder.build_on_towers(
                self.devices, self._make_get_grad_fn(input, get_cost_fn, get_opt_fn),
                [self._on_ps(d) for d in self._tower_devices])
        DataParallelBuilder._check_grad_list(grad_list)
        update_ops = tfv1.get_collection(tfv1.GraphKeys.UPDATE_OPS)
        if not self.is_chief:
            # The shared moving averages follow the chief's first tower only (module docstring).
            del tfv1.get_collection_ref(tfv1.GraphKeys.UPDATE_OPS)[:]

        all_grads, all_vars = split_grad_list(grad_list)
        with tfv1.device(self._worker_cpu):
            # Mean over this worker's towers; each tower normalised only its own samples.
            worker_grads = allreduce_grads_naive(all_grads, average=True)
            step = self._sync_step.read_value()
        pushes, averaged = [], []
        for grad, var in zip(worker_grads, all_vars[0]):
            master = self._master_of(var)
            with tfv1.device(master.device):
                acc = tfv1.ConditionalAccumulator(grad.dtype, shape=var.shape,
                                                  shared_name='sync_grad/' + master.op.name,
                                                  name='sync_grad/' + master.op.name.replace('/', '_'))
                pushes.append(acc.apply_grad(grad, local_step=step))
                # take_grad blocks until every worker pushed, then returns their mean.
                averaged.append((acc.take_grad(self.num_workers), master))
        with tfv1.device(self._on_ps(self._worker_cpu)):
            apply_op = get_opt_fn().apply_gradients(averaged, global_step=self._sync_step,
                                                    name='apply_averaged_gradients')

        if self.is_chief:
            # Release the others after the update, and after the moving averages moved (BRN reads
            # them in training: the next step must see this step's values on every worker).
            with tf.control_dependencies(pushes + [apply_op] + update_ops):
                step_done = tf.group(*[q.enqueue(True) for w, q in enumerate(tokens) if w != self.task_index])
        else:
            with tf.control_dependencies(pushes):
                step_done = tokens[self.task_index].dequeue()
        callbacks = []
        if self.mode == 'replicated':
            with tfv1.device(self._worker_cpu), tf.control_dependencies([step_done]):
                self.train_op = tf.group(*[local.assign(master.read_value())
                                           for master, local in self._replica_of.values()], name='train_op')
            with tfv1.device(self._worker_cpu), tf.name_scope('initial_sync'):
                initial_sync = tf.group(*[local.assign(master.read_value())
                                          for master, local in self._replica_of.values()], name='copy_from_ps')
            sync = RunOp(initial_sync, run_before=True, run_as_trigger=False, verbose=True)
            sync.chief_only = False
            callbacks.append(sync)
        else:
            self.train_op = tf.group(step_done, name='train_op')
        return callbacks

    # -- session -------------------------------------------------------------------------------

    @property
    def chief_ready_variable(self):
        return self._chief_ready

    def initialize(self, session_creator, session_init):
        if type(session_creator) is not NewSessionCreator or session_creator.target:
            raise ClusterError('distributed training creates its own sessions on the cluster: give a '
                               'session_config (or nothing), not a session_creator')
        config = tfv1.ConfigProto()
        config.CopyFrom(session_creator.config)
        # Talk to the parameter servers and this worker only: another worker finishing (or
        # dying) must not break this worker's session.
        del config.device_filters[:]
        config.device_filters.extend(['/job:ps', '/job:worker/task:%d' % self.task_index])
        # before the session creator builds its ops (unrun ops would be reported at exit)
        wait_for_tasks(self.cluster, [('ps', i) for i in range(self.cluster.num_tasks('ps'))], self.timeout,
                       who='worker %d' % self.task_index)
        super(SyncDistributedTrainer, self).initialize(_ClusterSessionCreator(self, config), session_init)

    def main_loop(self, steps_per_epoch, starting_epoch, max_epoch):
        # Every worker must run exactly the chief's steps: one step more or less and a worker
        # waits forever for the others.
        if self.is_chief:
            # session_init (e.g. a checkpoint restore) has run in initialize(): publish the plan,
            # then let the others read the weights.
            plan = [(starting_epoch - 1) * steps_per_epoch, max_epoch * steps_per_epoch, steps_per_epoch]
            self.sess.run(self._publish_plan, {self._plan_value: plan})
            self.sess.run(self._chief_ready.initializer)
            logger.info('Chief: variables ready on the parameter servers; steps %d..%d' % (plan[0], plan[1]))
        else:
            starting_epoch = follow_chief(self.sess.run(self._plan), self.task_index, steps_per_epoch,
                                          starting_epoch, max_epoch)
        return super(SyncDistributedTrainer, self).main_loop(steps_per_epoch, starting_epoch, max_epoch)


class _ClusterSessionCreator(tfv1.train.SessionCreator):
    """The chief initialises the shared variables; the other workers wait until the chief says
    they are initialised and restored, then initialise their local variables."""

    def __init__(self, trainer, config, wait_secs=1):
        self.trainer, self.config = trainer, config
        shared = tfv1.global_variables()
        local = tfv1.local_variables()
        report = tfv1.report_uninitialized_variables
        if trainer.is_chief:
            self._manager = tfv1.train.SessionManager(
                local_init_op=tfv1.local_variables_initializer(), ready_op=report(shared + local),
                ready_for_local_init_op=report(shared), graph=tfv1.get_default_graph(),
                recovery_wait_secs=wait_secs)
            self._init_op = tfv1.variables_initializer(shared)
        else:
            ready = shared + [trainer.chief_ready_variable]
            self._manager = tfv1.train.SessionManager(
                local_init_op=tfv1.local_variables_initializer(), ready_op=report(ready + local),
                ready_for_local_init_op=report(ready), graph=tfv1.get_default_graph(),
                recovery_wait_secs=wait_secs)

    def create_session(self):
        trainer = self.trainer
        target = trainer.server.target
        who = 'worker %d' % trainer.task_index
        if trainer.is_chief:
            return self._manager.prepare_session(target, init_op=self._init_op, config=self.config)
        logger.info('Worker %d: waiting for the chief to initialise the variables ...' % trainer.task_index)
        try:
            return self._manager.wait_for_session(target, config=self.config, max_wait_secs=trainer.timeout)
        except tf.errors.DeadlineExceededError:
            raise ClusterTimeout('%s waited %.0f s for the chief (worker:0 at %s) to initialise the variables: '
                                 'start it, or give a longer --cluster-timeout'
                                 % (who, trainer.timeout, trainer.cluster.task_address('worker', 0)))
