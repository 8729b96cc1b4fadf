// Exact t-SNE forces of many 2-D embeddings at once, on the CPU (OpenMP).
//
// For layer l and point i, with w_ij = 1 / (1 + |y_i - y_j|^2):
//   attr[l, i] = sum_j p_ij w_ij (y_i - y_j)      rep[l, i] = sum_j w_ij^2 (y_i - y_j)
//   Z[l]       = sum_{i != j} w_ij
// Layout: yt [L, 2, N] ("layer, coordinate, point": the inner loop over j is unit stride);
// attr, rep [L, N, 2]; Z [L] float64. P is dense [L, N, N], or padded neighbour lists
// nbr / pval [L, M, N] (slot-major; padding slots have pval 0).
// Repeats: y may hold L = S x LP problems (run-major) over LP sets of affinities; problem l
// reads the affinities of l % LP, so the S runs of a layer share one P (never copied).
#pragma once
#include <cstdint>

namespace sls_fast {

void tsne_forces_dense(const float* yt, const float* P, int64_t L, int64_t LP, int64_t N,
                       float* attr, float* rep, double* Z, int num_threads);

void tsne_forces_sparse(const float* yt, const int32_t* nbr, const float* pval, int64_t L,
                        int64_t LP, int64_t N, int64_t M, float* attr, float* rep, double* Z,
                        int num_threads);

}  // namespace sls_fast
