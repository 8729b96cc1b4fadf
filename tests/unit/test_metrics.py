"""Batched clustering metrics against scikit-learn (float64 and float32), every backend."""
import numpy as np
import pytest
import torch
from sklearn import metrics as skm

import sls_fast
from sls_fast.method.metrics import _prepare
from sls_fast.kernels.cluster_stats import cluster_stats_torch, cluster_stats_triton
from sls_fast.kernels.native import cluster_stats_native, silhouette_samples_native
from sls_fast.kernels.silhouette import silhouette_samples_torch, silhouette_samples_triton

from _helpers import assert_close, clustered

SK = {
    "silhouette": skm.silhouette_score,
    "calinski_harabasz": skm.calinski_harabasz_score,
    "davies_bouldin": skm.davies_bouldin_score,
}
BACKENDS = ["torch", "native", "triton"]

# (L, N, d, K): odd N, one layer, d in {2, 3, 64}, K from 2 to N - 1.
CASES = [
    (1, 37, 2, 2),
    (3, 101, 2, 7),
    (2, 97, 3, 5),
    (2, 61, 64, 4),
    (4, 53, 2, 52),  # K = N - 1: one cluster of two, the rest singletons
    (1, 129, 1, 3),
]


def sk_scores(X, labels, metric):
    X = np.asarray(X, dtype=np.float64)
    return np.array([SK[metric](X[l], labels) for l in range(X.shape[0])])


def exact_scores(X, labels, metric):
    """scikit-learn's formulas evaluated with direct (not Gram-trick) float64 distances."""
    X = np.asarray(X, dtype=np.float64)
    _, y = np.unique(labels, return_inverse=True)
    K = y.max() + 1
    out = []
    for Xl in X:
        if metric == "calinski_harabasz":
            out.append(skm.calinski_harabasz_score(Xl, y))
            continue
        if metric == "silhouette":
            D = np.sqrt(((Xl[:, None, :] - Xl[None, :, :]) ** 2).sum(-1))
            sums = np.stack([D[:, y == k].sum(1) for k in range(K)], 1)
            sizes = np.bincount(y)
            own = sizes[y]
            a = sums[np.arange(len(y)), y] / np.maximum(own - 1, 1)
            other = sums / sizes
            other[np.arange(len(y)), y] = np.inf
            b = other.min(1)
            with np.errstate(invalid="ignore", divide="ignore"):
                s = np.nan_to_num((b - a) / np.maximum(a, b))
            out.append(np.mean(np.where(own > 1, s, 0.0)))
            continue
        cen = np.stack([Xl[y == k].mean(0) for k in range(K)])
        intra = np.array([np.sqrt(((Xl[y == k] - cen[k]) ** 2).sum(1)).mean() for k in range(K)])
        cd = np.sqrt(((cen[:, None] - cen[None]) ** 2).sum(-1))
        if np.allclose(intra, 0) or np.allclose(cd, 0):
            out.append(0.0)
            continue
        cd[cd == 0] = np.inf
        out.append(np.mean(np.max((intra[:, None] + intra[None]) / cd, axis=1)))
    return np.array(out)


def check_float64(got, X, y, metric, what):
    """Equal to scikit-learn to 1e-8 relative, up to scikit-learn's own rounding: its Gram-trick
    distances can be off by more than 1e-8 (seen: 1.1e-7 for Davies-Bouldin with 52 clusters of
    53 points), so the bound is 1e-8 * |sk| + |sk - exact|, and the exact formula is met to 1e-10."""
    got = np.asarray(got, dtype=np.float64)
    sk = sk_scores(X, y, metric)
    exact = exact_scores(X, y, metric)
    assert_close(got, exact, rtol=1e-10, atol=1e-13, what=f"{what} vs exact float64")
    slack = np.abs(sk - exact)
    assert_close(got, sk, rtol=1e-8, atol=1e-12 + slack.max(), what=f"{what} vs scikit-learn")


def backend_data(X, backend):
    return torch.from_numpy(X) if backend == "triton" else X


