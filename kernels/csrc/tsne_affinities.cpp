// Per-point perplexity bisection (see tsne_affinities.h).
#include "tsne_affinities.h"

#include <omp.h>

#include <cmath>
#include <limits>
#include <vector>

#include "simd.h"

namespace sls_fast {
namespace {

// exp(-beta * s_k) into e, returns sum e and sum s_k e_k (finite s only; +inf -> e = 0).
SLS_CLONES void row_weights(const double* s, int64_t K, double beta, double* e, double* sum_e,
                            double* sum_se) {
  double se = 0.0, sse = 0.0;
#pragma omp simd reduction(+ : se, sse)
  for (int64_t k = 0; k < K; ++k) {
    const double v = std::exp(-beta * s[k]);  // s = +inf gives exactly 0
    e[k] = v;
    se += v;
    sse += (v > 0.0 ? s[k] * v : 0.0);
  }
  *sum_e = se;
  *sum_se = sse;
}

}  // namespace

void conditional_p(const double* d2, int64_t R, int64_t K, double perplexity, double tol,
                   int max_steps, float* p, int32_t* steps, int num_threads) {
  const double target = std::log(perplexity);
  const double inf = std::numeric_limits<double>::infinity();
#pragma omp parallel num_threads(num_threads)
  {
    std::vector<double> s(K), e(K);
#pragma omp for schedule(static)
    for (int64_t r = 0; r < R; ++r) {
      const double* row = d2 + r * K;
      double dmin = inf;
      for (int64_t k = 0; k < K; ++k)
        if (row[k] < dmin) dmin = row[k];
      if (!std::isfinite(dmin)) dmin = 0.0;
      for (int64_t k = 0; k < K; ++k) s[k] = row[k] - dmin;  // +inf stays +inf
      double beta = 1.0, lo = -inf, hi = inf, sum_e = 0.0, sum_se = 0.0;
      int step = 0;
      for (; step < max_steps; ++step) {
        row_weights(s.data(), K, beta, e.data(), &sum_e, &sum_se);
        const double z = sum_e > 1e-300 ? sum_e : 1e-300;
        const double entropy = std::log(z) + beta * sum_se / z;
        const double diff = entropy - target;
        if (std::fabs(diff) <= tol) break;
        if (diff > 0.0) {  // too flat: sharpen
          lo = beta;
          beta = std::isinf(hi) ? beta * 2.0 : 0.5 * (beta + hi);
        } else {
          hi = beta;
          beta = std::isinf(lo) ? beta * 0.5 : 0.5 * (beta + lo);
        }
      }
      // unconverged after max_steps: the weights of the last beta evaluated (as scikit-learn)
      const double inv = 1.0 / (sum_e > 1e-300 ? sum_e : 1e-300);
      float* out = p + r * K;
      for (int64_t k = 0; k < K; ++k) out[k] = static_cast<float>(e[k] * inv);
      if (steps) steps[r] = step;
    }
  }
}

}  // namespace sls_fast
