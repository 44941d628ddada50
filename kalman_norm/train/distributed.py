"""Synchronous data-parallel SGD on a cluster of ``ps`` and ``worker`` tasks.

:class:`SyncStepBuilder` builds the graph of one step, :class:`SyncDistributedTrainer` runs it (session
creation, the chief's plan, the main loop); the cluster's description and processes are in
:mod:`kalman_norm.train.cluster`.  README's "Training on a cluster" says what a run does.
"""
import collections

import kalman_norm  # noqa: F401  (sets up the TF/tensorpack stack first)
import tensorflow as tf
from tensorpack.graph_builder.training import DataParallelBuilder, GraphBuilder
from tensorpack.graph_builder.utils import allreduce_grads_naive, split_grad_list
from tensorpack.input_source import FeedfreeInput
from tensorpack.tfutils.sesscreate import NewSessionCreator
from tensorpack.train.tower import SingleCostTrainer
from tensorpack.callbacks import RunOp
from tensorpack.utils import logger

# The cluster names are re-exported: the trainers and tests import them from here.
from kalman_norm.train.cluster import (DEFAULT_TIMEOUT, JOBS, ClusterError, ClusterTask, ClusterTimeout,
                                       _check_task, default_server_config, parse_cluster, run_parameter_server,
                                       start_server, wait_for_tasks)

tfv1 = tf.compat.v1

__all__ = ['ClusterError', 'ClusterTimeout', 'ClusterTask', 'wait_for_tasks', 'DEFAULT_TIMEOUT', 'parse_cluster',
           'start_server', 'run_parameter_server', 'default_server_config', 'make_distributed_trainer',
           'SyncStepBuilder', 'SyncDistributedTrainer', 'follow_chief', 'horovod_trainer', 'JOBS', 'MODES']

#: where a worker's towers read the weights: 'ps' — straight from the parameter servers (cached
#: once per step on the worker); 'replicated' — from a copy kept on the worker, refreshed after
#: every update (tensorpack's "distributed_replicated" variable update)
MODES = ('ps', 'replicated')


def _check_mode(mode):
    if mode not in MODES:
        raise ClusterError("mode must be 'ps' or 'replicated', got %r" % (mode,))


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
    _check_mode(mode)
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
# the graph of one step

def _is_trainable(getter_kwargs):
    # get_variable's default trainable=None means True (except for ON_READ synchronisation).
    return getter_kwargs.get('trainable') is not False


