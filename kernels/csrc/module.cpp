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
#include "tsne_forces.h"

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

void tsne_forces_py(const CArray<float>& yt, py::object P, py::object nbr, py::object pval,
                    CArray<float>& attr, CArray<float>& rep, CArray<double>& Z, int num_threads) {
  if (yt.ndim() != 3 || yt.shape(1) != 2) throw std::invalid_argument("yt must be [L, 2, N]");
  const int64_t L = yt.shape(0), N = yt.shape(2);
  check_shape(attr, {L, N, 2}, "attr");
  check_shape(rep, {L, N, 2}, "rep");
  check_shape(Z, {L}, "Z");
  const int nt = resolve_threads(num_threads);
  if (!P.is_none()) {
    auto p = P.cast<CArray<float>>();
    check_shape(p, {L, N, N}, "P");
    const float* pp = p.data();
    const float* py_ = yt.data();
    float* pa = attr.mutable_data();
    float* pr = rep.mutable_data();
    double* pz = Z.mutable_data();
    py::gil_scoped_release release;
    sls_fast::tsne_forces_dense(py_, pp, L, N, pa, pr, pz, nt);
    return;
  }
  auto nb = nbr.cast<CArray<int32_t>>();
  auto pv = pval.cast<CArray<float>>();
  if (nb.ndim() != 3 || nb.shape(0) != L || nb.shape(2) != N)
    throw std::invalid_argument("nbr must be int32 [L, M, N]");
  const int64_t M = nb.shape(1);
  check_shape(pv, {L, M, N}, "pval");
  const int32_t* pn = nb.data();
  for (int64_t s = 0; s < L * M * N; ++s)
    if (pn[s] < 0 || pn[s] >= N) throw std::invalid_argument("nbr holds an index outside 0..N-1");
  const float* pvv = pv.data();
  const float* py_ = yt.data();
  float* pa = attr.mutable_data();
  float* pr = rep.mutable_data();
  double* pz = Z.mutable_data();
  py::gil_scoped_release release;
  sls_fast::tsne_forces_sparse(py_, pn, pvv, L, N, M, pa, pr, pz, nt);
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
  m.def("tsne_forces_f32", &tsne_forces_py, py::arg("yt"), py::arg("P"), py::arg("nbr"),
        py::arg("pval"), py::arg("attr").noconvert(), py::arg("rep").noconvert(), py::arg("Z").noconvert(),
        py::arg("num_threads") = 0,
        "Exact t-SNE forces of float32 yt [L, 2, N] with dense P [L, N, N] (nbr = pval = None) "
        "or neighbour lists nbr int32 / pval float32 [L, M, N] (P = None): attr, rep [L, N, 2], "
        "Z [L] float64.");
  m.def("max_threads", []() { return omp_get_max_threads(); },
        "OpenMP threads used when num_threads is 0.");
}
