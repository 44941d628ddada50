"""Fused CPU kernels for KN's analytic prior, compiled on first use.

KN's extra time per step over BN is mostly the analytic conv prior's passes over the kernel
(``transition._conv_moments``: W², two products forward, five kernel-sized ops backward), which
are memory-bound: results/table3_speed.md.  ``conv_prior.cc`` computes the same quantities with
one pass over the kernel forward and one (plus the write of the gradient) backward.

The op has a CPU kernel only.  On a machine where TensorFlow sees a GPU the prior keeps
TensorFlow's own ops (they run on the GPU, where these passes are cheap), so nothing here is
needed there.  On a CPU-only machine the library is compiled once with the C++ compiler and
TensorFlow's headers (``tf.sysconfig``; about 10 s), cached under ``$KALMAN_NORM_CACHE`` or
``~/.cache/kalman_norm`` by a hash of the source, the TensorFlow version and the CPU, and
loaded by every later process.  Its size and SHA-256 are written beside it (``.sha256``) and
checked before every load: a damaged library (truncated by a full disk or a killed copy) would
crash the process in ``dlopen`` (SIGBUS) naming no file, so it is rebuilt instead.  If it cannot be built (no compiler, say) the prior falls back to
TensorFlow's ops with one warning: the same mathematics, only slower.

``KALMAN_NORM_FUSED_PRIOR``: unset = use the fused op where it applies (CPU only, no GPU seen);
``0`` = never; ``1`` = always on a CPU-only machine, and fail loudly if it cannot be built.
Equality with TensorFlow's ops (values and gradients): tests/test_fused_prior.py; speed:
scripts/benchmark_prior.py.
"""
import hashlib
import logging
import os
import platform
import shutil
import subprocess
import tempfile

import tensorflow as tf

__all__ = ['conv_prior', 'fused_prior_enabled', 'build', 'FusedOpUnavailable', 'ENV_SWITCH']

ENV_SWITCH = 'KALMAN_NORM_FUSED_PRIOR'
_SOURCE = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'conv_prior.cc')
# -fassociative-math (without -ffinite-math-only) lets the compiler vectorise the reductions;
# NaN and Inf still propagate, so a diverging run is still caught downstream.
_OPT_FLAGS = ['-O3', '-march=native', '-fno-math-errno', '-fassociative-math', '-fno-signed-zeros',
              '-fno-trapping-math', '-w']
# TensorFlow 2.21's Eigen has AVX512-FP16 packet code that g++ 12 cannot compile; -march=native
# turns it on where the CPU has the feature.  The op computes in float32 only, so it is left off.
_NO_FP16 = '-mno-avx512fp16'

logger = logging.getLogger(__name__)
_state = {}             # the decision of fused_prior_enabled(), made once per process
_libraries = {}         # path -> loaded module (TensorFlow registers a library's ops only once)


class FusedOpUnavailable(RuntimeError):
    """The fused prior was required (KALMAN_NORM_FUSED_PRIOR=1) but could not be built or loaded."""


def _cpu_fingerprint():
    """What -march=native depends on: the CPU's feature flags (a cache shared by different CPUs
    must not hand one of them a library built for another)."""
    try:
        with open('/proc/cpuinfo') as f:
            for line in f:
                if line.startswith(('flags', 'Features')):
                    return line
    except OSError:
        pass
    return platform.machine() + platform.processor()


def _cache_dir():
    root = os.environ.get('KALMAN_NORM_CACHE') or os.path.join(
        os.environ.get('XDG_CACHE_HOME') or os.path.join(os.path.expanduser('~'), '.cache'), 'kalman_norm')
    return root


def _library_path():
    with open(_SOURCE, 'rb') as f:
        key = hashlib.sha1(f.read())
    for part in [tf.__version__, ' '.join(tf.sysconfig.get_compile_flags()), ' '.join(_OPT_FLAGS),
                 _cpu_fingerprint(), _NO_FP16]:
        key.update(part.encode())
    return os.path.join(_cache_dir(), 'conv_prior-%s.so' % key.hexdigest()[:16])


def _arch_flags(compiler):
    """Flags beyond _OPT_FLAGS: AVX512-FP16 off where the CPU has it and the compiler knows it."""
    if 'avx512_fp16' not in _cpu_fingerprint():
        return []
    probe = subprocess.run([compiler, _NO_FP16, '-x', 'c++', '-E', '-', '-o', os.devnull], input='',
                           capture_output=True, text=True)
    return [_NO_FP16] if probe.returncode == 0 else []


def _digest(path):
    h = hashlib.sha256()
    with open(path, 'rb') as f:
        for chunk in iter(lambda: f.read(1 << 20), b''):
            h.update(chunk)
    return h.hexdigest()


