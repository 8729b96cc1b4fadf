"""Per-cluster statistics of every layer: centroids, and the sums of squared and plain
distances of the cluster's points to its centroid. Calinski-Harabasz and Davies-Bouldin are
finished from these in O(L * K^2) (see :mod:`sls_fast.method.metrics`).

Layout: ``x_sorted`` is ``[L, N, d]`` with points sorted by cluster (segment ``c`` is
``offsets[c]:offsets[c+1]``). Outputs: ``centroid`` float64 ``[L, K, d]``, ``sq`` and ``dist``
float64 ``[L, K]``.

- :func:`cluster_stats_torch`: pure-torch reference (float64 accumulation), any device.
- :func:`cluster_stats_triton`: one launch, grid (layers, clusters); a program sums its segment
  for the centroid, then (after a block barrier) re-reads it for the dispersions; float64
  accumulation.
"""
from __future__ import annotations

import torch

from ._triton import HAS_TRITON, UNSPECIALIZED, check_triton_tensors, tl, triton

__all__ = ["cluster_stats_torch", "cluster_stats_triton"]


def cluster_stats_torch(x_sorted: torch.Tensor, offsets: torch.Tensor, own: torch.Tensor):
    """Reference: returns ``(centroid [L, K, d], sq [L, K], dist [L, K])`` in float64."""
    L, N, d = x_sorted.shape
    K = offsets.numel() - 1
    dev = x_sorted.device
    own = own.to(device=dev, dtype=torch.int64)
    x = x_sorted.to(torch.float64)
    sizes = (offsets[1:] - offsets[:-1]).to(device=dev, dtype=torch.float64)
    sums = torch.zeros((L, K, d), dtype=torch.float64, device=dev).index_add_(1, own, x)
    centroid = sums / sizes.view(1, K, 1)
    r2 = ((x - centroid[:, own, :]) ** 2).sum(dim=2)  # [L, N]
    sq = torch.zeros((L, K), dtype=torch.float64, device=dev).index_add_(1, own, r2)
    dist = torch.zeros((L, K), dtype=torch.float64, device=dev).index_add_(1, own, r2.sqrt())
    return centroid, sq, dist


if HAS_TRITON:

    @triton.jit(do_not_specialize=UNSPECIALIZED)
    def _cluster_stats_kernel(x_ptr, off_ptr, cen_ptr, sq_ptr, dist_ptr, N, D, K,
                              BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr):
        layer = tl.program_id(0).to(tl.int64)
        c = tl.program_id(1)
        base = x_ptr + layer * N * D
        start = tl.load(off_ptr + c)
        end = tl.load(off_ptr + c + 1)
        n = (end - start).to(tl.float64)
        cen_base = cen_ptr + (layer * K + c) * D
        # pass 1: centroid, dimension chunk by dimension chunk
        for d0 in range(0, D, BLOCK_D):
            offs_d = d0 + tl.arange(0, BLOCK_D)
            mask_d = offs_d < D
            s = tl.zeros([BLOCK_D], dtype=tl.float64)
            for j0 in range(start, end, BLOCK_N):
                offs_j = j0 + tl.arange(0, BLOCK_N)
                mask_j = offs_j < end
                tile = tl.load(base + offs_j[:, None] * D + offs_d[None, :],
                               mask=mask_j[:, None] & mask_d[None, :], other=0.0)
                s += tl.sum(tile.to(tl.float64), axis=0)
            tl.store(cen_base + offs_d, s / n, mask=mask_d)
        tl.debug_barrier()  # the centroid written above is read back by other threads
        # pass 2: squared and plain distances to the centroid
        sq = tl.zeros([BLOCK_N], dtype=tl.float64)
        dist = tl.zeros([BLOCK_N], dtype=tl.float64)
        for j0 in range(start, end, BLOCK_N):
            offs_j = j0 + tl.arange(0, BLOCK_N)
            mask_j = offs_j < end
            r = tl.zeros([BLOCK_N], dtype=tl.float64)
            for d0 in range(0, D, BLOCK_D):
                offs_d = d0 + tl.arange(0, BLOCK_D)
                mask_d = offs_d < D
                m2 = mask_j[:, None] & mask_d[None, :]
                tile = tl.load(base + offs_j[:, None] * D + offs_d[None, :], mask=m2, other=0.0)
                cen = tl.load(cen_base + offs_d, mask=mask_d, other=0.0)
                diff = tl.where(m2, tile.to(tl.float64) - cen[None, :], 0.0)
                r += tl.sum(diff * diff, axis=1)
            sq += r
            dist += tl.where(mask_j, tl.sqrt(r), 0.0)
        tl.store(sq_ptr + layer * K + c, tl.sum(sq, axis=0))
        tl.store(dist_ptr + layer * K + c, tl.sum(dist, axis=0))


def cluster_stats_triton(x_sorted: torch.Tensor, offsets: torch.Tensor, *, centroid=None,
                         sq=None, dist=None, block_n: int = 64):
    """One launch over (layers x clusters). Returns ``(centroid, sq, dist)`` (float64)."""
    check_triton_tensors(x_sorted, offsets)
    if x_sorted.ndim != 3 or not x_sorted.is_contiguous():
        raise ValueError(f"x_sorted must be a contiguous [L, N, d] tensor, got {tuple(x_sorted.shape)}")
    L, N, D = x_sorted.shape
    K = offsets.numel() - 1
    dev = x_sorted.device
    if centroid is None:
        centroid = torch.empty((L, K, D), dtype=torch.float64, device=dev)
    if sq is None:
        sq = torch.empty((L, K), dtype=torch.float64, device=dev)
    if dist is None:
        dist = torch.empty((L, K), dtype=torch.float64, device=dev)
    block_d = min(128, max(16, triton.next_power_of_2(D)))
    _cluster_stats_kernel[(L, K)](x_sorted, offsets, centroid, sq, dist, N, D, K,
                                  BLOCK_N=block_n, BLOCK_D=block_d)
    return centroid, sq, dist
