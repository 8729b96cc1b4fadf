"""Ctrl-C of a sweep at random moments: every run must stop cleanly and the sweep must resume.

A tiny sweep (timm's test_vit at 32 px, the test suite's settings; digits and lfw x 3 alphas =
6 cells, 2 CPUs, one cell at a time with a second one queued in Ray) is started with
``sls-fast sweep`` in a fresh process and interrupted with SIGINT at a moment drawn from one of
four phases of a cell's life:

* ``startup``: a uniform delay after launch, mostly while Ray starts or the first cells queue;
* ``running``: a uniform delay after a cell's running marker appears (the cell is computing,
  the next one waits in Ray's queue);
* ``finishing``: the instant a cell's final folder appears (its worker has renamed it and is
  returning; the driver has not recorded the row yet). Polled every 2 ms;
* ``recorded``: the instant the driver has recorded a cell's row (the next cell is being
  submitted or has just started: the moment of the CI test, where a force-cancel met a
  completion in flight). Polled every 5 ms.

The signal goes either to the driver alone or to its whole process group (as a terminal's
Ctrl-C does, reaching Ray's processes too), drawn at random.

Every interrupted run must: exit 130; end with the CLI's one-line "interrupted" message (or,
during the first imports, the entry's "sls-fast: interrupted") and print no
traceback, no Ray check failure and no crash; leave no temporary folder, running marker or
cell folder without a database row; keep every row recorded before, unchanged; and leave no
Ray process behind (checked for up to 10 s after the exit; the time is reported). The next
run is the resume of the same folder (so 50 runs resume 49 times); when a run finishes the
sweep before it is interrupted, its folder is checked for 6 rows and a new folder starts.
At the end one uninterrupted run completes the last folder: every cell exactly once, all ok.

    python benchmarks/bench_sweep_interrupt.py                 # 50 runs (~10-20 min on 2 cores)
    python benchmarks/bench_sweep_interrupt.py --phases recorded --runs 30
    python benchmarks/bench_sweep_interrupt.py --runs 5 --json out.json
    pytest benchmarks/bench_sweep_interrupt.py --benchmark-only   # 4 runs, one per phase

Run it from anywhere after ``pip install``; the sweeps run in a temporary folder (outside the
checkout, so Ray's workers import the installed package). It needs Ray and no other Ray
instance on the machine (it counts Ray's processes by name). Results: ``benchmarks/RESULTS.md``.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time

from utils import machine

CELLS = 6
PHASES = ("startup", "running", "finishing", "recorded")
SWEEP = ["--quick", "--models", "test_vit", "--image-size", "32", "--tsne-iter", "250",
         "--score-points", "200", "--no-progress", "--num-cpus", "2", "--cpus-per-cell", "2",
         "--data", "digits", "lfw", "--alphas", "0.3", "0.5", "0.9"]
RAY_PROCESS_NAMES = ("raylet", "gcs_server", "ray::", "default_worker", "ray/_private",
                     "dashboard", "log_monitor", "monitor.py")
CRASH_SIGNS = ("Traceback", "Check failed", "An unexpected system state", "SIGABRT",
               "Aborted", "core dumped", "Fatal Python error", "Segmentation fault",
               "internal error")


def ray_processes() -> list:
    """Command lines of Ray's processes on this machine (raylet, GCS, workers, ...)."""
    import psutil

    found = []
    for p in psutil.process_iter(["cmdline", "name"]):
        try:
            line = " ".join(p.info["cmdline"] or [p.info["name"] or ""])
        except (psutil.Error, TypeError):
            continue
        if any(n in line for n in RAY_PROCESS_NAMES) and "bench_sweep_interrupt" not in line:
            found.append(f"{p.pid}: {line[:120]}")
    return found


def db_rows(out: str) -> dict:
    path = os.path.join(out, "results.sqlite")
    if not os.path.exists(path):
        return {}
    con = sqlite3.connect(path, timeout=10)
    try:
        dup = con.execute("SELECT key FROM runs GROUP BY key HAVING COUNT(*) > 1").fetchall()
        if dup:
            raise AssertionError(f"duplicate keys in the database: {dup}")
        return {k: (s, f) for k, s, f in con.execute("SELECT key, status, finished FROM runs")}
    finally:
        con.close()


