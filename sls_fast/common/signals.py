"""Holding Ctrl-C back over a step that must not be cut in half (imports light: no torch)."""
import contextlib
import os
import signal
import threading
from typing import Iterator, List

__all__ = ["sigint_held"]


@contextlib.contextmanager
def sigint_held() -> Iterator[None]:
    """A Ctrl-C during the block is delivered when the block ends, as the handler in place
    would have taken it (a KeyboardInterrupt with Python's default; nothing when ignored).

    Two mechanisms, because a process-directed SIGINT may land on any thread: for the duration,
    Python's handler only records the signal (Python runs handlers in the main thread whichever
    thread the kernel chose), and SIGINT is blocked in this thread, a mask that processes
    started meanwhile inherit (Ray's, so a terminal's Ctrl-C reaches only the driver). A no-op
    where it cannot work: off the main thread.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    caught: List[int] = []
    previous = signal.signal(signal.SIGINT, lambda signum, frame: caught.append(signum))
    blocked = hasattr(signal, "pthread_sigmask")
    mask = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT}) if blocked else set()
    try:
        yield
    finally:
        if blocked:
            signal.pthread_sigmask(signal.SIG_SETMASK, mask)  # a pending SIGINT lands now
        signal.signal(signal.SIGINT, previous)
        if caught:
            if callable(previous):
                previous(signal.SIGINT, None)  # Python's default: KeyboardInterrupt
            elif previous == signal.SIG_DFL:
                os.kill(os.getpid(), signal.SIGINT)  # the default action, now
