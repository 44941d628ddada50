"""What every run and report records about itself, written one way: JSON files replaced atomically,
UTC timestamps, and the machine.  Standard library only (no TensorFlow), so the trainers, the
probe and the study tooling all use it."""
import datetime
import json
import os
import platform
import shutil
import subprocess
from importlib.metadata import PackageNotFoundError, version

__all__ = ['atomic_write_json', 'utc_now', 'machine', 'describe_machine']


def utc_now():
    """The current UTC time to the second, ISO 8601: '2026-12-07T20:53:33Z'."""
    return datetime.datetime.now(datetime.timezone.utc).strftime('%Y-%m-%dT%H:%M:%SZ')


def atomic_write_json(path, obj, sort_keys=True):
    """Write JSON to a temporary file next to ``path`` and rename it over: a kill leaves either the
    old file or the new one, never half of one (the temporary name carries the pid, so two writers
    never share one).  Keys sorted unless ``sort_keys`` is False (a file whose order reads as
    written, such as run.json)."""
    tmp = '%s.tmp.%d' % (path, os.getpid())
    with open(tmp, 'w') as f:
        json.dump(obj, f, indent=1, sort_keys=sort_keys, default=str)
        f.write('\n')
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _gpus():
    """GPU names from nvidia-smi, or 'none'."""
    if not shutil.which('nvidia-smi'):
        return 'none'
    try:
        out = subprocess.run(['nvidia-smi', '--query-gpu=name', '--format=csv,noheader'],
                             capture_output=True, text=True, timeout=30).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return 'none'
    return ', '.join(out.splitlines()) or 'none'


def machine():
    """{platform, processor, cores, gpu}: the machine a run's run.json records."""
    return {'platform': platform.platform(), 'processor': platform.machine(), 'cores': os.cpu_count(),
            'gpu': _gpus()}


def describe_machine():
    """One line for benchmark reports: CPU model x logical cores, OS, Python, TensorFlow."""
    cpu = platform.processor() or platform.machine()
    try:
        with open('/proc/cpuinfo') as f:
            names = [line.split(':', 1)[1].strip() for line in f if line.startswith('model name')]
        cpu = '%s × %d' % (names[0], len(names)) if names else cpu
    except OSError:
        pass
    try:
        tf_version = version('tensorflow')
    except PackageNotFoundError:
        tf_version = 'not installed'
    return '%s; %s; Python %s; TensorFlow %s (CPU)' % (cpu, platform.platform(), platform.python_version(),
                                                       tf_version)
