"""Wrappers over the C++/OpenMP extension ``sls_fast._C`` (NumPy buffers in and out)."""
from __future__ import annotations

import numpy as np

__all__ = ["silhouette_samples_native", "cluster_stats_native", "native_module"]


def native_module():
    """The compiled extension; a clear error if the install did not build it."""
    try:
        from .. import _C
    except ImportError as exc:  # pragma: no cover - only when the package was not built
        raise ImportError(
            "the native extension sls_fast._C is missing: install the package with pip "
            "(it is built by CMake), see README.md"
        ) from exc
    return _C


def _suffix(dtype) -> str:
    if dtype == np.float32:
        return "f32"
    if dtype == np.float64:
        return "f64"
    raise TypeError(f"native kernels take float32 or float64 arrays, got {dtype}")


def silhouette_samples_native(xt: np.ndarray, offsets: np.ndarray, out: np.ndarray | None = None,
                              *, num_threads: int = 0) -> np.ndarray:
    """Per-point silhouette; ``xt`` ``[L, d, N]`` sorted by cluster, ``out`` float64 ``[L, N]``."""
    C = native_module()
    xt = np.ascontiguousarray(xt)
    offsets = np.ascontiguousarray(offsets, dtype=np.int64)
    L, _, N = xt.shape
    if out is None:
        out = np.empty((L, N), dtype=np.float64)
    getattr(C, "silhouette_samples_" + _suffix(xt.dtype))(xt, offsets, out, num_threads)
    return out


def cluster_stats_native(x_sorted: np.ndarray, offsets: np.ndarray, *, num_threads: int = 0):
    """Per-cluster ``(centroid [L, K, d], sq [L, K], dist [L, K])`` in float64."""
    C = native_module()
    x_sorted = np.ascontiguousarray(x_sorted)
    offsets = np.ascontiguousarray(offsets, dtype=np.int64)
    L, _, d = x_sorted.shape
    K = offsets.shape[0] - 1
    centroid = np.empty((L, K, d), dtype=np.float64)
    sq = np.empty((L, K), dtype=np.float64)
    dist = np.empty((L, K), dtype=np.float64)
    getattr(C, "segment_statistics_" + _suffix(x_sorted.dtype))(
        x_sorted, offsets, centroid, sq, dist, num_threads)
    return centroid, sq, dist
