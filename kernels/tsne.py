"""Batched exact t-SNE of every layer at once: affinities, forces, optimiser.

Everything works on a stack of L independent problems (one per layer) of the same N points.
Repeats: S runs of every layer are S x L problems (run-major) over the L layers' affinities;
the force kernels read the affinities of problem l at layer ``l % L`` (computed once, never
copied), and the runs differ by their start (:func:`repeat_starts`).

1. **Initialisation** (:func:`pca_project`, :func:`initial_embedding`): each layer's first two
   principal components (seeded randomized range finder with 4 power iterations when D > 12,
   exact otherwise; the small factorisations run on the CPU in float64), scaled so that the
   first has standard deviation 1e-4, as scikit-learn's ``init="pca"``.
2. **Affinities** (:func:`joint_probabilities`): squared Euclidean distances (float64) of the
   full features, as scikit-learn computes them, then a per-point bisection on the Gaussian
   precision beta = 1 / (2 sigma^2) until the conditional distribution's perplexity matches
   (scikit-learn's search: start at beta = 1, double
   or halve until bracketed, then bisect; 100 steps at most, entropy tolerance 1e-5), all layers
   and points at once. The conditional P is symmetrised and normalised per layer.

   Not PCA-50 by default: the common practice of computing P on 50 principal components
   (``tsne_batched(..., pca_dims=50)``) was measured to hurt on the ViT-like benchmark set
   (12 x 1,000 x 768, noise-dominated early layers): layer 2's trustworthiness fell from 0.81
   (full features, close to scikit-learn) to 0.67, the early-exaggeration phase collapsing the
   embedding; full-width distances are one batched matrix product, cheap on a GPU.

   * **dense** (N <= :data:`DENSE_P_MAX_N`): the exact method, every pair j != i is a candidate
     neighbour, P is a float32 ``[L, N, N]`` buffer (the kernel streams it tile by tile).
   * **sparse** (larger N, or on request): only the k = min(N - 1, floor(3 * perplexity))
     nearest neighbours, as scikit-learn's Barnes-Hut and openTSNE do. The symmetrised P is
     kept as padded neighbour lists ``nbr, pval`` of shape ``[L, M, N]`` (M = the largest row
     count, at most 2k; padding has p = 0), "layer, slot, point" order for coalesced loads.

   Dense bound: 2,048 points. Below it the dense P costs at most L * 16 MiB (200 MiB for 12
   layers) and equals scikit-learn's exact method; above it the dense P grows as N^2
   (4.8 GB at 12 x 10,000), every iteration would stream it, and its bisection costs L * N^2
   exponentials per step, while the 3 * perplexity neighbour lists cost L * N * <= 180 entries
   whatever N, and keep the embedding quality (it is what scikit-learn's default method uses).
3. **Forces** (exact, no Barnes-Hut): with w_ij = 1 / (1 + |y_i - y_j|^2),
   Z = sum_{i != j} w_ij, the gradient is
   ``grad_i = 4 * (exaggeration * sum_j p_ij w_ij (y_i - y_j) - sum_j w_ij^2 (y_i - y_j) / Z)``.
   :func:`tsne_forces_torch` is the reference (any device, rows in chunks);
   :func:`tsne_forces_triton` computes the same per block of points i, walking all j tile by
   tile, so the N x N matrix of w is never stored: one launch covers all layers (grid
   ``(L, cdiv(N, BLOCK_I))``), Z comes back as per-block partial sums (deterministic).
4. **Optimiser** (:func:`tsne_optimize`): scikit-learn's schedule: early exaggeration 12 with
   momentum 0.5 for 250 iterations, then (update and gains reset) momentum 0.8 up to
   ``max_iter``; delta-bar-delta gains (+0.2 / x0.8, min 0.01); learning rate "auto" =
   max(N / 12 / 4, 50). No early stop on the gradient norm (a batch runs ``max_iter`` steps).
   On Triton a second small kernel fuses the update (gradient from forces and Z, gains,
   momentum, step), so one iteration is two launches for all layers.

Shapes: embeddings ``y`` are ``[L, N, 2]`` float32, contiguous.
"""
from __future__ import annotations

import math
from typing import Optional, Sequence, Tuple, Union

import numpy as np
import torch

from .._utils import progress_bar
from ._triton import HAS_TRITON, check_triton_tensors, tl, triton

__all__ = [
    "DENSE_P_MAX_N", "PCA_DIMS", "EXPLORATION_ITER", "EARLY_EXAGGERATION",
    "pca_project", "joint_probabilities", "initial_embedding", "auto_learning_rate",
    "tsne_forces_torch", "tsne_forces_triton", "tsne_forces_native", "gradient_from_forces",
    "repeats_of", "repeat_starts", "REPEAT_JITTER",
    "tsne_step_torch", "tsne_step_triton", "tsne_optimize", "tsne_batched",
]

