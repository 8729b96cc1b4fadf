// Input affinities of t-SNE: per-point bisection on the Gaussian precision (all rows at once).
//
// d2 [R, K] holds each row's squared distances to its candidate neighbours (+inf marks a slot
// that is no neighbour); for every row the precision beta is bisected until the entropy of
// p_k = exp(-beta d2_k) / sum equals log(perplexity) within `tol` (scikit-learn's
// _binary_search_perplexity: start at beta = 1, double or halve until bracketed, then bisect;
// at most `max_steps` steps). Distances are shifted by the row minimum first, which leaves p and
// the entropy unchanged and keeps exp() from underflowing. p [R, K] float32 gets the
// conditional distributions (rows sum to 1); steps [R] (optional) the steps each row took.
#pragma once
#include <cstdint>
#include <functional>

namespace sls_fast {

void conditional_p(const double* d2, int64_t R, int64_t K, double perplexity, double tol,
                   int max_steps, float* p, int32_t* steps, int num_threads);

// The k nearest candidates of every row and their conditional distribution in one pass: d2
// [R, C] squared distances (+inf: never a neighbour, e.g. the point itself); nbr [R, k] gets the
// columns of the k smallest in increasing distance (ties: the lower column first), p [R, k] the
// conditionals of those k distances as conditional_p computes them.
void knn_conditional_p(const double* d2, int64_t R, int64_t C, int64_t k, double perplexity,
                       double tol, int max_steps, int32_t* nbr, float* p, int num_threads);

// Symmetrised, normalised joint P of L layers from their directed kNN conditionals nbr / cond
// [L, N, k]: p_ij = (c_ij + c_ji) / sum (float64 sums; the layer's sum in (point, neighbour)
// order), as padded neighbour lists [L, M, N] (slot-major, each point's entries in increasing
// neighbour order, padding (i, 0)); M is the longest row. `alloc(M, &nbr_out, &pval)` is called
// once, when M is known, and must return the [L, M, N] output buffers.
using JointAlloc = std::function<void(int64_t, int32_t**, float**)>;
void joint_lists(const int32_t* nbr, const float* cond, int64_t L, int64_t N, int64_t k,
                 const JointAlloc& alloc, int num_threads);

}  // namespace sls_fast
