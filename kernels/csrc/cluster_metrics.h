// Exact clustering metrics over many layers at once, on the CPU (OpenMP).
//
// Conventions shared by every function here:
//   * points are pre-sorted by cluster so that cluster c occupies rows offsets[c]..offsets[c+1]-1;
//   * silhouette input is "layer, dimension, point" ([L, d, N], contiguous): for a fixed layer and
//     dimension the coordinates of all points are contiguous, so the inner loop over points j is a
//     unit-stride, vectorisable loop;
//   * segment statistics input is "layer, point, dimension" ([L, N, d], contiguous);
//   * outputs are written in full (callers pre-fill them with NaN in the tests).
#pragma once
#include <cstdint>

namespace sls_fast {

// s(i) for every point of every layer. xt: [L, d, N]; offsets: [K + 1]; out: [L, N] (float64).
template <typename T>
void silhouette_samples(const T* xt, int64_t L, int64_t d, int64_t N, const int64_t* offsets,
                        int64_t K, double* out, int num_threads);

// Per-layer, per-cluster sums: centroid [L, K, d], sum of squared distances to the centroid
// sq [L, K] and sum of distances to the centroid dist [L, K] (all float64).
template <typename T>
void segment_statistics(const T* x, int64_t L, int64_t N, int64_t d, const int64_t* offsets,
                        int64_t K, double* centroid, double* sq, double* dist, int num_threads);

}  // namespace sls_fast