DENSE_P_MAX_N = 2048
PCA_DIMS = 50
EXPLORATION_ITER = 250
EARLY_EXAGGERATION = 12.0
MIN_GAIN = 0.01
_PERPLEXITY_TOL = 1e-5
_PERPLEXITY_STEPS = 100


# ----------------------------------------------------------------------------------------------
# 1. reduction and initialisation
# ----------------------------------------------------------------------------------------------

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


def auto_learning_rate(n: int, early_exaggeration: float = EARLY_EXAGGERATION) -> float:
    """scikit-learn's ``learning_rate="auto"``: max(N / early_exaggeration / 4, 50)."""
    return max(n / early_exaggeration / 4.0, 50.0)


# ----------------------------------------------------------------------------------------------
# 2. affinities
# ----------------------------------------------------------------------------------------------

def _sq_distances(a: torch.Tensor, b: torch.Tensor, a_sq: torch.Tensor, b_sq: torch.Tensor
                  ) -> torch.Tensor:
    """float64 ``[L, n, m]`` squared distances between rows of float64 a ``[L, n, d]`` and
    b ``[L, m, d]`` given their squared norms ``[L, n]`` and ``[L, m]``."""
    d2 = torch.baddbmm(a_sq[:, :, None] + b_sq[:, None, :], a, b.transpose(1, 2), alpha=-2.0)
    return d2.clamp_min_(0.0)


def _conditional_p(d2: torch.Tensor, perplexity: float) -> torch.Tensor:
    """Row-wise Gaussian conditionals exp(-beta d2) / sum with per-row beta found by bisection so
    that exp(entropy) == perplexity. ``d2``: float64 ``[..., M]``, +inf marks non-neighbours.
    Returns float64 ``[..., M]`` (rows sum to 1)."""
    target = math.log(perplexity)
    shape = d2.shape[:-1]
    dev = d2.device
    finite = torch.isfinite(d2)
    dmin = torch.where(finite, d2, torch.full_like(d2, float("inf"))).amin(-1, keepdim=True)
    dmin = torch.where(torch.isfinite(dmin), dmin, torch.zeros_like(dmin))
    shifted = torch.where(finite, d2 - dmin, torch.full_like(d2, float("inf")))
    beta = torch.ones(shape, dtype=torch.float64, device=dev)
    lo = torch.full(shape, -math.inf, dtype=torch.float64, device=dev)
    hi = torch.full(shape, math.inf, dtype=torch.float64, device=dev)
    done = torch.zeros(shape, dtype=torch.bool, device=dev)
    p = None
    for step in range(_PERPLEXITY_STEPS):
        p = torch.exp(-shifted * beta[..., None])
        s = p.sum(-1).clamp_min(1e-300)
        p = p / s[..., None]
        ent = torch.log(s) + beta * torch.nan_to_num((shifted * p), nan=0.0, posinf=0.0).sum(-1)
        diff = ent - target
        done = done | (diff.abs() <= _PERPLEXITY_TOL)
        if step % 10 == 9 and bool(done.all()):
            break
        up = (diff > 0) & ~done  # entropy too high: sharpen (raise beta)
        down = (diff <= 0) & ~done
        lo = torch.where(up, beta, lo)
        hi = torch.where(down, beta, hi)
        new_up = torch.where(torch.isinf(hi), beta * 2.0, (beta + hi) / 2.0)
        new_down = torch.where(torch.isinf(lo), beta / 2.0, (beta + lo) / 2.0)
        beta = torch.where(up, new_up, torch.where(down, new_down, beta))
    return p


