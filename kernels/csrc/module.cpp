// pybind11 bindings of sls_fast._C. Every function takes C-contiguous NumPy arrays of the dtype it
// names, checks shapes, and releases the GIL while it computes. Output buffers are marked
// noconvert(): a wrong dtype or a strided buffer is refused (TypeError) instead of being silently
// copied, which would leave the caller's buffer unwritten.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <omp.h>

#include <stdexcept>
#include <string>

#include "cluster_metrics.h"
#include "tsne_affinities.h"
#include "tsne_optimize.h"

namespace py = pybind11;

namespace {

template <typename T>
using CArray = py::array_t<T, py::array::c_style>;

void check_offsets(const CArray<int64_t>& offsets, int64_t N) {
  if (offsets.ndim() != 1 || offsets.shape(0) < 2)
    throw std::invalid_argument("offsets must be 1-D with K + 1 >= 2 entries");
  const int64_t* o = offsets.data();
  const int64_t K = offsets.shape(0) - 1;
  if (o[0] != 0 || o[K] != N)
    throw std::invalid_argument("offsets must start at 0 and end at N = " + std::to_string(N));
  for (int64_t c = 0; c < K; ++c)
    if (o[c + 1] <= o[c]) throw std::invalid_argument("offsets must be strictly increasing");
}

int resolve_threads(int num_threads) { return num_threads > 0 ? num_threads : omp_get_max_threads(); }

template <typename T>
void silhouette_samples_py(const CArray<T>& xt, const CArray<int64_t>& offsets, CArray<double>& out,
                           int num_threads) {
  if (xt.ndim() != 3) throw std::invalid_argument("xt must be [L, d, N]");
  const int64_t L = xt.shape(0), d = xt.shape(1), N = xt.shape(2);
  check_offsets(offsets, N);
  if (out.ndim() != 2 || out.shape(0) != L || out.shape(1) != N)
    throw std::invalid_argument("out must be float64 [L, N]");
  const T* px = xt.data();
  const int64_t* po = offsets.data();
  double* pout = out.mutable_data();
  const int64_t K = offsets.shape(0) - 1;
  const int nt = resolve_threads(num_threads);
  py::gil_scoped_release release;
  sls_fast::silhouette_samples<T>(px, L, d, N, po, K, pout, nt);
}

template <typename T>
void segment_statistics_py(const CArray<T>& x, const CArray<int64_t>& offsets,
                           CArray<double>& centroid, CArray<double>& sq, CArray<double>& dist,
                           int num_threads) {
  if (x.ndim() != 3) throw std::invalid_argument("x must be [L, N, d]");
  const int64_t L = x.shape(0), N = x.shape(1), d = x.shape(2);
  check_offsets(offsets, N);
  const int64_t K = offsets.shape(0) - 1;
  if (centroid.ndim() != 3 || centroid.shape(0) != L || centroid.shape(1) != K ||
      centroid.shape(2) != d)
    throw std::invalid_argument("centroid must be float64 [L, K, d]");
  if (sq.ndim() != 2 || sq.shape(0) != L || sq.shape(1) != K || dist.ndim() != 2 ||
      dist.shape(0) != L || dist.shape(1) != K)
    throw std::invalid_argument("sq and dist must be float64 [L, K]");
  const T* px = x.data();
  const int64_t* po = offsets.data();
  double* pc = centroid.mutable_data();
  double* ps = sq.mutable_data();
  double* pd = dist.mutable_data();
  const int nt = resolve_threads(num_threads);
  py::gil_scoped_release release;
  sls_fast::segment_statistics<T>(px, L, N, d, po, K, pc, ps, pd, nt);
}

void check_shape(const py::array& a, std::initializer_list<int64_t> shape, const char* what) {
  bool ok = a.ndim() == static_cast<py::ssize_t>(shape.size());
  int k = 0;
  for (int64_t s : shape) ok = ok && a.shape(k++) == s;
  if (!ok) throw std::invalid_argument(std::string(what) + " has the wrong shape");
}

// Validated t-SNE affinities: dense P [LP, N, N] or neighbour lists nbr / pval [LP, M, N],
// with LP dividing the problem count L (problem l reads the affinities of l % LP: repeats).
struct Affinities {
  const float* P = nullptr;
  const int32_t* nbr = nullptr;
  const float* pval = nullptr;
  int64_t LP = 0, M = 0;
  py::object keep_alive[3];
};

Affinities check_affinities(py::object P, py::object nbr, py::object pval, int64_t L, int64_t N) {
  Affinities a;
  auto check_lp = [L](int64_t LP) {
    if (LP < 1 || L % LP != 0)
      throw std::invalid_argument("the affinities must cover LP layers with L = S x LP problems; "
                                  "got L = " + std::to_string(L) + ", LP = " + std::to_string(LP));
  };
  if (P.is_none() == nbr.is_none() || nbr.is_none() != pval.is_none())
    throw std::invalid_argument("pass either a dense P or neighbour lists (nbr, pval)");
  if (!P.is_none()) {
    if (!py::isinstance<CArray<float>>(P))
      throw std::invalid_argument("P must be a C-contiguous float32 array");
    auto p = P.cast<CArray<float>>();
    if (p.ndim() != 3) throw std::invalid_argument("P must be float32 [LP, N, N]");
    a.LP = p.shape(0);
    check_lp(a.LP);
    check_shape(p, {a.LP, N, N}, "P");
    a.P = p.data();
    a.keep_alive[0] = p;
    return a;
  }
  auto nb = nbr.cast<CArray<int32_t>>();
  auto pv = pval.cast<CArray<float>>();
  if (nb.ndim() != 3 || nb.shape(2) != N) throw std::invalid_argument("nbr must be int32 [LP, M, N]");
  a.LP = nb.shape(0);
  check_lp(a.LP);
  a.M = nb.shape(1);
  check_shape(pv, {a.LP, a.M, N}, "pval");
  const int32_t* pn = nb.data();
  for (int64_t s = 0; s < a.LP * a.M * N; ++s)
    if (pn[s] < 0 || pn[s] >= N) throw std::invalid_argument("nbr holds an index outside 0..N-1");
  a.nbr = pn;
  a.pval = pv.data();
  a.keep_alive[1] = nb;
  a.keep_alive[2] = pv;
  return a;
}

int64_t tsne_optimize_py(CArray<float>& y, py::object P, py::object nbr, py::object pval,
                         int64_t max_iter, int64_t exploration_iter, double early_exaggeration,
                         double learning_rate, double min_gain, int num_threads,
                         py::object progress, int64_t report_every) {
  if (y.ndim() != 3 || y.shape(2) != 2) throw std::invalid_argument("y must be float32 [L, N, 2]");
  const int64_t L = y.shape(0), N = y.shape(1);
  if (N < 2) throw std::invalid_argument("t-SNE needs at least 2 points");
  if (max_iter < 0 || exploration_iter < 0) throw std::invalid_argument("negative iteration count");
  if (!(learning_rate > 0.0)) throw std::invalid_argument("learning_rate must be > 0");
  const Affinities a = check_affinities(P, nbr, pval, L, N);
  sls_fast::TsneSchedule s;
  s.max_iter = max_iter;
  s.exploration_iter = exploration_iter;
  s.early_exaggeration = early_exaggeration;
  s.learning_rate = learning_rate;
  s.min_gain = min_gain;
  const int nt = resolve_threads(num_threads);
  // between steps: the Python callback (if any) and Ctrl-C, with the GIL held
  sls_fast::TsneProgress cb = [&progress](int64_t done) {
    py::gil_scoped_acquire gil;
    if (PyErr_CheckSignals() != 0) throw py::error_already_set();
    if (!progress.is_none()) {
      py::object r = progress(done);
      if (!r.is_none() && !r.cast<bool>()) return false;
    }
    return true;
  };
  float* py_ = y.mutable_data();
  py::gil_scoped_release release;
  return sls_fast::tsne_optimize(py_, a.P, a.nbr, a.pval, L, a.LP, N, a.M, s, nt, cb,
                                 report_every);
}

void conditional_p_py(const CArray<double>& d2, double perplexity, double tol, int max_steps,
                      CArray<float>& p, py::object steps, int num_threads) {
  if (d2.ndim() != 2) throw std::invalid_argument("d2 must be float64 [R, K]");
  const int64_t R = d2.shape(0), K = d2.shape(1);
  check_shape(p, {R, K}, "p");
  if (!(perplexity > 0.0)) throw std::invalid_argument("perplexity must be > 0");
  if (max_steps < 1) throw std::invalid_argument("max_steps must be >= 1");
  int32_t* ps = nullptr;
  CArray<int32_t> st;
  if (!steps.is_none()) {
    if (!py::isinstance<CArray<int32_t>>(steps))
      throw std::invalid_argument("steps must be a C-contiguous int32 array");
    st = steps.cast<CArray<int32_t>>();
    check_shape(st, {R}, "steps");
    ps = st.mutable_data();
  }
  const double* pd = d2.data();
  float* pp = p.mutable_data();
  const int nt = resolve_threads(num_threads);
  py::gil_scoped_release release;
  sls_fast::conditional_p(pd, R, K, perplexity, tol, max_steps, pp, ps, nt);
}

void knn_conditional_p_py(const CArray<double>& d2, int64_t k, double perplexity, double tol,
                          int max_steps, CArray<int32_t>& nbr, CArray<float>& p, int num_threads) {
  if (d2.ndim() != 2) throw std::invalid_argument("d2 must be float64 [R, C]");
  const int64_t R = d2.shape(0), C = d2.shape(1);
  if (k < 1 || k > C) throw std::invalid_argument("k must be in 1..C = " + std::to_string(C));
  check_shape(nbr, {R, k}, "nbr");
  check_shape(p, {R, k}, "p");
  if (!(perplexity > 0.0)) throw std::invalid_argument("perplexity must be > 0");
  if (max_steps < 1) throw std::invalid_argument("max_steps must be >= 1");
  const double* pd = d2.data();
  int32_t* pn = nbr.mutable_data();
  float* pp = p.mutable_data();
  const int nt = resolve_threads(num_threads);
  py::gil_scoped_release release;
  sls_fast::knn_conditional_p(pd, R, C, k, perplexity, tol, max_steps, pn, pp, nt);
}

void check_knn_lists(const CArray<int32_t>& nbr) {
  if (nbr.ndim() != 3) throw std::invalid_argument("nbr must be int32 [L, N, k]");
  const int64_t N = nbr.shape(1), n = nbr.size();
  const int32_t* pn = nbr.data();
  for (int64_t s = 0; s < n; ++s)
    if (pn[s] < 0 || pn[s] >= N) throw std::invalid_argument("nbr holds an index outside 0..N-1");
}

py::tuple joint_lists_py(const CArray<int32_t>& nbr, const CArray<float>& cond, int num_threads) {
  check_knn_lists(nbr);
  const int64_t L = nbr.shape(0), N = nbr.shape(1), k = nbr.shape(2);
  check_shape(cond, {L, N, k}, "cond");
  const int32_t* pn = nbr.data();
  const float* pc = cond.data();
  CArray<int32_t> nbr_out;
  CArray<float> pval;
  const int nt = resolve_threads(num_threads);
  {
    py::gil_scoped_release release;
    sls_fast::joint_lists(pn, pc, L, N, k, [&](int64_t M, int32_t** no, float** pv) {
      py::gil_scoped_acquire gil;
      nbr_out = CArray<int32_t>({L, M, N});
      pval = CArray<float>({L, M, N});
      *no = nbr_out.mutable_data();
      *pv = pval.mutable_data();
    }, nt);
  }
  return py::make_tuple(nbr_out, pval);
}

void tsne_attraction_csr_py(const CArray<float>& y, const CArray<int64_t>& rowptr,
                            const CArray<int32_t>& col, const CArray<float>& val,
                            CArray<float>& attr, int num_threads) {
  if (y.ndim() != 3 || y.shape(2) != 2) throw std::invalid_argument("y must be float32 [L, N, 2]");
  const int64_t L = y.shape(0), N = y.shape(1);
  if (rowptr.ndim() != 2 || rowptr.shape(1) != N + 1)
    throw std::invalid_argument("rowptr must be int64 [LP, N + 1]");
  const int64_t LP = rowptr.shape(0);
  if (LP < 1 || L % LP != 0)
    throw std::invalid_argument("the rows cover LP layers, which must divide L");
  if (col.ndim() != 2 || col.shape(0) != LP) throw std::invalid_argument("col must be int32 [LP, E]");
  const int64_t E = col.shape(1);
  check_shape(val, {LP, E}, "val");
  check_shape(attr, {L, N, 2}, "attr");
  const int64_t* pr = rowptr.data();
  const int32_t* pc = col.data();
  for (int64_t lp = 0; lp < LP; ++lp) {  // rows must be in bounds: the kernel trusts them
    const int64_t* r = pr + lp * (N + 1);
    if (r[0] != 0 || r[N] > E) throw std::invalid_argument("rowptr must run from 0 to at most E");
    for (int64_t i = 0; i < N; ++i)
      if (r[i + 1] < r[i]) throw std::invalid_argument("rowptr must be non-decreasing");
    for (int64_t s = 0; s < r[N]; ++s)
      if (pc[lp * E + s] < 0 || pc[lp * E + s] >= N)
        throw std::invalid_argument("col holds an index outside 0..N-1");
  }
  const float* py_ = y.data();
  const float* pv = val.data();
  float* pa = attr.mutable_data();
  const int nt = resolve_threads(num_threads);
  py::gil_scoped_release release;
  sls_fast::tsne_attraction_csr(py_, pr, pc, pv, L, LP, N, E, pa, nt);
}

}  // namespace

