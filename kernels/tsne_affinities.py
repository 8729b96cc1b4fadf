"""t-SNE input affinities of every layer at once: distances, the perplexity bisection (torch
reference, C++/OpenMP, Triton) and the symmetrised joint P (dense or neighbour lists). Part of
:mod:`sls_fast.kernels.tsne`."""
from __future__ import annotations

import math
from typing import Optional, Sequence, Tuple, Union

import torch

from ._triton import HAS_TRITON, check_triton_tensors, tl, triton

__all__ = ["DENSE_P_MAX_N", "densify", "joint_probabilities", "affinities_by_width", "conditional_p_torch",
           "conditional_p_native", "conditional_p_triton", "neighbour_count",
           "knn_conditional_native", "symmetrize_native", "symmetrize_torch"]

DENSE_P_MAX_N = 2048
_PERPLEXITY_TOL = 1e-5
_PERPLEXITY_STEPS = 100


def _sq_distances(a: torch.Tensor, b: torch.Tensor, a_sq: torch.Tensor, b_sq: torch.Tensor
                  ) -> torch.Tensor:
    """float64 ``[L, n, m]`` squared distances between rows of float64 a ``[L, n, d]`` and
    b ``[L, m, d]`` given their squared norms ``[L, n]`` and ``[L, m]``."""
    d2 = torch.baddbmm(a_sq[:, :, None] + b_sq[:, None, :], a, b.transpose(1, 2), alpha=-2.0)
    return d2.clamp_min_(0.0)


def conditional_p_torch(d2: torch.Tensor, perplexity: float) -> torch.Tensor:
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


def conditional_p_native(d2: torch.Tensor, perplexity: float, *, num_threads: int = 0,
                         return_steps: bool = False):
    """:func:`conditional_p_torch` by the C++/OpenMP kernel (CPU; one bisection per row, all
    rows in parallel). Returns float32 ``[..., K]`` (and the int32 steps per row)."""
    from .native import native_module

    if d2.device.type != "cpu":
        raise ValueError(f"the native perplexity search runs on the CPU; d2 is on {d2.device}")
    shape = d2.shape
    flat = d2.detach().to(torch.float64).reshape(-1, shape[-1]).contiguous()
    p = torch.full(flat.shape, float("nan"), dtype=torch.float32)
    steps = torch.full((flat.shape[0],), -1, dtype=torch.int32)
    native_module().conditional_p_f64(flat.numpy(), float(perplexity), _PERPLEXITY_TOL,
                                      _PERPLEXITY_STEPS, p.numpy(), steps.numpy(),
                                      int(num_threads))
    p = p.view(shape)
    return (p, steps.view(shape[:-1])) if return_steps else p


if HAS_TRITON:

    @triton.jit
    def _conditional_p_kernel(d2_ptr, p_ptr, R, K, target, tol,
                              STEPS: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_K: tl.constexpr):
        """BLOCK_R rows per program, each row's K candidates in registers; every row runs the
        same bisection as the reference (a row that has converged keeps its beta)."""
        rows = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)
        cols = tl.arange(0, BLOCK_K)
        rmask = rows < R
        mask = rmask[:, None] & (cols[None, :] < K)
        offs = rows[:, None].to(tl.int64) * K + cols[None, :]
        d = tl.load(d2_ptr + offs, mask=mask, other=float("inf")).to(tl.float64)
        finite = d < float("inf")
        dmin = tl.min(tl.where(finite, d, float("inf")), axis=1)
        dmin = tl.where(dmin < float("inf"), dmin, 0.0)
        sh = tl.where(finite, d - dmin[:, None], 0.0)
        beta = tl.full((BLOCK_R,), 1.0, tl.float64)
        lo = tl.full((BLOCK_R,), -1.0, tl.float64)  # -1: unbounded below (beta > 0 always)
        hi = tl.full((BLOCK_R,), -1.0, tl.float64)  # -1: unbounded above
        done = rows >= R
        p = tl.zeros((BLOCK_R, BLOCK_K), tl.float64)
        for _ in range(STEPS):
            e = tl.where(finite, tl.exp(-sh * beta[:, None]), 0.0)
            s = tl.maximum(tl.sum(e, axis=1), 1e-300)
            pn = e / s[:, None]
            ent = tl.log(s) + beta * tl.sum(sh * pn, axis=1)
            diff = ent - target
            p = tl.where(done[:, None], p, pn)
            done = done | (tl.abs(diff) <= tol)
            up = (diff > 0) & ~done
            down = (diff <= 0) & ~done
            lo = tl.where(up, beta, lo)
            hi = tl.where(down, beta, hi)
            new_up = tl.where(hi < 0, beta * 2.0, (beta + hi) * 0.5)
            new_down = tl.where(lo < 0, beta * 0.5, (beta + lo) * 0.5)
            beta = tl.where(up, new_up, tl.where(down, new_down, beta))
        tl.store(p_ptr + offs, p.to(tl.float32), mask=mask)


