"""Silhouette coefficient of every point of every layer, exact, without an N x N matrix.

Shared layout (prepared once for all layers by :mod:`sls_fast.method.metrics`): points are sorted by
cluster, so cluster ``c`` is the contiguous segment ``offsets[c]:offsets[c+1]``; ``own[i]`` is
the cluster of sorted point ``i``. For a point i in cluster A (scikit-learn's definition):

    a(i) = sum_{j in A} ||x_i - x_j|| / (|A| - 1),   b(i) = min_{C != A} sum_{j in C} ||x_i - x_j|| / |C|
    s(i) = (b - a) / max(a, b),   s(i) = 0 when |A| = 1 (and 0/0 -> 0).

Three implementations, same contract (``out`` is a float64 ``[L, N]`` buffer written in full):

- :func:`silhouette_samples_torch`: the pure-torch reference (any device, float64-exact for
  float64 input); memory O(L * chunk * N) with a bounded chunk of rows.
- :func:`silhouette_samples_triton` with ``variant="segment"``: grid (layers, point blocks); a
  program walks the cluster segments and accumulates per-cluster distance sums in registers,
  keeping a(i) and the running min b(i). Memory O(L * N). Distances are computed in the input
  precision; each tile's partial sums (<= BLOCK_J terms) are added to float64 accumulators.
- ``variant="onehot"``: same grid, one pass over all points j; the per-cluster sums come from a
  ``tl.dot`` of the distance tile with the one-hot matrix of the tile's labels (tf32x3 on GPUs
  for float32 accuracy). Only for K <= 128 clusters.
"""
from __future__ import annotations

import torch

from ._triton import HAS_TRITON, UNSPECIALIZED, check_triton_tensors, tl, triton

__all__ = ["silhouette_samples_torch", "silhouette_samples_triton", "ONEHOT_MAX_CLUSTERS"]

ONEHOT_MAX_CLUSTERS = 128


def _finish(a: torch.Tensor, b: torch.Tensor, own_size: torch.Tensor) -> torch.Tensor:
    """s = (b - a) / max(a, b) with scikit-learn's conventions (singletons and 0/0 give 0)."""
    m = torch.maximum(a, b)
    s = torch.where(m > 0, (b - a) / torch.where(m > 0, m, torch.ones_like(m)), torch.zeros_like(m))
    return torch.where(own_size > 1, s, torch.zeros_like(s))


