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
    criteria(report, mode)


def criteria(report, mode):
    """The layer-importance criteria (sls_fast.method.criteria) on the device against the same
    features on the CPU, then their times at 12 x 10,000 x 768 against the t-SNE criterion."""
    import time

    from sls_fast.method.criteria import CRITERIA, criterion_curve, criterion_depth

    rng = np.random.default_rng(1)
    L, N, D, C = mode.pick((4, 1001, 96, 10), (4, 1001, 96, 10), (3, 97, 8, 3))
    y = np.arange(N) % C
    X = (rng.normal(size=(L, N, D)) + np.linspace(0.2, 2, L)[:, None, None]
         * rng.normal(size=(C, D))[y]).astype(np.float32)
    for name in (c for c in CRITERIA if c != "sls"):
        cpu = criterion_curve(name, X, y)
        dev = criterion_curve(name, torch.from_numpy(X).to(mode.device),
                              torch.from_numpy(y).to(mode.device))
        both = np.isfinite(cpu)
        err = float(np.abs(cpu[both] - dev[both]).max()) if both.any() else 0.0
        tol = 0.02 if name in ("knn", "linear-probe") else 1e-4  # accuracies: a few points' votes
        same = criterion_depth(name, cpu) == criterion_depth(name, dev)
        report(SECTION, f"criterion {name} on {mode.device} vs CPU, L{L} N{N} D{D}",
               ok=err <= tol and bool((np.isfinite(cpu) == np.isfinite(dev)).all()),
               max_err=err, note="same depth" if same else "depth differs")
    if mode.dry:
        return
    from sls_fast.method.extract import LayerFeatures

    n = mode.pick(10_000, 3_000, 0)
    y = np.arange(n) % 10
    Xb = torch.from_numpy((rng.normal(size=(12, n, 768)) + 0.5 * rng.normal(size=(10, 768))[y])
                          .astype(np.float32)).to(mode.device)
    yb = torch.from_numpy(y).to(mode.device)
    for name in [c for c in CRITERIA if c != "sls"] + ["sls"]:
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        if name == "sls":
            sls_fast.score_features(LayerFeatures(Xb, yb, [str(i) for i in range(12)], [768] * 12),
                                    progress=False)
        else:
            criterion_curve(name, Xb, yb)
        torch.cuda.synchronize()
        report(SECTION, f"criterion {name} 12x{n}x768", ms=(time.perf_counter() - t0) * 1e3)
