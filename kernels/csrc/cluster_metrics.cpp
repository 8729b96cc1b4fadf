// Exact batched silhouette and cluster segment statistics (see cluster_metrics.h).
#include "cluster_metrics.h"

#include <omp.h>

#include "simd.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>


namespace sls_fast {
namespace {

// Points j of one segment are summed in chunks of this many in the input precision (vector
// lanes), and each chunk's sum is added to a float64 accumulator: a blocked summation whose error
// does not grow with the cluster size.
constexpr int64_t kChunk = 256;

// Sum over j in [begin, end) of ||x_i - x_j|| for one point i (coordinates xi[0..d)).
// xt points at the layer's [d, N] block. tmp has room for kChunk values.
template <typename T, int D>
SLS_CLONES double segment_distance_sum(const T* xt, int64_t N, int64_t d, const T* xi,
                                       int64_t begin, int64_t end, T* tmp) {
  double total = 0.0;
  for (int64_t j0 = begin; j0 < end; j0 += kChunk) {
    const int64_t n = std::min(kChunk, end - j0);
    T part = 0;
    if constexpr (D > 0) {
      // Fixed small dimension: the whole distance in registers.
#pragma omp simd reduction(+ : part)
      for (int64_t j = 0; j < n; ++j) {
        T s = 0;
        for (int k = 0; k < D; ++k) {
          const T diff = xi[k] - xt[k * N + j0 + j];
          s += diff * diff;
        }
        part += std::sqrt(s);
      }
    } else {
      for (int64_t j = 0; j < n; ++j) tmp[j] = 0;
      for (int64_t k = 0; k < d; ++k) {
        const T* row = xt + k * N + j0;
        const T xik = xi[k];
#pragma omp simd
        for (int64_t j = 0; j < n; ++j) {
          const T diff = xik - row[j];
          tmp[j] += diff * diff;
        }
      }
#pragma omp simd reduction(+ : part)
      for (int64_t j = 0; j < n; ++j) part += std::sqrt(tmp[j]);
    }
    total += static_cast<double>(part);
  }
  return total;
}

template <typename T, int D>
void silhouette_impl(const T* xt, int64_t L, int64_t d, int64_t N, const int64_t* offsets,
                     int64_t K, double* out, int num_threads) {
  // Cluster index of every (sorted) point.
  std::vector<int64_t> owner(N);
  for (int64_t c = 0; c < K; ++c)
    for (int64_t p = offsets[c]; p < offsets[c + 1]; ++p) owner[p] = c;

  const int64_t total = L * N;
#pragma omp parallel num_threads(num_threads)
  {
    std::vector<T> tmp(kChunk);
    std::vector<T> xi(d);
#pragma omp for schedule(dynamic, 64)
    for (int64_t t = 0; t < total; ++t) {
      const int64_t layer = t / N;
      const int64_t i = t % N;
      const T* lx = xt + layer * d * N;
      for (int64_t k = 0; k < d; ++k) xi[k] = lx[k * N + i];
      const int64_t own = owner[i];
      const int64_t own_size = offsets[own + 1] - offsets[own];
      if (own_size <= 1) {  // a point alone in its cluster scores 0 (scikit-learn)
        out[t] = 0.0;
        continue;
      }
      double a = 0.0;
      double b = std::numeric_limits<double>::infinity();
      for (int64_t c = 0; c < K; ++c) {
        const int64_t begin = offsets[c], end = offsets[c + 1];
        const double s = segment_distance_sum<T, D>(lx, N, d, xi.data(), begin, end, tmp.data());
        if (c == own) {
          a = s / static_cast<double>(own_size - 1);
        } else {
          b = std::min(b, s / static_cast<double>(end - begin));
        }
      }
      const double m = std::max(a, b);
      out[t] = (m > 0.0) ? (b - a) / m : 0.0;  // 0/0 -> 0 as scikit-learn's nan_to_num
    }
  }
}

}  // namespace

template <typename T>
void silhouette_samples(const T* xt, int64_t L, int64_t d, int64_t N, const int64_t* offsets,
                        int64_t K, double* out, int num_threads) {
  switch (d) {
    case 1: silhouette_impl<T, 1>(xt, L, d, N, offsets, K, out, num_threads); break;
    case 2: silhouette_impl<T, 2>(xt, L, d, N, offsets, K, out, num_threads); break;
    case 3: silhouette_impl<T, 3>(xt, L, d, N, offsets, K, out, num_threads); break;
    default: silhouette_impl<T, 0>(xt, L, d, N, offsets, K, out, num_threads); break;
  }
}

template <typename T>
void segment_statistics(const T* x, int64_t L, int64_t N, int64_t d, const int64_t* offsets,
                        int64_t K, double* centroid, double* sq, double* dist, int num_threads) {
  const int64_t total = L * K;
#pragma omp parallel for schedule(dynamic, 1) num_threads(num_threads)
  for (int64_t t = 0; t < total; ++t) {
    const int64_t layer = t / K;
    const int64_t c = t % K;
    const T* lx = x + layer * N * d;
    double* cen = centroid + t * d;
    const int64_t begin = offsets[c], end = offsets[c + 1];
    for (int64_t k = 0; k < d; ++k) cen[k] = 0.0;
    for (int64_t p = begin; p < end; ++p)
      for (int64_t k = 0; k < d; ++k) cen[k] += static_cast<double>(lx[p * d + k]);
    const double n = static_cast<double>(end - begin);
    for (int64_t k = 0; k < d; ++k) cen[k] /= n;
    double s2 = 0.0, s1 = 0.0;
    for (int64_t p = begin; p < end; ++p) {
      double r = 0.0;
      for (int64_t k = 0; k < d; ++k) {
        const double diff = static_cast<double>(lx[p * d + k]) - cen[k];
        r += diff * diff;
      }
      s2 += r;
      s1 += std::sqrt(r);
    }
    sq[t] = s2;
    dist[t] = s1;
  }
}

template void silhouette_samples<float>(const float*, int64_t, int64_t, int64_t, const int64_t*,
                                        int64_t, double*, int);
template void silhouette_samples<double>(const double*, int64_t, int64_t, int64_t,
                                         const int64_t*, int64_t, double*, int);
template void segment_statistics<float>(const float*, int64_t, int64_t, int64_t, const int64_t*,
                                        int64_t, double*, double*, double*, int);
template void segment_statistics<double>(const double*, int64_t, int64_t, int64_t,
                                         const int64_t*, int64_t, double*, double*, double*, int);

}  // namespace sls_fast
