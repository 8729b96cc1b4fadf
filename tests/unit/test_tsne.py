"""sls_fast.tsne and the batched t-SNE kernels (sls_fast.kernels.tsne).

t-SNE is tested by quality, not coordinates (docs/design.md, "How it is tested"): trustworthiness and the
silhouette of the normalised embedding against scikit-learn's on the same clustered data. The
"sklearn" backend must equal scikit-learn bit for bit; the Triton kernels (run by Triton's
interpreter on CPU tensors here) must equal the torch reference; batched layers must equal each
layer alone.
"""
import importlib.util

import numpy as np
import pytest
import torch
from sklearn.manifold import TSNE, trustworthiness
from sklearn.metrics import silhouette_score as sk_silhouette

import sls_fast.method.embed as embed
from sls_fast.method.embed import tsne
from sls_fast.kernels import tsne as K

pytestmark = pytest.mark.usefixtures("one_thread")  # torch on small N: no OpenMP spin-waits

HAS_OPENTSNE = importlib.util.find_spec("openTSNE") is not None
HAS_CUML = importlib.util.find_spec("cuml") is not None


def clustered(n=240, d=50, k=6, layers=1, seed=0, spread=1.3):
    """``[layers, n, d]`` float32 Gaussian blobs (same labels in every layer) and the labels."""
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % k
    out = []
    for _ in range(layers):
        centres = rng.normal(size=(k, d)) * 1.0
        out.append(centres[labels] + rng.normal(size=(n, d)) * spread)
    return np.stack(out).astype(np.float32), labels


def minmax(e):
    e = e - e.min(0)
    return e / e.max(0)


@pytest.fixture(scope="module")
def quality_case():
    x, labels = clustered()
    ref = TSNE(n_components=2, init="pca", perplexity=30, random_state=0).fit_transform(x[0])
    return x, labels, trustworthiness(x[0], ref, n_neighbors=10), sk_silhouette(minmax(ref), labels)


def assert_close(actual, expected, tol, what):
    actual = torch.as_tensor(actual, dtype=torch.float64)
    expected = torch.as_tensor(expected, dtype=torch.float64)
    assert not torch.isnan(actual).any(), f"{what}: NaN in result"
    scale = expected.abs().max().clamp_min(1e-30)
    err = (actual - expected).abs()
    worst = int(err.argmax())
    assert float(err.max() / scale) <= tol, (
        f"{what}: max relative error {float(err.max() / scale):.3e} > {tol} at flat index "
        f"{worst} (got {actual.flatten()[worst]:.6e}, want {expected.flatten()[worst]:.6e})")


# --------------------------------------------------------------------------------------------
# quality per backend
# --------------------------------------------------------------------------------------------

def _check_quality(emb, quality_case, name):
    x, labels, trust_ref, sil_ref = quality_case
    e = np.asarray(emb)[0]
    assert e.shape == (x.shape[1], 2)
    assert np.isfinite(e).all()
    trust = trustworthiness(x[0], e, n_neighbors=10)
    sil = sk_silhouette(minmax(e), labels)
    assert trust >= trust_ref - 0.02, (
        f"{name}: trustworthiness {trust:.4f} vs sklearn {trust_ref:.4f}")
    assert abs(sil - sil_ref) <= 0.1, f"{name}: silhouette {sil:.4f} vs sklearn {sil_ref:.4f}"


def test_quality_torch(quality_case):
    x = quality_case[0]
    emb = tsne(torch.from_numpy(x), backend="torch", normalize=None)
    _check_quality(emb, quality_case, "torch")


def test_quality_native(quality_case):
    _check_quality(tsne(quality_case[0], backend="native", normalize=None), quality_case, "native")


def test_native_equals_torch_reference_short_run():
    """Same affinities, same optimiser: over a short run the C++ forces follow the torch
    reference's path (t-SNE trajectories are chaotic: measured here, a 1e-7 difference grows
    to 2e-2 by step 20, so long runs are compared by quality instead)."""
    x = torch.from_numpy(clustered()[0][:, :200])
    a = K.tsne_batched(x, max_iter=8, forces="torch")
    b = K.tsne_batched(x, max_iter=8, forces="native")
    assert_close(b, a, 1e-4, "native vs torch embedding after 8 iterations")


