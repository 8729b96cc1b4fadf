"""The FFT-interpolation repulsion (kernels/tsne_fft.py) against its exact float64 reference on
fresh random inputs of odd sizes, its convergence with the grid's resolution, the batched
problems against each alone, and the t-SNE it drives against openTSNE's by trustworthiness."""
import numpy as np
import pytest
import torch

from sls_fast.kernels.tsne_fft import repulsion_exact, repulsion_fft

pytestmark = pytest.mark.usefixtures("one_thread")


def _rel(a, b):
    return float((a - b).norm() / b.norm())


@pytest.mark.parametrize("n, scale", [(97, 0.5), (301, 3.0), (613, 12.0)])
def test_the_fft_repulsion_converges_to_the_exact_one(rng, n, scale):
    y = torch.from_numpy(rng.normal(size=(3, n, 2)) * scale)
    rep, z = repulsion_exact(y)
    coarse = repulsion_fft(y)  # openTSNE's resolution: 3 nodes, 1 interval per unit, >= 50
    fine = repulsion_fft(y, nodes=5, boxes_per_unit=2.0)
    assert _rel(coarse[0], rep) < 0.1 and float(((coarse[1] - z) / z).abs().max()) < 0.02
    assert _rel(fine[0], rep) < 2e-3 and float(((fine[1] - z) / z).abs().max()) < 2e-4
    assert _rel(fine[0], rep) < _rel(coarse[0], rep)


def test_float32_follows_float64_and_the_batch_follows_each_problem(rng):
    y = torch.from_numpy(rng.normal(size=(4, 211, 2)) * 4.0)
    r64, z64 = repulsion_fft(y, nodes=5, boxes_per_unit=2.0)
    r32, z32 = repulsion_fft(y.float(), nodes=5, boxes_per_unit=2.0)
    assert r32.dtype == torch.float32 and _rel(r32.double(), r64) < 1e-4
    exact = [repulsion_exact(y[b:b + 1]) for b in range(4)]
    for b in range(4):  # each problem has its own spacing on the shared grid shape
        assert _rel(r64[b], exact[b][0][0]) < 2e-3
        assert abs(float(z64[b] / exact[b][1][0]) - 1) < 2e-4


def test_bad_shapes_are_refused():
    with pytest.raises(ValueError, match=r"y must be \[B, N, 2\]"):
        repulsion_fft(torch.zeros(5, 2))
    with pytest.raises(ValueError, match="nodes must be >= 2"):
        repulsion_fft(torch.zeros(1, 5, 2), nodes=1)
    from sls_fast.kernels.tsne_forces import tsne_forces_torch

    P = torch.zeros(1, 5, 5)
    with pytest.raises(ValueError, match="not both"):
        tsne_forces_torch(torch.zeros(1, 5, 2), P, torch.zeros(1, 2, 5, dtype=torch.int32),
                          torch.zeros(1, 2, 5))


@pytest.mark.slow
def test_fft_tsne_is_as_trustworthy_as_opentsne_at_5000_points():
    """The same data (a 10-cluster mixture, 5,000 x 50), perplexity 30, 750 iterations: the
    trustworthiness (10 neighbours) of our FFT t-SNE within 0.01 of openTSNE's."""
    openTSNE = pytest.importorskip("openTSNE")
    from sklearn.manifold import trustworthiness

    from sls_fast.kernels.tsne_optimize import tsne_batched

    gen = np.random.default_rng(11)
    centres = gen.normal(size=(10, 50)) * 3.0
    x = (centres[np.arange(5000) % 10] + gen.normal(size=(5000, 50)) * 1.5).astype(np.float32)
    ours = tsne_batched(torch.from_numpy(x)[None], perplexity=30, max_iter=750, forces="fft",
                        seed=0)[0].numpy()
    theirs = np.asarray(openTSNE.TSNE(perplexity=30, n_iter=500, early_exaggeration_iter=250,
                                      negative_gradient_method="fft", random_state=0,
                                      n_jobs=1).fit(x))
    t_ours = trustworthiness(x, ours, n_neighbors=10)
    t_theirs = trustworthiness(x, theirs, n_neighbors=10)
    assert abs(t_ours - t_theirs) <= 0.01, (t_ours, t_theirs)


