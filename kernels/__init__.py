"""Compute kernels of sls_fast (installed as ``sls_fast.kernels``).

One module per kernel family; each holds the pure-torch reference (the test oracle, the
benchmark baseline and the CPU fallback), the Triton kernel and its launcher:

- :mod:`sls_fast.kernels.silhouette`: per-point silhouette of every layer, one launch.
- :mod:`sls_fast.kernels.cluster_stats`: per-cluster centroids and dispersions (for
  Calinski-Harabasz and Davies-Bouldin), one launch.
- :mod:`sls_fast.kernels.native`: thin wrappers over the C++/OpenMP extension ``sls_fast._C``.

The C++ sources live in ``kernels/csrc/`` of the source tree and are built by CMake.
"""
from ._triton import HAS_TRITON, triton_interpreting

__all__ = ["HAS_TRITON", "triton_interpreting"]
