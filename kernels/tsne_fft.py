"""The t-SNE repulsion by FFT-accelerated interpolation (the FIt-SNE algorithm of Linderman et
al., 2019), batched over problems, in torch: O(N) per iteration instead of exact O(N^2), on
the CPU (torch.fft) and on CUDA (cuFFT) alike. Part of :mod:`sls_fast.kernels.tsne`.

For every problem the points' square bounding box is cut into ``boxes x boxes`` intervals with
``nodes`` equispaced interpolation nodes per interval and dimension. Each point's charges
``[1, y0, y1, |y|^2]`` are spread onto the nodes of its interval with Lagrange weights, the node
potentials of the kernel ``w^2 = 1 / (1 + d^2)^2`` are one FFT convolution on the regular grid
(embedded in a circulant of twice its size), and each point reads its potentials back with the
same weights. From the four potentials:

* ``rep_i = sum_j w_ij^2 (y_i - y_j) = y_i phi0_i - (phi1_i, phi2_i)``,
* ``sum_j w_ij = sum_j w_ij^2 (1 + |y_i - y_j|^2) = (1 + |y_i|^2) phi0_i - 2 y_i . (phi1_i,
  phi2_i) + phi3_i`` (self included), so ``Z = sum_i (that) - N``.

All problems share the grid's shape (the largest box count of the batch) and each has its own
spacing. :func:`repulsion_exact` is the float64 reference beside it.
"""
from __future__ import annotations

import math
from typing import Tuple

import torch
from scipy.fft import next_fast_len

from .tsne_forces import tsne_forces_torch

__all__ = ["repulsion_fft", "repulsion_exact", "grid_boxes", "MIN_BOXES", "MAX_BOXES", "NODES"]

MIN_BOXES = 50  # intervals per dimension at least (openTSNE's min_num_intervals)
# intervals per dimension at most: a diverging embedding or a far outlier would ask for a grid
# of any size (a span of 5,000 units: 15,000 nodes per side, a 30,000^2 circulant per charge and
# problem). openTSNE caps at 1,000 and widens the intervals instead, which silently breaks the
# interpolation (an outlier 7,000 units away made Z negative); we refuse instead.
MAX_BOXES = 1000
NODES = 3  # interpolation nodes per interval and dimension (openTSNE's n_interpolation_points)
BOXES_PER_UNIT = 1.0  # intervals per unit of embedding range (openTSNE's ints_in_interval)