def test_the_fft_backend_through_the_public_tsne(rng):
    import sls_fast

    x = rng.normal(size=(3, 211, 9)).astype(np.float32)
    x[:, :70] += 4.0  # two groups
    emb = sls_fast.tsne(x, backend="fft", max_iter=300, perplexity=15)
    assert emb.shape == (3, 211, 2) and np.isfinite(emb).all()
    assert emb.min() >= 0 and emb.max() <= 1  # min-max normalised per axis, as every backend
    runs = sls_fast.tsne(x, backend="fft", max_iter=300, perplexity=15, repeats=2)
    assert runs.shape == (2, 3, 211, 2)


def test_the_fft_gradient_matches_scikit_learns_exact_kl_gradient(rng):
    """The whole t-SNE gradient with the FFT repulsion (fine grid) against scikit-learn's
    exact KL gradient in float64, same P, same embedding; and the FFT path's own pieces (the
    attraction over compressed rows, C++ in float32) against it too."""
    from scipy.spatial.distance import squareform
    from sklearn.manifold._t_sne import _kl_divergence

    from sls_fast.kernels.tsne_forces import (attraction_edges, gradient_from_forces,
                                              neighbour_edges, tsne_forces_torch)

    n = 163
    p = rng.random((n, n))
    p = p + p.T
    np.fill_diagonal(p, 0.0)
    p /= p.sum()
    y = rng.normal(size=(n, 2)) * 3.0
    _, ref = _kl_divergence(y.ravel(), squareform(p, checks=False), 1, n, 2)
    yt = torch.from_numpy(y)[None]
    attr, _, _ = tsne_forces_torch(yt, torch.from_numpy(p)[None])
    rep, z = repulsion_fft(yt, nodes=5, boxes_per_unit=2.0)
    ours = gradient_from_forces(attr, rep, z)[0].numpy().ravel()
    assert np.abs(ours - ref).max() / np.abs(ref).max() < 2e-3
    y32 = yt.float()
    attr32 = attraction_edges(y32, neighbour_edges(torch.from_numpy(p)[None].float()))
    rep32, z32 = repulsion_fft(y32, nodes=5, boxes_per_unit=2.0)
    ours32 = gradient_from_forces(attr32, rep32, z32)[0].double().numpy().ravel()
    assert np.abs(ours32 - ref).max() / np.abs(ref).max() < 2e-3


def test_the_grid_grows_with_the_span_up_to_a_cap(rng):
    from sls_fast.kernels.tsne_fft import MAX_BOXES, grid_boxes

    assert grid_boxes(3.0) == 50 and grid_boxes(149.2) == 150 and grid_boxes(157.0) == 160
    assert grid_boxes(998.0) == MAX_BOXES == 1000  # 1,000 = 2^3 5^3
    for span in range(1, 1000, 7):  # at least the span, only the prime factors 2, 3 and 5
        m = grid_boxes(float(span), min_boxes=1)
        assert m >= span
        for f in (2, 3, 5):
            while m % f == 0:
                m //= f
        assert m == 1
    with pytest.raises(ValueError, match="spans 1001 units.*use an exact t-SNE backend"):
        grid_boxes(1001.0)
    # a far outlier: refused, not a 30,000^2 circulant (memory) nor a grid of 10-unit intervals
    # (openTSNE's cap; here its Z came out negative: -11,446 against the exact 7,978)
    y = torch.from_numpy(rng.normal(size=(1, 301, 2)) * 3.0)
    y[0, 0] = torch.tensor([5000.0, -5000.0])
    with pytest.raises(ValueError, match="more than MAX_BOXES = 1000"):
        repulsion_fft(y)