class SyncStepBuilder(GraphBuilder):
    """The graph of one synchronous step on worker ``task_index`` of ``cluster``.

    1. each of the worker's towers computes its gradient on its own samples, normalised with its
       own statistics (per-GPU statistics, as the paper: nothing about the batch is shared);
    2. the worker averages its towers' gradients and pushes the mean into one
       ``ConditionalAccumulator`` per variable on the parameter server;
    3. the chief takes the mean over the workers (equal towers and samples on every worker make it
       the mean over all towers), applies it once with the model's optimizer, then releases the
       other workers through one token queue each.  No worker computes a gradient on weights
       another already moved: W workers × T towers take the SGD step of one machine with W·T towers.

    Variables sit round-robin on the ps tasks.  The moving averages (EMA) are shared too and are
    updated by the chief's first tower only, as tensorpack's one-machine trainers update them from
    the first tower.  A non-chief's step starts only after the chief applied the previous step's
    update (BRN reads the averages in training); the chief's first tower applies the current
    step's update without waiting for the others, so a non-chief may already see it.  With a layer
    option ``ema_update='internal'`` every worker's first tower updates them.

    Attributes, set by :meth:`build`: ``sync_step`` (steps applied to the shared weights, on ps 0),
    ``chief_ready`` (set by the chief once the weights are initialised and restored),
    ``plan``, ``plan_value`` and ``publish_plan`` (the chief's first step, end step and steps per
    epoch, which the other workers follow: see :func:`follow_chief`).
    """

    def __init__(self, cluster, task_index, towers, mode='ps'):
        """``towers``: tower ids, tensorpack's convention; ``mode``: one of :data:`MODES`."""
        _check_mode(mode)
        self.cluster = cluster
        self.task_index = task_index
        self.towers = list(towers)
        self.mode = mode
        self.num_workers = cluster.num_tasks('worker')
        self.is_chief = task_index == 0
        self.worker_cpu = '/job:worker/task:%d/cpu:0' % task_index
        on_gpu = bool(tf.config.list_physical_devices('GPU'))
        self.tower_devices = ['/job:worker/task:%d/%s' % (task_index, 'gpu:%d' % k if on_gpu else 'cpu:0')
                              for k in self.towers]
        self._replica_of = collections.OrderedDict()   # shared variable name -> (shared, local copy)

    def _on_ps(self, worker_device):
        """Device function: variables round-robin on the ps tasks, computation on worker_device."""
        return tfv1.train.replica_device_setter(worker_device=worker_device, cluster=self.cluster)

    def _cache_on_worker(self, getter, name, *args, **kwargs):
        """'ps' mode: read each trainable variable once per step into the worker, for all towers."""
        if _is_trainable(kwargs):
            kwargs['caching_device'] = self.worker_cpu
        return getter(name, *args, **kwargs)

    def _replicate_on_worker(self, getter, name, *args, **kwargs):
        """'replicated' mode: the towers train a worker-local copy ('replica/<name>') of each
        trainable variable; the shared variable <name> on the ps (the one checkpoints hold) is
        updated by the chief and copied back after every step."""
        if not _is_trainable(kwargs):
            return getter(name, *args, **kwargs)        # statistics, counters: one copy, on the ps
        master = getter(name, *args, **dict(kwargs, trainable=False))
        local_kwargs = dict(kwargs, collections=[tfv1.GraphKeys.LOCAL_VARIABLES, tfv1.GraphKeys.TRAINABLE_VARIABLES])
        with tfv1.device(self.worker_cpu):
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

    def build(self, get_grad_fn, get_opt_fn):
        """Build the step from tensorpack's per-tower ``get_grad_fn`` (a trainer's
        ``_make_get_grad_fn``) and ``get_opt_fn``.

        Returns:
            (train_op, callbacks): the op one ``session.run`` of the worker runs per step, and the
            callbacks the step needs (in 'replicated' mode: copying the shared weights to the
            worker before training).
        """
        ps0 = '/job:ps/task:0/cpu:0'
        with tfv1.device(ps0), tfv1.variable_scope('sync'):
            # Steps applied to the shared weights; also the accumulators' staleness clock.
            self.sync_step = tfv1.get_variable('step', [], tf.int64, initializer=tf.zeros_initializer(),
                                               trainable=False)
            # Set by the chief once the weights are initialised *and* restored; in no collection,
            # so that neither the initialisers nor the savers touch it.
            self.chief_ready = tfv1.Variable(False, name='chief_ready', trainable=False, collections=[])
            # The chief's (first step, end step, steps per epoch), published before chief_ready:
            # the other workers follow it (a resumed chief restarts at its checkpoint's epoch).
            self.plan = tfv1.Variable(tf.zeros([3], tf.int64), name='plan', trainable=False, collections=[])
            self.plan_value = tfv1.placeholder(tf.int64, [3], name='plan_value')
            self.publish_plan = self.plan.assign(self.plan_value)
            # Worker w waits on tokens[w] until the chief has applied the step.
            tokens = [tfv1.FIFOQueue(self.num_workers, [tf.bool], shapes=[[]], shared_name='sync_tokens_%d' % w,
                                     name='tokens_%d' % w) for w in range(self.num_workers)]

        getter = self._cache_on_worker if self.mode == 'ps' else self._replicate_on_worker
        with tfv1.variable_scope(tfv1.get_variable_scope(), custom_getter=getter):
            grad_list = DataParallelBuilder.build_on_towers(
                self.towers, get_grad_fn, [self._on_ps(d) for d in self.tower_devices])
        DataParallelBuilder._check_grad_list(grad_list)
        update_ops = tfv1.get_collection(tfv1.GraphKeys.UPDATE_OPS)
        if not self.is_chief:
            # The shared moving averages follow the chief's first tower only (class docstring).
            del tfv1.get_collection_ref(tfv1.GraphKeys.UPDATE_OPS)[:]

        all_grads, all_vars = split_grad_list(grad_list)
        with tfv1.device(self.worker_cpu):
            # Mean over this worker's towers; each tower normalised only its own samples.
            worker_grads = allreduce_grads_naive(all_grads, average=True)
            step = self.sync_step.read_value()
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
        with tfv1.device(self._on_ps(self.worker_cpu)):
            apply_op = get_opt_fn().apply_gradients(averaged, global_step=self.sync_step,
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
            with tfv1.device(self.worker_cpu), tf.control_dependencies([step_done]):
                train_op = tf.group(*[local.assign(master.read_value())
                                      for master, local in self._replica_of.values()], name='train_op')
            with tfv1.device(self.worker_cpu), tf.name_scope('initial_sync'):
                initial_sync = tf.group(*[local.assign(master.read_value())
                                          for master, local in self._replica_of.values()], name='copy_from_ps')
            sync = RunOp(initial_sync, run_before=True, run_as_trigger=False, verbose=True)
            sync.chief_only = False
            callbacks.append(sync)
        else:
            train_op = tf.group(step_done, name='train_op')
        return train_op, callbacks


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


# Why not tensorpack's DistributedTrainerParameterServer / DistributedTrainerReplicated: on TF 2.21
# they fail at construction (tensorpack 0.11 calls TF1 names TF 2 no longer has, e.g.
# tf.train.replica_device_setter, tf.contrib, tf.FIFOQueue, tf.global_variables_initializer; see
# tests/test_distributed.py), and their arithmetic is not synchronous SGD:
#  * parameter server: each worker applies its own tower-averaged gradient ("Gradients are not
#    averaged across workers"), so W workers move plain SGD by lr·(g₁ + … + g_W), and the only
#    barrier comes after the updates: a worker may compute its gradient on weights another moved;
#  * replicated: build() computes the tower average and then pairs tower k's whole gradient list
#    with variable k (``avg_grads = [(g, v) for g, v in zip(all_grads, all_vars[0])]``);
#  * session creation: the chief restores a checkpoint only after initialising, while the other
#    workers start once the variables are initialised and may read the initial weights.  Here
#    they wait for the chief's explicit "ready", set after the restore.
# This trainer subclasses tensorpack's SingleCostTrainer (its tower builder and in-worker
# averaging); nothing in tensorpack is patched.

class SyncDistributedTrainer(SingleCostTrainer):
    """Synchronous data-parallel SGD over the workers of a cluster: the graph of
    :class:`SyncStepBuilder`, cluster sessions, and a main loop that runs the chief's steps on
    every worker.  Use :func:`make_distributed_trainer`.

    Every worker must use the same towers, tower batch, steps per epoch and epochs (the mean over
    workers weighs each worker equally; a worker resumed at another epoch follows the chief, see
    :func:`follow_chief`), and should read its own samples.

    Attributes:
        devices: tower ids (tensorpack's convention; more than one makes it stage the input).
        is_chief: worker 0; it runs the chief-only callbacks (saving, validation).
    """

    def __init__(self, server, towers=1, mode='ps', timeout=DEFAULT_TIMEOUT):
        _check_mode(mode)
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
        self.builder = SyncStepBuilder(self.cluster, self.task_index, self.devices, mode)
        logger.info('Synchronous distributed training (%s mode), worker %d of %d, %d tower(s); cluster %s'
                    % (mode, self.task_index, self.num_workers, towers, self.cluster.as_dict()))

    # -- graph ---------------------------------------------------------------------------------

    def _setup_input(self, input_signature, input):
        # The global step is per worker: tensorpack's MaintainStepCounter increments it in every
        # worker's session.run, so a shared one would advance W times per step.  (Steps applied to
        # the shared weights are counted by 'sync/step' on the parameter server.)
        worker_cpu = self.builder.worker_cpu
        with tfv1.device(worker_cpu), tfv1.variable_scope(tfv1.VariableScope(reuse=False, name='')):
            tfv1.get_variable('global_step', [], tf.int64, initializer=tf.zeros_initializer(), trainable=False,
                              collections=[tfv1.GraphKeys.LOCAL_VARIABLES, tfv1.GraphKeys.GLOBAL_STEP])
        with tfv1.device(worker_cpu):
            return input.setup(input_signature)

    def _setup_graph(self, input, get_cost_fn, get_opt_fn):
        if not isinstance(input, FeedfreeInput):
            raise ClusterError('distributed training needs a feed-free input (e.g. QueueInput), got %s'
                               % type(input).__name__)
        self.train_op, callbacks = self.builder.build(self._make_get_grad_fn(input, get_cost_fn, get_opt_fn),
                                                      get_opt_fn)
        return callbacks

    # -- session -------------------------------------------------------------------------------

    @property
    def chief_ready_variable(self):
        return self.builder.chief_ready

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
        builder = self.builder
        if self.is_chief:
            # session_init (e.g. a checkpoint restore) has run in initialize(): publish the plan,
            # then let the others read the weights.
            plan = [(starting_epoch - 1) * steps_per_epoch, max_epoch * steps_per_epoch, steps_per_epoch]
            self.sess.run(builder.publish_plan, {builder.plan_value: plan})
            self.sess.run(builder.chief_ready.initializer)
            logger.info('Chief: variables ready on the parameter servers; steps %d..%d' % (plan[0], plan[1]))
        else:
            starting_epoch = follow_chief(self.sess.run(builder.plan), self.task_index, steps_per_epoch,
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
