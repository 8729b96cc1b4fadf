"""What the sweep's stage cache saves: a sweep over 3 alphas vs 3 separate runs, same run.

    pytest benchmarks/bench_sweep.py --benchmark-only -q -s
    pytest benchmarks/bench_sweep.py --benchmark-only -q -s -k node    # 2 nodes vs 1 node
    SLS_BENCH_SWEEP_FULL=1 pytest benchmarks/bench_sweep.py --benchmark-only -q -s   # default setting

The task is the embedded default (EfficientNet-Lite0, real ImageNet weights, digits), in the
``--quick`` setting unless SLS_BENCH_SWEEP_FULL=1 (then the default: 64 px, 10 + 4 epochs, all
training images scored, 1,000 t-SNE iterations, eager timing to keep compilation out).

* baseline: ``run_task`` three times, once per alpha, no cache (what three ``sls-fast run``
  commands cost, less their process start);
* sweep: ``run_sweep`` over the same three alphas on a local Ray instance (its start and stop
  included): the first cell adapts, extracts and runs t-SNE; the other two read those back and
  only retrain (when their depth differs), time and store.

Each row's ``extra_info`` holds the per-cell wall times and cache hits; the ratio is printed.
"""
import os
import shutil
import subprocess
import sys
import tempfile
import time

import pytest

from sls_fast.harness.pipeline import run_task
from sls_fast.harness.settings import TaskSettings
from sls_fast.harness.sweep import SweepSpec, run_sweep

ALPHAS = [0.2, 0.3, 0.5]
FULL = os.environ.get("SLS_BENCH_SWEEP_FULL") == "1"
SETTING = dict(compile=False, throughput_iters=10) if FULL else {}
RESULT = {}


def _settings(alpha):
    return (TaskSettings(alpha=alpha, **SETTING) if FULL else
            TaskSettings.quick(alpha=alpha, **SETTING))


def test_three_separate_runs(benchmark):
    benchmark.group = f"sweep cache, {'default' if FULL else 'quick'} setting"
    cells = []

    def run():
        for alpha in ALPHAS:
            with tempfile.TemporaryDirectory() as out:
                t0 = time.perf_counter()
                r = run_task(_settings(alpha), out, progress=False)
                cells.append(dict(alpha=alpha, depth=r.depth, wall_s=time.perf_counter() - t0))

    benchmark.pedantic(run, rounds=1, iterations=1)
    RESULT["separate"] = benchmark.stats.stats.mean
    benchmark.extra_info.update(cells=cells)
    print("\nseparate runs:", cells)


def test_sweep_over_alphas(benchmark):
    benchmark.group = f"sweep cache, {'default' if FULL else 'quick'} setting"
    summary = {}
    spec = SweepSpec(alphas=ALPHAS, quick=not FULL, **SETTING)

    def run():
        with tempfile.TemporaryDirectory() as out:
            summary.update(run_sweep(spec, out, progress=False, cpus_per_cell=2))

    benchmark.pedantic(run, rounds=1, iterations=1)
    rows = sorted(summary["rows"], key=lambda r: r["started"])
    cells = [dict(alpha=r["alpha"], depth=r["depth"], wall_s=r["wall_s"], cache=r["cache"])
             for r in rows]
    benchmark.extra_info.update(cells=cells)
    assert summary["ok"] == len(ALPHAS)
    print("\nsweep cells:", cells)
    if "separate" in RESULT:
        ratio = RESULT["separate"] / benchmark.stats.stats.mean
        benchmark.extra_info["separate_over_sweep"] = ratio
        print(f"3 separate runs {RESULT['separate']:.1f} s, sweep {benchmark.stats.stats.mean:.1f} "
              f"s (Ray start/stop included): {ratio:.2f}x less wall time")
    else:
        pytest.skip("run with test_three_separate_runs for the ratio")


# --------------------------------------------------------------------------- two nodes
# 6 quick cells (digits and lfw x 3 alphas: two adaptation groups) on a cluster of 2 nodes of
# 1 CPU each, the worker node unable to see --out (results travel through Ray), against a
# local instance of 2 CPUs. Both run on this machine's 2 cores: the same hardware, split in two
# nodes or not. Needs Linux, root and unshare (tests/integration/_ray_cluster.py).
TWO_NODE_DATA = ["digits", "lfw"]


CELLS = ["--quick", "--data", *TWO_NODE_DATA, "--alphas", *map(str, ALPHAS), "--no-progress"]


def test_one_node_of_two_cpus(benchmark):
    benchmark.group = "6 quick cells: one node of 2 CPUs vs two nodes of 1 CPU"

    def run():
        with tempfile.TemporaryDirectory() as out:
            subprocess.run([sys.executable, "-m", "sls_fast", "sweep", "--num-cpus", "2",
                            "--out", out, *CELLS], check=True, capture_output=True)

    benchmark.pedantic(run, rounds=1, iterations=1)
    RESULT["one node"] = benchmark.stats.stats.mean
    print(f"\none node of 2 CPUs: {RESULT['one node']:.1f} s")


def test_two_nodes_of_one_cpu(benchmark):
    benchmark.group = "6 quick cells: one node of 2 CPUs vs two nodes of 1 CPU"
    if not sys.platform.startswith("linux") or os.geteuid() != 0:
        pytest.skip("needs Linux and root (a node in its own mount namespace)")
    sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "tests", "integration"))
    from _ray_cluster import Cluster

    root = tempfile.mkdtemp()
    cluster = Cluster(root, os.path.join(root, "driver"))
    nodes = {}
    try:
        def run():
            out = os.path.join(root, "driver", f"out{len(nodes)}")
            done = cluster.sweep(out, *CELLS)
            _, err = done.communicate(timeout=1800)
            assert done.returncode == 0, err
            import sqlite3

            con = sqlite3.connect(os.path.join(out, "results.sqlite"))
            nodes[out] = con.execute("SELECT COUNT(DISTINCT node) FROM runs").fetchone()[0]
            con.close()

        benchmark.pedantic(run, rounds=1, iterations=1)
    finally:
        cluster.stop()
        shutil.rmtree(root, ignore_errors=True)
    wall = benchmark.stats.stats.mean
    benchmark.extra_info.update(nodes_used=list(nodes.values()))
    print(f"\ntwo nodes of 1 CPU: {wall:.1f} s, cells on {list(nodes.values())} nodes")
    if "one node" in RESULT:
        print(f"one node / two nodes = {RESULT['one node'] / wall:.2f}x")
