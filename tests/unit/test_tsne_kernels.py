"""The t-SNE stages one by one: the perplexity bisection (C++, Triton) against the torch reference
and scikit-learn's own search, and the one-call C++ optimiser (and the CUDA-graph Triton loop)
against a float64 torch restatement of the schedule, on fresh random inputs of odd sizes."""
import numpy as np
import pytest
import torch
from sklearn.manifold._utils import _binary_search_perplexity

from sls_fast.kernels import tsne as K
from sls_fast.kernels import triton_interpreting

pytestmark = pytest.mark.usefixtures("one_thread")


def assert_close(actual, expected, tol, what):
    """max |a - e| <= tol * max |e| (relative to the largest value), no NaN."""
    a = torch.as_tensor(np.asarray(actual), dtype=torch.float64)
    e = torch.as_tensor(np.asarray(expected), dtype=torch.float64)
    assert a.shape == e.shape, f"{what}: shape {tuple(a.shape)} != {tuple(e.shape)}"
    assert not torch.isnan(a).any(), f"{what}: NaN in result"
    err = float((a - e).abs().max() / e.abs().max().clamp_min(1e-30))
    assert err <= tol, f"{what}: max relative error {err:.3e} > {tol}"


def _triton_device():
    if not K.HAS_TRITON:
        pytest.skip("triton not importable")
    if torch.cuda.is_available():
        return torch.device("cuda")
    if not triton_interpreting():
        pytest.skip("no CUDA and TRITON_INTERPRET is not set")
    return torch.device("cpu")


def _sq_distances(rng, rows, k, with_inf):
    d2 = rng.gamma(2.0, 3.0, size=(rows, k))
    if with_inf:  # padding slots (no neighbour) in some rows
        d2[rng.random(size=(rows, k)) < 0.1] = np.inf
        d2[:, 0] = rng.gamma(2.0, 3.0, size=rows)  # at least one finite per row
    return d2


@pytest.mark.slow
@pytest.mark.parametrize("rows,k,perp", [(37, 23, 7.0), (101, 91, 30.0), (211, 200, 45.5)])
def test_conditional_p_native_and_triton_match_reference_and_sklearn(rows, k, perp, rng):
    d2 = _sq_distances(rng, rows, k, with_inf=False)
    ref = K.conditional_p_torch(torch.from_numpy(d2), perp)  # float64
    # (rows > k: scikit-learn treats a square input as all pairs and skips its diagonal)
    sk = _binary_search_perplexity(d2.astype(np.float32), perp, 0)
    native, steps = K.conditional_p_native(torch.from_numpy(d2), perp, return_steps=True)
    assert native.dtype == torch.float32 and (steps >= 0).all() and (steps < 100).all()
    assert_close(native, ref, 1e-6, "native vs torch reference")
    # scikit-learn searches on float32 distances: agreement to its tolerance, not to the bit
    assert_close(native, sk, 2e-4, "native vs scikit-learn")
    ent = -(ref * torch.log(ref.clamp_min(1e-300))).sum(-1)
    assert (ent - np.log(perp)).abs().max() < 1e-4
    dev = _triton_device()
    tri = K.conditional_p_triton(torch.from_numpy(d2).to(dev), perp)
    assert tri.dtype == torch.float32
    assert_close(tri.cpu(), ref, 1e-6, "triton vs torch reference")


def test_conditional_p_padding_and_batch_dims(rng):
    d2 = torch.from_numpy(_sq_distances(rng, 3 * 29, 41, with_inf=True)).view(3, 29, 41)
    ref = K.conditional_p_torch(d2, 9.0)
    got = K.conditional_p_native(d2, 9.0)
    assert got.shape == (3, 29, 41)
    assert (got[torch.isinf(d2)] == 0).all()
    assert_close(got, ref, 1e-6, "native with +inf padding")
    dev = _triton_device()
    assert_close(K.conditional_p_triton(d2.to(dev), 9.0).cpu(), ref, 1e-6, "triton with padding")


def test_conditional_p_errors():
    with pytest.raises(ValueError, match="CPU"):
        K.conditional_p_native(torch.zeros(2, 3, device="meta"), 2.0)
    with pytest.raises(ValueError, match="perplexity"):
        K.conditional_p_native(torch.ones(2, 3, dtype=torch.float64), 0.0)


