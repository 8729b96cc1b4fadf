"""t-SNE starts: each layer's principal components (batched randomized PCA) and the perturbed
starts that tell the repeats of a layer apart. Part of :mod:`sls_fast.kernels.tsne`."""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

__all__ = ["PCA_DIMS", "REPEAT_JITTER", "pca_project", "initial_embedding", "repeat_starts",
           "reduce_layers"]

PCA_DIMS = 50


def _flip_signs(proj: torch.Tensor, vh: torch.Tensor) -> torch.Tensor:
    """Deterministic component signs: the loading of largest magnitude is positive."""
    idx = vh.abs().argmax(dim=-1, keepdim=True)  # [L, k, 1]
    sign = torch.sign(vh.gather(-1, idx)).squeeze(-1)  # [L, k]
    sign = torch.where(sign == 0, torch.ones_like(sign), sign)
    return proj * sign[:, None, :]


def pca_project(x: torch.Tensor, k: int, seed: int = 0, *, power_iter: int = 4,
                oversample: int = 10) -> torch.Tensor:
    """Centre every layer and project it on its ``k`` leading principal components.

    Args:
        x: ``[L, N, D]`` float tensor (any device).
        k: number of components kept (``min(k, D, N)`` are returned).
        seed: seed of the randomized range finder (used when ``D > k``); the same Gaussian
            test matrix is drawn for every layer, so a layer gives the same result alone or in
            a batch.

    Returns:
        float32 ``[L, N, min(k, D, N)]`` scores, components ordered by decreasing variance,
        signs fixed so that each component's largest loading is positive.

    Example:
        >>> pca_project(torch.randn(3, 100, 768), 50).shape
        torch.Size([3, 100, 50])
    """
    L, N, D = x.shape
    x = x.to(torch.float32)
    x = x - x.mean(dim=1, keepdim=True)
    k = min(k, D, N)
    if D <= k + oversample or N <= k + oversample:
        if N < D:  # few points: the SVD of the (small) data itself, on the CPU
            _, _, vh = torch.linalg.svd(x.detach().cpu().double(), full_matrices=False)
            vh = vh[:, :k].to(device=x.device, dtype=torch.float32)
        else:  # the D x D covariance (D <= k + oversample), its eigenvectors on the CPU
            cov = (x.transpose(1, 2).double() @ x.double()).cpu()
            _, evecs = torch.linalg.eigh(cov)  # ascending eigenvalues
            vh = evecs.flip(-1)[:, :, :k].transpose(1, 2).to(device=x.device, dtype=torch.float32)
        proj = x @ vh.transpose(1, 2)
        return _flip_signs(proj, vh)
    q = min(k + oversample, D, N)
    gen = torch.Generator(device="cpu").manual_seed(int(seed))
    g = torch.randn(D, q, generator=gen, dtype=torch.float32).to(x.device)
    xt = x.transpose(1, 2)
    basis, _ = torch.linalg.qr(torch.bmm(x, g.expand(L, D, q)))  # [L, N, q], batch-independent
    for _ in range(power_iter):
        basis, _ = torch.linalg.qr(xt @ basis)  # [L, D, q]
        basis, _ = torch.linalg.qr(x @ basis)  # [L, N, q]
    b = basis.transpose(1, 2) @ x  # [L, q, D]
    # the small q x D factorisation runs on the CPU in float64 (cheap; batched GPU SVDs are not)
    ub, s, vh = torch.linalg.svd(b.detach().cpu().double(), full_matrices=False)
    ub = ub[:, :, :k].to(device=x.device, dtype=torch.float32)
    s = s[:, :k].to(device=x.device, dtype=torch.float32)
    vh = vh[:, :k].to(device=x.device, dtype=torch.float32)
    proj = basis @ (ub * s[:, None, :])  # [L, N, k]
    return _flip_signs(proj, vh)