def test_quality_torch_sparse_affinities(quality_case):
    x = quality_case[0]
    emb = K.tsne_batched(torch.from_numpy(x), dense=False)
    _check_quality(emb, quality_case, "torch (kNN P)")


@pytest.mark.slow
@pytest.mark.skipif(not HAS_OPENTSNE, reason="openTSNE not installed")
def test_quality_opentsne(quality_case):
    _check_quality(tsne(quality_case[0], backend="opentsne", normalize=None), quality_case,
                   "opentsne")


@pytest.mark.cuml
def test_quality_cuml(quality_case):
    import cupy

    x = cupy.asarray(quality_case[0])
    _check_quality(cupy.asnumpy(tsne(x, backend="cuml", normalize=None)), quality_case, "cuml")


# --------------------------------------------------------------------------------------------
# sklearn parity, normalisation, libraries
# --------------------------------------------------------------------------------------------

def test_sklearn_backend_is_exact():
    x, _ = clustered(n=90, d=30, layers=1, seed=3)
    y = x[0][:, :17].copy()  # a second layer of another width (list input)
    out = tsne([x[0], y], backend="sklearn", perplexity=20.0, normalize=None, seed=5)
    for i, layer in enumerate((x[0], y)):
        ref = TSNE(n_components=2, init="pca", perplexity=20.0, random_state=5).fit_transform(layer)
        assert out.dtype == ref.dtype
        assert np.array_equal(out[i], ref), f"layer {i} differs from scikit-learn"
    normed = tsne([x[0], y], backend="sklearn", perplexity=20.0, seed=5)
    raw = out[1]
    expect = (raw - raw.min(0)) / (raw.max(0) - raw.min(0))
    assert np.array_equal(normed[1], expect)


def test_minmax_and_libraries():
    x, _ = clustered(n=64, d=12, layers=2, seed=1)
    t = torch.from_numpy(x)
    out = tsne(t, backend="torch", perplexity=10.0, max_iter=60)
    assert isinstance(out, torch.Tensor) and out.shape == (2, 64, 2) and out.dtype == torch.float32
    assert torch.equal(out.amin(1), torch.zeros(2, 2))
    assert torch.equal(out.amax(1), torch.ones(2, 2))
    raw = tsne(x, backend="torch", perplexity=10.0, max_iter=60, normalize=None)
    assert isinstance(raw, np.ndarray) and raw.shape == (2, 64, 2)
    assert np.array_equal(out.numpy(), embed.minmax_normalize(torch.from_numpy(raw)).numpy())
    one = tsne(x[1], backend="torch", perplexity=10.0, max_iter=60)  # a single [N, D] layer
    assert isinstance(one, np.ndarray) and one.shape == (64, 2)
    assert np.array_equal(one, out[1].numpy())
    nested = tsne(x.tolist(), backend="torch", perplexity=10.0, max_iter=60)
    assert isinstance(nested, np.ndarray) and np.array_equal(nested, out.numpy())


def test_list_of_widths_and_batched_equals_alone():
    x, _ = clustered(n=70, d=40, layers=3, seed=2)
    layers = [x[0], x[1][:, :23], x[2][:, :40]]
    batched = tsne(layers, backend="torch", perplexity=12.0, max_iter=120, normalize=None)
    assert batched.shape == (3, 70, 2)
    for i, layer in enumerate(layers):
        alone = tsne([layer], backend="torch", perplexity=12.0, max_iter=120, normalize=None)
        assert np.array_equal(batched[i], alone[0]), f"layer {i}: batched != alone"


def test_batched_equals_alone_sparse_and_pca():
    """kNN affinities and the randomized PCA (D > 50) are batch-independent too."""
    x, _ = clustered(n=100, d=120, layers=3, seed=4)
    t = torch.from_numpy(x)
    both = K.tsne_batched(t, perplexity=10.0, max_iter=60, dense=False)
    alone = K.tsne_batched(t[2:], perplexity=10.0, max_iter=60, dense=False)
    assert torch.equal(both[2], alone[0])


def test_deterministic_on_cpu():
    x, _ = clustered(n=60, d=20, layers=2, seed=6)
    a = tsne(x, backend="torch", perplexity=10.0, max_iter=80, seed=3)
    b = tsne(x, backend="torch", perplexity=10.0, max_iter=80, seed=3)
    c = tsne(x, backend="torch", perplexity=10.0, max_iter=80, seed=3, init="random")
    assert np.array_equal(a, b)
    assert not np.array_equal(a, c)