def _sparse_affinities(rng, LP, N, hub=True):
    """Padded neighbour lists of a random symmetric sparse P, with one hub point whose row is
    much longer than the rest (as real affinities have)."""
    P = np.zeros((LP, N, N))
    for l in range(LP):
        for i in range(N):
            j = rng.choice(N, size=5, replace=False)
            P[l, i, j] = rng.random(5)
        if hub:
            P[l, :, 0] = rng.random(N)
        np.fill_diagonal(P[l], 0.0)
        P[l] = P[l] + P[l].T
        P[l] /= P[l].sum()
    M = int((P != 0).sum(2).max())
    nbr = np.tile(np.arange(N), (LP, M, 1)).astype(np.int32)  # padding: nbr = i, p = 0
    pval = np.zeros((LP, M, N), dtype=np.float32)
    for l in range(LP):
        for i in range(N):
            j = np.flatnonzero(P[l, i])
            nbr[l, :len(j), i] = j
            pval[l, :len(j), i] = P[l, i, j]
    return P, torch.from_numpy(nbr), torch.from_numpy(pval)


@pytest.mark.parametrize("S, LP, N", [(1, 1, 53), (2, 3, 131), (3, 2, 97)])
def test_the_compressed_attraction_matches_the_padded_lists(rng, S, LP, N):
    """The attraction over the compressed rows (torch and C++), from padded lists and from a
    dense P, against the padded-list reference in float64, repeats sharing their layer's P."""
    from sls_fast.kernels.tsne_forces import (attraction_edges, attraction_edges_torch,
                                              neighbour_edges, tsne_forces_torch)

    P, nbr, pval = _sparse_affinities(rng, LP, N)
    y = torch.from_numpy(rng.normal(size=(S * LP, N, 2)) * 5.0)
    ref, _, _ = tsne_forces_torch(y, None, nbr, pval.double())
    edges = neighbour_edges(nbr=nbr, pval=pval)
    nnz = (pval != 0).sum((1, 2))
    assert edges.rows.shape[1] == int(nnz.max()) < nbr.shape[1] * N
    assert torch.equal(edges.rowptr[:, -1], nnz)
    from_dense = neighbour_edges(torch.from_numpy(P).float())
    for e in (edges, from_dense):
        assert _rel(attraction_edges_torch(y, e), ref) < 1e-6
        assert _rel(attraction_edges(y.float(), e).double(), ref) < 1e-5
        assert _rel(attraction_edges(y.float(), e, num_threads=1).double(), ref) < 1e-5
    a1 = attraction_edges(y.float(), edges, num_threads=1)
    a2 = attraction_edges(y.float(), edges, num_threads=2)
    assert torch.equal(a1, a2)  # each point's sum in a fixed order


def test_the_native_attraction_refuses_bad_rows():
    from sls_fast.kernels.native import native_module

    C = native_module()
    y = np.zeros((2, 5, 2), np.float32)
    out = np.zeros_like(y)
    rowptr = np.array([[0, 1, 2, 3, 4, 5]], np.int64)
    val = np.ones((1, 5), np.float32)
    with pytest.raises(ValueError, match="outside 0..N-1"):
        C.tsne_attraction_csr_f32(y, rowptr, np.full((1, 5), 7, np.int32), val, out)
    with pytest.raises(ValueError, match="non-decreasing"):
        C.tsne_attraction_csr_f32(y, np.array([[0, 2, 1, 3, 4, 5]], np.int64),
                                  np.zeros((1, 5), np.int32), val, out)
    with pytest.raises(ValueError, match="must divide L"):
        C.tsne_attraction_csr_f32(np.zeros((3, 5, 2), np.float32), np.zeros((2, 6), np.int64),
                                  np.zeros((2, 5), np.int32), np.ones((2, 5), np.float32),
                                  np.zeros((3, 5, 2), np.float32))
    with pytest.raises(TypeError):  # a float64 output buffer would be copied, never written
        C.tsne_attraction_csr_f32(y, rowptr, np.zeros((1, 5), np.int32), val, out.astype(float))