def to_np(v):
    return v.numpy() if isinstance(v, torch.Tensor) else np.asarray(v)


@pytest.mark.slow
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("case", CASES, ids=lambda c: "L{}-N{}-d{}-K{}".format(*c))
def test_float64_matches_sklearn(rng, backend, case):
    L, N, d, K = case
    X, labels = clustered(rng, L, N, d, K, spread=rng.uniform(0.3, 3.0))
    codes = np.sort(rng.choice(100_000, size=K, replace=False)) - 50_000  # gaps, negatives
    y = codes[labels]
    got = sls_fast.cluster_scores(backend_data(X, backend), y, backend=backend)
    for metric in SK:
        check_float64(to_np(got[metric]), X, y, metric, f"{metric} ({backend})")


@pytest.mark.parametrize("backend", ["native", "triton"])
@pytest.mark.parametrize("case", CASES[:4], ids=lambda c: "L{}-N{}-d{}-K{}".format(*c))
def test_float32_matches_sklearn(rng, backend, case):
    L, N, d, K = case
    X, y = clustered(rng, L, N, d, K)
    X32 = X.astype(np.float32)
    got = sls_fast.cluster_scores(backend_data(X32, backend), y, backend=backend)
    for metric in SK:
        # reference: scikit-learn in float64 on the very same (float32-rounded) points
        assert_close(to_np(got[metric]), sk_scores(X32, y, metric), rtol=2e-4, atol=2e-6,
                     what=f"{metric} float32 ({backend})")


def test_singletons_and_pairs(rng):
    """Singletons score 0, as in scikit-learn; a mix of singleton and large clusters."""
    N = 41
    y = np.concatenate([np.zeros(20, int), np.ones(15, int), np.arange(2, 8)])
    X = rng.normal(size=(2, N, 3))
    for backend in BACKENDS:
        got = sls_fast.silhouette_score(backend_data(X, backend), y, backend=backend)
        check_float64(to_np(got), X, y, "silhouette", f"silhouette ({backend})")


def test_duplicate_points_zero_distance(rng):
    """All points of a cluster identical: a(i) = 0, and 0/0 never leaks a NaN."""
    y = np.array([0] * 5 + [1] * 6 + [2] * 4)
    X = np.repeat(rng.normal(size=(1, 3, 2)), [5, 6, 4], axis=1)
    X2 = np.zeros((1, 15, 2))  # every point identical: silhouette 0, CH 1, DB 0 in scikit-learn
    for backend in BACKENDS:
        for data in (X, X2):
            got = sls_fast.cluster_scores(backend_data(data, backend), y, backend=backend)
            for metric in SK:
                check_float64(to_np(got[metric]), data, y, metric, f"{metric} degenerate ({backend})")


@pytest.mark.parametrize("backend", BACKENDS)
def test_batched_equals_layer_loop(rng, backend):
    X, y = clustered(rng, 5, 83, 2, 6)
    batched = sls_fast.cluster_scores(backend_data(X, backend), y, backend=backend)
    for metric in SK:
        looped = [to_np(sls_fast.cluster_scores(backend_data(X[l], backend), y, (metric,),
                                                backend=backend)[metric]) for l in range(5)]
        assert_close(to_np(batched[metric]), np.array(looped, dtype=np.float64), rtol=1e-12,
                     atol=1e-14, what=f"{metric} batched vs loop ({backend})")