def silhouette_samples_torch(x_sorted: torch.Tensor, offsets: torch.Tensor, own: torch.Tensor,
                             out: torch.Tensor | None = None, *, max_chunk_elements: int = 1 << 24
                             ) -> torch.Tensor:
    """Reference per-point silhouette.

    Args:
        x_sorted: ``[L, N, d]`` points sorted by cluster (float32 or float64).
        offsets: ``[K + 1]`` int64 segment starts (``offsets[-1] == N``).
        own: ``[N]`` integer cluster index of each sorted point.
        out: optional float64 ``[L, N]`` buffer to write.
        max_chunk_elements: bound on ``L * rows * N`` elements of one distance chunk.

    Returns:
        float64 ``[L, N]`` silhouette of each sorted point.
    """
    L, N, _ = x_sorted.shape
    K = offsets.numel() - 1
    dev = x_sorted.device
    if out is None:
        out = torch.empty((L, N), dtype=torch.float64, device=dev)
    own = own.to(device=dev, dtype=torch.int64)
    sizes = (offsets[1:] - offsets[:-1]).to(device=dev, dtype=torch.float64)  # [K]
    rows = max(1, min(N, max_chunk_elements // max(1, L * N)))
    for i0 in range(0, N, rows):
        i1 = min(N, i0 + rows)
        dist = torch.cdist(x_sorted[:, i0:i1], x_sorted,
                           compute_mode="donot_use_mm_for_euclid_dist").to(torch.float64)
        sums = torch.zeros((L, i1 - i0, K), dtype=torch.float64, device=dev)
        sums.index_add_(2, own, dist)  # per-cluster distance sums [L, B, K]
        own_c = own[i0:i1]
        own_size = sizes[own_c]  # [B]
        a = sums.gather(2, own_c.view(1, -1, 1).expand(L, -1, 1)).squeeze(2)
        a = a / torch.clamp(own_size - 1, min=1)
        mean_other = sums / sizes
        mean_other.scatter_(2, own_c.view(1, -1, 1).expand(L, -1, 1), float("inf"))
        b = mean_other.min(dim=2).values
        out[:, i0:i1] = _finish(a, b, own_size.expand(L, -1))
    return out


if HAS_TRITON:

    @triton.jit
    def _point_block(xt_ptr, own_ptr, N, D, BLOCK_I: tl.constexpr):
        """This program's layer and block of points: (layer, offsets, mask, layer base, clusters)."""
        layer = tl.program_id(0).to(tl.int64)
        offs_i = tl.program_id(1) * BLOCK_I + tl.arange(0, BLOCK_I)
        mask_i = offs_i < N
        own = tl.load(own_ptr + offs_i, mask=mask_i, other=0)
        return layer, offs_i, mask_i, xt_ptr + layer * D * N, own

    @triton.jit
    def _silhouette_value(a, b, singleton):
        """(b - a) / max(a, b); 0 for 0/0 and for points alone in their cluster (scikit-learn)."""
        m = tl.maximum(a, b)
        s = tl.where(m > 0, (b - a) / tl.where(m > 0, m, 1.0), 0.0)
        return tl.where(singleton, 0.0, s)

    @triton.jit(do_not_specialize=UNSPECIALIZED)
    def _silhouette_segment_kernel(xt_ptr, off_ptr, own_ptr, size_ptr, out_ptr, N, D, K,
                                   BLOCK_I: tl.constexpr, BLOCK_J: tl.constexpr):
        layer, offs_i, mask_i, base, own = _point_block(xt_ptr, own_ptr, N, D, BLOCK_I)
        a = tl.zeros([BLOCK_I], dtype=tl.float64)
        b = tl.full([BLOCK_I], float("inf"), dtype=tl.float64)
        for c in range(0, K):
            start = tl.load(off_ptr + c)
            end = tl.load(off_ptr + c + 1)
            acc = tl.zeros([BLOCK_I], dtype=tl.float64)
            for j0 in range(start, end, BLOCK_J):
                offs_j = j0 + tl.arange(0, BLOCK_J)
                mask_j = offs_j < end
                d2 = tl.zeros([BLOCK_I, BLOCK_J], dtype=xt_ptr.dtype.element_ty)
                for k in range(0, D):
                    xi = tl.load(base + k * N + offs_i, mask=mask_i, other=0.0)
                    xj = tl.load(base + k * N + offs_j, mask=mask_j, other=0.0)
                    diff = xi[:, None] - xj[None, :]
                    d2 += diff * diff
                dist = tl.where(mask_j[None, :], tl.sqrt(d2), 0.0)
                acc += tl.sum(dist, axis=1).to(tl.float64)
            n_c = (end - start).to(tl.float64)
            is_own = own == c
            a = tl.where(is_own, acc / tl.maximum(n_c - 1.0, 1.0), a)
            b = tl.where(is_own, b, tl.minimum(b, acc / n_c))
        own_size = tl.load(size_ptr + own, mask=mask_i, other=1)
        s = _silhouette_value(a, b, own_size <= 1)
        tl.store(out_ptr + layer * N + offs_i, s, mask=mask_i)

    @triton.jit(do_not_specialize=UNSPECIALIZED)
    def _silhouette_onehot_kernel(xt_ptr, own_ptr, size_ptr, out_ptr, N, D, K,
                                  BLOCK_I: tl.constexpr, BLOCK_J: tl.constexpr,
                                  KP: tl.constexpr, PRECISION: tl.constexpr):
        layer, offs_i, mask_i, base, own = _point_block(xt_ptr, own_ptr, N, D, BLOCK_I)
        kidx = tl.arange(0, KP)
        acc = tl.zeros([BLOCK_I, KP], dtype=tl.float32)
        for j0 in range(0, N, BLOCK_J):
            offs_j = j0 + tl.arange(0, BLOCK_J)
            mask_j = offs_j < N
            lab_j = tl.load(own_ptr + offs_j, mask=mask_j, other=-1)
            d2 = tl.zeros([BLOCK_I, BLOCK_J], dtype=tl.float32)
            for k in range(0, D):
                xi = tl.load(base + k * N + offs_i, mask=mask_i, other=0.0).to(tl.float32)
                xj = tl.load(base + k * N + offs_j, mask=mask_j, other=0.0).to(tl.float32)
                diff = xi[:, None] - xj[None, :]
                d2 += diff * diff
            dist = tl.where(mask_j[None, :], tl.sqrt(d2), 0.0)
            onehot = (lab_j[:, None] == kidx[None, :]).to(tl.float32)
            acc = tl.dot(dist, onehot, acc, input_precision=PRECISION)
        sizes = tl.load(size_ptr + kidx, mask=kidx < K, other=1).to(tl.float32)
        is_own = own[:, None] == kidx[None, :]
        own_size = tl.sum(tl.where(is_own, sizes[None, :], 0.0), axis=1)
        a = tl.sum(tl.where(is_own, acc, 0.0), axis=1) / tl.maximum(own_size - 1.0, 1.0)
        other = (~is_own) & (kidx[None, :] < K)
        b = tl.min(tl.where(other, acc / sizes[None, :], float("inf")), axis=1)
        s = _silhouette_value(a, b, own_size <= 1.0)
        tl.store(out_ptr + layer * N + offs_i, s.to(tl.float64), mask=mask_i)


def silhouette_samples_triton(xt: torch.Tensor, offsets: torch.Tensor, own: torch.Tensor,
                              out: torch.Tensor | None = None, *, variant: str = "segment",
                              block_i: int = 64, block_j: int = 64) -> torch.Tensor:
    """Per-point silhouette of all layers in one Triton launch.

    Args:
        xt: ``[L, d, N]`` contiguous points sorted by cluster, "layer, dimension, point" order.
        offsets: ``[K + 1]`` int64 segment starts on the same device.
        own: ``[N]`` int32 cluster index of each sorted point.
        out: optional float64 ``[L, N]`` buffer.
        variant: ``"segment"`` (any K) or ``"onehot"`` (K <= 128, float32 distances).

    Returns:
        float64 ``[L, N]``.
    """
    check_triton_tensors(xt, offsets, own)
    if xt.ndim != 3 or not xt.is_contiguous():
        raise ValueError(f"xt must be a contiguous [L, d, N] tensor, got shape {tuple(xt.shape)}")
    L, D, N = xt.shape
    K = offsets.numel() - 1
    if out is None:
        out = torch.empty((L, N), dtype=torch.float64, device=xt.device)
    sizes = (offsets[1:] - offsets[:-1]).to(torch.int32).contiguous()
    own = own.to(torch.int32).contiguous()
    grid = (L, triton.cdiv(N, block_i))
    if variant == "segment":
        _silhouette_segment_kernel[grid](xt, offsets, own, sizes, out, N, D, K,
                                         BLOCK_I=block_i, BLOCK_J=block_j)
    elif variant == "onehot":
        if K > ONEHOT_MAX_CLUSTERS:
            raise ValueError(f"variant='onehot' supports at most {ONEHOT_MAX_CLUSTERS} clusters, "
                             f"got {K}; use variant='segment'")
        kp = max(16, triton.next_power_of_2(K))
        precision = "tf32x3" if xt.is_cuda else "ieee"
        _silhouette_onehot_kernel[grid](xt, own, sizes, out, N, D, K, BLOCK_I=block_i,
                                        BLOCK_J=block_j, KP=kp, PRECISION=precision)
    else:
        raise ValueError(f"unknown silhouette variant {variant!r}; use 'segment' or 'onehot'")
    return out
