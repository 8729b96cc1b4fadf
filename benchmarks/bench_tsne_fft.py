"""The batched FFT-interpolation t-SNE (forces="fft", kernels/tsne_fft.py) against openTSNE's
FFT t-SNE on the CPU, same data, same run: every layer at once vs openTSNE one layer at a time.

    pytest benchmarks/bench_tsne_fft.py --benchmark-only -q -s -k fft_tsne
    SLS_FAST_BENCH_BIG=1 pytest benchmarks/bench_tsne_fft.py --benchmark-only -q -s -k fft_tsne
        # also 12 x 20,000
    pytest benchmarks/bench_tsne_fft.py --benchmark-only -q -s -k native_vs_fft
        # ours exact (C++) against ours FFT, N = 1,000 .. 5,000 (BIG: also 8,000 and
        # 12,000): where "auto" switches

Data: L = 12 layers of N points x 50 dims, each a 10-cluster Gaussian mixture whose separation
grows with the layer (as in a network's depth). Both engines: perplexity 30, 250 early-
exaggeration + 500 iterations, openTSNE with all cores (n_jobs=-1). Each row's extra_info holds
the mean trustworthiness (10 neighbours) over the layers, computed on 2,000 sampled points.
"""
import os
import time

import numpy as np
import pytest
import torch

from utils import machine

BIG = os.environ.get("SLS_FAST_BENCH_BIG") == "1"
SIZES = [(12, 5000)] + ([(12, 20000)] if BIG else [])
RESULT = {}


def _layers(L, N, seed=0):
    gen = np.random.default_rng(seed)
    centres = gen.normal(size=(10, 50))
    labels = np.arange(N) % 10
    return np.stack([(centres[labels] * (0.5 + 0.4 * l) + gen.normal(size=(N, 50)))
                     for l in range(L)]).astype(np.float32)


def _trust(x, y, seed=0):
    from sklearn.manifold import trustworthiness

    idx = np.random.default_rng(seed).choice(len(x), min(2000, len(x)), replace=False)
    return float(trustworthiness(x[idx], y[idx], n_neighbors=10))


@pytest.mark.parametrize("engine", ["ours", "openTSNE"])
@pytest.mark.parametrize("L, N", SIZES)
def test_fft_tsne(benchmark, engine, L, N):
    benchmark.group = f"FFT t-SNE {L}x{N}x50, 750 iterations"
    x = _layers(L, N)
    out = {}

    def run():
        if engine == "ours":
            from sls_fast.kernels.tsne_optimize import tsne_batched

            out["y"] = tsne_batched(torch.from_numpy(x), perplexity=30, max_iter=750,
                                    forces="fft", seed=0).numpy()
        else:
            import openTSNE

            out["y"] = np.stack([np.asarray(openTSNE.TSNE(
                perplexity=30, n_iter=500, early_exaggeration_iter=250,
                negative_gradient_method="fft", random_state=0, n_jobs=-1).fit(layer))
                for layer in x])

    if engine == "openTSNE":
        pytest.importorskip("openTSNE")
    benchmark.pedantic(run, rounds=1, iterations=1)
    trust = [_trust(x[l], out["y"][l]) for l in range(L)]
    RESULT[engine, L, N] = benchmark.stats.stats.mean
    benchmark.extra_info.update(trustworthiness=float(np.mean(trust)), machine=machine(),
                                threads=torch.get_num_threads())
    print(f"\n{engine} {L}x{N}: {benchmark.stats.stats.mean:.1f} s, trustworthiness "
          f"{np.mean(trust):.4f} (layers {min(trust):.4f}-{max(trust):.4f})")
    if ("ours", L, N) in RESULT and ("openTSNE", L, N) in RESULT:
        print(f"openTSNE / ours = {RESULT['openTSNE', L, N] / RESULT['ours', L, N]:.2f}x")


CROSS = {}


@pytest.mark.parametrize("engine", ["native", "fft"])
@pytest.mark.parametrize("N", [1000, 2000, 3000, 5000] + ([8000, 12000] if BIG else []))
def test_native_vs_fft(benchmark, engine, N):
    """Where the FFT repulsion overtakes the exact C++ kernel on the CPU: 12 layers of N
    points, scikit-learn's full schedule (1,000 iterations), same data and affinities.

        pytest benchmarks/bench_tsne_fft.py --benchmark-only -q -s -k native_vs_fft
    """
    from sls_fast.kernels.tsne_optimize import tsne_batched

    benchmark.group = f"exact (native) vs FFT t-SNE, 12x{N}x50, 1,000 iterations"
    x = _layers(12, N)
    out = {}

    def run():
        out["y"] = tsne_batched(torch.from_numpy(x), perplexity=30, max_iter=1000,
                                forces=engine, seed=0).numpy()

    benchmark.pedantic(run, rounds=1, iterations=1)
    trust = float(np.mean([_trust(x[l], out["y"][l]) for l in range(12)]))
    CROSS[engine, N] = benchmark.stats.stats.mean
    benchmark.extra_info.update(trustworthiness=trust, machine=machine(),
                                threads=torch.get_num_threads())
    print(f"\n{engine} 12x{N}: {benchmark.stats.stats.mean:.1f} s, trustworthiness {trust:.4f}")
    if ("native", N) in CROSS and ("fft", N) in CROSS:
        print(f"native / fft = {CROSS['native', N] / CROSS['fft', N]:.2f}x")
