"""Repeated t-SNE runs: S x L problems sharing one set of affinities per layer, the starts that
tell the runs apart, the row orders of the loop backends, and bit-determinism across threads."""
import numpy as np
import pytest
import torch
from threadpoolctl import threadpool_limits

from sls_fast.method.embed import row_order, tsne
from sls_fast.kernels import tsne as K

from _helpers import assert_close

pytestmark = pytest.mark.usefixtures("one_thread")


def _affinities(L, N, dense, seed):
    rng = np.random.default_rng(seed)
    x = torch.from_numpy(rng.normal(size=(L, N, 9)).astype(np.float32))
    return K.joint_probabilities(x, 6.0, dense=dense)


def _triton_or_skip():
    if not K.HAS_TRITON:
        pytest.skip("triton not importable")
    from sls_fast.kernels import triton_interpreting

    if not torch.cuda.is_available() and not triton_interpreting():
        pytest.skip("no CUDA and TRITON_INTERPRET is not set")
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


@pytest.mark.parametrize("impl", ["torch", "triton"])
@pytest.mark.parametrize("S,L,N,dense", [(3, 2, 37, True), (2, 1, 53, True), (3, 2, 41, False)])
def test_shared_affinities_equal_copied_affinities(impl, S, L, N, dense, rng):
    """Problem s * L + l reads layer l's affinities: the same bits as an explicit S-fold copy,
    and the float64 reference's values."""
    seed = int(rng.integers(2**31))
    aff = _affinities(L, N, dense, seed)
    y = (torch.randn(S * L, N, 2, generator=torch.Generator().manual_seed(seed)) * 3).contiguous()
    shared = (aff, None, None) if dense else (None, aff[0], aff[1])
    copied = tuple(None if a is None else a.repeat(S, 1, 1) for a in shared)
    fn = dict(torch=K.tsne_forces_torch, triton=K.tsne_forces_triton)[impl]
    dev = _triton_or_skip() if impl == "triton" else torch.device("cpu")
    to = lambda args: tuple(None if a is None else a.to(dev) for a in args)  # noqa: E731
    got = fn(y.to(dev), *to(shared))
    want = fn(y.to(dev), *to(copied))
    for g, w, what in zip(got, want, ("attr", "rep", "Z")):
        assert torch.equal(g, w), f"{impl}: {what} differs between shared and copied affinities"
    ref_args = (copied[0].double(), None, None) if dense else (None, copied[1],
                                                                copied[2].double())
    ref = K.tsne_forces_torch(y.double(), *ref_args)
    for g, r, what in zip(got, ref, ("attr", "rep", "Z")):
        # float32 sums with cancellation: absolute error on the scale of the largest term
        assert_close(g.double().cpu(), r, rtol=1e-5, atol=1e-5 * float(r.abs().max()),
                     what=f"{impl} {what}")


def test_affinities_must_divide_the_problems():
    P = _affinities(2, 30, True, 0)
    y = torch.zeros(5, 30, 2)
    with pytest.raises(ValueError, match="divide"):
        K.tsne_forces_torch(y, P)
    with pytest.raises(ValueError, match="divide"):
        K.tsne_optimize(y, P, max_iter=2, forces="native")
    with pytest.raises(ValueError, match="divide"):
        K.tsne_optimize(y, P, max_iter=2)


def test_repeat_starts():
    y0 = K.initial_embedding(K.pca_project(torch.randn(3, 50, 20), 2), "pca", 0)
    ys = K.repeat_starts(y0, 4, seed=5)
    assert ys.shape == (12, 50, 2) and ys.dtype == torch.float32
    assert torch.equal(ys[:3], y0)  # run 0 is the single run's start
    noise = (ys[3:] - y0.repeat(3, 1, 1)) / 1e-4  # the start's scale is 1e-4
    assert 0.005 < float(noise.std()) < 0.02  # jitter 1e-2 of it
    assert torch.equal(ys, K.repeat_starts(y0, 4, seed=5))  # seeded
    assert not torch.equal(ys[3:], K.repeat_starts(y0, 4, seed=6)[3:])
    with pytest.raises(ValueError, match="repeats"):
        K.repeat_starts(y0, 0, seed=0)


