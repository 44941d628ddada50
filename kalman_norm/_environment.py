"""Prepare and verify the TensorFlow / tf-keras / tensorpack stack before anything imports it.

tensorpack 0.11 builds its layers on ``tf.layers`` (Keras 2). TensorFlow 2.16+ ships Keras 3
by default, where those layers do not exist; the ``tf-keras`` package provides Keras 2, and
TensorFlow only uses it when ``TF_USE_LEGACY_KERAS=1`` is set *before* TensorFlow is imported.
"""
import os

from . import runtime

REQUIRED = {
    # distribution name -> (module name, version prefix we are tested with)
    "tensorflow": ("tensorflow", "2.21"),
    "tf-keras": ("tf_keras", "2.21"),
    "tensorpack": ("tensorpack", "0.11"),
}

_FIX = "Install the tested stack with:  pip install 'tensorflow==2.21.*' 'tf-keras==2.21.*' tensorpack==0.11"


class StackError(ImportError):
    """The installed TensorFlow / tf-keras / tensorpack stack cannot run kalman_norm."""


def prepare_environment():
    """Set TF_USE_LEGACY_KERAS=1, or fail clearly if the user set it to something else."""
    if os.environ.get("TF_USE_LEGACY_KERAS") not in (None, "1", "true", "True"):
        raise StackError("TF_USE_LEGACY_KERAS is set to %r; kalman_norm needs it to be 1 (tensorpack "
                         "layers need Keras 2)." % os.environ["TF_USE_LEGACY_KERAS"])
    # TensorFlow reads the variable lazily (when tf.keras is first touched), so setting it here
    # works even after `import tensorflow`; check_stack() verifies that Keras 2 is what got bound.
    os.environ["TF_USE_LEGACY_KERAS"] = "1"
    # TensorFlow's C++ INFO/WARNING logs bury the training output on CPU machines.
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    # Measured speed settings TensorFlow reads at start-up (oneDNN kernels: 1.3-2.6x here, on CPUs where
    # TensorFlow leaves them off); an explicit choice of the user's is kept.
    runtime.configure_environment()


def _version(module_name):
    try:
        from importlib.metadata import version, PackageNotFoundError
    except ImportError:  # pragma: no cover
        return None
    dist = {"tensorflow": "tensorflow", "tf_keras": "tf-keras", "tensorpack": "tensorpack"}[module_name]
    try:
        return version(dist)
    except PackageNotFoundError:
        return None


def check_installed():
    """StackError with the fix if a piece of the stack is not installed (package metadata only:
    nothing is imported)."""
    missing = [d for d, (m, _) in REQUIRED.items() if _version(m) is None]
    if missing:
        raise StackError("kalman_norm needs %s, which %s not installed. %s"
                         % (", ".join(missing), "is" if len(missing) == 1 else "are", _FIX))


def check_stack():
    """Import the stack and raise StackError with the fix if a piece is missing or wrong."""
    check_installed()
    for dist, (mod, prefix) in REQUIRED.items():
        v = _version(mod)
        if not v.startswith(prefix):
            import warnings
            warnings.warn("kalman_norm is tested with %s %s.*, found %s" % (dist, prefix, v))
    import tensorflow as tf
    try:
        tf.compat.v1.layers.Conv2D  # noqa: B018 - exists only with Keras 2
    except (AttributeError, ImportError, ValueError) as e:
        raise StackError("tf.compat.v1.layers is unavailable (%s). TensorFlow was imported with Keras 3: "
                         "import kalman_norm before tensorflow, or set TF_USE_LEGACY_KERAS=1. %s"
                         % (e, _FIX))
    return tf