def checksum_path(path):
    """Where the size and SHA-256 of the library ``path`` are recorded."""
    return path + '.sha256'


def verify(path):
    """None if the library at ``path`` has the size and hash recorded beside it, else why not."""
    try:
        with open(checksum_path(path)) as f:
            size, digest = f.read().split()
    except FileNotFoundError:
        return 'no recorded size and hash (%s)' % os.path.basename(checksum_path(path))
    except (OSError, ValueError) as e:
        return 'its recorded size and hash cannot be read (%s)' % e
    actual = os.path.getsize(path)
    if actual != int(size):
        return '%d bytes, %s bytes when built' % (actual, size)
    if _digest(path) != digest:
        return 'its SHA-256 differs from the one recorded when built'
    return None


def build(path=None, timeout=600):
    """Compile ``conv_prior.cc`` into ``path`` (default: the cache) and return the path.

    A library already there is kept if it matches the size and hash recorded beside it, else
    rebuilt.  The library and its record are written under temporary names and renamed into
    place (the record first), so processes that build at the same time never load a
    half-written file.  Raises FusedOpUnavailable with the compiler's message on failure.
    """
    path = path or _library_path()
    if os.path.exists(path):
        problem = verify(path)
        if problem is None:
            return path
        logger.warning('KN fused prior: the cached library %s is damaged (%s); rebuilding it', path, problem)
    compiler = os.environ.get('CXX') or shutil.which('g++') or shutil.which('c++')
    if compiler is None or shutil.which(compiler) is None:
        raise FusedOpUnavailable('no C++ compiler %s(set CXX, or install g++)'
                                 % ('%r ' % compiler if compiler else ''))
    os.makedirs(os.path.dirname(path), exist_ok=True)
    fd, tmp = tempfile.mkstemp(suffix='.so', dir=os.path.dirname(path))
    os.close(fd)
    cmd = ([compiler, '-shared', '-fPIC'] + _OPT_FLAGS + _arch_flags(compiler) + [_SOURCE, '-o', tmp]
           + tf.sysconfig.get_compile_flags() + tf.sysconfig.get_link_flags())
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
        if proc.returncode != 0:
            raise FusedOpUnavailable('compiling %s failed:\n%s' % (_SOURCE, proc.stderr[-2000:]))
        os.chmod(tmp, 0o755)      # mkstemp made it private; the cache may be shared
        record = '%s.%d' % (checksum_path(path), os.getpid())
        with open(record, 'w') as f:
            f.write('%d %s\n' % (os.path.getsize(tmp), _digest(tmp)))
        os.replace(record, checksum_path(path))
        os.replace(tmp, path)
    except subprocess.TimeoutExpired:
        raise FusedOpUnavailable('compiling %s took longer than %d s' % (_SOURCE, timeout))
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return path


def _load():
    path = build()
    if path not in _libraries:
        logger.info('KN fused prior: loading %s', path)
        _libraries[path] = tf.load_op_library(path)
    return _libraries[path]


def fused_prior_enabled():
    """Whether the analytic conv prior uses the fused CPU op in this process (decided once)."""
    if 'enabled' in _state:
        return _state['enabled']
    switch = os.environ.get(ENV_SWITCH, '').strip()
    if switch not in ('', '0', '1'):
        raise ValueError('%s must be 0, 1 or unset, got %r' % (ENV_SWITCH, switch))
    enabled = False
    if switch != '0' and not tf.config.list_physical_devices('GPU'):
        try:
            _load()
            enabled = True
        except (FusedOpUnavailable, tf.errors.NotFoundError, OSError) as e:
            if switch == '1':
                raise FusedOpUnavailable('%s=1 but the fused prior is unavailable: %s' % (ENV_SWITCH, e))
            logger.warning('KN fused prior unavailable, using TensorFlow ops (same results, slower): %s',
                           str(e).splitlines()[0])
    _state['enabled'] = enabled
    return enabled


def conv_prior(m, v, w, f):
    """(a [T, G, C_out], b [G, C_out]) with a_t = m W_t and b = Σ_t f_t (v W_t²), fused.

    m, v: [G, C_in]; w: [T, C_in, C_out] (the kernel, taps flattened); f: [T] (the constant
    fraction of output positions each tap covers).  Differentiable in m, v and w.
    """
    return _load().kalman_norm_conv_prior(m, v, w, f)


@tf.RegisterGradient('KalmanNormConvPrior')
def _conv_prior_grad(op, da, db):
    m, v, w, f = op.inputs
    # an output nobody uses has no gradient; the op wants a tensor
    da = tf.zeros_like(op.outputs[0]) if da is None else da
    db = tf.zeros_like(op.outputs[1]) if db is None else db
    dm, dv, dw = _load().kalman_norm_conv_prior_grad(m, v, w, f, da, db)
    return dm, dv, dw, None