@pytest.mark.parametrize("backend", ["native", "torch"])
def test_batched_repeats(backend):
    """S runs of L layers in one batch: run 0 is the single run; each run equals that start
    optimised alone (batch-independent); the runs differ."""
    x = np.random.default_rng(11).normal(size=(2, 61, 7)).astype(np.float32)
    one = tsne(x, backend=backend, perplexity=10.0, max_iter=120, seed=3)
    rep = tsne(x, backend=backend, perplexity=10.0, max_iter=120, seed=3, repeats=3)
    assert rep.shape == (3, 2, 61, 2)
    assert np.array_equal(rep[0], one)
    assert rep.min() >= 0 and rep.max() <= 1
    assert not np.array_equal(rep[1], rep[0]) and not np.array_equal(rep[2], rep[1])
    feats = torch.from_numpy(x)
    y0 = K.initial_embedding(K.reduce_layers(list(feats), 3, 2), "pca", 3)
    start = K.repeat_starts(y0, 3, 3)[2 * 2: 3 * 2]  # run 2
    P = K.affinities_by_width(list(feats), 10.0, None)
    alone = K.tsne_optimize(start.clone(), P, max_iter=120, forces=backend)
    raw = tsne(x, backend=backend, perplexity=10.0, max_iter=120, seed=3, repeats=3,
               normalize=None)
    assert np.array_equal(raw[2], alone.numpy())


def test_loop_backend_repeats_are_row_orders():
    """scikit-learn runs differ by row order (the authors' pipeline), put back in data order."""
    x = np.random.default_rng(12).normal(size=(1, 45, 5)).astype(np.float32)
    rep = tsne(x, backend="sklearn", perplexity=8.0, max_iter=250, seed=2, repeats=2,
               normalize=None)
    assert rep.shape == (2, 1, 45, 2)
    assert np.array_equal(rep[0], tsne(x, backend="sklearn", perplexity=8.0, max_iter=250,
                                       seed=2, normalize=None))
    perm = row_order(45, 2, 1)
    assert not np.array_equal(perm, np.arange(45)) and np.array_equal(np.sort(perm), np.arange(45))
    shuffled = tsne(x[:, perm], backend="sklearn", perplexity=8.0, max_iter=250, seed=2,
                    normalize=None)
    assert np.array_equal(rep[1][:, perm], shuffled)


@pytest.mark.parametrize("bad", [0, -2, 1.5, True, "8"])
def test_bad_repeats(bad):
    with pytest.raises(ValueError, match="repeats"):
        tsne(np.zeros((1, 40, 3), np.float32) + np.arange(40)[None, :, None], repeats=bad,
             perplexity=5.0)


@pytest.mark.parametrize("backend", ["native", "torch"])
def test_bit_identical_with_one_and_two_threads(backend):
    """For a fixed seed our CPU backends give the same bits whatever the thread count: every
    point's sums run in a fixed order on one thread, and per-layer totals are added serially.
    (Across CPUs they may not: the SIMD width, and so the order of a row's additions, depends
    on the instruction set the kernel dispatches to; t-SNE amplifies the last bit. That is why
    decisions are taken on means over repeats.)"""
    x = np.random.default_rng(13).normal(size=(3, 151, 24)).astype(np.float32)
    out = []
    n0 = torch.get_num_threads()
    try:
        for n in (1, 2):
            torch.set_num_threads(n)
            with threadpool_limits(n):
                out.append(tsne(x, backend=backend, perplexity=15.0, max_iter=80, seed=4,
                                repeats=2, normalize=None))
    finally:
        torch.set_num_threads(n0)
    assert np.array_equal(out[0], out[1])
