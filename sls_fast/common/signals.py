"""Holding Ctrl-C back over a step that must not be cut in half (imports light: no torch)."""
import contextlib
import signal
import threading


@contextlib.contextmanager
def sigint_held():
    """Block SIGINT in this thread for the duration; a Ctrl-C meanwhile stays pending and is
    delivered (as KeyboardInterrupt) when the block ends. Processes started meanwhile inherit
    the block. A no-op where it cannot work: without POSIX signal masks, off the main thread."""
    if not hasattr(signal, "pthread_sigmask") or \
            threading.current_thread() is not threading.main_thread():
        yield
        return
    before = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, before)