def leftovers(out: str, rows: dict) -> list:
    """Temporary folders, running markers and cell folders that have no database row."""
    cells = os.path.join(out, "cells")
    running = os.path.join(out, "running")
    names = os.listdir(cells) if os.path.isdir(cells) else []
    bad = [n for n in names if ".tmp-" in n or ".old-" in n or n not in rows]
    return bad + (os.listdir(running) if os.path.isdir(running) else [])


def default_sigint() -> None:
    """In the child: SIGINT as a terminal's process has it. A shell's background job (``&``,
    ``nohup``) starts with SIGINT ignored, and Python then installs no KeyboardInterrupt."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def wait_for(cond, driver, limit_s: float, step: float):
    """Poll ``cond()`` until it is true (returns True) or the driver exits / time runs out."""
    end = time.monotonic() + limit_s
    while time.monotonic() < end:
        if driver.poll() is not None:
            return False
        if cond():
            return True
        time.sleep(step)
    return False


def one_run(out: str, phase: str, target: str, rng: random.Random) -> dict:
    before = db_rows(out)
    cells = os.path.join(out, "cells")
    folders_before = set(os.listdir(cells)) if os.path.isdir(cells) else set()
    cmd = [sys.executable, "-m", "sls_fast", "sweep", "--out", out, *SWEEP]
    t0 = time.monotonic()
    driver = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                              cwd=os.path.dirname(out), start_new_session=True,
                              preexec_fn=default_sigint)
    if phase == "startup":
        delay = rng.uniform(0.0, 6.0)
        reached = not wait_for(lambda: False, driver, delay, 0.01) and driver.poll() is None
    elif phase == "running":
        running = os.path.join(out, "running")
        reached = wait_for(lambda: os.path.isdir(running) and os.listdir(running), driver,
                           120, 0.01)
        if reached:
            reached = not wait_for(lambda: False, driver, rng.uniform(0.0, 2.0), 0.01)
    elif phase == "recorded":  # the driver wrote a new row
        def new_row():
            try:
                return len(db_rows(out)) > len(before)
            except sqlite3.Error:  # the file being created or locked: poll again
                return False
        reached = wait_for(new_row, driver, 120, 0.005)
    else:  # finishing: a new final cell folder (the worker renamed it and is returning)
        def new_final():
            names = set(os.listdir(cells)) if os.path.isdir(cells) else set()
            return any(".tmp-" not in n and ".old-" not in n for n in names - folders_before)
        reached = wait_for(new_final, driver, 120, 0.002)
    signalled = driver.poll() is None
    at = time.monotonic() - t0
    if signalled:
        (os.killpg if target == "group" else os.kill)(driver.pid, signal.SIGINT)
    try:
        stdout, stderr = driver.communicate(timeout=120)
    except subprocess.TimeoutExpired:
        os.killpg(driver.pid, signal.SIGKILL)
        stdout, stderr = driver.communicate()
        return dict(phase=phase, target=target, signalled=signalled, ok=False,
                    problems=["hung for 120 s after the signal"], stderr_tail=stderr[-2000:])
    stop_s = time.monotonic() - t0 - at
    problems = []
    # Ray's processes gone: poll up to 10 s after the exit
    t_exit, left = time.monotonic(), ray_processes()
    while left and time.monotonic() - t_exit < 10:
        time.sleep(0.1)
        left = ray_processes()
    ray_gone_s = time.monotonic() - t_exit
    if left:
        problems.append(f"Ray processes left: {left[:3]}")
        for line in left:  # do not let one failure poison the next runs
            try:
                os.kill(int(line.split(":")[0]), signal.SIGKILL)
            except OSError:
                pass
    rows = db_rows(out)
    for key, value in before.items():
        if rows.get(key) != value:
            problems.append(f"row {key} changed or vanished: {value} -> {rows.get(key)}")
    bad = leftovers(out, rows)
    if bad:
        problems.append(f"left in the folder: {bad}")
    crash = [s for s in CRASH_SIGNS if s in stderr]
    if crash:
        problems.append(f"stderr shows {crash}")
    if signalled:
        if driver.returncode != 130:
            problems.append(f"exit {driver.returncode}, not 130")
        last = stderr.strip().splitlines()[-1] if stderr.strip() else ""
        if not last.startswith(("sls-fast sweep: interrupted", "sls-fast: interrupted")):
            problems.append(f"last stderr line: {last!r}")
    elif driver.returncode != 0:
        problems.append(f"finished without the signal but exit {driver.returncode}")
    return dict(phase=phase, target=target, signalled=signalled, reached=reached,
                signal_at_s=round(at, 3), exit=driver.returncode, stop_s=round(stop_s, 2),
                ray_gone_s=round(ray_gone_s, 2), rows_before=len(before), rows_after=len(rows),
                ok=not problems, problems=problems,
                stderr_tail=stderr[-2000:] if problems else "")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=50, help="interrupted runs to make (default 50)")
    ap.add_argument("--seed", type=int, default=0, help="seed of the moments and targets")
    ap.add_argument("--json", default=None, help="write every run's record here")
    ap.add_argument("--phases", nargs="+", default=list(PHASES), choices=PHASES,
                    help="the phases to draw from (default: all four)")
    args = ap.parse_args(argv)
    if ray_processes():
        print("Ray processes are running on this machine; stop them first:\n  "
              + "\n  ".join(ray_processes()[:5]), file=sys.stderr)
        return 2
    rng = random.Random(args.seed)
    records, folders = [], 0
    t_start = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="sls-stress-") as root:
        out = os.path.join(root, f"sweep{folders}")
        while sum(r["signalled"] for r in records) < args.runs:
            phase = rng.choice(args.phases)
            target = rng.choice(["driver", "group"])
            rec = one_run(out, phase, target, rng)
            rec["folder"] = folders
            records.append(rec)
            n = sum(r["signalled"] for r in records)
            print(f"[{n:2d}/{args.runs}] {phase:9s} -> {target:6s} "
                  f"{'signal at %.2f s' % rec['signal_at_s'] if rec['signalled'] else 'finished first'}"
                  f"  exit {rec['exit']}  rows {rec['rows_before']}->{rec['rows_after']}"
                  f"  stop {rec['stop_s']} s  ray gone {rec['ray_gone_s']} s"
                  + ("" if rec["ok"] else f"  FAILED: {rec['problems']}"), flush=True)
            if not rec["ok"]:
                print(rec["stderr_tail"], flush=True)
            if rec["rows_after"] == CELLS:
                folders += 1
                out = os.path.join(root, f"sweep{folders}")
        cmd = [sys.executable, "-m", "sls_fast", "sweep", "--out", out, *SWEEP]
        done = subprocess.run(cmd, capture_output=True, text=True, cwd=root)
        rows = db_rows(out)
        final = dict(exit=done.returncode, rows=len(rows),
                     all_ok=all(s == "ok" for s, _ in rows.values()),
                     leftovers=leftovers(out, rows))
    interrupted = [r for r in records if r["signalled"]]
    passed = sum(r["ok"] for r in interrupted)
    by_phase = {p: f"{sum(r['ok'] for r in interrupted if r['phase'] == p)}/"
                   f"{sum(r['phase'] == p for r in interrupted)}"
                for p in PHASES}
    final_ok = final["exit"] == 0 and final["rows"] == CELLS and final["all_ok"] \
        and not final["leftovers"]
    summary = dict(runs=len(interrupted), passed=passed, by_phase=by_phase,
                   finished_unsignalled=len(records) - len(interrupted),
                   failed_unsignalled=sum(not r["ok"] for r in records if not r["signalled"]),
                   final_resume=final, final_ok=final_ok,
                   median_stop_s=sorted(r["stop_s"] for r in interrupted)[len(interrupted) // 2],
                   max_stop_s=max(r["stop_s"] for r in interrupted),
                   max_ray_gone_s=max(r["ray_gone_s"] for r in interrupted),
                   wall_s=round(time.monotonic() - t_start, 1),
                   machine=machine())
    print(json.dumps(summary, indent=1))
    if args.json:
        tmp = args.json + ".tmp"
        with open(tmp, "w") as f:
            json.dump(dict(summary=summary, runs=records), f, indent=1)
        os.replace(tmp, args.json)
    return 0 if passed == len(interrupted) and final_ok and not summary["failed_unsignalled"] else 1


def test_interrupt_once_per_phase(benchmark, tmp_path):
    """The benchmark runner's entry: one interrupted run in each phase, then the resume."""
    benchmark.group = "Ctrl-C of a sweep: 4 interrupted runs"
    out = str(tmp_path / "runs.json")
    code = benchmark.pedantic(main, args=(["--runs", "4", "--seed", "1", "--json", out],),
                              rounds=1, iterations=1)
    with open(out) as f:
        benchmark.extra_info.update(json.load(f)["summary"])
    assert code == 0


if __name__ == "__main__":
    sys.exit(main())