@pytest.mark.parametrize("R,C,k,perp", [(41, 57, 13, 4.0), (113, 301, 91, 30.0)])
def test_knn_conditional_native_matches_topk_and_reference(R, C, k, perp, rng):
    """The fused C++ neighbour search + bisection equals torch.topk + the torch bisection."""
    d2 = torch.from_numpy(rng.gamma(2.0, 3.0, size=(R, C)))
    d2[torch.arange(R), torch.arange(R) % C] = float("inf")  # "the point itself"
    nbr, p = K.knn_conditional_native(d2, k, perp)
    vals, ind = torch.topk(d2, k, dim=1, largest=False, sorted=True)
    assert nbr.dtype == torch.int32 and p.dtype == torch.float32 and nbr.shape == (R, k)
    assert torch.equal(nbr.long(), ind)
    assert_close(p, K.conditional_p_torch(vals, perp), 1e-6, "knn conditional vs reference")


def test_knn_conditional_native_ties_take_the_lower_column(rng):
    d2 = torch.from_numpy(rng.integers(0, 4, size=(23, 37)).astype(np.float64))
    d2[:, 5] = float("nan")  # counts as +inf: never chosen before a finite distance
    nbr, _ = K.knn_conditional_native(d2, 9, 3.0)
    key = torch.nan_to_num(d2, nan=float("inf"))
    order = torch.sort(key, dim=1, stable=True).indices[:, :9]  # stable: lower column first
    assert torch.equal(nbr.long(), order)


@pytest.mark.parametrize("L,N,k", [(1, 29, 5), (3, 131, 17)])
def test_symmetrize_native_equals_torch_reference(L, N, k, rng):
    nbr = torch.stack([torch.stack([torch.from_numpy(rng.choice(np.delete(np.arange(N), i), k,
                                                                 replace=False))
                                    for i in range(N)]) for _ in range(L)])
    cond = torch.from_numpy(rng.random(size=(L, N, k)).astype(np.float32))
    cond /= cond.sum(-1, keepdim=True)
    ref_nbr, ref_p = K.symmetrize_torch(nbr, cond)
    got_nbr, got_p = K.symmetrize_native(nbr, cond)
    assert got_nbr.dtype == torch.int32 and got_p.dtype == torch.float32
    assert torch.equal(got_nbr, ref_nbr)
    assert_close(got_p, ref_p, 1e-7, "native symmetrisation")
    assert torch.allclose(got_p.double().sum(dim=(1, 2)), torch.ones(L, dtype=torch.float64))
    with pytest.raises(ValueError, match="outside"):
        K.symmetrize_native(torch.full((1, 4, 2), 4), torch.ones(1, 4, 2))


@pytest.mark.parametrize("L,N,d,perp", [(2, 157, 7, 10.0), (1, 211, 33, 30.0)])
def test_neighbour_list_affinities_equal_sklearns(L, N, d, perp, rng):
    """The whole CPU affinity path (C++ neighbour search, bisection, symmetrisation) against
    scikit-learn's own P for its default method, in float64, per layer."""
    from sklearn.manifold._t_sne import _joint_probabilities_nn
    from sklearn.neighbors import NearestNeighbors

    x = torch.from_numpy(rng.standard_normal((L, N, d)))
    P = K.densify(*K.joint_probabilities(x, perp)).double()
    k = K.neighbour_count(N, perp)
    for layer in range(L):
        graph = NearestNeighbors(n_neighbors=k).fit(x[layer].numpy()).kneighbors_graph(
            mode="distance")
        graph.data **= 2
        sk = torch.from_numpy(_joint_probabilities_nn(graph, perp, 0).toarray())
        assert_close(P[layer], sk, 2e-4, f"P of layer {layer} vs scikit-learn")


def _reference_schedule(y, aff, *, max_iter, exploration_iter, lr):
    """scikit-learn's schedule restated in float64 with the torch reference forces, each problem
    re-centred after every step (a translation: the dynamics are translation invariant)."""
    y = y.double().clone()
    P, nbr, pval = (aff, None, None) if isinstance(aff, torch.Tensor) else (None, *aff)
    if P is not None:
        P = P.double()
    else:
        pval = pval.double()
    phases = [(12.0, 0.5, min(exploration_iter, max_iter)),
              (1.0, 0.8, max(0, max_iter - exploration_iter - 1))]
    for ex, mom, n in phases:
        upd, gains = torch.zeros_like(y), torch.ones_like(y)
        for _ in range(n):
            a, r, z = K.tsne_forces_torch(y, P, nbr, pval)
            K.tsne_step_torch(y, upd, gains, a, r, z, exaggeration=ex, momentum=mom,
                              learning_rate=lr)
            y -= y.mean(dim=1, keepdim=True)
    return y


