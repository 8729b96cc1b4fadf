"""A run beside a busy core: `sls-fast run --quick` alone and beside a process that keeps one
core busy, with every core's thread (what torch does by default: "before") and with the thread
policy (sls_fast.common.threads: the cores no other process keeps busy: "after").

    pytest benchmarks/bench_contention.py --benchmark-only -q -s

Goal (issue 22): beside the busy core, at most 2x the quiet time. Each row runs the command
once in a fresh process (its start and imports included) and records the threads it used; the
ratios are printed at the end.
"""
import json
import os
import subprocess
import sys
import tempfile
import time

import pytest

from sls_fast.common.threads import allowed_cores

RESULT = {}
CORES = allowed_cores()


def _run(busy: bool, threads):
    hog = subprocess.Popen([sys.executable, "-c", "while True: pass"]) if busy else None
    try:
        if hog is not None:
            time.sleep(0.5)  # the hog is running before the run samples the load
        with tempfile.TemporaryDirectory() as out:
            cmd = [sys.executable, "-m", "sls_fast", "run", "--quick", "--out", out,
                   "--no-progress", "--quiet", "--json"]
            cmd += ["--threads", str(threads)] if threads else []
            t0 = time.perf_counter()
            done = subprocess.run(cmd, capture_output=True, text=True, check=True)
            wall = time.perf_counter() - t0
    finally:
        if hog is not None:
            hog.kill()
            hog.wait()
    return wall, json.loads(done.stdout)["device"]


@pytest.mark.parametrize("policy", ["before", "after"])
@pytest.mark.parametrize("busy", [False, True], ids=["quiet", "busy"])
def test_quick_run_beside_a_busy_core(benchmark, policy, busy):
    benchmark.group = "sls-fast run --quick, alone and beside one busy core"
    seen = {}

    def run():
        seen["wall"], seen["device"] = _run(busy, CORES if policy == "before" else None)

    benchmark.pedantic(run, rounds=1, iterations=1)
    RESULT[policy, busy] = seen["wall"]
    benchmark.extra_info.update(policy=policy, busy=busy, device=seen["device"],
                                cores=CORES, wall_s=seen["wall"])
    print(f"\n{policy} {'busy' if busy else 'quiet'}: {seen['wall']:.1f} s ({seen['device']})")
    if len(RESULT) == 4:
        for p in ("before", "after"):
            print(f"{p}: beside a busy core / alone = "
                  f"{RESULT[p, True] / RESULT[p, False]:.2f}x")