def conditional_p_triton(d2: torch.Tensor, perplexity: float) -> torch.Tensor:
    """:func:`conditional_p_torch` as one Triton launch over all rows (CUDA, or the interpreter):
    float64 arithmetic, float32 ``[..., K]`` out. Rows up to K = 2,048 candidates."""
    check_triton_tensors(d2)
    shape = d2.shape
    K = int(shape[-1])
    if K > DENSE_P_MAX_N:
        raise ValueError(f"conditional_p_triton takes rows of at most {DENSE_P_MAX_N} candidates, "
                         f"got {K}")
    flat = d2.detach().to(torch.float64).reshape(-1, K).contiguous()
    R = flat.shape[0]
    p = torch.empty((R, K), dtype=torch.float32, device=d2.device)
    bk = max(16, triton.next_power_of_2(K))
    br = max(1, min(64, 2048 // bk))
    _conditional_p_kernel[(triton.cdiv(R, br),)](
        flat, p, R, K, math.log(perplexity), _PERPLEXITY_TOL, STEPS=_PERPLEXITY_STEPS,
        BLOCK_R=br, BLOCK_K=bk)
    return p.view(shape)


def _conditional(d2: torch.Tensor, perplexity: float) -> torch.Tensor:
    """The fastest perplexity search for where ``d2`` lives: C++ on the CPU, Triton on CUDA,
    else the torch reference."""
    if d2.device.type == "cpu":
        return conditional_p_native(d2, perplexity)
    if d2.is_cuda and HAS_TRITON and d2.shape[-1] <= DENSE_P_MAX_N:
        return conditional_p_triton(d2, perplexity)
    return conditional_p_torch(d2, perplexity)


def densify(nbr: torch.Tensor, pval: torch.Tensor) -> torch.Tensor:
    """The neighbour lists ``[LP, M, N]`` as the equal dense ``[LP, N, N]`` float32 P (zeros
    off the lists; padding slots add 0). On a GPU streaming a dense P (at most 16 MiB per layer
    for N <= DENSE_P_MAX_N) is faster than walking the padded lists (benchmarks/RESULTS.md)."""
    LP, M, N = nbr.shape
    P = torch.zeros((LP, N, N), dtype=torch.float32, device=pval.device)
    P.scatter_add_(2, nbr.transpose(1, 2).to(torch.int64), pval.transpose(1, 2).to(torch.float32))
    return P


def neighbour_count(n: int, perplexity: float) -> int:
    """Candidate neighbours per point of the neighbour-list affinities: scikit-learn's
    Barnes-Hut rule, ``min(N - 1, int(3 * perplexity + 1))``."""
    return min(n - 1, int(3.0 * perplexity + 1))


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
        dense: ``True`` for the exact method's ``[L, N, N]`` P (every pair; N up to
            ``DENSE_P_MAX_N``), ``False`` / ``None`` (default) for the neighbour lists of
            scikit-learn's default Barnes-Hut method, the authors' setting: the
            ``min(N - 1, int(3 * perplexity + 1))`` nearest neighbours of each point.

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
    if dense and N > DENSE_P_MAX_N:
        raise ValueError(f"dense affinities are for N <= {DENSE_P_MAX_N} points (an [L, N, N] "
                         f"float32 P); N = {N}: use the neighbour lists (dense=False)")
    dev = reduced.device
    src = reduced.to(torch.float64)
    sq = (src * src).sum(-1)
    if dense:
        P = torch.empty((L, N, N), dtype=torch.float32, device=dev)
        for i0, i1, d2 in _distance_rows(src, sq):
            P[:, i0:i1] = _conditional(d2, perplexity).to(torch.float32)
        P = P + P.transpose(1, 2)
        P /= P.sum(dim=2).sum(dim=1).clamp_min(1e-30)[:, None, None]
        return P.contiguous()
    k = neighbour_count(N, perplexity)
    if k < 1:
        raise ValueError(f"sparse affinities need at least one neighbour; N = {N}, "
                         f"perplexity = {perplexity}")
    if dev.type == "cpu":  # selection, bisection and symmetrisation in C++
        nbr = torch.empty((L, N, k), dtype=torch.int32)
        cond = torch.empty((L, N, k), dtype=torch.float32)
        for i0, i1, d2 in _distance_rows(src, sq):
            nbr[:, i0:i1], cond[:, i0:i1] = knn_conditional_native(d2, k, perplexity)
        return symmetrize_native(nbr, cond)
    nbr = torch.empty((L, N, k), dtype=torch.int64, device=dev)
    cond = torch.empty((L, N, k), dtype=torch.float64, device=dev)
    for i0, i1, d2 in _distance_rows(src, sq):
        vals, ind = torch.topk(d2, k, dim=2, largest=False, sorted=True)
        nbr[:, i0:i1] = ind
        cond[:, i0:i1] = _conditional(vals, perplexity)
    return symmetrize_torch(nbr, cond)


def knn_conditional_native(d2: torch.Tensor, k: int, perplexity: float, *, num_threads: int = 0):
    """The k nearest candidates of every row of ``d2`` (float64 ``[..., C]`` squared distances,
    +inf: never a neighbour) and their conditional distribution, in one C++/OpenMP pass: what
    ``torch.topk(d2, k, largest=False)`` followed by :func:`conditional_p_torch` on the k
    distances computes (equal distances: the lower column first). Returns int32 and float32
    ``[..., k]``."""
    from .native import native_module

    if d2.device.type != "cpu":
        raise ValueError(f"the native neighbour search runs on the CPU; d2 is on {d2.device}")
    shape = d2.shape
    flat = d2.detach().to(torch.float64).reshape(-1, shape[-1]).contiguous()
    nbr = torch.empty((flat.shape[0], k), dtype=torch.int32)
    p = torch.empty((flat.shape[0], k), dtype=torch.float32)
    native_module().knn_conditional_p_f64(flat.numpy(), int(k), float(perplexity), _PERPLEXITY_TOL,
                                          _PERPLEXITY_STEPS, nbr.numpy(), p.numpy(),
                                          int(num_threads))
    return nbr.view(*shape[:-1], k), p.view(*shape[:-1], k)


def symmetrize_native(nbr: torch.Tensor, cond: torch.Tensor, *, num_threads: int = 0
                      ) -> Tuple[torch.Tensor, torch.Tensor]:
    """:func:`symmetrize_torch` in C++/OpenMP (one task per layer; float64 sums)."""
    from .native import native_module

    if nbr.device.type != "cpu" or cond.device.type != "cpu":
        raise ValueError("the native symmetrisation runs on the CPU")
    nb = nbr.to(torch.int32).contiguous()
    cd = cond.to(torch.float32).contiguous()
    nbr_out, pval = native_module().joint_lists(nb.numpy(), cd.numpy(), int(num_threads))
    return torch.from_numpy(nbr_out), torch.from_numpy(pval)


def symmetrize_torch(nbr: torch.Tensor, cond: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """Symmetrised, normalised joint P of the directed kNN conditionals ``nbr`` / ``cond``
    ``[L, N, k]`` (any device; the reference): p_ij = (c_ij + c_ji) / sum over the layer, in
    float64, as padded neighbour lists ``[L, M, N]`` (M = the largest row; each point's entries
    in increasing neighbour order; padding has p = 0 and nbr = i)."""
    L, N, k = nbr.shape
    dev = nbr.device
    nbr = nbr.to(torch.int64)
    cond = cond.to(torch.float64)
    # edge i->j with weight c contributes c to p_ij and to p_ji; coalesce per layer
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




def affinities_by_width(layers: Sequence[torch.Tensor], perplexity: float,
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


