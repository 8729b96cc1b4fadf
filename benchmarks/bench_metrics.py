"""Batched clustering metrics on the CPU: scikit-learn looped over layers (the reference's way)
vs our torch reference vs our native C++ kernels, same run.

    pytest benchmarks/bench_metrics.py --benchmark-only --benchmark-json=out.json
    python benchmarks/ratios.py out.json        # speed-ups against the baseline of each group

Groups: ``silhouette L=12 N=... K=...``; baseline ``sklearn-loop``. On a CUDA machine the
groups also time ``torch-cuda`` (the reference on the GPU) and ``triton``. A separate test measures the
peak resident-memory growth of the native silhouette at N = 40,000 in a fresh process.
"""
import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from sklearn.metrics import silhouette_score as sk_silhouette

import sls_fast

L = 12
SIZES = [(1_000, 10), (1_000, 100), (10_000, 10), (10_000, 100)]


def make(N, K, d=2, seed=0):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, K, size=N)
    centres = rng.normal(scale=3, size=(L, K, d))
    X = (centres[:, y] + rng.normal(size=(L, N, d))).astype(np.float32)
    return X, y


def rounds_for(N):
    return 1 if N >= 10_000 else 3


CUDA = torch.cuda.is_available()
METHODS = ["sklearn-loop", "torch", "native"] + (["torch-cuda", "triton"] if CUDA else [])


@pytest.mark.parametrize("N,K", SIZES, ids=[f"N{n}-K{k}" for n, k in SIZES])
@pytest.mark.parametrize("method", METHODS)
def test_silhouette(benchmark, method, N, K):
    X, y = make(N, K)
    benchmark.group = f"silhouette L={L} N={N} K={K} d=2 float32"
    benchmark.extra_info.update(method=method, L=L, N=N, K=K, d=2)
    if method == "sklearn-loop":
        fn = lambda: np.array([sk_silhouette(X[l], y) for l in range(L)])  # noqa: E731
    elif method in ("torch-cuda", "triton"):
        Xc = torch.from_numpy(X).cuda()
        backend = "torch" if method == "torch-cuda" else "triton"

        def fn():
            out = sls_fast.silhouette_score(Xc, y, backend=backend)
            torch.cuda.synchronize()
            return out.cpu().numpy()
        fn()  # warm-up: Triton compilation
    else:
        fn = lambda: sls_fast.silhouette_score(X, y, backend=method)  # noqa: E731
    result = benchmark.pedantic(fn, rounds=rounds_for(N), iterations=1, warmup_rounds=0)
    assert result.shape == (L,) and np.isfinite(result).all()


@pytest.mark.parametrize("method", ["sklearn-loop", "torch", "native"])
def test_all_metrics_one_pass(benchmark, method):
    """Silhouette + Calinski-Harabasz + Davies-Bouldin of 12 layers, N = 1,000, K = 10."""
    from sklearn.metrics import calinski_harabasz_score, davies_bouldin_score

    X, y = make(1_000, 10)
    benchmark.group = "all three metrics L=12 N=1000 K=10"
    benchmark.extra_info.update(method=method)
    if method == "sklearn-loop":
        def fn():
            return [(sk_silhouette(X[l], y), calinski_harabasz_score(X[l], y),
                     davies_bouldin_score(X[l], y)) for l in range(L)]
    else:
        def fn():
            return sls_fast.cluster_scores(X, y, backend=method)
    benchmark.pedantic(fn, rounds=3, iterations=1, warmup_rounds=1)


_MEMORY_PROBE = r"""
import json, sys
import numpy as np
import sls_fast

def status(key):  # kB values of /proc/self/status
    for line in open("/proc/self/status"):
        if line.startswith(key + ":"):
            return int(line.split()[1]) * 1024

L, N, K = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
rng = np.random.default_rng(0)
y = rng.integers(0, K, size=N)
X = rng.normal(size=(L, N, 2)).astype(np.float32)
sls_fast.silhouette_score(X[:, :100], y[:100], backend="native")  # load everything once
before = status("VmRSS")
with open("/proc/self/clear_refs", "w") as f:  # reset the peak (VmHWM) to the current RSS
    f.write("5")
s = sls_fast.silhouette_score(X, y, backend="native")
peak = status("VmHWM")
print(json.dumps(dict(rss_before=before, peak=peak, growth=peak - before, input_bytes=X.nbytes)))
"""


def test_native_memory_n40000(benchmark):
    """Peak RSS growth of the native silhouette, L = 12, N = 40,000 (no N x N matrix: an N x N
    float32 matrix alone would be 6.4 GB)."""
    benchmark.group = "memory"

    def run():
        out = subprocess.run([sys.executable, "-c", _MEMORY_PROBE, "12", "40000", "10"],
                             check=True, capture_output=True, text=True)
        return json.loads(out.stdout.strip().splitlines()[-1])

    info = benchmark.pedantic(run, rounds=1, iterations=1)
    benchmark.extra_info.update(info)
    print(f"\nnative silhouette L=12 N=40000: peak RSS growth {info['growth'] / 2**20:.1f} MiB")
    assert info["growth"] < 2**30