@pytest.mark.skipif(not HAS_OPENTSNE, reason="openTSNE not installed")
def test_opentsne_deterministic():
    x, _ = clustered(n=100, d=20, layers=3, seed=7)  # layers spread over threads
    a = tsne(x, backend="opentsne", perplexity=10.0, max_iter=300)
    b = tsne(x, backend="opentsne", perplexity=10.0, max_iter=300)
    assert a.shape == (3, 100, 2) and np.array_equal(a, b)


def test_auto_resolution():
    cpu = torch.device("cpu")
    assert embed._resolve("auto", cpu, 500) == "native"
    assert embed._resolve("auto", cpu, embed.NATIVE_AUTO_MAX_N) == "native"
    assert embed._resolve("auto", cpu, embed.NATIVE_AUTO_MAX_N + 1) == "fft"
    cuda = torch.device("cuda")
    assert embed._resolve("auto", cuda, 1000) == "triton"
    assert embed._resolve("auto", cuda, embed.TORCH_AUTO_MAX_N) == "triton"
    assert embed._resolve("auto", cuda, embed.TORCH_AUTO_MAX_N + 1) == "fft"  # cuML: if asked
    assert embed._resolve("cuml", cuda, 10**6) == "cuml"
    assert embed._resolve("sklearn", cuda, 10) == "sklearn"


# --------------------------------------------------------------------------------------------
# affinities and PCA
# --------------------------------------------------------------------------------------------

def test_conditional_perplexity_reached():
    d2 = torch.rand(2, 50, 49, dtype=torch.float64) * 40
    p = K.conditional_p_torch(d2, 15.0)
    assert torch.allclose(p.sum(-1), torch.ones(2, 50, dtype=torch.float64))
    ent = -(p * torch.log(p.clamp_min(1e-300))).sum(-1)
    assert (ent - np.log(15.0)).abs().max() < 1e-4


def test_sparse_P_equals_dense_when_all_neighbours_kept():
    x, _ = clustered(n=61, d=10, layers=2, seed=8)
    red = K.pca_project(torch.from_numpy(x), 50)
    dense = K.joint_probabilities(red, 25.0, dense=True)  # 3 * 25 >= N - 1: k = N - 1
    nbr, pval = K.joint_probabilities(red, 25.0, dense=False)
    scattered = torch.zeros_like(dense)
    scattered.scatter_add_(2, nbr.transpose(1, 2).long(), pval.transpose(1, 2))
    assert_close(scattered, dense, 1e-5, "sparse P vs dense P")
    assert torch.allclose(dense.sum(dim=(1, 2)), torch.ones(2), atol=1e-5)
    assert torch.equal(dense, dense.transpose(1, 2))


def test_pca_project_matches_sklearn_components():
    from sklearn.decomposition import PCA

    x, _ = clustered(n=150, d=200, layers=1, seed=9, spread=0.5)
    ours = K.pca_project(torch.from_numpy(x), 50)[0].numpy()  # randomized path (D > 60)
    ref = PCA(n_components=5).fit_transform(x[0])
    for c in range(3):  # leading (well separated) components agree up to sign
        corr = abs(np.corrcoef(ours[:, c], ref[:, c])[0, 1])
        assert corr > 0.999, f"component {c}: |corr| = {corr}"
    small = K.pca_project(torch.from_numpy(x[:, :, :20]), 50)  # exact path, D <= 50
    assert small.shape == (1, 150, 20)


# --------------------------------------------------------------------------------------------
# Triton kernels against the torch reference (interpreter on CPU)
# --------------------------------------------------------------------------------------------

def _problem(L, N, perplexity, dense, seed):
    x, _ = clustered(n=N, d=12, layers=L, seed=seed)
    red = K.pca_project(torch.from_numpy(x), 50)
    aff = K.joint_probabilities(red, perplexity, dense=dense)
    gen = torch.Generator().manual_seed(seed)
    y = (torch.randn(L, N, 2, generator=gen) * 4).contiguous()
    return y, aff


