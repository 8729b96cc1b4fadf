"""Exact t-SNE forces of every problem at once and the fused update step: the torch reference,
the Triton kernels and the C++/OpenMP kernel. Part of :mod:`sls_fast.kernels.tsne`."""
from __future__ import annotations

from typing import NamedTuple, Optional, Tuple

import torch

from ._triton import HAS_TRITON, check_triton_tensors, tl, triton

__all__ = ["MIN_GAIN", "MAX_SPLIT", "tsne_forces_torch", "tsne_forces_triton", "ForcesConfig",
           "forces_config", "forces_buffers", "NeighbourEdges",
           "neighbour_edges", "attraction_edges_torch", "attraction_edges",
           "repeats_of", "gradient_from_forces", "tsne_step_torch", "tsne_step_triton"]

MIN_GAIN = 0.01


def tsne_forces_torch(y: torch.Tensor, P: Optional[torch.Tensor] = None,
                      nbr: Optional[torch.Tensor] = None, pval: Optional[torch.Tensor] = None,
                      *, max_chunk_elements: int = 1 << 24
                      ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Reference attractive and repulsive sums and the normaliser Z of every layer.

    Args:
        y: ``[L, N, 2]`` embedding (float32 or float64; the result has its dtype).
        P: dense ``[LP, N, N]`` affinities, or ``None`` with ``nbr, pval`` (``[LP, M, N]``).
            ``LP`` divides ``L``: problem ``l`` uses the affinities of layer ``l % LP``, so
            the S = L / LP repeats of a layer (run-major) share one P, never copied. Neither:
            ``attr`` is zero (the repulsion alone, the reference of :mod:`.tsne_fft`).

    Returns:
        ``(attr, rep, Z)``: ``attr[l, i] = sum_j p_ij w_ij (y_i - y_j)``,
        ``rep[l, i] = sum_j w_ij^2 (y_i - y_j)`` (both ``[L, N, 2]``), ``Z[l] = sum_{i != j} w_ij``.
        The gradient is :func:`gradient_from_forces`.

    Example:
        >>> y = torch.randn(2, 50, 2); P = torch.rand(2, 50, 50)
        >>> attr, rep, Z = tsne_forces_torch(y, P)
    """
    if P is not None and nbr is not None:
        raise ValueError("pass either a dense P or sparse (nbr, pval), not both")
    L, N, _ = y.shape
    if P is not None or nbr is not None:
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


class NeighbourEdges(NamedTuple):
    """The non-zero affinities of ``LP`` layers as compressed rows, each layer padded to the
    batch's largest count ``E`` (padding: p = 0 on row N - 1, column N - 1).

    ``rowptr`` int64 ``[LP, N + 1]`` (point i's edges are ``rowptr[l, i] .. rowptr[l, i + 1]``),
    ``rows`` int64 / ``cols`` int32 / ``p`` ``[LP, E]`` (rows sorted; a row keeps the order of
    the neighbour lists, increasing neighbour)."""
    rowptr: torch.Tensor
    rows: torch.Tensor
    cols: torch.Tensor
    p: torch.Tensor


def neighbour_edges(P: Optional[torch.Tensor] = None, nbr: Optional[torch.Tensor] = None,
                    pval: Optional[torch.Tensor] = None) -> NeighbourEdges:
    """The affinities' non-zeros as :class:`NeighbourEdges`, from a dense ``P`` ``[LP, N, N]``
    or the padded lists ``nbr, pval`` ``[LP, M, N]``. The padded lists are as long as the
    largest row of the batch: a hub point with 1,056 neighbours where the mean is 132 (12 x
    5,000 points, benchmarks/bench_tsne_fft.py) makes every point walk 1,056 slots; the
    compressed rows walk only the non-zeros."""
    if (P is None) == (nbr is None):
        raise ValueError("pass either a dense P or sparse (nbr, pval)")
    if P is not None:
        LP, N, _ = P.shape
        keep = P != 0  # [LP, N(i), N(j)]: row-major order is already (i, j)
        lidx, i, j = keep.nonzero(as_tuple=True)
        val = P[keep]
    else:
        LP, _, N = nbr.shape
        keep = (pval != 0).transpose(1, 2)  # [LP, N(i), M(slot)]: row-major is (i, slot)
        lidx, i, m = keep.nonzero(as_tuple=True)
        j = nbr.transpose(1, 2)[lidx, i, m]
        val = pval.transpose(1, 2)[lidx, i, m]
    dev = lidx.device
    counts = torch.bincount(lidx, minlength=LP)
    E = max(1, int(counts.max()) if counts.numel() else 1)
    start = torch.cumsum(counts, 0) - counts
    slot = torch.arange(lidx.numel(), device=dev) - start[lidx]
    rows = torch.full((LP, E), N - 1, dtype=torch.int64, device=dev)
    cols = torch.full((LP, E), N - 1, dtype=torch.int32, device=dev)
    p = torch.zeros((LP, E), dtype=val.dtype, device=dev)
    rows[lidx, slot] = i
    cols[lidx, slot] = j.to(torch.int32)
    p[lidx, slot] = val
    per_row = torch.zeros((LP, N), dtype=torch.int64, device=dev)
    per_row.index_put_((lidx, i), torch.ones_like(i), accumulate=True)
    rowptr = torch.zeros((LP, N + 1), dtype=torch.int64, device=dev)
    rowptr[:, 1:] = per_row.cumsum(1)
    return NeighbourEdges(rowptr, rows, cols, p)


def attraction_edges_torch(y: torch.Tensor, edges: NeighbourEdges) -> torch.Tensor:
    """``attr[l, i] = sum_j p_ij w_ij (y_i - y_j)`` ``[L, N, 2]`` over the edges (the dtype of
    ``y``; layer ``l % LP`` for problem ``l``): the torch reference, any device (on CUDA the
    sums are atomic adds, whose order is not fixed)."""
    L, N, _ = y.shape
    S, LP = repeats_of(L, edges.rows)
    E = edges.rows.shape[1]
    yv = y.view(S, LP, N, 2)
    ri = edges.rows[None, :, :, None].expand(S, LP, E, 2)
    ci = edges.cols.to(torch.int64)[None, :, :, None].expand(S, LP, E, 2)
    d = yv.gather(2, ri) - yv.gather(2, ci)
    pw = edges.p.to(y.dtype)[None] / (1.0 + (d * d).sum(-1))
    out = torch.zeros((S, LP, N, 2), dtype=y.dtype, device=y.device)
    return out.scatter_add_(2, ri, pw[..., None] * d).view(L, N, 2)


def attraction_edges(y: torch.Tensor, edges: NeighbourEdges, *,
                     num_threads: int = 0) -> torch.Tensor:
    """:func:`attraction_edges_torch`, by the C++/OpenMP kernel for float32 on the CPU (each
    point's sum in its row's order: independent of the thread count) and by the reference
    elsewhere."""
    if y.device.type == "cpu" and y.dtype == torch.float32:
        from .native import native_module

        out = torch.empty_like(y)
        native_module().tsne_attraction_csr_f32(
            y.contiguous().numpy(), edges.rowptr.contiguous().numpy(),
            edges.cols.contiguous().numpy(), edges.p.to(torch.float32).contiguous().numpy(),
            out.numpy(), int(num_threads))
        return out
    return attraction_edges_torch(y, edges)


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
    def _tsne_forces_kernel(y_ptr, p_ptr, rowptr_ptr, col_ptr, pv_ptr, attr_ptr, rep_ptr,
                            zpart_ptr, N, E, NUM_BLOCKS, P_LAYERS, L, J_PER_SPLIT,
                            DENSE: tl.constexpr, BLOCK_I: tl.constexpr, BLOCK_J: tl.constexpr):
        # program (problem, block of BLOCK_I points i, split s): the pairs (i, j) for the j of
        # split s, [s * J_PER_SPLIT, (s + 1) * J_PER_SPLIT) (a whole number of j tiles), and,
        # with compressed rows (not DENSE), split s's share of each point's row: the program
        # loops as long as the longest share in its block, not the batch's longest row. Its
        # sums go to split s's own partial buffers; the update kernel adds them in order.
        layer = tl.program_id(0).to(tl.int64)
        player = layer % P_LAYERS  # the affinities of this problem (shared by a layer's runs)
        pid = tl.program_id(1)
        split = tl.program_id(2)
        offs_i = pid * BLOCK_I + tl.arange(0, BLOCK_I)
        mask_i = offs_i < N
        ybase = y_ptr + layer * N * 2
        yi0 = tl.load(ybase + offs_i * 2, mask=mask_i, other=0.0).to(tl.float32)
        yi1 = tl.load(ybase + offs_i * 2 + 1, mask=mask_i, other=0.0).to(tl.float32)
        # tile-shaped accumulators, reduced across j once at the end (not once per tile)
        z = tl.zeros([BLOCK_I, BLOCK_J], dtype=tl.float32)
        r0 = tl.zeros([BLOCK_I, BLOCK_J], dtype=tl.float32)
        r1 = tl.zeros([BLOCK_I, BLOCK_J], dtype=tl.float32)
        a0 = tl.zeros([BLOCK_I, BLOCK_J], dtype=tl.float32)
        a1 = tl.zeros([BLOCK_I, BLOCK_J], dtype=tl.float32)
        j_start = split * J_PER_SPLIT
        j_end = tl.minimum(N, j_start + J_PER_SPLIT)
        for j0 in range(j_start, j_end, BLOCK_J):
            offs_j = j0 + tl.arange(0, BLOCK_J)
            mask_j = offs_j < j_end
            yj0 = tl.load(ybase + offs_j * 2, mask=mask_j, other=0.0).to(tl.float32)
            yj1 = tl.load(ybase + offs_j * 2 + 1, mask=mask_j, other=0.0).to(tl.float32)
            dx = yi0[:, None] - yj0[None, :]
            dy = yi1[:, None] - yj1[None, :]
            valid = mask_i[:, None] & mask_j[None, :] & (offs_i[:, None] != offs_j[None, :])
            w = tl.where(valid, 1.0 / (1.0 + dx * dx + dy * dy), 0.0)
            z += w
            w2 = w * w
            r0 += w2 * dx
            r1 += w2 * dy
            if DENSE:
                p = tl.load(p_ptr + player * N * N + offs_i[:, None].to(tl.int64) * N
                            + offs_j[None, :], mask=valid, other=0.0).to(tl.float32)
                pw = p * w
                a0 += pw * dx
                a1 += pw * dy
        s0 = tl.sum(a0, axis=1)
        s1 = tl.sum(a1, axis=1)
        if not DENSE:
            rbase = rowptr_ptr + player * (N + 1)
            row_lo = tl.load(rbase + offs_i, mask=mask_i, other=0)
            row_hi = tl.load(rbase + offs_i + 1, mask=mask_i, other=0)
            nsplit = tl.num_programs(2)
            share = (row_hi - row_lo + nsplit - 1) // nsplit
            e_start = row_lo + split * share
            e_end = tl.minimum(row_hi, e_start + share)
            steps = tl.max(tl.maximum(e_end - e_start, 0), axis=0)
            ebase = player * E
            for t in range(0, steps):
                e = e_start + t
                mask_e = mask_i & (e < e_end)
                j = tl.load(col_ptr + ebase + e, mask=mask_e, other=0).to(tl.int64)
                pv = tl.load(pv_ptr + ebase + e, mask=mask_e, other=0.0).to(tl.float32)
                yj0 = tl.load(ybase + j * 2, mask=mask_e, other=0.0).to(tl.float32)
                yj1 = tl.load(ybase + j * 2 + 1, mask=mask_e, other=0.0).to(tl.float32)
                dx = yi0 - yj0
                dy = yi1 - yj1
                pw = pv / (1.0 + dx * dx + dy * dy)
                s0 += pw * dx
                s1 += pw * dy
        obase = (split.to(tl.int64) * L + layer) * N * 2
        tl.store(attr_ptr + obase + offs_i * 2, s0, mask=mask_i)
        tl.store(attr_ptr + obase + offs_i * 2 + 1, s1, mask=mask_i)
        tl.store(rep_ptr + obase + offs_i * 2, tl.sum(r0, axis=1), mask=mask_i)
        tl.store(rep_ptr + obase + offs_i * 2 + 1, tl.sum(r1, axis=1), mask=mask_i)
        tl.store(zpart_ptr + (layer * tl.num_programs(2) + split) * NUM_BLOCKS + pid,
                 tl.sum(tl.sum(z, axis=1), axis=0))

    @triton.jit
    def _tsne_update_kernel(y_ptr, upd_ptr, gains_ptr, attr_ptr, rep_ptr, zpart_ptr,
                            N2, NUM_Z, L, exaggeration, momentum, learning_rate, min_gain,
                            SPLIT: tl.constexpr, BLOCK: tl.constexpr, NB_P2: tl.constexpr):
        layer = tl.program_id(0).to(tl.int64)
        pid = tl.program_id(1)
        kb = tl.arange(0, NB_P2)
        zb = tl.load(zpart_ptr + layer * NUM_Z + kb, mask=kb < NUM_Z, other=0.0)
        z = tl.sum(zb, axis=0)
        offs = pid * BLOCK + tl.arange(0, BLOCK)
        mask = offs < N2
        base = layer * N2
        a = tl.load(attr_ptr + base + offs, mask=mask, other=0.0)
        r = tl.load(rep_ptr + base + offs, mask=mask, other=0.0)
        for s in tl.static_range(1, SPLIT):  # the splits' partial sums, in order
            part = (s * L + layer) * N2 + offs
            a += tl.load(attr_ptr + part, mask=mask, other=0.0)
            r += tl.load(rep_ptr + part, mask=mask, other=0.0)
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


MAX_SPLIT = 8  # j splits per block of points at most (the update kernel unrolls over them)


class ForcesConfig(NamedTuple):
    """How :func:`tsne_forces_triton` cuts the pairs: blocks of ``block_i`` points i against
    tiles of ``block_j`` points j, the j range cut into ``split`` parts (whole tiles each) that
    run as separate programs and write separate partial sums."""
    block_i: int
    block_j: int
    split: int


def forces_config(L: int, N: int, device: torch.device, *, split: Optional[int] = None,
                  block_i: Optional[int] = None, block_j: Optional[int] = None,
                  sms: Optional[int] = None) -> ForcesConfig:
    """The tile sizes and j split for ``L`` problems of ``N`` points on ``device``.

    CUDA: 32 x 64 tiles; the j range is split until there are about 4 programs per SM, at
    most :data:`MAX_SPLIT` parts and never less than 4 j tiles per part (12 x 1,000 points:
    384 programs of 16 tiles each without a split, which leaves an H100's 132 SMs waiting on
    each program's serial walk). Elsewhere (the interpreter): 32 x 32, no split. Each choice
    can be forced (``split``, ``block_i``, ``block_j``); ``sms``: the SM count (default: the
    device's; given, the CUDA rule applies on any device)."""
    cuda = device.type == "cuda" or sms is not None
    bi = block_i or 32
    bj = block_j or (64 if cuda else 32)
    tiles = -(-N // bj)
    if split is None:
        split = 1
        if cuda:
            if sms is None:
                sms = torch.cuda.get_device_properties(device).multi_processor_count
            programs = L * -(-N // bi)
            split = max(1, min(MAX_SPLIT, -(-4 * sms // programs), tiles // 4))
    if not 1 <= int(split) <= MAX_SPLIT:
        raise ValueError(f"split must be in 1..{MAX_SPLIT}, got {split}")
    per = -(-tiles // int(split))  # whole tiles per split; no split left empty
    return ForcesConfig(int(bi), int(bj), -(-tiles // per))


def _j_per_split(N: int, cfg: ForcesConfig) -> int:
    """The j points of each split: whole tiles."""
    tiles = -(-N // cfg.block_j)
    return -(-tiles // cfg.split) * cfg.block_j


def _launch_forces(y, P, edges: Optional[NeighbourEdges], attr, rep, zpart,
                   cfg: ForcesConfig) -> None:
    """Launch the force kernel on prepared buffers (no checks: the optimiser's hot loop): dense
    ``P`` or compressed rows ``edges`` (rowptr int64, cols int32, p float32, contiguous).
    ``attr`` / ``rep`` ``[split, L, N, 2]``, ``zpart`` ``[L, split * cdiv(N, block_i)]``."""
    L, N, _ = y.shape
    nb = -(-N // cfg.block_i)
    grid = (L, nb, cfg.split)
    j_per = _j_per_split(N, cfg)
    if P is not None:
        _tsne_forces_kernel[grid](y, P, y, y, y, attr, rep, zpart, N, 1, nb, P.shape[0], L,
                                  j_per, DENSE=True, BLOCK_I=cfg.block_i, BLOCK_J=cfg.block_j)
    else:
        _tsne_forces_kernel[grid](y, y, edges.rowptr, edges.cols, edges.p, attr, rep, zpart, N,
                                  edges.cols.shape[1], nb, edges.rowptr.shape[0], L, j_per,
                                  DENSE=False, BLOCK_I=cfg.block_i, BLOCK_J=cfg.block_j)


def forces_buffers(y: torch.Tensor, cfg: ForcesConfig):
    """``(attr, rep, zpart)``: the partial-sum buffers of one launch (see :func:`_launch_forces`)."""
    L, N, _ = y.shape
    attr = torch.empty((cfg.split, L, N, 2), dtype=torch.float32, device=y.device)
    rep = torch.empty_like(attr)
    zpart = torch.empty((L, cfg.split * -(-N // cfg.block_i)), dtype=torch.float32,
                        device=y.device)
    return attr, rep, zpart


def tsne_forces_triton(y: torch.Tensor, P: Optional[torch.Tensor] = None,
                       nbr: Optional[torch.Tensor] = None, pval: Optional[torch.Tensor] = None,
                       *, block_i: Optional[int] = None, block_j: Optional[int] = None,
                       split: Optional[int] = None, return_partials: bool = False):
    """Same contract as :func:`tsne_forces_torch`, one Triton launch over all layers.

    Args:
        y: contiguous float32 ``[L, N, 2]`` (CUDA, or CPU under ``TRITON_INTERPRET=1``).
        P: float32 ``[LP, N, N]`` dense affinities, or ``nbr`` (int32) / ``pval`` (float32)
            ``[LP, M, N]`` padded neighbour lists (walked as compressed rows,
            :func:`neighbour_edges`); ``LP`` divides ``L`` (problem ``l`` reads the
            affinities of ``l % LP``: repeats share them).
        block_i, block_j, split: force a :class:`ForcesConfig` field (default:
            :func:`forces_config`).
        return_partials: return the partial sums as the update kernel reads them: ``attr``
            and ``rep`` ``[split, L, N, 2]`` and Z's ``[L, split * cdiv(N, block_i)]``.

    Returns:
        ``(attr, rep, Z)`` float32 (the splits added in order; ``Z``: ``[L]``), or the partials.

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
    cfg = forces_config(L, N, y.device, split=split, block_i=block_i, block_j=block_j)
    if P is not None:
        if tuple(P.shape) != (LP, N, N):
            raise ValueError(f"P must be [LP, N, N] = {(LP, N, N)}, got {tuple(P.shape)}")
        P = P.to(torch.float32).contiguous()
        edges = None
    else:
        if nbr.shape[2] != N or tuple(pval.shape) != tuple(nbr.shape):
            raise ValueError(f"nbr/pval must be [LP, M, N] with N = {N}; got "
                             f"{tuple(nbr.shape)} and {tuple(pval.shape)}")
        edges = neighbour_edges(nbr=nbr, pval=pval.to(torch.float32))
    attr, rep, zpart = forces_buffers(y, cfg)
    _launch_forces(y, P, edges, attr, rep, zpart, cfg)
    if return_partials:
        return attr, rep, zpart
    a, r = attr[0].clone(), rep[0].clone()
    for s in range(1, cfg.split):  # the update kernel's order
        a += attr[s]
        r += rep[s]
    return a, r, zpart.sum(dim=1)


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
    """Fused :func:`tsne_step_torch` on the partial sums of :func:`tsne_forces_triton`
    (``return_partials=True``: ``attr`` / ``rep`` ``[split, L, N, 2]``), one launch."""
    L, N, _ = y.shape
    if attr.ndim == 3:  # one split, as [L, N, 2]
        attr, rep = attr[None], rep[None]
    nz = zpart.shape[1]
    block = 256
    _tsne_update_kernel[(L, triton.cdiv(2 * N, block))](
        y, update, gains, attr, rep, zpart, 2 * N, nz, L, float(exaggeration), float(momentum),
        float(learning_rate), float(min_gain), SPLIT=attr.shape[0], BLOCK=block,
        NB_P2=max(16, triton.next_power_of_2(nz)))
