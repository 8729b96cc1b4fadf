// Exact batched t-SNE forces (see tsne_forces.h).
#include "tsne_forces.h"

#include <omp.h>

#include "simd.h"

#include <vector>


namespace sls_fast {
namespace {

// Repulsion (and, with a dense row of P, attraction) of point i against every j of its layer.
// Returns the row's sum of w_ij over j != i.
template <bool kDense>
SLS_CLONES float row_forces(const float* y0, const float* y1, const float* prow, int64_t N,
                            int64_t i, float* attr, float* rep) {
  const float yi0 = y0[i], yi1 = y1[i];
  float z = 0.f, rx = 0.f, ry = 0.f, ax = 0.f, ay = 0.f;
#pragma omp simd reduction(+ : z, rx, ry, ax, ay)
  for (int64_t j = 0; j < N; ++j) {
    const float dx = yi0 - y0[j];
    const float dy = yi1 - y1[j];
    const float w = 1.f / (1.f + dx * dx + dy * dy);
    const float w2 = w * w;
    z += w;
    rx += w2 * dx;
    ry += w2 * dy;
    if constexpr (kDense) {
      const float pw = prow[j] * w;
      ax += pw * dx;
      ay += pw * dy;
    }
  }
  rep[0] = rx;  // the j = i term contributes dx = dy = 0
  rep[1] = ry;
  if constexpr (kDense) {
    attr[0] = ax;
    attr[1] = ay;
  }
  return z - 1.f;  // remove w_ii = 1
}

template <bool kDense>
void forces_impl(const float* yt, const float* P, const int32_t* nbr, const float* pval,
                 int64_t L, int64_t LP, int64_t N, int64_t M, float* attr, float* rep, double* Z,
                 int num_threads) {
  std::vector<double> zrow(L * N);
#pragma omp parallel for schedule(static) num_threads(num_threads)
  for (int64_t t = 0; t < L * N; ++t) {
    const int64_t l = t / N, i = t % N;
    const int64_t lp = l % LP;  // the affinities of problem l (shared by the repeats of a layer)
    const float* y0 = yt + l * 2 * N;
    const float* y1 = y0 + N;
    const float* prow = kDense ? P + (lp * N + i) * N : nullptr;
    zrow[t] = row_forces<kDense>(y0, y1, prow, N, i, attr + 2 * t, rep + 2 * t);
    if constexpr (!kDense) {
      float ax = 0.f, ay = 0.f;
      for (int64_t m = 0; m < M; ++m) {
        const int64_t s = (lp * M + m) * N + i;
        const float p = pval[s];
        if (p == 0.f) continue;
        const int64_t j = nbr[s];
        const float dx = y0[i] - y0[j];
        const float dy = y1[i] - y1[j];
        const float pw = p / (1.f + dx * dx + dy * dy);
        ax += pw * dx;
        ay += pw * dy;
      }
      attr[2 * t] = ax;
      attr[2 * t + 1] = ay;
    }
  }
  for (int64_t l = 0; l < L; ++l) {
    double s = 0.0;
    for (int64_t i = 0; i < N; ++i) s += zrow[l * N + i];
    Z[l] = s;
  }
}

}  // namespace

void tsne_forces_dense(const float* yt, const float* P, int64_t L, int64_t LP, int64_t N,
                       float* attr, float* rep, double* Z, int num_threads) {
  forces_impl<true>(yt, P, nullptr, nullptr, L, LP, N, 0, attr, rep, Z, num_threads);
}

void tsne_forces_sparse(const float* yt, const int32_t* nbr, const float* pval, int64_t L,
                        int64_t LP, int64_t N, int64_t M, float* attr, float* rep, double* Z,
                        int num_threads) {
  forces_impl<false>(yt, nullptr, nbr, pval, L, LP, N, M, attr, rep, Z, num_threads);
}

}  // namespace sls_fast