def _row_chunk(L: int, N: int, budget: int = 1 << 25) -> int:
    return max(1, min(N, budget // max(1, L * N)))


def _distance_rows(src: torch.Tensor, sq: torch.Tensor):
    """Squared distances of all layers in chunks of rows: yields ``(i0, i1, d2 [L, i1-i0, N])``
    with each point's distance to itself set to +inf (it is never its own neighbour)."""
    L, N, _ = src.shape
    rows = _row_chunk(L, N)
    for i0 in range(0, N, rows):
        i1 = min(N, i0 + rows)
        d2 = _sq_distances(src[:, i0:i1], src, sq[:, i0:i1], sq)
        idx = torch.arange(i0, i1, device=src.device)
        d2[:, idx - i0, idx] = float("inf")
        yield i0, i1, d2


def joint_probabilities(reduced: torch.Tensor, perplexity: float, *, dense: Optional[bool] = None
                        ) -> Union[torch.Tensor, Tuple[torch.Tensor, torch.Tensor]]:
    """Symmetrised, normalised input affinities of every layer.

    Args:
        reduced: ``[L, N, d]`` points (after :func:`pca_project`).
        perplexity: target perplexity (``< N``; sparse mode also needs ``N > 3 * perplexity``
            for the full neighbour count, else it uses all ``N - 1`` other points).
        dense: ``True`` for the exact ``[L, N, N]`` P, ``False`` for 3 * perplexity nearest
            neighbours; ``None`` picks dense when ``N <= DENSE_P_MAX_N``.

    Returns:
        dense: float32 ``[L, N, N]`` P (zero diagonal, each layer sums to 1).
        sparse: ``(nbr, pval)``, int32 and float32 ``[L, M, N]`` padded symmetric neighbour
        lists (``pval[l, m, i]`` = p_{i, nbr[l, m, i]}; padding has p = 0 and nbr = i).

    Example:
        >>> P = joint_probabilities(torch.randn(2, 100, 10), 30.0)
        >>> P.shape, float(P[0].sum())
        (torch.Size([2, 100, 100]), 1.0...)
    """
    L, N, _ = reduced.shape
    if dense is None:
        dense = N <= DENSE_P_MAX_N
    dev = reduced.device
    src = reduced.to(torch.float64)
    sq = (src * src).sum(-1)
    if dense:
        P = torch.empty((L, N, N), dtype=torch.float32, device=dev)
        for i0, i1, d2 in _distance_rows(src, sq):
            P[:, i0:i1] = _conditional_p(d2, perplexity).to(torch.float32)
        P = P + P.transpose(1, 2)
        P /= P.sum(dim=2).sum(dim=1).clamp_min(1e-30)[:, None, None]
        return P.contiguous()
    k = min(N - 1, int(3.0 * perplexity))
    if k < 1:
        raise ValueError(f"sparse affinities need at least one neighbour; N = {N}, "
                         f"perplexity = {perplexity}")
    nbr = torch.empty((L, N, k), dtype=torch.int64, device=dev)
    cond = torch.empty((L, N, k), dtype=torch.float64, device=dev)
    for i0, i1, d2 in _distance_rows(src, sq):
        vals, ind = torch.topk(d2, k, dim=2, largest=False, sorted=True)
        nbr[:, i0:i1] = ind
        cond[:, i0:i1] = _conditional_p(vals, perplexity)
    # symmetrise: edge i->j with weight c contributes c to p_ij and to p_ji; coalesce per layer
    rows_i = torch.arange(N, device=dev).view(1, N, 1).expand(L, N, k)
    lay = torch.arange(L, device=dev).view(L, 1, 1).expand(L, N, k)
    src = torch.cat([rows_i.reshape(-1), nbr.reshape(-1)])
    dst = torch.cat([nbr.reshape(-1), rows_i.reshape(-1)])
    lyr = torch.cat([lay.reshape(-1), lay.reshape(-1)])
    val = torch.cat([cond.reshape(-1), cond.reshape(-1)])
    key = (lyr * N + src) * N + dst
    ukey, inv = torch.unique(key, sorted=True, return_inverse=True)
    uval = torch.zeros(ukey.numel(), dtype=torch.float64, device=dev).index_add_(0, inv, val)
    urow = ukey // N  # layer * N + src
    udst = ukey % N
    totals = torch.zeros(L, dtype=torch.float64, device=dev).index_add_(0, urow // N, uval)
    uval = uval / totals[urow // N]
    counts = torch.bincount(urow, minlength=L * N)
    M = int(counts.max())
    start = torch.zeros(L * N, dtype=torch.int64, device=dev)
    start[1:] = torch.cumsum(counts, 0)[:-1]
    slot = torch.arange(ukey.numel(), device=dev) - start[urow]
    point = urow % N
    layer = urow // N
    nbr_out = torch.arange(N, device=dev, dtype=torch.int32).view(1, 1, N).repeat(L, M, 1)
    pval = torch.zeros((L, M, N), dtype=torch.float32, device=dev)
    nbr_out[layer, slot, point] = udst.to(torch.int32)
    pval[layer, slot, point] = uval.to(torch.float32)
    return nbr_out.contiguous(), pval.contiguous()


# ----------------------------------------------------------------------------------------------
# 3. forces
# ----------------------------------------------------------------------------------------------

def tsne_forces_torch(y: torch.Tensor, P: Optional[torch.Tensor] = None,
                      nbr: Optional[torch.Tensor] = None, pval: Optional[torch.Tensor] = None,
                      *, max_chunk_elements: int = 1 << 24
                      ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Reference attractive and repulsive sums and the normaliser Z of every layer.

    Args:
        y: ``[L, N, 2]`` embedding (float32 or float64; the result has its dtype).
        P: dense ``[LP, N, N]`` affinities, or ``None`` with ``nbr, pval`` (``[LP, M, N]``).
            ``LP`` divides ``L``: problem ``l`` uses the affinities of layer ``l % LP``, so
            the S = L / LP repeats of a layer (run-major) share one P, never copied.

    Returns:
        ``(attr, rep, Z)``: ``attr[l, i] = sum_j p_ij w_ij (y_i - y_j)``,
        ``rep[l, i] = sum_j w_ij^2 (y_i - y_j)`` (both ``[L, N, 2]``), ``Z[l] = sum_{i != j} w_ij``.
        The gradient is :func:`gradient_from_forces`.

    Example:
        >>> y = torch.randn(2, 50, 2); P = torch.rand(2, 50, 50)
        >>> attr, rep, Z = tsne_forces_torch(y, P)
    """
    if (P is None) == (nbr is None):
        raise ValueError("pass either a dense P or sparse (nbr, pval)")
    L, N, _ = y.shape
    S, LP = repeats_of(L, P if P is not None else nbr)
    dt = y.dtype
    y0, y1 = y[..., 0], y[..., 1]
    attr = torch.zeros_like(y)
    rep = torch.zeros_like(y)
    Z = torch.zeros(L, dtype=dt, device=y.device)
    rows = max(1, min(N, max_chunk_elements // max(1, L * N)))
    for i0 in range(0, N, rows):
        i1 = min(N, i0 + rows)
        dx = y0[:, i0:i1, None] - y0[:, None, :]
        dy = y1[:, i0:i1, None] - y1[:, None, :]
        w = dx * dx
        w.addcmul_(dy, dy).add_(1.0).reciprocal_()
        idx = torch.arange(i0, i1, device=y.device)
        w[:, idx - i0, idx] = 0.0
        Z += w.sum(dim=2).sum(dim=1)
        w2 = w * w
        rep[:, i0:i1, 0] = (w2 * dx).sum(-1)
        rep[:, i0:i1, 1] = (w2 * dy).sum(-1)
        if P is not None:  # P broadcast over the S runs: [1, LP, rows, N] x [S, LP, rows, N]
            pw = (P[None, :, i0:i1].to(dt) * w.view(S, LP, i1 - i0, N)).view(L, i1 - i0, N)
            attr[:, i0:i1, 0] = (pw * dx).sum(-1)
            attr[:, i0:i1, 1] = (pw * dy).sum(-1)
    if nbr is not None:
        M = nbr.shape[1]
        j = nbr.to(torch.int64).reshape(1, LP, M * N).expand(S, LP, M * N)  # a view, no copy
        dx = y0.view(S, LP, 1, N) - y0.view(S, LP, N).gather(2, j).view(S, LP, M, N)
        dy = y1.view(S, LP, 1, N) - y1.view(S, LP, N).gather(2, j).view(S, LP, M, N)
        pw = pval.to(dt)[None] / (1.0 + dx * dx + dy * dy)
        attr[..., 0] = (pw * dx).sum(2).view(L, N)
        attr[..., 1] = (pw * dy).sum(2).view(L, N)
    return attr, rep, Z


def repeats_of(num_problems: int, affinities: torch.Tensor) -> Tuple[int, int]:
    """``(S, LP)`` for ``num_problems = S x LP`` embeddings over affinities of ``LP`` layers
    (``affinities``: P ``[LP, N, N]`` or nbr ``[LP, M, N]``); ``ValueError`` if LP does not
    divide the problem count."""
    LP = int(affinities.shape[0])
    if LP < 1 or num_problems % LP:
        raise ValueError(f"the affinities cover {LP} layers, which must divide the number of "
                         f"embeddings ({num_problems} = repeats x layers)")
    return num_problems // LP, LP


def gradient_from_forces(attr: torch.Tensor, rep: torch.Tensor, Z: torch.Tensor,
                         exaggeration: float = 1.0) -> torch.Tensor:
    """KL gradient ``4 * (exaggeration * attr - rep / Z)``, ``[L, N, 2]``."""
    return 4.0 * (exaggeration * attr - rep / Z[:, None, None])


if HAS_TRITON:

    @triton.jit
    def _tsne_forces_kernel(y_ptr, p_ptr, nbr_ptr, pv_ptr, attr_ptr, rep_ptr, zpart_ptr,
                            N, M, NUM_BLOCKS, P_LAYERS,
                            DENSE: tl.constexpr, BLOCK_I: tl.constexpr, BLOCK_J: tl.constexpr):
        layer = tl.program_id(0).to(tl.int64)
        player = layer % P_LAYERS  # the affinities of this problem (shared by a layer's runs)
        pid = tl.program_id(1)
        offs_i = pid * BLOCK_I + tl.arange(0, BLOCK_I)
        mask_i = offs_i < N
        ybase = y_ptr + layer * N * 2
        yi0 = tl.load(ybase + offs_i * 2, mask=mask_i, other=0.0).to(tl.float32)
        yi1 = tl.load(ybase + offs_i * 2 + 1, mask=mask_i, other=0.0).to(tl.float32)
        z = tl.zeros([BLOCK_I], dtype=tl.float32)
        r0 = tl.zeros([BLOCK_I], dtype=tl.float32)
        r1 = tl.zeros([BLOCK_I], dtype=tl.float32)
        a0 = tl.zeros([BLOCK_I], dtype=tl.float32)
        a1 = tl.zeros([BLOCK_I], dtype=tl.float32)
        for j0 in range(0, N, BLOCK_J):
            offs_j = j0 + tl.arange(0, BLOCK_J)
            mask_j = offs_j < N
            yj0 = tl.load(ybase + offs_j * 2, mask=mask_j, other=0.0).to(tl.float32)
            yj1 = tl.load(ybase + offs_j * 2 + 1, mask=mask_j, other=0.0).to(tl.float32)
            dx = yi0[:, None] - yj0[None, :]
            dy = yi1[:, None] - yj1[None, :]
            valid = mask_i[:, None] & mask_j[None, :] & (offs_i[:, None] != offs_j[None, :])
            w = tl.where(valid, 1.0 / (1.0 + dx * dx + dy * dy), 0.0)
            z += tl.sum(w, axis=1)
            w2 = w * w
            r0 += tl.sum(w2 * dx, axis=1)
            r1 += tl.sum(w2 * dy, axis=1)
            if DENSE:
                p = tl.load(p_ptr + player * N * N + offs_i[:, None].to(tl.int64) * N
                            + offs_j[None, :], mask=valid, other=0.0).to(tl.float32)
                pw = p * w
                a0 += tl.sum(pw * dx, axis=1)
                a1 += tl.sum(pw * dy, axis=1)
        if not DENSE:
            nbase = player * M * N
            for m in range(0, M):
                j = tl.load(nbr_ptr + nbase + m * N + offs_i, mask=mask_i, other=0).to(tl.int64)
                pv = tl.load(pv_ptr + nbase + m * N + offs_i, mask=mask_i, other=0.0).to(tl.float32)
                yj0 = tl.load(ybase + j * 2, mask=mask_i, other=0.0).to(tl.float32)
                yj1 = tl.load(ybase + j * 2 + 1, mask=mask_i, other=0.0).to(tl.float32)
                dx = yi0 - yj0
                dy = yi1 - yj1
                pw = pv / (1.0 + dx * dx + dy * dy)
                a0 += pw * dx
                a1 += pw * dy
        obase = layer * N * 2
        tl.store(attr_ptr + obase + offs_i * 2, a0, mask=mask_i)
        tl.store(attr_ptr + obase + offs_i * 2 + 1, a1, mask=mask_i)
        tl.store(rep_ptr + obase + offs_i * 2, r0, mask=mask_i)
        tl.store(rep_ptr + obase + offs_i * 2 + 1, r1, mask=mask_i)
        tl.store(zpart_ptr + layer * NUM_BLOCKS + pid, tl.sum(z, axis=0))

    @triton.jit
    def _tsne_update_kernel(y_ptr, upd_ptr, gains_ptr, attr_ptr, rep_ptr, zpart_ptr,
                            N2, NUM_BLOCKS, exaggeration, momentum, learning_rate, min_gain,
                            BLOCK: tl.constexpr, NB_P2: tl.constexpr):
        layer = tl.program_id(0).to(tl.int64)
        pid = tl.program_id(1)
        kb = tl.arange(0, NB_P2)
        zb = tl.load(zpart_ptr + layer * NUM_BLOCKS + kb, mask=kb < NUM_BLOCKS, other=0.0)
        z = tl.sum(zb, axis=0)
        offs = pid * BLOCK + tl.arange(0, BLOCK)
        mask = offs < N2
        base = layer * N2
        a = tl.load(attr_ptr + base + offs, mask=mask, other=0.0)
        r = tl.load(rep_ptr + base + offs, mask=mask, other=0.0)
        u = tl.load(upd_ptr + base + offs, mask=mask, other=0.0)
        g = tl.load(gains_ptr + base + offs, mask=mask, other=1.0)
        y = tl.load(y_ptr + base + offs, mask=mask, other=0.0)
        grad = 4.0 * (exaggeration * a - r / z)
        inc = (u * grad) < 0.0
        g = tl.where(inc, g + 0.2, g * 0.8)
        g = tl.maximum(g, min_gain)
        u = momentum * u - learning_rate * (grad * g)
        tl.store(gains_ptr + base + offs, g, mask=mask)
        tl.store(upd_ptr + base + offs, u, mask=mask)
        tl.store(y_ptr + base + offs, y + u, mask=mask)


def _blocks(y: torch.Tensor) -> Tuple[int, int]:
    return (32, 64) if y.is_cuda else (32, 32)


def _launch_forces(y, P, nbr, pval, attr, rep, zpart, bi, bj) -> None:
    """Launch the force kernel on prepared buffers (no checks: the optimiser's hot loop)."""
    L, N, _ = y.shape
    nb = zpart.shape[1]
    if P is not None:
        _tsne_forces_kernel[(L, nb)](y, P, y, y, attr, rep, zpart, N, 1, nb, P.shape[0],
                                     DENSE=True, BLOCK_I=bi, BLOCK_J=bj)
    else:
        _tsne_forces_kernel[(L, nb)](y, y, nbr, pval, attr, rep, zpart, N, nbr.shape[1], nb,
                                     nbr.shape[0], DENSE=False, BLOCK_I=bi, BLOCK_J=bj)


def tsne_forces_triton(y: torch.Tensor, P: Optional[torch.Tensor] = None,
                       nbr: Optional[torch.Tensor] = None, pval: Optional[torch.Tensor] = None,
                       *, block_i: Optional[int] = None, block_j: Optional[int] = None,
                       return_partials: bool = False):
    """Same contract as :func:`tsne_forces_torch`, one Triton launch over all layers.

    Args:
        y: contiguous float32 ``[L, N, 2]`` (CUDA, or CPU under ``TRITON_INTERPRET=1``).
        P: float32 ``[LP, N, N]`` dense affinities, or ``nbr`` (int32) / ``pval`` (float32)
            ``[LP, M, N]`` padded neighbour lists; ``LP`` divides ``L`` (problem ``l`` reads
            the affinities of ``l % LP``: repeats share them).
        return_partials: return the per-block partial sums of Z (``[L, cdiv(N, block_i)]``)
            instead of Z (what the fused update kernel reads).

    Returns:
        ``(attr, rep, Z)`` float32 (``Z``: ``[L]``, or the partials).

    Example:
        >>> attr, rep, Z = tsne_forces_triton(y.cuda(), P.cuda())  # doctest: +SKIP
    """
    if (P is None) == (nbr is None):
        raise ValueError("pass either a dense P or sparse (nbr, pval)")
    tensors = [y] + ([P] if P is not None else [nbr, pval])
    check_triton_tensors(*tensors)
    if y.ndim != 3 or y.shape[2] != 2 or y.dtype != torch.float32 or not y.is_contiguous():
        raise ValueError(f"y must be a contiguous float32 [L, N, 2] tensor, got "
                         f"{tuple(y.shape)} {y.dtype}")
    L, N, _ = y.shape
    _, LP = repeats_of(L, P if P is not None else nbr)
    bi, bj = _blocks(y)
    bi, bj = block_i or bi, block_j or bj
    nb = triton.cdiv(N, bi)
    if P is not None:
        if tuple(P.shape) != (LP, N, N):
            raise ValueError(f"P must be [LP, N, N] = {(LP, N, N)}, got {tuple(P.shape)}")
        P = P.to(torch.float32).contiguous()
    else:
        if nbr.shape[2] != N or tuple(pval.shape) != tuple(nbr.shape):
            raise ValueError(f"nbr/pval must be [LP, M, N] with N = {N}; got "
                             f"{tuple(nbr.shape)} and {tuple(pval.shape)}")
        nbr = nbr.to(torch.int32).contiguous()
        pval = pval.to(torch.float32).contiguous()
    attr = torch.empty_like(y)
    rep = torch.empty_like(y)
    zpart = torch.empty((L, nb), dtype=torch.float32, device=y.device)
    _launch_forces(y, P, nbr, pval, attr, rep, zpart, bi, bj)
    if return_partials:
        return attr, rep, zpart
    return attr, rep, zpart.sum(dim=1)


# ----------------------------------------------------------------------------------------------
# 4. optimiser
# ----------------------------------------------------------------------------------------------

def tsne_forces_native(y: torch.Tensor, P: Optional[torch.Tensor] = None,
                       nbr: Optional[torch.Tensor] = None, pval: Optional[torch.Tensor] = None,
                       *, num_threads: int = 0):
    """Same contract as :func:`tsne_forces_torch`, computed by the C++/OpenMP kernel of
    ``sls_fast._C`` (CPU tensors; float32 coordinates and affinities, float64 Z): one fused pass
    over all pairs of all layers, Q never stored, the inner loop over j vectorised."""
    from .native import native_module

    if (P is None) == (nbr is None):
        raise ValueError("pass either a dense P or sparse (nbr, pval)")
    if y.device.type != "cpu":
        raise ValueError(f"native t-SNE forces run on the CPU; y is on {y.device}")
    L, N, _ = y.shape
    yt = y.to(torch.float32).permute(0, 2, 1).contiguous().numpy()
    nan = float("nan")  # outputs start as NaN: an element the kernel missed cannot pass
    attr = torch.full((L, N, 2), nan, dtype=torch.float32)
    rep = torch.full((L, N, 2), nan, dtype=torch.float32)
    Z = torch.full((L,), nan, dtype=torch.float64)
    args = (None if P is None else P.to(torch.float32).contiguous().numpy(),
            None if nbr is None else nbr.to(torch.int32).contiguous().numpy(),
            None if pval is None else pval.to(torch.float32).contiguous().numpy())
    native_module().tsne_forces_f32(yt, *args, attr.numpy(), rep.numpy(), Z.numpy(), num_threads)
    return attr.to(y.dtype), rep.to(y.dtype), Z.to(y.dtype)


def tsne_step_torch(y, update, gains, attr, rep, Z, *, exaggeration: float, momentum: float,
                    learning_rate: float, min_gain: float = MIN_GAIN) -> None:
    """One delta-bar-delta step in place (scikit-learn's rule), all layers."""
    grad = gradient_from_forces(attr, rep, Z, exaggeration)
    inc = (update * grad) < 0.0
    gains.copy_(torch.where(inc, gains + 0.2, gains * 0.8).clamp_min_(min_gain))
    update.mul_(momentum).sub_(learning_rate * (grad * gains))
    y.add_(update)


def tsne_step_triton(y, update, gains, attr, rep, zpart, *, exaggeration: float,
                     momentum: float, learning_rate: float, min_gain: float = MIN_GAIN) -> None:
    """Fused :func:`tsne_step_torch` (reads the per-block Z partials), one launch."""
    L, N, _ = y.shape
    nb = zpart.shape[1]
    block = 256
    _tsne_update_kernel[(L, triton.cdiv(2 * N, block))](
        y, update, gains, attr, rep, zpart, 2 * N, nb, float(exaggeration), float(momentum),
        float(learning_rate), float(min_gain), BLOCK=block,
        NB_P2=max(16, triton.next_power_of_2(nb)))


def tsne_optimize(y: torch.Tensor, P: Optional[torch.Tensor] = None,
                  nbr: Optional[torch.Tensor] = None, pval: Optional[torch.Tensor] = None, *,
                  max_iter: int = 1000, learning_rate: Union[str, float] = "auto",
                  early_exaggeration: float = EARLY_EXAGGERATION,
                  exploration_iter: int = EXPLORATION_ITER, forces: str = "torch",
                  progress: bool = False) -> torch.Tensor:
    """Run scikit-learn's gradient-descent schedule on all layers at once.

    Args:
        y: ``[L, N, 2]`` float32 start (modified in place and returned); ``L`` may be
            ``S x LP`` (S runs of each of the LP layers of the affinities, run-major: see
            :func:`repeat_starts`), the runs of a layer sharing its affinities.
        P / nbr, pval: affinities from :func:`joint_probabilities` (``LP`` layers).
        max_iter: total iterations, counted as scikit-learn does (exploration iterations
            0..249, then 251..max_iter-1).
        forces: ``"torch"`` (reference, any device), ``"triton"`` (fused kernels) or
            ``"native"`` (C++/OpenMP, CPU).

    Returns:
        ``y``, the ``[L, N, 2]`` embeddings.

    Example:
        >>> y = tsne_optimize(y0, P, max_iter=1000)  # doctest: +SKIP
    """
    if forces not in ("torch", "triton", "native"):
        raise ValueError(f"unknown forces implementation {forces!r}; use 'torch', 'triton' or "
                         "'native'")
    L, N, _ = y.shape
    repeats_of(L, P if P is not None else nbr)  # validated once, before the hot loop
    lr = (auto_learning_rate(N, early_exaggeration) if learning_rate == "auto"
          else float(learning_rate))
    y = y.to(torch.float32).contiguous()
    if forces == "triton":
        tensors = [y] + ([P] if P is not None else [nbr, pval])
        check_triton_tensors(*tensors)
        if P is not None:
            P = P.to(torch.float32).contiguous()
        else:
            nbr = nbr.to(torch.int32).contiguous()
            pval = pval.to(torch.float32).contiguous()
        bi, bj = _blocks(y)
        attr = torch.empty_like(y)
        rep = torch.empty_like(y)
        zpart = torch.empty((L, triton.cdiv(N, bi)), dtype=torch.float32, device=y.device)
    n_explore = min(exploration_iter, max_iter)
    bar = progress_bar(None, progress, total=max_iter, desc=f"t-SNE ({forces}, {L} layers)",
                       unit="it", leave=False)
    phases = [(early_exaggeration, 0.5, n_explore),
              (1.0, 0.8, max(0, max_iter - exploration_iter - 1))]
    for exaggeration, momentum, n_steps in phases:
        update = torch.zeros_like(y)
        gains = torch.ones_like(y)
        for _ in range(n_steps):
            if forces == "triton":
                _launch_forces(y, P, nbr, pval, attr, rep, zpart, bi, bj)
                tsne_step_triton(y, update, gains, attr, rep, zpart, exaggeration=exaggeration,
                                 momentum=momentum, learning_rate=lr)
            else:
                force_fn = tsne_forces_native if forces == "native" else tsne_forces_torch
                attr, rep, Z = force_fn(y, P, nbr, pval)
                tsne_step_torch(y, update, gains, attr, rep, Z, exaggeration=exaggeration,
                                momentum=momentum, learning_rate=lr)
            if bar is not None:
                bar.update(1)
    if bar is not None:
        bar.close()
    return y


def _reduce_layers(layers: Sequence[torch.Tensor], seed: int, k: int = PCA_DIMS) -> torch.Tensor:
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


def _affinities_by_width(layers: Sequence[torch.Tensor], perplexity: float,
                         dense: Optional[bool]):
    """:func:`joint_probabilities` of the centred full features, one batch per feature width
    (no padding, so a layer gives the same P alone or in any batch)."""
    L, N = len(layers), layers[0].shape[0]
    groups = {}
    for i, x in enumerate(layers):
        groups.setdefault(int(x.shape[1]), []).append(i)
    parts = []
    for idx in groups.values():
        xs = torch.stack([layers[i].to(torch.float32) for i in idx])
        parts.append((idx, joint_probabilities(xs - xs.mean(dim=1, keepdim=True), perplexity,
                                               dense=dense)))
    if len(parts) == 1:
        return parts[0][1]
    first = parts[0][1]
    if not isinstance(first, tuple):
        P = torch.empty((L, N, N), dtype=torch.float32, device=first.device)
        for idx, p in parts:
            P[idx] = p
        return P
    M = max(p[0].shape[1] for _, p in parts)
    nbr = torch.arange(N, dtype=torch.int32, device=first[0].device).view(1, 1, N).repeat(L, M, 1)
    pval = torch.zeros((L, M, N), dtype=torch.float32, device=first[0].device)
    for idx, (nb, pv) in parts:
        nbr[idx, : nb.shape[1]] = nb
        pval[idx, : pv.shape[1]] = pv
    return nbr, pval


def tsne_batched(features: Union[torch.Tensor, Sequence[torch.Tensor]], *,
                 perplexity: float = 30.0, max_iter: int = 1000, init: str = "pca",
                 seed: int = 0, dense: Optional[bool] = None, pca_dims: Optional[int] = None,
                 forces: Optional[str] = None, repeats: Optional[int] = None,
                 progress: bool = False) -> torch.Tensor:
    """Exact t-SNE of every layer at once (the ``backend="torch"`` engine of :func:`sls_fast.tsne`).

    Args:
        features: ``[L, N, D]`` tensor or a list of L ``[N, D_i]`` tensors on one device.
        perplexity, max_iter, init, seed: as :func:`sls_fast.tsne`.
        dense: dense ``[L, N, N]`` P (default when ``N <= DENSE_P_MAX_N``) or kNN lists.
        pca_dims: compute the affinities on each layer's first ``pca_dims`` principal
            components (the common practice, e.g. 50) instead of the full features (default:
            full features, like scikit-learn; see the module docstring for the measurement).
        forces: ``"triton"`` (default on CUDA when Triton is importable), ``"torch"`` (the
            reference; default elsewhere) or ``"native"`` (C++/OpenMP on the CPU).
        repeats: S independent runs of every layer (starts from :func:`repeat_starts`),
            optimised as one problem of S x L embeddings; the affinities are computed once
            per layer and shared by its runs. ``None``: a single run.

    Returns:
        float32 ``[L, N, 2]`` raw embeddings on the features' device; ``[S, L, N, 2]`` with
        ``repeats=S`` (run 0 equals the single run).

    Example:
        >>> tsne_batched(torch.randn(4, 300, 64), max_iter=500).shape
        torch.Size([4, 300, 2])
    """
    layers = list(features.unbind(0)) if isinstance(features, torch.Tensor) else list(features)
    dev = layers[0].device
    if forces is None:
        forces = "triton" if (dev.type == "cuda" and HAS_TRITON) else "torch"
    y = initial_embedding(_reduce_layers(layers, seed, 2), init, seed)
    L = y.shape[0]
    if repeats is not None:
        y = repeat_starts(y, repeats, seed)
    if pca_dims:
        aff = joint_probabilities(_reduce_layers(layers, seed, pca_dims), perplexity, dense=dense)
    else:
        aff = _affinities_by_width(layers, perplexity, dense)
    if isinstance(aff, tuple):
        y = tsne_optimize(y, nbr=aff[0], pval=aff[1], max_iter=max_iter, forces=forces,
                          progress=progress)
    else:
        y = tsne_optimize(y, aff, max_iter=max_iter, forces=forces, progress=progress)
    return y if repeats is None else y.view(repeats, L, *y.shape[1:])