def test_per_point_silhouette_matches_sklearn_samples(rng):
    """Kernels write every point's s(i) (output poisoned with NaN first), equal to scikit-learn."""
    X, y = clustered(rng, 3, 77, 2, 5)
    p = _prepare(X, y)
    inv = torch.argsort(p.perm).numpy()
    expected = np.stack([skm.silhouette_samples(X[l], y) for l in range(3)])
    L, N = 3, 77
    xt = p.x_sorted.transpose(1, 2).contiguous()
    outs = {}
    for name in ("torch", "native", "triton-segment", "triton-onehot"):
        out = torch.full((L, N), float("nan"), dtype=torch.float64)
        if name == "torch":
            silhouette_samples_torch(p.x_sorted, p.offsets, p.own, out)
        elif name == "native":
            silhouette_samples_native(xt.numpy(), p.offsets.numpy(), out.numpy())
        else:
            silhouette_samples_triton(xt, p.offsets, p.own, out, variant=name.split("-")[1])
        outs[name] = out.numpy()[:, inv]
    for name, got in outs.items():
        rtol = 1e-5 if name == "triton-onehot" else 1e-10  # onehot computes in float32
        assert_close(got, expected, rtol=rtol, atol=1e-6 if name == "triton-onehot" else 1e-13,
                     what=f"silhouette samples ({name})")


def test_cluster_stats_backends_agree(rng):
    X, y = clustered(rng, 2, 91, 70, 4)  # d = 70 > one 64-wide Triton tile
    p = _prepare(X, y)
    ref = cluster_stats_torch(p.x_sorted, p.offsets, p.own)
    nat = cluster_stats_native(p.x_sorted.numpy(), p.offsets.numpy())
    cen = torch.full_like(ref[0], float("nan"))
    sq = torch.full_like(ref[1], float("nan"))
    dist = torch.full_like(ref[2], float("nan"))
    tri = cluster_stats_triton(p.x_sorted, p.offsets, centroid=cen, sq=sq, dist=dist)
    for r, n, t, what in zip(ref, nat, tri, ("centroid", "sq", "dist")):
        assert_close(n, r.numpy(), rtol=1e-10, atol=1e-12, what=f"{what} native")
        assert_close(t.numpy(), r.numpy(), rtol=1e-10, atol=1e-12, what=f"{what} triton")


# ---------------------------------------------------------------- input and output libraries
def test_library_round_trip(rng):
    X, y = clustered(rng, 2, 45, 2, 3)
    expected = sk_scores(X, y, "silhouette")
    out_np = sls_fast.silhouette_score(X, y)
    assert isinstance(out_np, np.ndarray) and out_np.shape == (2,)
    out_t = sls_fast.silhouette_score(torch.from_numpy(X), torch.from_numpy(y))
    assert isinstance(out_t, torch.Tensor) and out_t.device.type == "cpu"
    out_list = sls_fast.silhouette_score(X.tolist(), y.tolist())
    assert isinstance(out_list, np.ndarray)
    scalar = sls_fast.silhouette_score(X[0], y)
    assert isinstance(scalar, float)
    scalar_t = sls_fast.silhouette_score(torch.from_numpy(X[0]), y)
    assert isinstance(scalar_t, torch.Tensor) and scalar_t.ndim == 0
    for got in (out_np, out_t.numpy(), out_list):
        assert_close(got, expected, rtol=1e-8, what="silhouette")
    assert_close(scalar, expected[0], rtol=1e-8, what="scalar silhouette")
    # float labels that hold integers, float16 / integer X
    assert_close(sls_fast.silhouette_score(X, y.astype(np.float64)), expected, rtol=1e-8)
    Xi = np.round(X * 10).astype(np.int32)
    assert_close(sls_fast.silhouette_score(Xi, y), sk_scores(Xi, y, "silhouette"), rtol=1e-8)


@pytest.mark.cuda
def test_cuda_triton_matches_sklearn(rng):
    X, y = clustered(rng, 4, 1001, 2, 10)
    got = sls_fast.cluster_scores(torch.from_numpy(X).cuda(), y)
    for metric in SK:
        assert got[metric].is_cuda
        check_float64(got[metric].cpu().numpy(), X, y, metric, f"{metric} cuda")


# ---------------------------------------------------------------- bad input
@pytest.mark.parametrize("fn", [sls_fast.silhouette_score, sls_fast.calinski_harabasz_score,
                                sls_fast.davies_bouldin_score])