def _triton_device():
    if torch.cuda.is_available():
        return torch.device("cuda")
    if not K.HAS_TRITON:
        pytest.skip("triton not importable")
    from sls_fast.kernels import triton_interpreting

    if not triton_interpreting():
        pytest.skip("no CUDA and TRITON_INTERPRET is not set")
    return torch.device("cpu")


@pytest.mark.parametrize("L,N,dense,split",
                         [(2, 40, True, None), (3, 77, True, None), (2, 53, False, None),
                          (1, 80, False, None), (2, 97, True, 2), (3, 75, True, 3),
                          (2, 131, False, 3), (1, 70, False, 8)])
def test_triton_forces_match_the_float64_reference(L, N, dense, split, rng):
    """Dense P or neighbour lists, the default cut or the j range split across programs
    (whole tiles each, each row's entries shared out): the partial sums add up to the float64
    reference (sums, Z and the gradient), and the same launch gives the same bits."""
    dev = _triton_device()
    y, aff = _problem(L, N, 8.0, dense, seed=int(rng.integers(2**31)))
    if dense:
        args_ref, args = (aff.double(), None, None), (aff.to(dev), None, None)
    else:
        args_ref, args = (None, aff[0], aff[1].double()), (None, aff[0].to(dev), aff[1].to(dev))
    ref = K.tsne_forces_torch(y.double(), *args_ref)
    got = K.tsne_forces_triton(y.to(dev), *args, split=split)
    for g, r, what in zip(got, ref, ("attractive sum", "repulsive sum", "Z")):
        assert_close(g.cpu(), r, 1e-5, f"{what}, split {split}")
    for ex in (1.0, 12.0):
        g_ref = K.gradient_from_forces(*ref, ex)
        g = K.gradient_from_forces(*(t.double().cpu() for t in got), ex)
        assert_close(g, g_ref, 1e-5, f"gradient (exaggeration {ex})")
    again = K.tsne_forces_triton(y.to(dev), *args, split=split)
    assert all(torch.equal(a, b) for a, b in zip(got, again))
    a, r, zpart = K.tsne_forces_triton(y.to(dev), *args, split=split, return_partials=True)
    used = min(split or 1, -(-N // 32))
    assert a.shape == (used, L, N, 2) and zpart.shape == (L, used * -(-N // 32))
    if used > 1:  # every split holds a real share of the pairs
        assert all(float(r[s].abs().sum()) > 0 for s in range(used))


@pytest.mark.parametrize("N, split, seed", [(45, 1, 11), (131, 3, 13)])
def test_triton_update_matches_torch(N, split, seed):
    """The fused update over the forces' partial sums (one split, or three added in order)
    against the torch step over their totals."""
    dev = _triton_device()
    y, P = _problem(2, N, 8.0, True, seed=seed)
    a, r, zpart = K.tsne_forces_triton(y.to(dev), P.to(dev), split=split, return_partials=True)
    assert a.shape[0] == split
    gen = torch.Generator().manual_seed(seed)
    upd = torch.randn(2, N, 2, generator=gen) * 1e-3
    gains = torch.rand(2, N, 2, generator=gen) + 0.5
    ref = [t.clone() for t in (y, upd, gains)]
    K.tsne_step_torch(*ref, a.sum(0).cpu(), r.sum(0).cpu(), zpart.sum(1).cpu(),
                      exaggeration=12.0, momentum=0.5, learning_rate=50.0)
    got = [t.clone().to(dev) for t in (y, upd, gains)]
    K.tsne_step_triton(*got, a, r, zpart, exaggeration=12.0, momentum=0.5, learning_rate=50.0)
    for name, g, e in zip(("y", "update", "gains"), got, ref):
        assert_close(g.cpu(), e, 1e-5, name)


@pytest.mark.parametrize("split", [1, 3])
def test_triton_walks_compressed_rows_with_a_hub(split, rng):
    """Neighbour lists whose rows differ 20-fold (one hub point next to every other, as real
    affinities have): the kernel's compressed-row walk, split or not, against the float64
    padded-list reference."""
    dev = _triton_device()
    L, N, k = 2, 83, 4
    P = np.zeros((L, N, N))
    for l in range(L):
        for i in range(N):
            P[l, i, rng.choice(N, size=k, replace=False)] = rng.random(k)
        P[l, :, 0] = rng.random(N)  # the hub
        np.fill_diagonal(P[l], 0.0)
        P[l] = P[l] + P[l].T
        P[l] /= P[l].sum()
    M = int((P != 0).sum(2).max())
    nbr = np.tile(np.arange(N, dtype=np.int32), (L, M, 1))
    pval = np.zeros((L, M, N), dtype=np.float32)
    for l in range(L):
        for i in range(N):
            j = np.flatnonzero(P[l, i])
            nbr[l, :len(j), i], pval[l, :len(j), i] = j, P[l, i, j]
    nbr, pval = torch.from_numpy(nbr), torch.from_numpy(pval)
    assert M > 10 * k  # the padded lists are mostly padding
    y = torch.from_numpy(rng.normal(size=(L, N, 2)) * 3).float()
    ref = K.tsne_forces_torch(y.double(), None, nbr, pval.double())
    got = K.tsne_forces_triton(y.to(dev), None, nbr.to(dev), pval.to(dev), split=split)
    for g, r, what in zip(got, ref, ("attractive sum", "repulsive sum", "Z")):
        assert_close(g.cpu(), r, 1e-5, f"{what}, split {split}")


def test_forces_config_choices():
    cpu = torch.device("cpu")
    assert K.forces_config(12, 1000, cpu) == K.ForcesConfig(32, 32, 1)
    assert K.forces_config(12, 1000, cpu, split=4).split == 4
    assert K.forces_config(2, 40, cpu, split=8).split == 2  # never more splits than j tiles
    with pytest.raises(ValueError, match="split must be in 1..8"):
        K.forces_config(2, 40, cpu, split=9)
    # the CUDA rule on an H100's 132 SMs: about 4 programs per SM, >= 4 tiles per split
    h100 = dict(sms=132)
    assert K.forces_config(12, 1000, cpu, **h100) == K.ForcesConfig(32, 64, 2)  # 384 programs
    assert K.forces_config(1, 1000, cpu, **h100) == K.ForcesConfig(32, 64, 4)  # 16 tiles / 4
    assert K.forces_config(2, 4000, cpu, **h100) == K.ForcesConfig(32, 64, 3)  # 250 programs
    assert K.forces_config(96, 1000, cpu, **h100).split == 1  # 3,072 programs fill the GPU
    assert K.forces_config(12, 10000, cpu, **h100).split == 1
    assert K.forces_config(1, 100, cpu, **h100).split == 1  # 2 tiles: nothing to split


def test_triton_optimizer_matches_torch_short_run():
    """Both phases (5 exaggerated steps, 2 plain ones) through the Triton launches, with and
    without a j split, against the torch forces. Kept short: two float32 summation orders
    agree to ~1e-5 here, but a few steps later a component whose update x gradient is near 0
    can take the other gain rule (+0.2 instead of x0.8), a discrete jump (measured with this
    seed: 1e-5 after 9 steps, 8e-4 after 10) that says nothing about the kernels."""
    dev = _triton_device()
    y, P = _problem(2, 48, 8.0, True, seed=12)
    run = dict(max_iter=8, exploration_iter=5)
    ref = K.tsne_optimize(y.clone(), P, forces="torch", **run)
    got = K.tsne_optimize(y.clone().to(dev), P.to(dev), forces="triton", **run)
    assert_close(got.cpu(), ref, 1e-4, "embedding after 7 steps")
    split = K.tsne_optimize(y.clone().to(dev), P.to(dev), forces="triton",
                            config=K.ForcesConfig(32, 16, 3), **run)
    assert_close(split.cpu(), ref, 1e-4, "embedding after 7 steps, 3 splits")


@pytest.mark.cuda
def test_torch_backend_on_cuda_quality(quality_case):
    x = torch.from_numpy(quality_case[0]).cuda()
    emb = tsne(x, backend="torch", normalize=None)
    assert emb.is_cuda
    _check_quality(emb.cpu(), quality_case, "torch (Triton, CUDA)")


# --------------------------------------------------------------------------------------------
# bad input
# --------------------------------------------------------------------------------------------

def test_errors():
    x, _ = clustered(n=40, d=8, layers=2, seed=13)
    with pytest.raises(ValueError, match="perplexity"):
        tsne(x, backend="sklearn", perplexity=40.0)
    with pytest.raises(ValueError, match="smaller|perplexity <="):
        tsne(x, backend="torch", perplexity=45.0)
    with pytest.raises(ValueError, match="nearest neighbours"):
        tsne(x, backend="opentsne", perplexity=30.0)
    with pytest.raises(ValueError, match="nearest neighbours"):
        tsne(x, backend="cuml", perplexity=30.0)
    bad = x.copy()
    bad[1, 3, 2] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        tsne(bad, backend="torch", perplexity=5.0)
    bad[1, 3, 2] = np.inf
    with pytest.raises(ValueError, match="NaN or infinity"):
        tsne(bad, backend="sklearn", perplexity=5.0)
    with pytest.raises(ValueError, match="4-D"):
        tsne(x[None], perplexity=5.0)
    with pytest.raises(ValueError, match="1-D"):
        tsne(x[0, 0], perplexity=5.0)
    with pytest.raises(ValueError, match="backend must be one of"):
        tsne(x, backend="umap")
    with pytest.raises(ValueError, match="init must be one of"):
        tsne(x, init="spectral", perplexity=5.0)
    with pytest.raises(TypeError, match=r"init must be one of \('pca', 'random'\), got an array"):
        tsne(x, init=np.zeros((x.shape[1], 2)), perplexity=5.0)  # initial positions: refused
    with pytest.raises(ValueError, match="normalize must be one of"):
        tsne(x, normalize="zscore", perplexity=5.0)
    with pytest.raises(ValueError, match="seed must be an integer >= 0, got -1"):
        tsne(x, seed=-1, perplexity=5.0)  # a value out of range is a ValueError, as everywhere
    with pytest.raises(ValueError, match="at least 2 points per layer, got N = 1"):
        tsne(x[:, :1], perplexity=0.5)
    with pytest.raises(ValueError, match="same N"):
        tsne([x[0], x[1][:30]], perplexity=5.0)
    with pytest.raises(ValueError, match="max_iter"):
        tsne(x, max_iter=0, perplexity=5.0)
    with pytest.raises(ValueError, match="max_iter >= 250"):
        tsne(x, backend="sklearn", max_iter=100, perplexity=5.0)
    with pytest.raises(ValueError, match="empty"):
        tsne([], perplexity=5.0)
    with pytest.raises(TypeError, match="seed"):
        tsne(x, seed=1.5, perplexity=5.0)
    with pytest.raises(TypeError):
        tsne(np.array([["a", "b"], ["c", "d"]]), perplexity=1.0)


@pytest.mark.skipif(HAS_CUML, reason="cuML is installed here")
def test_cuml_missing_is_a_clear_error():
    x, _ = clustered(n=100, d=8, layers=1, seed=14)
    with pytest.raises(ValueError, match="cuML"):
        tsne(x, backend="cuml", perplexity=10.0)


def test_backend_names_mean_what_the_metrics_names_mean(monkeypatch):
    """'triton' is the batched t-SNE with Triton kernels (CUDA; on the CPU only interpreted),
    'torch' the plain-torch reference, as for the metrics."""
    from sls_fast.method.embed import TSNE_BACKENDS
    from sls_fast.method.metrics import BACKENDS

    assert {"triton", "torch", "native", "auto"} <= set(TSNE_BACKENDS) & set(BACKENDS)
    x, _ = clustered(n=60, d=5, layers=2, seed=3)
    emb = tsne(x, backend="triton", perplexity=5.0, max_iter=12)  # interpreted here
    assert emb.shape == (2, 60, 2) and np.isfinite(emb).all()
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    with pytest.raises(ValueError, match="backend='triton' runs on CUDA"):
        tsne(x, backend="triton", perplexity=5.0, max_iter=40)


@pytest.mark.cuda
def test_torch_on_cuda_still_runs_triton_with_a_deprecation_warning():
    x, _ = clustered(n=60, d=5, layers=2, seed=3)
    t = torch.as_tensor(x, device="cuda")
    with pytest.warns(DeprecationWarning, match="backend='triton'"):
        old = tsne(t, backend="torch", perplexity=5.0, max_iter=40)
    new = tsne(t, backend="triton", perplexity=5.0, max_iter=40)
    assert torch.equal(old, new)
