// Per-point perplexity bisection, kNN selection and symmetrisation (see tsne_affinities.h).
#include "tsne_affinities.h"

#include <omp.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <limits>
#include <string>
#include <utility>
#include <vector>

#include "simd.h"

#if defined(__GNUC__) && defined(__x86_64__)
#include <immintrin.h>
#endif

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

#if defined(__GNUC__) && defined(__x86_64__)
#define SLS_HAVE_AVX2_PATH 1
#define SLS_AVX2 __attribute__((target("avx2,fma")))

// exp(x) of 4 doubles, x <= 0 (the bisection's -beta * s): 2^n e^r with |r| <= ln2 / 2 and
// e^r by its Taylor polynomial to r^13 (truncation < 2e-17 relative), within 2 ulp of exp();
// x < -708 (below the normal range, where every weight is negligible against the row's
// largest, exp(0) = 1) and -inf give 0.
SLS_AVX2 inline __m256d exp_neg_avx2(__m256d x) {
  const __m256d log2e = _mm256_set1_pd(1.4426950408889634);
  const __m256d ln2_hi = _mm256_set1_pd(6.93147180369123816490e-01);
  const __m256d ln2_lo = _mm256_set1_pd(1.90821492927058770002e-10);
  const __m256d tiny = _mm256_cmp_pd(x, _mm256_set1_pd(-708.0), _CMP_LT_OQ);
  x = _mm256_max_pd(x, _mm256_set1_pd(-708.0));
  const __m256d n = _mm256_round_pd(_mm256_mul_pd(x, log2e), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  const __m256d r = _mm256_fnmadd_pd(n, ln2_lo, _mm256_fnmadd_pd(n, ln2_hi, x));
  static const double c[] = {1.0 / 6227020800.0, 1.0 / 479001600.0, 1.0 / 39916800.0,
                             1.0 / 3628800.0,    1.0 / 362880.0,    1.0 / 40320.0,
                             1.0 / 5040.0,       1.0 / 720.0,       1.0 / 120.0,
                             1.0 / 24.0,         1.0 / 6.0,         0.5,
                             1.0,                1.0};
  __m256d p = _mm256_set1_pd(c[0]);
  for (int i = 1; i < 14; ++i) p = _mm256_fmadd_pd(p, r, _mm256_set1_pd(c[i]));
  // 2^n for n in [-1022, 0]: the exponent field
  const __m128i ni = _mm256_cvtpd_epi32(n);
  const __m256i bits = _mm256_slli_epi64(_mm256_add_epi64(_mm256_cvtepi32_epi64(ni), _mm256_set1_epi64x(1023)), 52);
  const __m256d out = _mm256_mul_pd(p, _mm256_castsi256_pd(bits));
  return _mm256_andnot_pd(tiny, out);
}

// row_weights on the AVX2 path: 4 lanes, 2 accumulators each (summed in a fixed order).
SLS_AVX2 void row_weights_avx2(const double* s, int64_t K, double beta, double* e,
                               double* sum_e, double* sum_se) {
  const __m256d nb = _mm256_set1_pd(-beta);
  __m256d se = _mm256_setzero_pd(), sse = _mm256_setzero_pd();
  int64_t k = 0;
  for (; k + 4 <= K; k += 4) {
    const __m256d sk = _mm256_loadu_pd(s + k);
    const __m256d v = exp_neg_avx2(_mm256_mul_pd(nb, sk));  // s = +inf: -inf, v = 0
    _mm256_storeu_pd(e + k, v);
    se = _mm256_add_pd(se, v);
    // v > 0 only where s is finite (0 * inf would be NaN)
    sse = _mm256_add_pd(sse, _mm256_and_pd(_mm256_cmp_pd(v, _mm256_setzero_pd(), _CMP_GT_OQ),
                                           _mm256_mul_pd(sk, v)));
  }
  double a[4], b[4];
  _mm256_storeu_pd(a, se);
  _mm256_storeu_pd(b, sse);
  double te = (a[0] + a[1]) + (a[2] + a[3]), tse = (b[0] + b[1]) + (b[2] + b[3]);
  for (; k < K; ++k) {
    const double v = std::exp(-beta * s[k]);
    e[k] = v;
    te += v;
    tse += (v > 0.0 ? s[k] * v : 0.0);
  }
  *sum_e = te;
  *sum_se = tse;
}

// The AVX2 kernels run where the CPU has AVX2 and FMA, unless the environment variable
// SLS_FAST_PORTABLE_KERNELS is set to 1 (the portable loops, e.g. to test them on such a CPU).
bool cpu_has_avx2_fma() {
  const char* portable = std::getenv("SLS_FAST_PORTABLE_KERNELS");
  if (portable && std::string(portable) == "1") return false;
  return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
}
#endif

// The bisection of one row of K shifted distances s (row minimum 0; +inf: no neighbour) into
// out[K]; e is scratch. Returns the steps taken.
int bisect_row(const double* s, int64_t K, double target, double tol, int max_steps, double* e,
               float* out) {
  const double inf = std::numeric_limits<double>::infinity();
  double beta = 1.0, lo = -inf, hi = inf, sum_e = 0.0, sum_se = 0.0;
  int step = 0;
#ifdef SLS_HAVE_AVX2_PATH
  static const bool avx2 = cpu_has_avx2_fma();
#endif
  for (; step < max_steps; ++step) {
#ifdef SLS_HAVE_AVX2_PATH
    if (avx2)
      row_weights_avx2(s, K, beta, e, &sum_e, &sum_se);
    else
#endif
      row_weights(s, K, beta, e, &sum_e, &sum_se);
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
  for (int64_t k = 0; k < K; ++k) out[k] = static_cast<float>(e[k] * inv);
  return step;
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
      const int step = bisect_row(s.data(), K, target, tol, max_steps, e.data(), p + r * K);
      if (steps) steps[r] = step;
    }
  }
}

