"""Process hygiene for data worker processes."""
import os
import threading
import time

__all__ = ['exit_with_parent']

_watching = set()


def exit_with_parent(poll_seconds=1.0):
    """In a worker process: exit as soon as the process that started it is gone.

    tensorpack's dataflow workers are cleaned up by the parent's atexit handlers, which never run
    when the parent is killed with SIGKILL; the workers would live on as orphans holding their
    share of the data set in memory.  A daemon thread polls the parent pid (re-parenting changes
    it) — portable, unlike prctl(PR_SET_PDEATHSIG), and immune to which parent thread forked us.
    Idempotent per process."""
    pid = os.getpid()
    if pid in _watching:
        return
    _watching.add(pid)
    parent = os.getppid()

    def watch():
        while os.getppid() == parent:
            time.sleep(poll_seconds)
        os._exit(0)

    threading.Thread(target=watch, name='exit-with-parent', daemon=True).start()
