"""How many threads a run uses: the cores it may run on that no other process keeps busy.

Torch's OpenMP threads wait for each other at every parallel region's end. With two threads on
two cores and another process on one of them, every region waits for the thread that shares
its core: a quick ``sls-fast run`` took 38.5 s beside one busy core instead of 16.7 s alone
(AMD EPYC, 2 cores; benchmarks/bench_contention.py, RESULTS.md), a default run 8x to 25x
longer. Measured there: OMP_WAIT_POLICY=PASSIVE (25.1 s busy, but 15% slower alone) and
GOMP_SPINCOUNT=10000 (37.7 s) help less than one thread fewer (18.4 s busy, 19.0 s alone).
So :func:`choose_threads` counts the cores of this process's affinity set that were mostly idle
during a short sample of ``/proc/stat`` (Linux) and :func:`apply_threads` sets torch's thread
count (OpenMP's, which the native extension shares) to that, or to what the user gave.
"""
from __future__ import annotations

import os
import time
from typing import Dict, Optional, Tuple

__all__ = ["allowed_cores", "busy_cores", "choose_threads", "apply_threads"]

BUSY = 0.5  # a core busier than this (other processes' share of its time) is not counted


def allowed_cores() -> int:
    """The cores this process may run on (its affinity set; all cores where there is none)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def _cpu_times() -> Dict[int, Tuple[int, int]]:
    """``{cpu: (busy jiffies, total jiffies)}`` from ``/proc/stat``; empty elsewhere."""
    out = {}
    try:
        with open("/proc/stat") as f:
            for line in f:
                if not line.startswith("cpu") or line.startswith("cpu "):
                    continue
                name, *fields = line.split()
                values = [int(v) for v in fields[:8]]
                idle = values[3] + (values[4] if len(values) > 4 else 0)  # idle + iowait
                out[int(name[3:])] = (sum(values) - idle, sum(values))
    except (OSError, ValueError):
        return {}
    return out


def busy_cores(sample_s: float = 0.2) -> Optional[int]:
    """How many of this process's allowed cores other processes kept more than half busy over
    ``sample_s`` seconds (None where ``/proc/stat`` cannot tell). This process sleeps while it
    samples, so what it sees is the others' load."""
    before = _cpu_times()
    if not before:
        return None
    time.sleep(sample_s)
    after = _cpu_times()
    try:
        mine = os.sched_getaffinity(0)
    except (AttributeError, OSError):
        mine = set(before)
    busy = 0
    for cpu in mine:
        if cpu not in before or cpu not in after:
            continue
        used = after[cpu][0] - before[cpu][0]
        total = after[cpu][1] - before[cpu][1]
        if total > 0 and used / total > BUSY:
            busy += 1
    return busy


def choose_threads(sample_s: float = 0.2) -> int:
    """The threads to use: the allowed cores less the busy ones, at least 1."""
    busy = busy_cores(sample_s) or 0
    return max(1, allowed_cores() - busy)


def apply_threads(threads: Optional[int] = None) -> int:
    """Set torch's (and OpenMP's) thread count to ``threads`` (a positive integer) or, when
    None, to :func:`choose_threads`; returns it. ValueError for a count below 1."""
    import torch

    if threads is not None:
        if isinstance(threads, bool) or int(threads) != threads or threads < 1:
            raise ValueError(f"threads must be a positive integer, got {threads!r}")
        n = int(threads)
    else:
        n = choose_threads()
    torch.set_num_threads(n)
    return n