void knn_conditional_p(const double* d2, int64_t R, int64_t C, int64_t k, double perplexity,
                       double tol, int max_steps, int32_t* nbr, float* p, int num_threads) {
  const double target = std::log(perplexity);
  const double inf = std::numeric_limits<double>::infinity();
#pragma omp parallel num_threads(num_threads)
  {
    std::vector<double> buf(C);
    std::vector<std::pair<double, int32_t>> sel;
    std::vector<int32_t> ties;
    sel.reserve(k);
    ties.reserve(k);
    std::vector<double> s(k), e(k);
#pragma omp for schedule(static)
    for (int64_t r = 0; r < R; ++r) {
      const double* row = d2 + r * C;
      // the k-th smallest distance (NaN counts as +inf), then the columns below it and (ties)
      // at it, lowest first: the k smallest in (distance, column) order, a strict total order
      // (deterministic)
      for (int64_t c = 0; c < C; ++c) {
        const double v = row[c];
        buf[c] = v != v ? inf : v;
      }
      std::nth_element(buf.begin(), buf.begin() + (k - 1), buf.end());
      const double kth = buf[k - 1];
      sel.clear();
      ties.clear();
      for (int64_t c = 0; c < C; ++c) {  // one scan: below kth, and ties in column order
        const double v = row[c] != row[c] ? inf : row[c];
        if (v < kth)
          sel.emplace_back(v, static_cast<int32_t>(c));
        else if (v == kth && static_cast<int64_t>(ties.size()) < k)
          ties.push_back(static_cast<int32_t>(c));
      }
      for (size_t t = 0; static_cast<int64_t>(sel.size()) < k; ++t) sel.emplace_back(kth, ties[t]);
      std::sort(sel.begin(), sel.end());
      double dmin = sel[0].first;
      if (!std::isfinite(dmin)) dmin = 0.0;
      for (int64_t j = 0; j < k; ++j) {
        nbr[r * k + j] = sel[j].second;
        const double d = sel[j].first;
        s[j] = d == inf ? inf : d - dmin;
      }
      bisect_row(s.data(), k, target, tol, max_steps, e.data(), p + r * k);
    }
  }
}

