"""gpu_check section: the batched FFT-interpolation t-SNE (forces="fft",
sls_fast.kernels.tsne_fft) on CUDA.

1. The FFT repulsion against its exact float64 reference on the device, at openTSNE's
   resolution and at a fine one (rep and Z relative errors).
2. Timings against the goals of issue 23 (H100/H200): 12 x 50,000 x 768, 1,000 iterations,
   <= 10 s; 24 layers x 20,000 <= 8 s; and 12 x 10,000 for the comparison with the exact Triton
   kernel (section ``gpu_tsne``). Each with the mean trustworthiness over a 2,000-point sample.
"""
from __future__ import annotations

import time

from utils import mean_trustworthiness, synchronize, vit_like_features

SECTION = "tsne_fft"


def _rel(a, b):
    return float((a.double() - b.double()).norm() / b.double().norm())


def run(report, mode):
    import torch

    from sls_fast.kernels.tsne_fft import repulsion_exact, repulsion_fft
    from sls_fast.kernels.tsne_optimize import tsne_batched

    dev = mode.device
    gen = torch.Generator(device="cpu").manual_seed(3)
    for n, scale in mode.pick(((3001, 15.0), (777, 3.0)), ((3001, 15.0),), ((211, 4.0),)):
        y = (torch.randn(3, n, 2, generator=gen, dtype=torch.float64) * scale).to(dev)
        rep, z = repulsion_exact(y)
        for label, kw, tol in (("coarse (openTSNE's)", {}, (0.1, 0.02)),
                               ("fine (5 nodes, 2 per unit)", dict(nodes=5, boxes_per_unit=2.0),
                                (2e-3, 2e-4))):
            got_rep, got_z = repulsion_fft(y.float(), **kw)
            e_rep, e_z = _rel(got_rep, rep), float(((got_z.double() - z) / z).abs().max())
            report(SECTION, f"FFT repulsion vs exact, 3x{n}, {label}",
                   ok=e_rep < tol[0] and e_z < tol[1], max_err=e_rep,
                   note=f"Z rel err {e_z:.1e}")
    cases = mode.pick([(12, 10000, 1000, None), (24, 20000, 1000, 8000.0),
                       (12, 50000, 1000, 10000.0)],
                      [(12, 10000, 300, None)], [(2, 300, 30, None)])
    for layers, n, max_iter, goal in cases:
        x, _ = vit_like_features(n, layers=layers, dim=mode.pick(768, 768, 32), classes=10,
                                 seed=n)
        x = x.to(dev)
        synchronize()
        t0 = time.time()
        emb = tsne_batched(x, max_iter=max_iter, forces="fft")
        synchronize()
        ms = (time.time() - t0) * 1e3
        idx = torch.randperm(n, generator=gen)[:2000].to(x.device)
        trust = mean_trustworthiness(x[:, idx], emb[:, idx])
        met = "" if goal is None or mode.quick else (
            f" (goal <= {goal / 1e3:g} s: " + ("met)" if ms <= goal else "MISSED)"))
        report(SECTION, f"FFT t-SNE {layers}x{n}, {max_iter} it", ms=ms,
               ok=bool(torch.isfinite(emb).all()), note=f"trust {trust:.4f}{met}")