def _problem(rng, L, N, D, perplexity, dense):
    x = torch.from_numpy(rng.normal(size=(L, N, D)).astype(np.float32))
    x += torch.from_numpy(rng.normal(size=(L, 4, D)).astype(np.float32))[:, torch.arange(N) % 4] * 3
    aff = K.joint_probabilities(x, perplexity, dense=dense)
    y0 = K.initial_embedding(K.pca_project(x, 2), "pca", 0)
    return y0, aff


@pytest.mark.parametrize("dense", [False, True])
# (8, 2, 77): 16 problems, one task per layer's 8 runs stepped together (attraction in lanes)
@pytest.mark.parametrize("S,L,N", [(1, 3, 53), (2, 2, 77), (3, 1, 130), (8, 2, 77)])
def test_native_optimizer_follows_float64_reference(S, L, N, dense, rng):
    """The whole schedule in one C++ call (4 exaggerated steps, reset, 3 final steps) follows
    the float64 restatement over a short run, for S runs sharing each layer's affinities
    (2 threads). The run stays short because t-SNE is chaotic: the gains' +0.2 / x0.8 choice
    follows the sign of update x gradient, and once float32 and float64 disagree on a sign
    near zero the runs part. Measured over 300 fresh draws per case: 8 steps, largest
    error 5.6e-6 (every case); 14 steps, 0.3-3.7% of draws above 2e-4. Rarer draws part even
    within 8 steps (seed 3803388526, (8, 2, 77) dense: one of 16 problems at 1.5e-2 from step 4
    on, the other 15 below 1e-6), so one problem may part; a bug in the kernel moves many.
    Long runs are compared by quality, in test_tsne.py."""
    y0, aff = _problem(rng, L, N, 9, 7.0, dense)
    y = K.repeat_starts(y0, S, int(rng.integers(1000))) if S > 1 else y0
    ref = _reference_schedule(y, aff, max_iter=8, exploration_iter=4, lr=40.0)
    got = K.tsne_optimize(y.clone(), aff, max_iter=8, exploration_iter=4, learning_rate=40.0,
                          forces="native", num_threads=2)
    assert got.dtype == torch.float32 and got.shape == y.shape
    assert not torch.isnan(got).any()
    scale = ref.double().abs().max()
    per_problem = ((got.double() - ref.double()).abs().amax(dim=(1, 2)) / scale).tolist()
    parted = [i for i, e in enumerate(per_problem) if e > 2e-4]
    assert len(parted) <= 1, (f"native optimiser (dense={dense}) after 8 steps: problems "
                              f"{parted} of {len(per_problem)} above 2e-4: {per_problem}")
    kept = [e for i, e in enumerate(per_problem) if i not in parted]
    assert max(kept) <= 2e-4


@pytest.mark.parametrize("L,N", [(2, 301), (17, 67)])  # row blocks per step / one task per problem
def test_native_optimizer_thread_count_does_not_change_bits(L, N, rng):
    y0, aff = _problem(rng, L, N, 6, 10.0, False)
    outs = [K.tsne_optimize(y0.clone(), aff, max_iter=60, exploration_iter=30, forces="native",
                            num_threads=n) for n in (1, 2, 3)]
    assert torch.equal(outs[0], outs[1]) and torch.equal(outs[0], outs[2])


# (1, 1): two row blocks per step; (16, 1): each problem's schedule in one task; (2, 8): eight
# runs of each layer stepped together in one task
@pytest.mark.parametrize("L,S", [(1, 1), (16, 1), (2, 8)])
def test_native_optimizer_progress_and_stop(L, S, rng):
    y0, aff = _problem(rng, L, 64, 5, 5.0, False)
    if S > 1:
        y0 = K.repeat_starts(y0, S, 1)
    seen = []
    K.tsne_optimize(y0.clone(), aff, max_iter=300, forces="native", progress=seen.append,
                    num_threads=2)
    assert sum(seen) == 300 - 1 and all(s > 0 for s in seen)  # sklearn's count: 250 + 49

    class Stop(Exception):
        pass

    def stop(n):
        raise Stop()

    with pytest.raises(Stop):  # an exception in the callback (or Ctrl-C) ends the call
        K.tsne_optimize(y0.clone(), aff, max_iter=300, forces="native", progress=stop,
                        num_threads=2)


def test_native_optimizer_rejects_bad_affinities():
    y = torch.zeros(2, 10, 2)
    with pytest.raises(ValueError, match="divide"):
        K.tsne_optimize(y, torch.zeros(3, 10, 10), forces="native")
    bad = torch.full((1, 2, 10), 10, dtype=torch.int32)
    with pytest.raises(ValueError, match="outside"):
        K.tsne_optimize(torch.zeros(1, 10, 2), None, bad, torch.ones(1, 2, 10), forces="native")