namespace {

// One layer's symmetrised rows (CSR, each row in increasing neighbour order) with their summed
// conditionals c_ij + c_ji (float64, c_ij added first) and the layer's total.
struct JointRows {
  std::vector<int64_t> rowptr;
  std::vector<int32_t> col;
  std::vector<double> val;
  double total = 0.0;
};

JointRows joint_rows(const int32_t* nbr, const float* cond, int64_t N, int64_t k) {
  // incoming edges of every point (sources in increasing order)
  std::vector<int64_t> start(N + 1, 0);
  for (int64_t e = 0; e < N * k; ++e) start[nbr[e] + 1] += 1;
  for (int64_t i = 0; i < N; ++i) start[i + 1] += start[i];
  std::vector<int64_t> in_edge(N * k), fill(start.begin(), start.end() - 1);
  for (int64_t e = 0; e < N * k; ++e) in_edge[fill[nbr[e]]++] = e;  // e = source * k + slot
  JointRows out;
  out.rowptr.assign(N + 1, 0);
  out.col.reserve(2 * N * k);
  out.val.reserve(2 * N * k);
  std::vector<double> acc(N, 0.0);
  std::vector<char> seen(N, 0);
  std::vector<int32_t> cols;
  for (int64_t i = 0; i < N; ++i) {
    cols.clear();
    for (int64_t m = 0; m < k; ++m) {  // own edges i -> j first, then j -> i
      const int32_t j = nbr[i * k + m];
      if (!seen[j]) seen[j] = 1, cols.push_back(j);
      acc[j] += static_cast<double>(cond[i * k + m]);
    }
    for (int64_t f = start[i]; f < start[i + 1]; ++f) {
      const int32_t j = static_cast<int32_t>(in_edge[f] / k);
      if (!seen[j]) seen[j] = 1, cols.push_back(j);
      acc[j] += static_cast<double>(cond[in_edge[f]]);
    }
    std::sort(cols.begin(), cols.end());
    for (const int32_t j : cols) {
      out.col.push_back(j);
      out.val.push_back(acc[j]);
      out.total += acc[j];  // summed in (point, neighbour) order
      acc[j] = 0.0;
      seen[j] = 0;
    }
    out.rowptr[i + 1] = static_cast<int64_t>(out.col.size());
  }
  return out;
}

}  // namespace

void joint_lists(const int32_t* nbr, const float* cond, int64_t L, int64_t N, int64_t k,
                 const JointAlloc& alloc, int num_threads) {
  std::vector<JointRows> rows(L);
#pragma omp parallel for schedule(dynamic, 1) num_threads(num_threads)
  for (int64_t l = 0; l < L; ++l) rows[l] = joint_rows(nbr + l * N * k, cond + l * N * k, N, k);
  int64_t M = 1;
  for (const auto& r : rows)
    for (int64_t i = 0; i < N; ++i) M = std::max(M, r.rowptr[i + 1] - r.rowptr[i]);
  int32_t* nbr_out = nullptr;
  float* pval = nullptr;
  alloc(M, &nbr_out, &pval);
#pragma omp parallel for schedule(static) num_threads(num_threads)
  for (int64_t l = 0; l < L; ++l) {
    const JointRows& r = rows[l];
    const double denom = r.total > 1e-300 ? r.total : 1e-300;
    int32_t* no = nbr_out + l * M * N;
    float* pv = pval + l * M * N;
    for (int64_t m = 0; m < M; ++m)
      for (int64_t i = 0; i < N; ++i) {
        const int64_t s = r.rowptr[i] + m;
        const bool have = s < r.rowptr[i + 1];
        no[m * N + i] = have ? r.col[s] : static_cast<int32_t>(i);
        pv[m * N + i] = have ? static_cast<float>(r.val[s] / denom) : 0.f;
      }
  }
}

}  // namespace sls_fast
