// The whole t-SNE optimisation in one native call (see tsne_optimize.h).
#include "tsne_optimize.h"

#include <omp.h>

#include <algorithm>
#include <cmath>
#include <vector>

#include "simd.h"

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
struct Csr {
  std::vector<int64_t> rowptr;
  std::vector<int32_t> col;
  std::vector<float> val;
};

Csr compress(const int32_t* nbr, const float* pval, int64_t M, int64_t N) {
  // slot-major input: walk each slot's row of N points (unit stride); entries keep slot order
  // (joint_probabilities fills a point's slots in increasing neighbour order)
  Csr c;
  c.rowptr.assign(N + 1, 0);
  for (int64_t m = 0; m < M; ++m)
    for (int64_t i = 0; i < N; ++i) c.rowptr[i + 1] += pval[m * N + i] != 0.f;
  for (int64_t i = 0; i < N; ++i) c.rowptr[i + 1] += c.rowptr[i];
  c.col.resize(c.rowptr[N]);
  c.val.resize(c.rowptr[N]);
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
  const int64_t chunk = 256;  // points per update task
  const int64_t n_chunks = (N + chunk - 1) / chunk;
  int64_t done = 0;
  bool stop = false;
  for (const auto& ph : phases) {
    std::fill(upd.begin(), upd.end(), 0.f);
    std::fill(gains.begin(), gains.end(), 1.f);
    const float exaggeration = static_cast<float>(ph.exaggeration);
    const float momentum = static_cast<float>(ph.momentum);
    for (int64_t step = 0; step < ph.steps && !stop; ++step) {
      // 1. forces: every (problem, row block) task owns its buffers
#pragma omp parallel for schedule(dynamic, 1) num_threads(nt)
      for (int64_t t = 0; t < L * B; ++t) {
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
      }
      // 2. gradient and update, per point (buffers and Z added in a fixed order)
#pragma omp parallel for schedule(static) num_threads(nt)
      for (int64_t t = 0; t < L * n_chunks; ++t) {
        const int64_t l = t / n_chunks, i0 = (t % n_chunks) * chunk, i1 = std::min(N, i0 + chunk);
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
      }
      // 3. re-centre every problem (the gradient is translation invariant, so the trajectory is
      // unchanged in exact arithmetic): a contracting early-exaggeration phase can shrink an
      // embedding to ~1e-7 around a centre that has drifted, and float32 then cannot resolve the
      // points' differences (measured: a ViT-like layer collapsed to trustworthiness 0.50)
#pragma omp parallel for schedule(static) num_threads(nt)
      for (int64_t lc = 0; lc < L * 2; ++lc) {
        float* v = yt.data() + lc * N;
        double m = 0.0;
        for (int64_t i = 0; i < N; ++i) m += v[i];
        const float mf = static_cast<float>(m / static_cast<double>(N));
        for (int64_t i = 0; i < N; ++i) v[i] -= mf;
      }
      ++done;
      if (progress && (done % report_every == 0) && !progress(done)) stop = true;
    }
  }
  if (progress && !stop && done % report_every != 0) progress(done);
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
