"""Runtime settings that make CPU training faster without changing the maths.

Measured on the project's 2-core AMD EPYC machine (ResNet-20, 128 samples per step;
``scripts/benchmark_speed.py``, results in ``results/speed_cifar.md``):

* **oneDNN** (``TF_ENABLE_ONEDNN_OPTS=1``): TensorFlow turns its oneDNN kernels on by default
  only on CPUs it recognises (recent Intel); on this AMD CPU the default is off and convolutions
  run on Eigen kernels.  Turning it on made a training step 1.3-2.6x faster (single-factor
  runs; with the group-statistics change, 1.68x for BN and 1.50x for BKN at 64 groups of 2)
  and does not change the results (tests/test_runtime.py).  TensorFlow reads the
  variable once, when it is imported, so it must be in the environment before that:
  :func:`configure_environment` sets it (unless the user chose a value) and says whether it was
  in time.
* **threads**: every core for intra-op work (tensorpack's default config uses one intra-op
  thread, right when a GPU does the math: 0.66-0.84x on this CPU); ``inter_op=0``.
* **XLA** auto-clustering (session ``global_jit_level`` or ``TF_XLA_FLAGS=--tf_xla_auto_jit=2``)
  made the step *slower* (0.8-0.9x): not used.
* **data format**: NHWC (models choose it; NCHW has no Eigen CPU conv gradient, and with oneDNN
  it ran at 0.48x NHWC).

Use::

    from kalman_norm import runtime
    runtime.configure_environment()        # best before anything imports tensorflow
    ...
    TrainConfig(..., session_config=runtime.session_config())

Importing this module does not import TensorFlow (tests/test_runtime.py checks it): the package's
``_environment.prepare_environment()`` calls :func:`configure_environment` on ``import kalman_norm``,
before TensorFlow loads, so every script that imports kalman_norm first gets oneDNN.
"""
import os
import sys
import warnings

__all__ = ['ENVIRONMENT', 'configure_environment', 'session_config']

#: Environment variables TensorFlow must see when it starts; values that were measured to help.
ENVIRONMENT = {
    'TF_ENABLE_ONEDNN_OPTS': '1',
}


def configure_environment(environ=None):
    """Set :data:`ENVIRONMENT` in ``environ`` (default ``os.environ``) where the user has not set
    the variable already (an explicit ``TF_ENABLE_ONEDNN_OPTS=0`` is respected).

    Returns True if TensorFlow has not been imported yet (the settings take effect), False if it
    has (they reach only child processes; a warning says so).
    """
    environ = os.environ if environ is None else environ
    for key, value in ENVIRONMENT.items():
        environ.setdefault(key, value)
    if 'tensorflow' in sys.modules and environ is os.environ:
        warnings.warn('kalman_norm.runtime.configure_environment() was called after TensorFlow was '
                      'imported: %s take effect only in new processes. Call it (or export them) '
                      'before importing kalman_norm or tensorflow.' % ', '.join(sorted(ENVIRONMENT)),
                      RuntimeWarning, stacklevel=2)
        return False
    return True


def session_config(threads=None):
    """tensorpack's default session config, with every core (or ``threads``) for TensorFlow's
    thread pools on CPU-only machines.

    tensorpack sets ``intra_op_parallelism_threads=1``, right when a GPU does the math; when the
    CPU does it, one thread per op leaves cores idle (0 lets TensorFlow use one per core).  Two
    processes that each take every core oversubscribe them (an epoch measured 7x slower): give
    each its ``threads``.
    """
    import tensorflow as tf
    from tensorpack.tfutils.common import get_default_sess_config
    conf = get_default_sess_config()
    if threads is not None:
        conf.intra_op_parallelism_threads = threads
        conf.inter_op_parallelism_threads = threads
    elif not tf.config.list_physical_devices('GPU'):
        conf.intra_op_parallelism_threads = 0
        conf.inter_op_parallelism_threads = 0
    return conf