_PORTABLE_SCRIPT = """
import json, os, sys
import numpy as np, torch
sys.path[:0] = [sys.argv[1], os.path.dirname(sys.argv[1])]  # the test and tests/_helpers.py
from test_tsne_kernels import K, _problem, _reference_schedule
rng = np.random.default_rng(int(sys.argv[2]))
errs = {}
for L, N in ((2, 77), (16, 45)):  # row blocks per step / one task per problem
    y0, aff = _problem(rng, L, N, 9, 7.0, False)
    ref = _reference_schedule(y0, aff, max_iter=8, exploration_iter=4, lr=40.0)
    got = K.tsne_optimize(y0.clone(), aff, max_iter=8, exploration_iter=4, learning_rate=40.0,
                          forces="native").double()
    errs[f"optimiser L={L}"] = float((got - ref).abs().max() / ref.abs().max())
d2 = torch.from_numpy(rng.gamma(2.0, 3.0, size=(53, 97)))
nbr, p = K.knn_conditional_native(d2, 31, 9.0)
vals, ind = torch.topk(d2, 31, dim=1, largest=False, sorted=True)
errs["knn indices differ"] = float((nbr.long() != ind).sum())
ref = K.conditional_p_torch(vals, 9.0)
errs["knn conditional"] = float((p.double() - ref).abs().max() / ref.abs().max())
print(json.dumps(errs))
"""


@pytest.mark.slow
def test_portable_kernels_follow_the_reference(rng, tmp_path):
    """The portable loops (what a CPU without AVX2 + FMA runs), forced with
    SLS_FAST_PORTABLE_KERNELS=1 in a fresh process, against the same references."""
    import json
    import os
    import subprocess
    import sys
    from pathlib import Path

    env = dict(os.environ, SLS_FAST_PORTABLE_KERNELS="1", OMP_NUM_THREADS="2")
    out = subprocess.run([sys.executable, "-c", _PORTABLE_SCRIPT, str(Path(__file__).parent),
                          str(int(rng.integers(1 << 30)))], env=env, capture_output=True,
                         text=True, timeout=300,
                         cwd=tmp_path)  # outside the checkout: it would import the unbuilt sources
    assert out.returncode == 0, out.stderr[-3000:]
    errs = json.loads(out.stdout.strip().splitlines()[-1])
    assert errs["optimiser L=2"] <= 2e-4 and errs["optimiser L=16"] <= 2e-4, errs
    assert errs["knn indices differ"] == 0 and errs["knn conditional"] <= 1e-6, errs


@pytest.mark.cuda
def test_triton_cuda_graph_equals_eager_launches(rng):
    """Replaying the captured iterations gives the bits of launching them one by one."""
    y0, aff = _problem(rng, 3, 257, 8, 12.0, False)
    y0 = y0.cuda()
    aff = tuple(a.cuda() for a in aff)
    eager = K.tsne_optimize(y0.clone(), aff, max_iter=320, forces="triton", cuda_graph=False)
    graph = K.tsne_optimize(y0.clone(), aff, max_iter=320, forces="triton", cuda_graph=True)
    assert torch.equal(eager, graph)


@pytest.mark.parametrize("dense,LP,S,N", [(False, 2, 3, 61), (True, 2, 3, 61),
                                          # L = S x LP >= 16 and S >= 4: runs stepped together
                                          (False, 2, 8, 61), (False, 3, 9, 77), (False, 1, 16, 40)])
def test_native_optimizer_shared_affinities_equal_copied(dense, LP, S, N, rng):
    """Problem s * LP + l reads layer l's affinities: the same bits as an explicit S-fold copy,
    for any thread count. With S >= 4 runs per layer (and enough layers or runs for the
    threads) the AVX2 path steps up to 8 runs of a layer together and reads their attraction
    from the shared lists in the lanes of one vector; the copy runs each problem alone."""
    y0, aff = _problem(rng, LP, N, 7, 6.0, dense)
    y = K.repeat_starts(y0, S, int(rng.integers(1000)))
    copied = aff.repeat(S, 1, 1) if dense else tuple(a.repeat(S, 1, 1) for a in aff)
    for threads in (1, 2, 3):
        shared = K.tsne_optimize(y.clone(), aff, max_iter=40, exploration_iter=20,
                                 forces="native", num_threads=threads)
        copy = K.tsne_optimize(y.clone(), copied, max_iter=40, exploration_iter=20,
                               forces="native", num_threads=threads)
        assert torch.equal(shared, copy), threads