def repulsion_exact(y: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """``(rep [B, N, 2], Z [B])`` exactly, in float64: the reference, the exact forces'
    (:func:`~.tsne_forces.tsne_forces_torch`) without affinities."""
    _, rep, z = tsne_forces_torch(y.double())
    return rep, z


def _lagrange(t: torch.Tensor, nodes: torch.Tensor) -> torch.Tensor:
    """The Lagrange basis at ``t`` (any shape) for ``nodes`` ``[p]``: ``[..., p]``."""
    p = nodes.shape[0]
    out = []
    for j in range(p):
        v = torch.ones_like(t)
        for m in range(p):
            if m != j:
                v = v * (t - nodes[m]) / (nodes[j] - nodes[m])
        out.append(v)
    return torch.stack(out, -1)


def grid_boxes(span: float, *, min_boxes: int = MIN_BOXES, boxes_per_unit: float = BOXES_PER_UNIT,
               max_boxes: int = MAX_BOXES) -> int:
    """Intervals per dimension for an embedding that spans ``span`` units: ``boxes_per_unit``
    per unit, at least ``min_boxes``, rounded up to a 2/3/5-smooth count (so is the circulant,
    ``2 x nodes x boxes`` per side: FFTs of such sizes are the fast ones; a box count of 157
    made one call 25% slower than 160 on the CPU; openTSNE rounds the same way);
    ``ValueError`` beyond ``max_boxes``."""
    want = next_fast_len(max(int(min_boxes), int(math.ceil(span * boxes_per_unit))), real=True)
    if want > max_boxes:
        raise ValueError(
            f"the embedding spans {span:.0f} units: the FFT repulsion's grid would need {want} "
            f"intervals per side, more than MAX_BOXES = {max_boxes} (an embedding that diverged, "
            "or a point far from all the others); use an exact t-SNE backend ('native' on the "
            "CPU, 'triton' on CUDA) for this data")
    return want


def repulsion_fft(y: torch.Tensor, *, nodes: int = NODES, min_boxes: int = MIN_BOXES,
                  boxes_per_unit: float = BOXES_PER_UNIT) -> Tuple[torch.Tensor, torch.Tensor]:
    """``(rep [B, N, 2], Z [B])`` of every problem of ``y`` ``[B, N, 2]`` by interpolation on
    a grid and one batched FFT convolution; the dtype of ``y`` (float32 or float64) is kept.

    ``nodes`` interpolation nodes per interval, at least ``min_boxes`` intervals per dimension
    (more when the embedding spans more than ``min_boxes / boxes_per_unit``; rounded up to a
    fast FFT size; more than :data:`MAX_BOXES` is refused, see :func:`grid_boxes`)."""
    if y.ndim != 3 or y.shape[-1] != 2:
        raise ValueError(f"y must be [B, N, 2], got {tuple(y.shape)}")
    if nodes < 2 or min_boxes < 1:
        raise ValueError("nodes must be >= 2 and min_boxes >= 1")
    B, N, _ = y.shape
    dt, dev = y.dtype, y.device
    lo = y.amin(dim=(1, 2))  # one square box per problem (both dimensions)
    hi = y.amax(dim=(1, 2))
    span = (hi - lo).clamp_min(1e-6)
    boxes = grid_boxes(float(span.max()), min_boxes=min_boxes, boxes_per_unit=boxes_per_unit)
    width = span * (1 + 1e-6) / boxes  # [B]: the last point stays inside the last box
    h = width / nodes  # node spacing: nodes at (m + 0.5) h, m = 0 .. boxes * nodes - 1
    n = boxes * nodes
    pp = nodes * nodes
    t = (y - lo[:, None, None]) / width[:, None, None]  # [B, N, 2] in box units
    box = t.floor().clamp_(0, boxes - 1)
    local = t - box  # [0, 1) inside its box
    grid_nodes = (torch.arange(nodes, dtype=dt, device=dev) + 0.5) / nodes
    wx = _lagrange(local[..., 0], grid_nodes)  # [B, N, p]
    wy = _lagrange(local[..., 1], grid_nodes)
    w = (wx[..., :, None] * wy[..., None, :]).reshape(B, 1, N * pp)  # [B, 1, N p p]
    ix = box[..., 0].long()[..., None] * nodes + torch.arange(nodes, device=dev)  # [B, N, p]
    iy = box[..., 1].long()[..., None] * nodes + torch.arange(nodes, device=dev)
    flat = (ix[..., :, None] * n + iy[..., None, :]).reshape(B, 1, N * pp).expand(B, 4, N * pp)
    sq = (y * y).sum(-1)
    charges = torch.stack([torch.ones_like(sq), y[..., 0], y[..., 1], sq], 1)  # [B, 4, N]
    spread = (charges[..., None] * w.view(B, 1, N, pp)).view(B, 4, N * pp)
    grid = torch.zeros(B, 4, n * n, dtype=dt, device=dev).scatter_add_(2, flat, spread)
    pot = _convolve(grid.view(B, 4, n, n), _kernel_transform(n, h))  # [B, 4, n, n]
    got = pot.reshape(B, 4, n * n).gather(2, flat)  # [B, 4, N p p]
    phi = (got * w).view(B, 4, N, pp).sum(-1)  # [B, 4, N]
    rep = y * phi[:, 0, :, None] - phi[:, 1:3].transpose(1, 2)
    z_i = ((1.0 + sq) * phi[:, 0] - 2.0 * (y[..., 0] * phi[:, 1] + y[..., 1] * phi[:, 2])
           + phi[:, 3])
    return rep, z_i.sum(1) - N


def _kernel_transform(n: int, h: torch.Tensor) -> torch.Tensor:
    """The real FFT ``[B, 2n, n + 1]`` of the kernel ``1 / (1 + d^2)^2`` at every node offset
    (spacing ``h`` ``[B]``), embedded in a ``2n x 2n`` circulant (offset n unused: 0)."""
    off = torch.arange(2 * n, dtype=h.dtype, device=h.device)
    off = torch.where(off < n, off, off - 2 * n)
    off2 = off * off
    d2 = (off2[:, None] + off2[None, :])[None] * (h * h)[:, None, None]  # [B, 2n, 2n]
    kern = d2.add_(1.0).reciprocal_().square_()
    kern[:, n, :] = 0
    kern[:, :, n] = 0
    return torch.fft.rfft2(kern)


def _convolve(grid: torch.Tensor, fk: torch.Tensor) -> torch.Tensor:
    """``grid`` ``[B, C, n, n]`` convolved with the circulant kernel whose real FFT is ``fk``
    ``[B, 2n, n + 1]``: the first ``n x n`` outputs. The transforms skip the zero half of the
    padded grid (forward) and the unused half of the output (inverse), and run the second
    dimension's transforms on contiguous rows: 1.2-1.3x faster on the CPU than a plain 2n x 2n
    ``rfft2`` / ``irfft2`` pair (12 x 4 grids of 300^2 and 450^2)."""
    n = grid.shape[-1]
    f = torch.fft.rfft(grid, n=2 * n, dim=-1)  # [B, C, n, n + 1]: the n non-zero rows only
    f = torch.fft.fft(f.transpose(-1, -2).contiguous(), n=2 * n, dim=-1)  # [B, C, n + 1, 2n]
    f.mul_(fk.transpose(-1, -2)[:, None])
    f = torch.fft.ifft(f, dim=-1)[..., :n]  # [B, C, n + 1, n]
    return torch.fft.irfft(f.transpose(-1, -2).contiguous(), n=2 * n, dim=-1)[..., :n]
