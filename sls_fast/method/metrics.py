"""Clustering scores of every layer at once: silhouette, Calinski-Harabasz, Davies-Bouldin.

Semantics equal scikit-learn's (Euclidean distance; a point alone in its cluster has silhouette
0; 2 <= number of distinct labels <= N - 1). One preparation (validation, label encoding, sort
by cluster) is shared by all layers and all metrics; each backend then runs one batched pass.

Backends:
    ``"torch"``   pure-torch reference (any device; float64-exact for float64 input)
    ``"native"``  C++/OpenMP kernels of ``sls_fast._C`` (CPU, NumPy buffers)
    ``"triton"``  Triton kernels, one launch over layers x point blocks (CUDA tensors, or CPU
                  tensors when ``TRITON_INTERPRET=1``)
    ``"auto"``    triton on CUDA, native on CPU
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, Iterable

import torch

from sls_fast.common.checks import check_choice
from sls_fast.common.arrays import ArrayLike, array_library, as_tensor, to_library
from sls_fast.kernels import triton_interpreting
from sls_fast.kernels.cluster_stats import cluster_stats_torch, cluster_stats_triton
from sls_fast.kernels.native import cluster_stats_native, silhouette_samples_native
from sls_fast.kernels.silhouette import silhouette_samples_torch, silhouette_samples_triton

__all__ = ["silhouette_score", "calinski_harabasz_score", "davies_bouldin_score",
           "cluster_scores", "METRICS", "BACKENDS"]

METRICS = ("silhouette", "calinski_harabasz", "davies_bouldin")
BACKENDS = ("auto", "torch", "native", "triton")


@dataclass
class _Prepared:
    x_sorted: torch.Tensor  # [L, N, d] float32/float64, points sorted by cluster
    offsets: torch.Tensor  # [K + 1] int64, on x's device
    own: torch.Tensor  # [N] int64 cluster index of each sorted point, on x's device
    perm: torch.Tensor  # [N] sorted position -> original index
    library: str
    squeeze: bool  # input was [N, d]

    @property
    def num_clusters(self) -> int:
        return self.offsets.numel() - 1


def _encode_labels(labels, n: int, device: torch.device):
    lab, _ = as_tensor(labels, "labels")
    if lab.ndim != 1:
        if lab.ndim == 2 and 1 in lab.shape:
            lab = lab.reshape(-1)
        else:
            raise ValueError(f"labels must be 1-D [N], got shape {tuple(lab.shape)}")
    if lab.numel() != n:
        raise ValueError(f"labels has {lab.numel()} entries but X has N = {n} points")
    if lab.dtype == torch.bool:
        lab = lab.to(torch.int64)
    elif lab.is_floating_point():
        if not torch.isfinite(lab).all():
            raise ValueError("labels contain NaN or infinity")
        if not (lab == torch.round(lab)).all():
            bad = lab[lab != torch.round(lab)][0].item()
            raise ValueError(f"labels must be integers (integer-valued floats are accepted), got {bad}")
        lab = lab.to(torch.int64)
    elif lab.is_complex():
        raise TypeError(f"labels must be integers, got complex dtype {lab.dtype}")
    else:
        lab = lab.to(torch.int64)
    lab = lab.to(device)
    uniq, codes = torch.unique(lab, sorted=True, return_inverse=True)
    k = uniq.numel()
    if not 1 < k < n:
        raise ValueError(f"Number of labels is {k}. Valid values are 2 to n_samples - 1 "
                         f"(inclusive) = {n - 1} (scikit-learn's rule)")
    return codes, k


def _prepare(X, labels) -> _Prepared:
    library = array_library(X)
    x, library = as_tensor(X, "X")
    if x.ndim not in (2, 3):
        raise ValueError(f"X must be [N, d] or [L, N, d], got {x.ndim}-D shape {tuple(x.shape)}")
    squeeze = x.ndim == 2
    if squeeze:
        x = x.unsqueeze(0)
    L, N, d = x.shape
    if L == 0 or N == 0 or d == 0:
        raise ValueError(f"X is empty: shape {tuple(x.shape[1:] if squeeze else x.shape)}")
    if x.is_complex():
        raise TypeError(f"X must be real, got {x.dtype}")
    if not x.is_floating_point():
        x = x.to(torch.float64)
    elif x.dtype in (torch.float16, torch.bfloat16):
        x = x.to(torch.float32)
    finite = torch.isfinite(x).all(dim=(1, 2))
    if not bool(finite.all()):
        bad = torch.nonzero(~finite).flatten().tolist()
        where = "X" if squeeze else f"X (layers {bad[:8]})"
        raise ValueError(f"{where} contains NaN or infinity")
    codes, k = _encode_labels(labels, N, x.device)
    perm = torch.argsort(codes, stable=True)
    counts = torch.bincount(codes, minlength=k)
    offsets = torch.zeros(k + 1, dtype=torch.int64, device=x.device)
    offsets[1:] = torch.cumsum(counts, 0)
    x_sorted = x.index_select(1, perm).contiguous()
    return _Prepared(x_sorted, offsets, codes[perm], perm, library, squeeze)


def _resolve_backend(backend: str, x: torch.Tensor) -> str:
    check_choice(backend, "backend", BACKENDS)
    if backend == "auto":
        return "triton" if x.is_cuda else "native"
    if backend == "native" and x.device.type != "cpu":
        raise ValueError(f"backend='native' runs on the CPU; X is on {x.device}. Use "
                         "backend='triton' or 'torch', or move X to the CPU")
    if backend == "triton" and not x.is_cuda and not triton_interpreting():
        raise ValueError("backend='triton' needs CUDA data (or TRITON_INTERPRET=1 set before "
                         "importing sls_fast); X is on the CPU. Use backend='native' or 'torch'")
    return backend


def _silhouette(p: _Prepared, backend: str) -> torch.Tensor:
    L, N, _ = p.x_sorted.shape
    out = torch.full((L, N), float("nan"), dtype=torch.float64, device=p.x_sorted.device)
    if backend == "torch":
        silhouette_samples_torch(p.x_sorted, p.offsets, p.own, out)
    elif backend == "native":
        xt = p.x_sorted.transpose(1, 2).contiguous().numpy()
        silhouette_samples_native(xt, p.offsets.numpy(), out.numpy())
    else:
        silhouette_samples_triton(p.x_sorted.transpose(1, 2).contiguous(), p.offsets, p.own, out)
    return out.mean(dim=1)


def _stats(p: _Prepared, backend: str):
    if backend == "torch":
        return cluster_stats_torch(p.x_sorted, p.offsets, p.own)
    if backend == "native":
        c, s, d = cluster_stats_native(p.x_sorted.numpy(), p.offsets.numpy())
        return torch.from_numpy(c), torch.from_numpy(s), torch.from_numpy(d)
    return cluster_stats_triton(p.x_sorted, p.offsets)


def _calinski_harabasz(p: _Prepared, centroid, sq) -> torch.Tensor:
    N = p.x_sorted.shape[1]
    K = p.num_clusters
    sizes = (p.offsets[1:] - p.offsets[:-1]).to(torch.float64)  # [K]
    mean = (centroid * sizes.view(1, K, 1)).sum(dim=1) / N  # [L, d]
    extra = (sizes.view(1, K) * ((centroid - mean[:, None, :]) ** 2).sum(dim=2)).sum(dim=1)
    intra = sq.sum(dim=1)
    safe = torch.where(intra == 0, torch.ones_like(intra), intra)
    return torch.where(intra == 0, torch.ones_like(intra), extra * (N - K) / (safe * (K - 1)))


def _davies_bouldin(p: _Prepared, centroid, dist) -> torch.Tensor:
    sizes = (p.offsets[1:] - p.offsets[:-1]).to(torch.float64)
    intra = dist / sizes.view(1, -1)  # mean distance to the centroid [L, K]
    cdist = torch.cdist(centroid, centroid, compute_mode="donot_use_mm_for_euclid_dist")
    degenerate = (intra.abs() <= 1e-8).all(dim=1) | (cdist.abs() <= 1e-8).all(dim=2).all(dim=1)
    cdist = torch.where(cdist == 0, torch.full_like(cdist, float("inf")), cdist)
    ratio = (intra[:, :, None] + intra[:, None, :]) / cdist
    score = ratio.max(dim=2).values.mean(dim=1)
    return torch.where(degenerate, torch.zeros_like(score), score)


def _compute(X, labels, metrics: Iterable[str], backend: str):
    metrics = tuple(metrics)
    unknown = [m for m in metrics if m not in METRICS]
    if unknown or not metrics:
        raise ValueError(f"unknown metrics {unknown or metrics}; choose from {METRICS}")
    check_choice(backend, "backend", BACKENDS)
    p = _prepare(X, labels)
    be = _resolve_backend(backend, p.x_sorted)
    out: Dict[str, torch.Tensor] = {}
    if "silhouette" in metrics:
        out["silhouette"] = _silhouette(p, be)
    if "calinski_harabasz" in metrics or "davies_bouldin" in metrics:
        centroid, sq, dist = _stats(p, be)
        dev = p.x_sorted.device
        centroid, sq, dist = centroid.to(dev), sq.to(dev), dist.to(dev)
        if "calinski_harabasz" in metrics:
            out["calinski_harabasz"] = _calinski_harabasz(p, centroid, sq)
        if "davies_bouldin" in metrics:
            out["davies_bouldin"] = _davies_bouldin(p, centroid, dist)
    return {name: to_library(v[0] if p.squeeze else v, p.library, scalar=p.squeeze)
            for name, v in out.items()}


def cluster_scores(X: ArrayLike, labels: ArrayLike, metrics: Iterable[str] = METRICS, *,
                   backend: str = "auto") -> dict:
    """All requested clustering scores of every layer from one preparation and one batched pass.

    Args:
        X: ``[L, N, d]`` (one result per layer) or ``[N, d]`` (scalars); NumPy, torch (any
            device), CuPy, or nested lists.
        labels: ``[N]`` integer class labels (gaps allowed; integer-valued floats accepted).
        metrics: any of ``"silhouette"``, ``"calinski_harabasz"``, ``"davies_bouldin"``.
        backend: ``"auto"``, ``"torch"``, ``"native"`` or ``"triton"``.

    Returns:
        ``{metric: scores}``, each ``[L]`` (or a scalar) in the input's library and device.

    Example:
        >>> import numpy as np, sls_fast
        >>> X = np.random.default_rng(0).normal(size=(12, 500, 2))
        >>> y = np.arange(500) % 10
        >>> sorted(sls_fast.cluster_scores(X, y))
        ['calinski_harabasz', 'davies_bouldin', 'silhouette']
    """
    return _compute(X, labels, metrics, backend)


def silhouette_score(X: ArrayLike, labels: ArrayLike, *, backend: str = "auto") -> Any:
    """Mean silhouette coefficient per layer (Euclidean), equal to scikit-learn's.

    ``X [L, N, d] -> [L]``; ``X [N, d] -> scalar``. Memory O(L * N + N * K): no N x N matrix.

    Example:
        >>> import numpy as np, sls_fast
        >>> X = np.random.default_rng(0).normal(size=(3, 200, 2)); y = np.arange(200) % 4
        >>> sls_fast.silhouette_score(X, y).shape
        (3,)
    """
    return _compute(X, labels, ("silhouette",), backend)["silhouette"]


def calinski_harabasz_score(X: ArrayLike, labels: ArrayLike, *, backend: str = "auto") -> Any:
    """Calinski-Harabasz index per layer, equal to scikit-learn's (``[L, N, d] -> [L]``)."""
    return _compute(X, labels, ("calinski_harabasz",), backend)["calinski_harabasz"]


def davies_bouldin_score(X: ArrayLike, labels: ArrayLike, *, backend: str = "auto") -> Any:
    """Davies-Bouldin index per layer, equal to scikit-learn's (``[L, N, d] -> [L]``)."""
    return _compute(X, labels, ("davies_bouldin",), backend)["davies_bouldin"]
