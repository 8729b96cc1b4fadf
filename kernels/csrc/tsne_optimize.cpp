// The whole t-SNE optimisation in one native call (see tsne_optimize.h).
#include "tsne_optimize.h"

#include <omp.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdlib>
#include <exception>
#include <string>
#include <vector>

#include "simd.h"

#if defined(__GNUC__) && defined(__x86_64__)
#include <immintrin.h>
#endif

namespace sls_fast {
namespace {

constexpr int64_t kMaxBlocks = 8;

// Row i against every j > i of its problem: the repulsion (and, dense, the attraction) of the
// pair is added to i and subtracted from j in the block's buffers. Returns sum_{j > i} w_ij.
template <bool kDense>
SLS_CLONES float pair_row(const float* __restrict x, const float* __restrict y,
                          const float* __restrict prow, int64_t i, int64_t N,
                          float* __restrict rx, float* __restrict ry, float* __restrict ax,
                          float* __restrict ay) {
  const float xi = x[i], yi = y[i];
  float z = 0.f, sx = 0.f, sy = 0.f, tx = 0.f, ty = 0.f;
#pragma omp simd reduction(+ : z, sx, sy, tx, ty)
  for (int64_t j = i + 1; j < N; ++j) {
    const float dx = xi - x[j];
    const float dy = yi - y[j];
    const float w = 1.f / (1.f + dx * dx + dy * dy);
    const float fx = w * w * dx, fy = w * w * dy;
    z += w;
    sx += fx;
    sy += fy;
    rx[j] -= fx;
    ry[j] -= fy;
    if constexpr (kDense) {
      const float pw = prow[j] * w;
      tx += pw * dx;
      ty += pw * dy;
      ax[j] -= pw * dx;
      ay[j] -= pw * dy;
    }
  }
  rx[i] += sx;
  ry[i] += sy;
  if constexpr (kDense) {
    ax[i] += tx;
    ay[i] += ty;
  }
  return z;
}

// Rows i and i + 1 against every j > i + 1 (repulsion only): the pair of rows shares the loads
// of y_j and one update of j's buffers, half the memory traffic of pair_row per pair. The pair
// (i, i + 1) itself is added by the caller. Returns sum_{j > i + 1} (w_ij + w_{i+1,j}).
SLS_CLONES float pair_rows2(const float* __restrict x, const float* __restrict y, int64_t i,
                            int64_t N, float* __restrict rx, float* __restrict ry) {
  const float xa = x[i], ya = y[i], xb = x[i + 1], yb = y[i + 1];
  float z = 0.f, sax = 0.f, say = 0.f, sbx = 0.f, sby = 0.f;
#pragma omp simd reduction(+ : z, sax, say, sbx, sby)
  for (int64_t j = i + 2; j < N; ++j) {
    const float xj = x[j], yj = y[j];
    const float dax = xa - xj, day = ya - yj, dbx = xb - xj, dby = yb - yj;
    const float wa = 1.f / (1.f + dax * dax + day * day);
    const float wb = 1.f / (1.f + dbx * dbx + dby * dby);
    const float fax = wa * wa * dax, fay = wa * wa * day;
    const float fbx = wb * wb * dbx, fby = wb * wb * dby;
    z += wa + wb;
    sax += fax;
    say += fay;
    sbx += fbx;
    sby += fby;
    rx[j] -= fax + fbx;
    ry[j] -= fay + fby;
  }
  rx[i] += sax;
  ry[i] += say;
  rx[i + 1] += sbx;
  ry[i + 1] += sby;
  return z;
}

// Compressed rows of the padded neighbour lists of one layer (padding dropped): the entries of
// point i are col/val[rowptr[i] .. rowptr[i + 1]), sorted by neighbour (cache order).
constexpr int64_t kRowPad = 8;  // CSR rows padded to whole AVX2 vectors

struct Csr {
  std::vector<int64_t> rowptr;
  std::vector<int32_t> col;
  std::vector<float> val;
};

Csr compress(const int32_t* nbr, const float* pval, int64_t M, int64_t N) {
  // slot-major input: walk each slot's row of N points (unit stride); entries keep slot order
  // (joint_probabilities fills a point's slots in increasing neighbour order). Each row is
  // padded to a multiple of kRowPad entries with (i, 0), which add exactly 0 to its attraction.
  Csr c;
  std::vector<int64_t> count(N, 0);
  for (int64_t m = 0; m < M; ++m)
    for (int64_t i = 0; i < N; ++i) count[i] += pval[m * N + i] != 0.f;
  c.rowptr.assign(N + 1, 0);
  for (int64_t i = 0; i < N; ++i)
    c.rowptr[i + 1] = c.rowptr[i] + (count[i] + kRowPad - 1) / kRowPad * kRowPad;
  c.col.resize(c.rowptr[N]);
  c.val.assign(c.rowptr[N], 0.f);
  for (int64_t i = 0; i < N; ++i)
    std::fill(c.col.begin() + c.rowptr[i], c.col.begin() + c.rowptr[i + 1], static_cast<int32_t>(i));
  std::vector<int64_t> fill(c.rowptr.begin(), c.rowptr.end() - 1);
  for (int64_t m = 0; m < M; ++m)
    for (int64_t i = 0; i < N; ++i) {
      const float v = pval[m * N + i];
      if (v == 0.f) continue;
      c.col[fill[i]] = nbr[m * N + i];
      c.val[fill[i]++] = v;
    }
  return c;
}

// sum_s p_{i, col_s} w (y_i - y_col_s) of point i over its compressed row.
SLS_CLONES void sparse_attraction(const float* __restrict x, const float* __restrict y,
                                  const int32_t* __restrict col, const float* __restrict val,
                                  int64_t s0, int64_t s1, int64_t i, float* ax, float* ay) {
  const float xi = x[i], yi = y[i];
  float sx = 0.f, sy = 0.f;
#pragma omp simd reduction(+ : sx, sy)
  for (int64_t s = s0; s < s1; ++s) {
    const int32_t j = col[s];
    const float dx = xi - x[j];
    const float dy = yi - y[j];
    const float pw = val[s] / (1.f + dx * dx + dy * dy);
    sx += pw * dx;
    sy += pw * dy;
  }
  *ax = sx;
  *ay = sy;
}


#if defined(__GNUC__) && defined(__x86_64__)
#define SLS_HAVE_AVX2_PATH 1
#define SLS_AVX2 __attribute__((target("avx2,fma")))

// The AVX2 kernels run where the CPU has AVX2 and FMA, unless the environment variable
// SLS_FAST_PORTABLE_KERNELS is set to 1 (the portable loops, e.g. to test them on such a CPU).
bool cpu_has_avx2_fma() {
  const char* portable = std::getenv("SLS_FAST_PORTABLE_KERNELS");
  if (portable && std::string(portable) == "1") return false;
  return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
}

// Sum of the 8 lanes in a fixed order.
SLS_AVX2 inline float hsum(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}

// The R rows against 8 j: each pair's repulsion w^2 (dx, dy) is added to the rows' sums
// (sx, sy) and returned as the j side's (fx, fy); z gathers w. With Masked, lanes where mf is 0
// get w = 0 (the tail past N).
template <int R, bool Masked>
SLS_AVX2 __attribute__((always_inline)) inline void rep_block8(
    const __m256* xa, const __m256* ya, __m256 xj, __m256 yj, __m256 mf, __m256* sx, __m256* sy,
    __m256& z, __m256& fx, __m256& fy) {
  const __m256 one = _mm256_set1_ps(1.f);
  fx = _mm256_setzero_ps();
  fy = _mm256_setzero_ps();
  for (int r = 0; r < R; ++r) {
    const __m256 dx = _mm256_sub_ps(xa[r], xj), dy = _mm256_sub_ps(ya[r], yj);
    __m256 w = _mm256_div_ps(one, _mm256_fmadd_ps(dx, dx, _mm256_fmadd_ps(dy, dy, one)));
    if constexpr (Masked) w = _mm256_and_ps(mf, w);
    z = _mm256_add_ps(z, w);
    const __m256 w2 = _mm256_mul_ps(w, w);
    const __m256 ex = _mm256_mul_ps(w2, dx), ey = _mm256_mul_ps(w2, dy);
    sx[r] = _mm256_add_ps(sx[r], ex);
    sy[r] = _mm256_add_ps(sy[r], ey);
    fx = _mm256_add_ps(fx, ex);
    fy = _mm256_add_ps(fy, ey);
  }
}

// Rows i .. i + R - 1 against every j >= i + R (repulsion only), 8 j at a time: the R rows share
// each load of y_j and one update of j's buffers. The pairs inside the group are added by the
// caller. Returns sum_r sum_{j >= i + R} w_{i + r, j}.
template <int R>
SLS_AVX2 float rep_rows_avx2(const float* __restrict x, const float* __restrict y, int64_t i,
                             int64_t N, float* __restrict rx, float* __restrict ry) {
  __m256 xa[R], ya[R], sx[R], sy[R];
  for (int r = 0; r < R; ++r) {
    xa[r] = _mm256_set1_ps(x[i + r]);
    ya[r] = _mm256_set1_ps(y[i + r]);
    sx[r] = _mm256_setzero_ps();
    sy[r] = _mm256_setzero_ps();
  }
  __m256 z = _mm256_setzero_ps(), fx, fy;
  int64_t j = i + R;
  for (; j + 8 <= N; j += 8) {
    rep_block8<R, false>(xa, ya, _mm256_loadu_ps(x + j), _mm256_loadu_ps(y + j),
                         _mm256_setzero_ps(), sx, sy, z, fx, fy);
    _mm256_storeu_ps(rx + j, _mm256_sub_ps(_mm256_loadu_ps(rx + j), fx));
    _mm256_storeu_ps(ry + j, _mm256_sub_ps(_mm256_loadu_ps(ry + j), fy));
  }
  if (j < N) {  // the last 1..7 j: masked lanes load 0 and get w = 0
    const __m256i mask = _mm256_cmpgt_epi32(_mm256_set1_epi32(static_cast<int>(N - j)),
                                            _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
    rep_block8<R, true>(xa, ya, _mm256_maskload_ps(x + j, mask), _mm256_maskload_ps(y + j, mask),
                        _mm256_castsi256_ps(mask), sx, sy, z, fx, fy);
    _mm256_maskstore_ps(rx + j, mask, _mm256_sub_ps(_mm256_maskload_ps(rx + j, mask), fx));
    _mm256_maskstore_ps(ry + j, mask, _mm256_sub_ps(_mm256_maskload_ps(ry + j, mask), fy));
  }
  for (int r = 0; r < R; ++r) {
    rx[i + r] += hsum(sx[r]);
    ry[i + r] += hsum(sy[r]);
  }
  return hsum(z);
}

// Interleaved (x, y) of 8 neighbours, one 8-byte load each, as x0..x7 and y0..y7.
SLS_AVX2 inline void load_pairs8(const float* __restrict xy, const int32_t* c, __m256* xs,
                                 __m256* ys) {
  auto at = [xy](int32_t j) { return reinterpret_cast<const __m64*>(xy + 2 * static_cast<int64_t>(j)); };
  const __m128 p01 = _mm_loadh_pi(_mm_castpd_ps(_mm_load_sd(reinterpret_cast<const double*>(at(c[0])))), at(c[1]));
  const __m128 p23 = _mm_loadh_pi(_mm_castpd_ps(_mm_load_sd(reinterpret_cast<const double*>(at(c[2])))), at(c[3]));
  const __m128 p45 = _mm_loadh_pi(_mm_castpd_ps(_mm_load_sd(reinterpret_cast<const double*>(at(c[4])))), at(c[5]));
  const __m128 p67 = _mm_loadh_pi(_mm_castpd_ps(_mm_load_sd(reinterpret_cast<const double*>(at(c[6])))), at(c[7]));
  const __m256 a = _mm256_insertf128_ps(_mm256_castps128_ps256(p01), p45, 1);  // x0 y0 x1 y1 | x4 y4 x5 y5
  const __m256 b = _mm256_insertf128_ps(_mm256_castps128_ps256(p23), p67, 1);  // x2 y2 x3 y3 | x6 y6 x7 y7
  *xs = _mm256_shuffle_ps(a, b, 0x88);
  *ys = _mm256_shuffle_ps(a, b, 0xDD);
}

// One vector of attraction terms, added to (sx, sy): p w (y_i - y_j) with w = 1 / (1 + |y_i - y_j|^2),
// lane by lane. Both attraction kernels call it, so a run's lanes do the same arithmetic in either.
SLS_AVX2 __attribute__((always_inline)) inline void attract8(__m256 xi, __m256 yi, __m256 xj,
                                                              __m256 yj, __m256 p, __m256& sx,
                                                              __m256& sy) {
  const __m256 dx = _mm256_sub_ps(xi, xj), dy = _mm256_sub_ps(yi, yj);
  const __m256 pw =
      _mm256_div_ps(p, _mm256_fmadd_ps(dx, dx, _mm256_fmadd_ps(dy, dy, _mm256_set1_ps(1.f))));
  sx = _mm256_fmadd_ps(pw, dx, sx);
  sy = _mm256_fmadd_ps(pw, dy, sy);
}

// sum_s p_{i, col_s} w (y_i - y_col_s) of point i over its compressed row (padded to a multiple
// of 8 entries), 8 entries at a time, reading y as interleaved (x, y) pairs: one 8-byte load
// per neighbour instead of two gathers (gathers are slow on AMD Zen).
SLS_AVX2 void attraction_avx2(const float* __restrict xy, const int32_t* __restrict col,
                              const float* __restrict val, int64_t s0, int64_t s1, int64_t i,
                              float* ax, float* ay) {
  const __m256 xi = _mm256_set1_ps(xy[2 * i]), yi = _mm256_set1_ps(xy[2 * i + 1]);
  __m256 sx = _mm256_setzero_ps(), sy = _mm256_setzero_ps();
  for (int64_t s = s0; s < s1; s += 8) {
    __m256 xs, ys;
    load_pairs8(xy, col + s, &xs, &ys);
    attract8(xi, yi, xs, ys, _mm256_loadu_ps(val + s), sx, sy);
  }
  *ax = hsum(sx);
  *ay = hsum(sy);
}

// The repulsion of a row block [i0, i1) of a problem on the AVX2 path: its rows against every
// later row in groups of kRepRows rows. Returns the block's share of Z / 2 (sum over its pairs
// i < j of w_ij).
#ifndef SLS_REP_ROWS
#define SLS_REP_ROWS 2
#endif
constexpr int kRepRows = SLS_REP_ROWS;

SLS_AVX2 double repulsion_block_avx2(const float* __restrict x, const float* __restrict y,
                                     int64_t i0, int64_t i1, int64_t N, float* __restrict rx,
                                     float* __restrict ry) {
  double z = 0.0;
  int64_t i = i0;
  for (; i + kRepRows <= i1; i += kRepRows) {
    float zg = rep_rows_avx2<kRepRows>(x, y, i, N, rx, ry);
    for (int a = 0; a < kRepRows; ++a)  // the pairs inside the group
      for (int b = a + 1; b < kRepRows; ++b) {
        const float dx = x[i + a] - x[i + b], dy = y[i + a] - y[i + b];
        const float w = 1.f / (1.f + dx * dx + dy * dy);
        zg += w;
        rx[i + a] += w * w * dx;
        ry[i + a] += w * w * dy;
        rx[i + b] -= w * w * dx;
        ry[i + b] -= w * w * dy;
      }
    z += zg;
  }
  for (; i < i1; ++i) z += rep_rows_avx2<1>(x, y, i, N, rx, ry);
  return z;
}

// One row block of a problem on the AVX2 path: the repulsion, then the attraction of its rows
// (y copied to interleaved (x, y) pairs in the thread's scratch xy first).
SLS_AVX2 double sparse_block_avx2(const float* __restrict x, const float* __restrict y,
                                  int64_t i0, int64_t i1, int64_t N, float* __restrict rx,
                                  float* __restrict ry, const Csr& c, float* __restrict xy,
                                  float* __restrict ax, float* __restrict ay) {
  const double z = repulsion_block_avx2(x, y, i0, i1, N, rx, ry);
  for (int64_t k = 0; k < N; ++k) {
    xy[2 * k] = x[k];
    xy[2 * k + 1] = y[k];
  }
  for (int64_t i = i0; i < i1; ++i)
    attraction_avx2(xy, c.col.data(), c.val.data(), c.rowptr[i], c.rowptr[i + 1], i, ax + i,
                    ay + i);
  return z;
}

// Lane-wise sum of v[0..7] in hsum's order of lanes 0..7: ((0 + 4) + (2 + 6)) + ((1 + 5) + (3 + 7)).
SLS_AVX2 inline __m256 hsum_order8(const __m256* v) {
  return _mm256_add_ps(_mm256_add_ps(_mm256_add_ps(v[0], v[4]), _mm256_add_ps(v[2], v[6])),
                       _mm256_add_ps(_mm256_add_ps(v[1], v[5]), _mm256_add_ps(v[3], v[7])));
}

// The attraction of every row of one layer for a group of runs sharing its affinities, eight
// runs per AVX2 vector (lane = run): each neighbour entry's index and value are read once for
// all runs and its y_j is two contiguous loads, where attraction_avx2 spends a gather of eight
// neighbours per vector. ys is the group's positions as [N][2][8] (x of the 8 lanes, then y);
// out receives the forces in the same layout.
// Per lane, the arithmetic is attraction_avx2's exactly: lane k of its vector sums the entries
// s0 + k, s0 + k + 8, ... in order (class k here), and hsum adds the classes as
// ((c0 + c4) + (c2 + c6)) + ((c1 + c5) + (c3 + c7)): a run gives the same bits either way.
SLS_AVX2 void attraction_lanes_avx2(const float* __restrict ys, const Csr& c, int64_t N,
                                    float* __restrict out) {
  const int32_t* col = c.col.data();
  const float* val = c.val.data();
  for (int64_t i = 0; i < N; ++i) {
    const __m256 xi = _mm256_loadu_ps(ys + 16 * i), yi = _mm256_loadu_ps(ys + 16 * i + 8);
    __m256 cx[8], cy[8];
    for (int half = 0; half < 2; ++half) {  // classes 4 half .. 4 half + 3, interleaved
      __m256 sx[4], sy[4];
      for (int k = 0; k < 4; ++k) sx[k] = sy[k] = _mm256_setzero_ps();
      for (int64_t s = c.rowptr[i] + 4 * half; s < c.rowptr[i + 1]; s += 8)
        for (int k = 0; k < 4; ++k) {
          const float* yj = ys + 16 * static_cast<int64_t>(col[s + k]);
          attract8(xi, yi, _mm256_loadu_ps(yj), _mm256_loadu_ps(yj + 8),
                   _mm256_set1_ps(val[s + k]), sx[k], sy[k]);
        }
      for (int k = 0; k < 4; ++k) {
        cx[4 * half + k] = sx[k];
        cy[4 * half + k] = sy[k];
      }
    }
    _mm256_storeu_ps(out + 16 * i, hsum_order8(cx));
    _mm256_storeu_ps(out + 16 * i + 8, hsum_order8(cy));
  }
}
#endif

template <bool kDense>
int64_t optimize_impl(float* y_out, const float* P, const int32_t* nbr, const float* pval,
                      int64_t L, int64_t LP, int64_t N, int64_t M, const TsneSchedule& s,
                      int nt, const TsneProgress& progress, int64_t report_every) {
  int64_t bounds[kMaxBlocks + 1];
  const int64_t B = tsne_row_blocks(L, N, bounds);
  const int64_t NA = kDense ? 4 : 2;  // buffer arrays per block: rep x, rep y (+ attr x, y)
  std::vector<float> yt(L * 2 * N), upd(L * 2 * N), gains(L * 2 * N), attr(kDense ? 0 : L * 2 * N);
  std::vector<float> buf(L * B * NA * N);
  std::vector<double> zpart(L * B);
  std::vector<Csr> csr;
#ifdef SLS_HAVE_AVX2_PATH
  const bool avx2 = cpu_has_avx2_fma();
  std::vector<float> xy_scratch(kDense ? 0 : static_cast<int64_t>(nt) * 2 * N);
#endif
  if constexpr (!kDense) {
    csr.resize(LP);
#pragma omp parallel for schedule(static) num_threads(nt)
    for (int64_t lp = 0; lp < LP; ++lp) csr[lp] = compress(nbr + lp * M * N, pval + lp * M * N, M, N);
  }
  for (int64_t l = 0; l < L; ++l)
    for (int64_t i = 0; i < N; ++i)
      for (int64_t c = 0; c < 2; ++c) yt[(l * 2 + c) * N + i] = y_out[(l * N + i) * 2 + c];

  const int64_t n_explore = std::min(s.exploration_iter, s.max_iter);
  const int64_t n_final = std::max<int64_t>(0, s.max_iter - s.exploration_iter - 1);
  const struct { double exaggeration, momentum; int64_t steps; } phases[2] = {
      {s.early_exaggeration, 0.5, n_explore}, {1.0, 0.8, n_final}};
  const float lr = static_cast<float>(s.learning_rate);
  const float min_gain = static_cast<float>(s.min_gain);

  // 1. forces of task t = (problem, row block): every task owns its buffers
  auto forces = [&](int64_t t, int tid) {
    const int64_t l = t / B, b = t % B, lp = l % LP;
    const float* x = yt.data() + l * 2 * N;
    const float* yv = x + N;
    float* bb = buf.data() + t * NA * N;
    std::fill(bb, bb + NA * N, 0.f);
    float* ax = kDense ? bb + 2 * N : nullptr;
    float* ay = kDense ? bb + 3 * N : nullptr;
    double z = 0.0;
    if constexpr (kDense) {
      for (int64_t i = bounds[b]; i < bounds[b + 1]; ++i)
        z += pair_row<true>(x, yv, P + (lp * N + i) * N, i, N, bb, bb + N, ax, ay);
    } else {
#ifdef SLS_HAVE_AVX2_PATH
      if (avx2) {
        float* at = attr.data() + l * 2 * N;
        float* xy = xy_scratch.data() + static_cast<int64_t>(tid) * 2 * N;
        zpart[t] = sparse_block_avx2(x, yv, bounds[b], bounds[b + 1], N, bb, bb + N, csr[lp], xy,
                                     at, at + N);
        return;
      }
#endif
      (void)tid;
      int64_t i = bounds[b];
      for (; i + 1 < bounds[b + 1]; i += 2) {  // rows in pairs
        z += pair_rows2(x, yv, i, N, bb, bb + N);
        const float dx = x[i] - x[i + 1], dy = yv[i] - yv[i + 1];
        const float w = 1.f / (1.f + dx * dx + dy * dy);
        z += w;
        bb[i] += w * w * dx;
        bb[N + i] += w * w * dy;
        bb[i + 1] -= w * w * dx;
        bb[N + i + 1] -= w * w * dy;
      }
      if (i < bounds[b + 1]) z += pair_row<false>(x, yv, nullptr, i, N, bb, bb + N, ax, ay);
      float* at = attr.data() + l * 2 * N;
      const Csr& c = csr[lp];
      for (i = bounds[b]; i < bounds[b + 1]; ++i)
        sparse_attraction(x, yv, c.col.data(), c.val.data(), c.rowptr[i], c.rowptr[i + 1], i,
                          at + i, at + N + i);
    }
    zpart[t] = z;
  };
#ifdef SLS_HAVE_AVX2_PATH
  // 1'. forces of nm <= 8 runs of layer lp stepped together (one block each, AVX2 path): the
  // repulsion run by run, then the attraction of all of them in the lanes of one vector
  // (lanes_in / lanes_out: [N][2][8] scratch of the calling thread; unused lanes stay 0)
  auto lockstep_forces = [&](const int64_t* members, int64_t nm, int64_t lp, float* lanes_in,
                             float* lanes_out) {
    for (int64_t r = 0; r < nm; ++r) {
      const int64_t l = members[r];
      const float* x = yt.data() + l * 2 * N;
      float* bb = buf.data() + l * NA * N;
      std::fill(bb, bb + NA * N, 0.f);
      zpart[l] = repulsion_block_avx2(x, x + N, 0, N, N, bb, bb + N);
      for (int64_t i = 0; i < N; ++i) {
        lanes_in[16 * i + r] = x[i];
        lanes_in[16 * i + 8 + r] = x[N + i];
      }
    }
    attraction_lanes_avx2(lanes_in, csr[lp], N, lanes_out);
    for (int64_t r = 0; r < nm; ++r) {
      float* at = attr.data() + members[r] * 2 * N;
      for (int64_t i = 0; i < N; ++i) {
        at[i] = lanes_out[16 * i + r];
        at[N + i] = lanes_out[16 * i + 8 + r];
      }
    }
  };
#endif
  // 2. gradient and update of points i0..i1 of problem l (buffers and Z added in a fixed order)
  auto update = [&](int64_t l, int64_t i0, int64_t i1, float exaggeration, float momentum) {
    double zsum = 0.0;
    for (int64_t b = 0; b < B; ++b) zsum += zpart[l * B + b];
    const float inv_z = static_cast<float>(1.0 / std::max(2.0 * zsum, 1e-300));
    for (int64_t c = 0; c < 2; ++c) {
      const int64_t off = (l * 2 + c) * N;
      for (int64_t i = i0; i < i1; ++i) {
        float rep = 0.f, at = 0.f;
        for (int64_t b = 0; b < B; ++b) {
          const float* bb = buf.data() + (l * B + b) * NA * N;
          rep += bb[c * N + i];
          if constexpr (kDense) at += bb[(2 + c) * N + i];
        }
        if constexpr (!kDense) at = attr[off + i];
        const float grad = 4.f * (exaggeration * at - rep * inv_z);
        float& u = upd[off + i];
        float& g = gains[off + i];
        g = (u * grad < 0.f) ? g + 0.2f : g * 0.8f;
        if (g < min_gain) g = min_gain;
        u = momentum * u - lr * (grad * g);
        yt[off + i] += u;
      }
    }
  };
  // 3. re-centre coordinate c of problem l, lc = 2 l + c (the gradient is translation
  // invariant, so the trajectory is unchanged in exact arithmetic): a contracting
  // early-exaggeration phase can shrink an embedding to ~1e-7 around a centre that has drifted,
  // and float32 then cannot resolve the points' differences (measured: a ViT-like layer
  // collapsed to trustworthiness 0.50)
  auto recentre = [&](int64_t lc) {
    float* v = yt.data() + lc * N;
    double m = 0.0;
    for (int64_t i = 0; i < N; ++i) m += v[i];
    const float mf = static_cast<float>(m / static_cast<double>(N));
    for (int64_t i = 0; i < N; ++i) v[i] -= mf;
  };

  int64_t done = 0;
  bool stop = false;
  if (B == 1) {
    // One block per problem (L >= 16): the problems never meet, so each task runs the whole
    // schedule of its problems (no barrier per step, their buffers stay in the thread's cache)
    // with the very arithmetic of the step-major loop below. A task is one problem or, on the
    // AVX2 path with S >= 4 runs per layer, up to 8 runs of one layer stepped together so that
    // their attraction reads the layer's neighbour lists once (attraction_lanes_avx2: the same
    // bits). Thread 0 (the caller) reports the mean progress.
    const int64_t S = L / LP;
    int64_t chunks = 0;  // tasks per layer when runs step together; 0: one task per problem
#ifdef SLS_HAVE_AVX2_PATH
    if constexpr (!kDense) {
      const int64_t c = (S + 7) / 8;
      if (avx2 && S >= 4 && LP * c >= nt) chunks = c;
    }
#endif
    const int64_t n_tasks = chunks ? LP * chunks : L;
    std::vector<int64_t> steps_of(L, 0);
    std::atomic<int64_t> total{0};
    std::atomic<bool> halt{false};
    std::exception_ptr error;
    int64_t reported = 0;
#pragma omp parallel num_threads(nt)
    {
      const int tid = omp_get_thread_num();
      std::vector<float> lanes_in(chunks ? N * 2 * 8 : 0, 0.f), lanes_out(lanes_in.size());
      int64_t members[8];
#pragma omp for schedule(dynamic, 1)
      for (int64_t task = 0; task < n_tasks; ++task) {
        int64_t nm = 1;
        if (chunks) {  // runs r0 .. r1 - 1 of layer lp: problems lp + r LP
          const int64_t lp = task / chunks, c = task % chunks;
          const int64_t r0 = c * S / chunks, r1 = (c + 1) * S / chunks;
          nm = r1 - r0;
          for (int64_t r = 0; r < nm; ++r) members[r] = lp + (r0 + r) * LP;
        } else {
          members[0] = task;
        }
        for (const auto& ph : phases) {
          for (int64_t m = 0; m < nm; ++m) {
            const int64_t l = members[m];
            std::fill(upd.begin() + l * 2 * N, upd.begin() + (l + 1) * 2 * N, 0.f);
            std::fill(gains.begin() + l * 2 * N, gains.begin() + (l + 1) * 2 * N, 1.f);
          }
          for (int64_t step = 0; step < ph.steps; ++step) {
            if (halt.load(std::memory_order_relaxed)) break;
#ifdef SLS_HAVE_AVX2_PATH
            if (chunks)
              lockstep_forces(members, nm, task / chunks, lanes_in.data(), lanes_out.data());
            else
#endif
              forces(members[0], tid);
            for (int64_t m = 0; m < nm; ++m) {
              const int64_t l = members[m];
              update(l, 0, N, static_cast<float>(ph.exaggeration), static_cast<float>(ph.momentum));
              recentre(2 * l);
              recentre(2 * l + 1);
              ++steps_of[l];
            }
            const int64_t mean = (total.fetch_add(nm) + nm) / L;
            if (tid == 0 && progress && mean >= reported + report_every) {
              reported = mean;
              try {
                if (!progress(mean)) halt = true;
              } catch (...) {
                error = std::current_exception();
                halt = true;
              }
            }
          }
        }
      }
    }
    if (error) std::rethrow_exception(error);
    stop = halt.load();
    done = *std::min_element(steps_of.begin(), steps_of.end());
    if (progress && !stop && done != reported) progress(done);
  } else {
    const int64_t chunk = 256;  // points per update task
    const int64_t n_chunks = (N + chunk - 1) / chunk;
    for (const auto& ph : phases) {
      std::fill(upd.begin(), upd.end(), 0.f);
      std::fill(gains.begin(), gains.end(), 1.f);
      const float exaggeration = static_cast<float>(ph.exaggeration);
      const float momentum = static_cast<float>(ph.momentum);
      for (int64_t step = 0; step < ph.steps && !stop; ++step) {
#pragma omp parallel for schedule(dynamic, 1) num_threads(nt)
        for (int64_t t = 0; t < L * B; ++t) forces(t, omp_get_thread_num());
#pragma omp parallel for schedule(static) num_threads(nt)
        for (int64_t t = 0; t < L * n_chunks; ++t) {
          const int64_t l = t / n_chunks, i0 = (t % n_chunks) * chunk;
          update(l, i0, std::min(N, i0 + chunk), exaggeration, momentum);
        }
#pragma omp parallel for schedule(static) num_threads(nt)
        for (int64_t lc = 0; lc < L * 2; ++lc) recentre(lc);
        ++done;
        if (progress && (done % report_every == 0) && !progress(done)) stop = true;
      }
    }
    if (progress && !stop && done % report_every != 0) progress(done);
  }
  for (int64_t l = 0; l < L; ++l)
    for (int64_t i = 0; i < N; ++i)
      for (int64_t c = 0; c < 2; ++c) y_out[(l * N + i) * 2 + c] = yt[(l * 2 + c) * N + i];
  return done;
}

}  // namespace

int64_t tsne_row_blocks(int64_t L, int64_t N, int64_t* bounds) {
  // enough blocks for 16 threads over all problems, at most 8, none thinner than 32 rows
  int64_t B = std::max<int64_t>(1, std::min<int64_t>(kMaxBlocks, (16 + L - 1) / L));
  B = std::max<int64_t>(1, std::min<int64_t>(B, N / 32));
  // row r starts after r * (N - 1) - r (r - 1) / 2 pairs; cut where 1/B of them are done
  const double total = 0.5 * static_cast<double>(N) * static_cast<double>(N - 1);
  bounds[0] = 0;
  int64_t r = 0;
  for (int64_t b = 1; b < B; ++b) {
    const double want = total * static_cast<double>(b) / static_cast<double>(B);
    while (r < N && static_cast<double>(r) * (N - 1) - 0.5 * r * (r - 1.0) < want) ++r;
    bounds[b] = std::max(bounds[b - 1], r);
  }
  bounds[B] = N;
  return B;
}

static SLS_CLONES void attraction_csr_rows(const float* __restrict xy,
                                           const int64_t* __restrict rowptr,
                                           const int32_t* __restrict col,
                                           const float* __restrict val, int64_t i0, int64_t i1,
                                           float* __restrict out) {
  for (int64_t i = i0; i < i1; ++i) {
    const float xi = xy[2 * i], yi = xy[2 * i + 1];
    float sx = 0.f, sy = 0.f;
#pragma omp simd reduction(+ : sx, sy)
    for (int64_t s = rowptr[i]; s < rowptr[i + 1]; ++s) {
      const int64_t j = col[s];
      const float dx = xi - xy[2 * j];
      const float dy = yi - xy[2 * j + 1];
      const float pw = val[s] / (1.f + dx * dx + dy * dy);
      sx += pw * dx;
      sy += pw * dy;
    }
    out[2 * i] = sx;
    out[2 * i + 1] = sy;
  }
}

void tsne_attraction_csr(const float* y, const int64_t* rowptr, const int32_t* col,
                         const float* val, int64_t L, int64_t LP, int64_t N, int64_t E,
                         float* attr, int num_threads) {
  constexpr int64_t kChunk = 256;  // rows per task
  const int64_t chunks = (N + kChunk - 1) / kChunk;
#pragma omp parallel for schedule(dynamic, 4) num_threads(num_threads)
  for (int64_t t = 0; t < L * chunks; ++t) {
    const int64_t l = t / chunks, lp = l % LP, i0 = (t % chunks) * kChunk;
    attraction_csr_rows(y + l * N * 2, rowptr + lp * (N + 1), col + lp * E, val + lp * E, i0,
                           std::min(N, i0 + kChunk), attr + l * N * 2);
  }
}

int64_t tsne_optimize(float* y, const float* P, const int32_t* nbr, const float* pval, int64_t L,
                      int64_t LP, int64_t N, int64_t M, const TsneSchedule& schedule,
                      int num_threads, const TsneProgress& progress, int64_t report_every) {
  if (report_every < 1) report_every = 1;
  if (P)
    return optimize_impl<true>(y, P, nullptr, nullptr, L, LP, N, 0, schedule, num_threads,
                               progress, report_every);
  return optimize_impl<false>(y, nullptr, nbr, pval, L, LP, N, M, schedule, num_threads, progress,
                              report_every);
}

}  // namespace sls_fast
