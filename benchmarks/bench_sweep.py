"""What the sweep's stage cache saves: a sweep over 3 alphas vs 3 separate runs, same run.

    pytest benchmarks/bench_sweep.py --benchmark-only -q -s
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