def test_bad_input(fn):
    rng = np.random.default_rng(0)
    X = rng.normal(size=(2, 20, 2))
    y = np.arange(20) % 3
    Xnan = X.copy()
    Xnan[1, 4, 0] = np.nan
    with pytest.raises(ValueError, match="NaN or infinity"):
        fn(Xnan, y)
    Xinf = X.copy()
    Xinf[0, 0, 1] = np.inf
    with pytest.raises(ValueError, match="NaN or infinity"):
        fn(Xinf, y)
    with pytest.raises(ValueError, match="labels has 19 entries"):
        fn(X, y[:19])
    with pytest.raises(ValueError, match="must be integers"):
        fn(X, y + 0.5)
    with pytest.raises(ValueError, match="Number of labels is 1"):
        fn(X, np.zeros(20))
    with pytest.raises(ValueError, match="Number of labels is 20"):
        fn(X, np.arange(20))
    with pytest.raises(ValueError, match="4-D"):
        fn(X[None], y)
    with pytest.raises(ValueError, match="1-D"):
        fn(X.ravel(), y)
    with pytest.raises(ValueError, match="empty"):
        fn(np.zeros((2, 20, 0)), y)
    with pytest.raises(ValueError, match="empty"):
        fn(np.zeros((0, 20, 2)), y)
    with pytest.raises(ValueError, match="backend must be one of"):
        fn(X, y, backend="cuda")
    with pytest.raises(TypeError, match="numbers"):
        fn(X, np.array(["a", "b"] * 10))
    with pytest.raises(TypeError, match="real"):
        fn(X.astype(np.complex128), y)


def test_backend_device_mismatch(monkeypatch):
    X = np.random.default_rng(1).normal(size=(2, 20, 2))
    y = np.arange(20) % 3
    monkeypatch.setenv("TRITON_INTERPRET", "0")  # as on a CPU machine without the interpreter
    with pytest.raises(ValueError, match="needs CUDA data"):
        sls_fast.silhouette_score(X, y, backend="triton")
    if torch.cuda.is_available():
        with pytest.raises(ValueError, match="runs on the CPU"):
            sls_fast.silhouette_score(torch.from_numpy(X).cuda(), y, backend="native")


def test_unknown_metric():
    X = np.random.default_rng(2).normal(size=(2, 20, 2))
    with pytest.raises(ValueError, match="unknown metrics"):
        sls_fast.cluster_scores(X, np.arange(20) % 3, metrics=("accuracy",))


def test_native_kernel_rejects_bad_buffers():
    from sls_fast import _C

    xt = np.zeros((1, 2, 10), np.float32)
    with pytest.raises(ValueError, match="offsets"):
        _C.silhouette_samples_f32(xt, np.array([0, 5, 9], np.int64), np.zeros((1, 10)))
    with pytest.raises(ValueError, match="out must be"):
        _C.silhouette_samples_f32(xt, np.array([0, 5, 10], np.int64), np.zeros((2, 10)))
    with pytest.raises(TypeError):
        _C.silhouette_samples_f32(xt.astype(np.float64), np.array([0, 5, 10], np.int64),
                                  np.zeros((1, 10)))


def test_native_kernel_refuses_to_copy_output_buffers():
    """Output buffers are noconvert: a wrong dtype or a strided ``out`` is a TypeError, never a
    silent copy that leaves the caller's buffer unwritten."""
    from sls_fast import _C

    xt = np.random.default_rng(0).random((1, 2, 10)).astype(np.float32)
    off = np.array([0, 5, 10], np.int64)
    good = np.full((1, 10), np.nan)
    _C.silhouette_samples_f32(xt, off, good)
    assert np.isfinite(good).all()  # the caller's buffer is written in place
    for bad in (np.full((1, 10), np.nan, np.float32), np.full((1, 20), np.nan)[:, ::2]):
        with pytest.raises(TypeError):
            _C.silhouette_samples_f32(xt, off, bad)
        assert np.isnan(bad).all()
    x = np.ascontiguousarray(xt.transpose(0, 2, 1))
    with pytest.raises(TypeError):
        _C.segment_statistics_f32(x, off, np.zeros((1, 2, 2), np.float32), np.zeros((1, 2)),
                                  np.zeros((1, 2)))
