// The whole t-SNE optimisation of many independent problems in one native call.
//
// y [L, N, 2] float32 holds the L starts and receives the embeddings. The input affinities are
// dense P [LP, N, N] (symmetric, zero diagonal) or padded neighbour lists nbr / pval [LP, M, N]
// (slot-major; padding slots have pval 0); LP divides L and problem l reads the affinities of
// l % LP (the S = L / LP repeats of a layer share them, never copied).
//
// Schedule: scikit-learn's. Early exaggeration with momentum 0.5 for min(exploration_iter,
// max_iter) steps, then (update and gains reset) momentum 0.8 for max_iter - exploration_iter - 1
// steps; delta-bar-delta gains (+0.2 / x0.8, at least min_gain); no early stop.
//
// Forces per step are exact: the repulsion of every pair, each pair computed once and applied to
// both points (w_ij = 1 / (1 + |y_i - y_j|^2) is symmetric), and the attraction over P.
// Determinism: each problem's pairs are cut into a number of row blocks that depends on L and N
// only, every block accumulates into its own buffer, and the buffers are added in a fixed order:
// the result does not depend on the thread count. With one block per problem (L >= 16) each
// problem runs its whole schedule in one task (no barrier per step), with the same arithmetic.
//
// Kernels: on x86-64 CPUs with AVX2 + FMA (detected at run time) the neighbour-list forces use
// intrinsics (rows in pairs sharing the loads of y_j, masked tails; the attraction over
// neighbour rows padded to whole vectors, y read as interleaved (x, y) pairs instead of gathers);
// elsewhere (or with SLS_FAST_PORTABLE_KERNELS=1 in the environment) the portable auto-vectorised
// loops. On the AVX2 path with one block per problem and S = L / LP >= 4 runs per layer, a task
// steps up to 8 runs of one layer together and computes their attraction with one run per vector
// lane: each neighbour entry is read once for the 8 runs and y_j is two contiguous loads instead
// of a gather. The lane arithmetic and summation order are those of the one-run kernel, so every
// run keeps its bits (run 0 of a repeated t-SNE equals the single run).
#pragma once
#include <cstdint>
#include <functional>

namespace sls_fast {

struct TsneSchedule {
  int64_t max_iter = 1000;
  int64_t exploration_iter = 250;
  double early_exaggeration = 12.0;
  double learning_rate = 200.0;
  double min_gain = 0.01;
};

// Called between steps with the number of steps done; returning false stops the optimisation.
using TsneProgress = std::function<bool(int64_t)>;

// Returns the number of steps done (the schedule's total unless `progress` stopped it).
int64_t tsne_optimize(float* y, const float* P, const int32_t* nbr, const float* pval, int64_t L,
                      int64_t LP, int64_t N, int64_t M, const TsneSchedule& schedule,
                      int num_threads, const TsneProgress& progress, int64_t report_every);

// The attraction attr[l, i] = sum_s val[s] w_is (y_i - y_col[s]) of every problem over compressed
// rows (s in rowptr[lp, i] .. rowptr[lp, i + 1] of layer lp = l % LP, entries col / val [LP, E]),
// y and attr interleaved [L, N, 2] float32; w = 1 / (1 + |y_i - y_j|^2). Each point's sum runs in
// its row's order on one thread: the result does not depend on the thread count.
void tsne_attraction_csr(const float* y, const int64_t* rowptr, const int32_t* col,
                         const float* val, int64_t L, int64_t LP, int64_t N, int64_t E,
                         float* attr, int num_threads);

// The row blocks of one problem's pair triangle: B + 1 boundaries (first 0, last N), each block
// holding about the same number of pairs i < j. B depends on L and N only (determinism).
int64_t tsne_row_blocks(int64_t L, int64_t N, int64_t* bounds /* >= 9 entries */);

}  // namespace sls_fast
