"""The cluster a run trains on and its processes.

The cluster comes from ``--cluster``/``--task`` or ``TF_CONFIG`` (:func:`parse_cluster`; every
malformed description is one :class:`ClusterError` line); each task runs one
``tf.distribute.Server``: parameter servers serve until killed, workers first wait for the tasks
they need (:func:`wait_for_tasks`).  README's "Training on a cluster" shows the commands.
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
from tensorpack.utils import logger

__all__ = ['ClusterError', 'ClusterTimeout', 'ClusterTask', 'DEFAULT_TIMEOUT', 'JOBS', 'parse_cluster',
           'default_server_config', 'start_server', 'run_parameter_server', 'wait_for_tasks']

#: the jobs of a cluster: parameter servers and workers (worker 0 is the chief)
JOBS = ('ps', 'worker')
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