PYBIND11_MODULE(_C, m) {
  m.doc() = "sls_fast native CPU kernels (C++17, OpenMP); NumPy buffers in, NumPy buffers out";
  m.def("silhouette_samples_f32", &silhouette_samples_py<float>, py::arg("xt"), py::arg("offsets"),
        py::arg("out").noconvert(), py::arg("num_threads") = 0,
        "Per-point silhouette of float32 xt [L, d, N] (points sorted by cluster) into out [L, N].");
  m.def("silhouette_samples_f64", &silhouette_samples_py<double>, py::arg("xt"),
        py::arg("offsets"), py::arg("out").noconvert(), py::arg("num_threads") = 0,
        "Per-point silhouette of float64 xt [L, d, N] (points sorted by cluster) into out [L, N].");
  m.def("segment_statistics_f32", &segment_statistics_py<float>, py::arg("x"), py::arg("offsets"),
        py::arg("centroid").noconvert(), py::arg("sq").noconvert(), py::arg("dist").noconvert(), py::arg("num_threads") = 0,
        "Per-cluster centroid [L, K, d], sum of squared and plain distances to it [L, K].");
  m.def("segment_statistics_f64", &segment_statistics_py<double>, py::arg("x"),
        py::arg("offsets"), py::arg("centroid").noconvert(), py::arg("sq").noconvert(), py::arg("dist").noconvert(),
        py::arg("num_threads") = 0,
        "Per-cluster centroid [L, K, d], sum of squared and plain distances to it [L, K].");
  m.def("tsne_optimize_f32", &tsne_optimize_py, py::arg("y").noconvert(), py::arg("P"),
        py::arg("nbr"), py::arg("pval"), py::arg("max_iter"), py::arg("exploration_iter"),
        py::arg("early_exaggeration"), py::arg("learning_rate"), py::arg("min_gain"),
        py::arg("num_threads") = 0, py::arg("progress") = py::none(),
        py::arg("report_every") = 50,
        "The whole t-SNE optimisation of float32 y [L, N, 2] (in place) over dense P [LP, N, N] "
        "or neighbour lists nbr / pval [LP, M, N]; progress(done) is called every report_every "
        "steps (return False to stop); Ctrl-C stops it. Returns the steps done.");
  m.def("conditional_p_f64", &conditional_p_py, py::arg("d2").noconvert(), py::arg("perplexity"),
        py::arg("tol"), py::arg("max_steps"), py::arg("p").noconvert(), py::arg("steps") = py::none(),
        py::arg("num_threads") = 0,
        "Per-row perplexity bisection: float64 squared distances d2 [R, K] (+inf: no neighbour) "
        "-> float32 conditional p [R, K] (rows sum to 1), steps taken [R] int32 (optional).");
  m.def("knn_conditional_p_f64", &knn_conditional_p_py, py::arg("d2").noconvert(), py::arg("k"),
        py::arg("perplexity"), py::arg("tol"), py::arg("max_steps"), py::arg("nbr").noconvert(),
        py::arg("p").noconvert(), py::arg("num_threads") = 0,
        "The k nearest columns of every row of float64 d2 [R, C] (+inf: never) into int32 nbr "
        "[R, k] (increasing distance, ties by column) and their perplexity-calibrated "
        "conditionals into float32 p [R, k].");
  m.def("joint_lists", &joint_lists_py, py::arg("nbr").noconvert(), py::arg("cond").noconvert(),
        py::arg("num_threads") = 0,
        "Symmetrised, normalised joint P of directed kNN conditionals (nbr int32, cond float32 "
        "[L, N, k]) as padded neighbour lists (nbr_out int32, pval float32 [L, M, N]).");
  m.def("tsne_attraction_csr_f32", &tsne_attraction_csr_py, py::arg("y"), py::arg("rowptr"),
        py::arg("col"), py::arg("val"), py::arg("attr").noconvert(), py::arg("num_threads") = 0,
        "The t-SNE attraction of float32 y [L, N, 2] over compressed rows (rowptr int64 [LP, "
        "N + 1], col int32 / val float32 [LP, E]; problem l reads layer l % LP) into attr "
        "[L, N, 2].");
  m.def("max_threads", []() { return omp_get_max_threads(); },
        "OpenMP threads used when num_threads is 0.");
}
