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

namespace sls_fast {

void conditional_p(const double* d2, int64_t R, int64_t K, double perplexity, double tol,
                   int max_steps, float* p, int32_t* steps, int num_threads);

}  // namespace sls_fast
