"""gpu_check section: batched clustering metrics on CUDA (Triton) against the torch reference,
then the L = 24, N = 50,000, K = 100, d = 2 silhouette timing with its flop count."""
import numpy as np
import torch

import sls_fast
from sls_fast.method.metrics import _prepare
from sls_fast.kernels.silhouette import silhouette_samples_torch, silhouette_samples_triton

SECTION = "metrics"
FLOPS_PER_PAIR = 6  # 2 sub, 2 mul, 1 add, 1 sqrt (+ the sum) for d = 2


def run(report, mode):
    from utils import cuda_time_ms

    dev = mode.device
    rng = np.random.default_rng(0)
    # --- correctness: every metric, triton vs the float64 torch reference
    cases = mode.pick([(3, 1001, 2, 10), (2, 777, 64, 7), (4, 2049, 2, 100)],
                      [(3, 1001, 2, 10), (2, 777, 64, 7), (4, 2049, 2, 100)],
                      [(2, 61, 2, 5), (2, 47, 8, 3), (2, 131, 2, 20)])
    for (L, N, d, K) in cases:
        y = rng.integers(0, K, size=N)
        X = rng.normal(size=(L, N, d)) + rng.normal(scale=3, size=(L, K, d))[:, y]
        x64 = torch.from_numpy(X).to(dev)
        ref = sls_fast.cluster_scores(x64, y, backend="torch")
        for dtype in (torch.float64, torch.float32):
            got = sls_fast.cluster_scores(x64.to(dtype), y, backend="triton")
            for m in ref:
                err = float(((got[m] - ref[m]).abs() / ref[m].abs().clamp_min(1e-12)).max())
                tol = 1e-8 if dtype == torch.float64 else 2e-4
                report(SECTION, f"{m} triton {str(dtype)[6:]} L{L} N{N} d{d} K{K}",
                       ok=err <= tol, max_err=err)
        p = _prepare(x64.float(), y)
        xt = p.x_sorted.transpose(1, 2).contiguous()
        seg = silhouette_samples_triton(xt, p.offsets, p.own, variant="segment")
        if K <= 128:
            one = silhouette_samples_triton(xt, p.offsets, p.own, variant="onehot")
            err = float((one - seg).abs().max())
            report(SECTION, f"silhouette onehot vs segment L{L} N{N} K{K}", ok=err <= 1e-4,
                   max_err=err)

    # --- timing: L = 24, N = 50,000, K = 100, d = 2
    L, N, K = mode.pick((24, 50_000, 100), (6, 10_000, 100), (2, 150, 10))
    y = rng.integers(0, K, size=N)
    X = torch.randn(L, N, 2, device=dev)
    p = _prepare(X, y)
    xt = p.x_sorted.transpose(1, 2).contiguous()
    pairs = L * N * N
    flops = FLOPS_PER_PAIR * pairs
    for variant in ("segment", "onehot"):
        ms = cuda_time_ms(lambda: silhouette_samples_triton(xt, p.offsets, p.own, variant=variant),
                          warmup=1, iters=3)
        report(SECTION, f"silhouette triton-{variant} L{L} N{N} K{K} d2", ms=ms,
               note=f"{flops / ms / 1e9:.1f} TFLOP/s at {FLOPS_PER_PAIR} flop/pair "
                    f"({pairs / ms / 1e9:.2f} Gpair/ms)")
    # the reference is slow (77 s at full size on an H100): both timed on a 10,000-point slice
    n_ref = min(N, 10_000)
    pr = _prepare(X[:, :n_ref].contiguous(), y[:n_ref])
    xr = pr.x_sorted.transpose(1, 2).contiguous()
    ms_ref = cuda_time_ms(lambda: silhouette_samples_torch(pr.x_sorted, pr.offsets, pr.own),
                          warmup=0, iters=1)
    ms_tri = cuda_time_ms(lambda: silhouette_samples_triton(xr, pr.offsets, pr.own),
                          warmup=1, iters=3)
    report(SECTION, f"silhouette torch-reference L{L} N{n_ref} K{K} d2", ms=ms_ref,
           note=f"triton-segment at this size {ms_tri:.2f} ms: {ms_ref / ms_tri:.0f}x faster")
    ms = cuda_time_ms(lambda: sls_fast.silhouette_score(X, y, backend="triton"), warmup=1, iters=3)
    report(SECTION, f"silhouette_score API (prep + triton) L{L} N{N}", ms=ms)
    ms = cuda_time_ms(lambda: sls_fast.cluster_scores(X, y, backend="triton"), warmup=1, iters=3)
    report(SECTION, f"cluster_scores all three, triton L{L} N{N}", ms=ms)