def initial_embedding(reduced: torch.Tensor, init: str, seed: int) -> torch.Tensor:
    """``[L, N, 2]`` float32 start: the first two principal components scaled so that the
    first has standard deviation 1e-4 (``init="pca"``), or N(0, 1e-4^2) draws (``"random"``,
    one seeded draw shared by all layers)."""
    L, N, _ = reduced.shape
    if init == "pca":
        y = reduced[:, :, :2].to(torch.float32)
        if y.shape[2] < 2:  # a 1-D layer: pad the second axis with zeros
            y = torch.cat([y, torch.zeros_like(y)], dim=2)
        std = y[:, :, 0].std(dim=1, unbiased=False).clamp_min(1e-12)
        return (y / std[:, None, None] * 1e-4).contiguous()
    if init == "random":
        gen = torch.Generator(device="cpu").manual_seed(int(seed))
        y = 1e-4 * torch.randn(N, 2, generator=gen, dtype=torch.float32)
        return y.to(reduced.device).expand(L, N, 2).contiguous()
    raise ValueError(f"unknown init {init!r}; use 'pca' or 'random'")


# Relative size of the perturbation that tells the repeats of a layer apart (see repeat_starts).
REPEAT_JITTER = 1e-2


def repeat_starts(y0: torch.Tensor, repeats: int, seed: int, jitter: float = REPEAT_JITTER
                  ) -> torch.Tensor:
    """Starts of ``repeats`` runs of every layer: float32 ``[repeats x L, N, 2]``, run-major
    (problem ``s * L + l`` is run s of layer l).

    Run 0 is ``y0`` itself (so run 0 equals a single run with the same seed); run s >= 1 is
    ``y0`` plus Gaussian noise of standard deviation ``jitter`` x the layer's start scale
    (the standard deviation of its first axis: 1e-4 for both inits), drawn on the CPU from a
    generator seeded by ``(seed, s)`` (the same bits on every device).

    Why a perturbed start: t-SNE is chaotic, and what makes two runs of the authors' pipeline
    differ is the accumulated rounding of a different row order (or BLAS, thread count, CPU).
    A start perturbed far below the embedding's resolution samples that same chaos, while the
    runs keep the affinities (computed once per layer, shared) and the PCA start. The seed
    alone would not do: with ``init="pca"`` it only reaches the randomized range finder of
    :func:`pca_project`, whose result moves in the last bits between seeds, and not at all for
    layers of width <= 12 (exact eigendecomposition). Measured on EfficientNet-Lite0 / 240
    digits (benchmarks/RESULTS.md): the per-layer spread of the silhouette over 8 runs is the
    same with jitter 1e-2 or 1e-4, with 8 seeds, with 8 row orders, and as the authors'
    pipeline over 8 row orders.
    """
    if isinstance(repeats, bool) or not isinstance(repeats, int) or repeats < 1:
        raise ValueError(f"repeats must be a positive integer, got {repeats!r}")
    L, N, _ = y0.shape
    scale = y0[:, :, 0].std(dim=1, unbiased=False).clamp_min(1e-12).cpu()  # [L]
    runs = [y0.to(torch.float32)]
    for s in range(1, repeats):
        state = np.random.SeedSequence([int(seed), s]).generate_state(1)[0]
        gen = torch.Generator(device="cpu").manual_seed(int(state))
        noise = torch.randn((L, N, 2), generator=gen, dtype=torch.float32)
        noise *= (jitter * scale)[:, None, None]
        runs.append(y0.to(torch.float32) + noise.to(y0.device))
    return torch.cat(runs).contiguous()



def reduce_layers(layers: Sequence[torch.Tensor], seed: int, k: int = PCA_DIMS) -> torch.Tensor:
    """PCA of every layer to at most ``k`` dims (equal widths batched), zero-padded stack."""
    L = len(layers)
    N = layers[0].shape[0]
    groups = {}
    for i, x in enumerate(layers):
        groups.setdefault(int(x.shape[1]), []).append(i)
    out = [None] * L
    for D, idx in groups.items():
        xs = torch.stack([layers[i].to(torch.float32) for i in idx])
        red = pca_project(xs, k, seed)
        for r, i in zip(red, idx):
            out[i] = r
    width = max(r.shape[1] for r in out)
    stacked = torch.zeros((L, N, width), dtype=torch.float32, device=layers[0].device)
    for i, r in enumerate(out):
        stacked[i, :, : r.shape[1]] = r
    return stacked


