"""t-SNE of every layer's features to 2-D (step 2 of SLS), with interchangeable backends.

(About 400 lines, most of them this page: what each backend computes and when ``"auto"`` picks
it belongs next to the one dispatch that chooses; the computation is in ``sls_fast.kernels``.)

:func:`tsne` takes ``[L, N, D]`` features (or a list of L ``[N, D_i]`` arrays whose widths may
differ, as for Swin or EfficientNet) and returns ``[L, N, 2]`` embeddings in the input's array
library (NumPy, torch on the same device, CuPy), min-max normalised per layer and per axis to
[0, 1] by default, as the reference code does before scoring.

Backends:

``"sklearn"``
    The authors' settings exactly: ``sklearn.manifold.TSNE(n_components=2, init=init,
    perplexity=perplexity, random_state=seed, max_iter=max_iter)`` (other arguments at their
    defaults: Barnes-Hut, learning rate "auto"), one layer after the other, on the CPU. The raw
    output equals scikit-learn's bit for bit: the parity mode for reproducing the paper.
``"opentsne"``
    openTSNE (optional dependency, extra ``sls_fast[tsne]``) on the CPU, layer by layer on every
    core: one single-threaded openTSNE per core, each taking the next layer (a single layer
    uses ``n_jobs=-1``); Barnes-Hut below 10,000 points, FFT interpolation above (openTSNE's
    own rule); 250 early-exaggeration iterations then ``max_iter - 250``.
``"cuml"``
    cuML's TSNE on CUDA (optional extra ``sls_fast[cuml]``), one layer after the other; CuPy
    and CUDA torch buffers are passed through DLPack without host copies.
``"torch"``
    sls_fast's own exact t-SNE of all L layers at once (:mod:`sls_fast.kernels.tsne`): input
    affinities from the full features (the common PCA-to-50 step is available in
    ``kernels.tsne.tsne_batched(pca_dims=50)`` but it loses trustworthiness on
    noise-dominated layers, see there), per-point bisection on sigma for the perplexity,
    scikit-learn's optimiser (PCA start scaled
    to std 1e-4, early exaggeration 12 for 250 iterations, momentum 0.5 then 0.8, learning rate
    max(N / 48, 50), delta-bar-delta gains; each problem re-centred after every step, a
    translation that only removes float32 drift), exact (no Barnes-Hut) repulsion. P is the one
    of scikit-learn's default method, the authors' setting: the min(N - 1, int(3 x perplexity +
    1)) nearest neighbours of each point, bisection to the perplexity, symmetrised. On CUDA the
    bisection is one Triton launch, the forces and the update Triton kernels (one launch each for
    all layers, Q never stored, the list P streamed densely for N <= ``DENSE_P_MAX_N`` = 2,048,
    iterations replayed from CUDA graphs) under the name ``"triton"``; ``"torch"`` is plain
    torch (the reference, any device). The repulsion is exact, so the cost per iteration is
    O(L N^2): ``"auto"`` uses ``"triton"`` on CUDA up to ``TORCH_AUTO_MAX_N`` = 20,000 points.
    (Until this version ``"torch"`` meant the Triton kernels on CUDA: it still does, with a
    DeprecationWarning, for one version; the names now mean what the metrics' names mean.)
``"triton"``
    The batched t-SNE above with its Triton kernels: CUDA tensors (CPU tensors only under
    Triton's interpreter, ``TRITON_INTERPRET=1``, as the tests run it).
``"native"``
    The same batched t-SNE as ``"torch"`` (same affinities, same schedule) on the CPU: the
    bisection in C++ and the whole optimisation in one C++/OpenMP call of ``sls_fast._C``
    (``kernels/csrc/tsne_optimize.cpp``: each pair's repulsion computed once for both points,
    the result independent of the thread count).
``"fft"``
    The same batched t-SNE (same affinities, same schedule) with the repulsion by FFT
    interpolation on a grid (the FIt-SNE algorithm that openTSNE runs on the CPU, here in torch
    for every layer and repeat at once, cuFFT on CUDA: :mod:`sls_fast.kernels.tsne_fft`):
    O(N) per iteration instead of O(N^2), an approximation at openTSNE's resolution (3 nodes
    per unit interval, at least 50 intervals); trustworthiness within 0.01 of openTSNE's at
    5,000 points (tests/unit/test_tsne_fft.py). The attraction runs over the non-zeros of P
    (C++ on the CPU). ``"auto"`` picks it for large N (below).
``"auto"``
    CUDA data: ``"triton"`` up to ``TORCH_AUTO_MAX_N`` = 20,000 points, ``"fft"`` beyond (the
    exact repulsion grows as N^2: 12 x 10,000 took 7.2 s on an H100; where the FFT path
    overtakes it on a GPU is still to be measured, so the switch stays where the exact path
    already stopped; ``"cuml"`` only when asked for). CPU data: ``"native"`` up to
    ``NATIVE_AUTO_MAX_N`` = 10,000 points, ``"fft"`` beyond: on 2 cores, 12 layers x 1,000
    iterations, the exact C++ kernel beats our FFT path up to 8,000 points (58.6 s against
    109.3 s) and loses at 12,000 (126.1 s against 113.2 s), at the same trustworthiness; the
    FFT path beats openTSNE 3.3x at 12 x 5,000, 1.5x at 12 x 20,000 and 2.2x at one layer of
    20,000 (``benchmarks/RESULTS.md``). ``"opentsne"`` and ``"sklearn"`` only when asked for.

Repeats (``repeats=S``): S runs of every layer, returned as ``[S, L, N, 2]``; run 0 is the
single run with the same seed. What tells the runs apart:

* ``"native"`` / ``"triton"`` / ``"torch"``: the start. Run s >= 1 starts from the same PCA
  (or random) start plus seeded noise of 1e-2 of its scale
  (:func:`sls_fast.kernels.tsne.repeat_starts`); the S x L
  runs are one batched problem whose affinities are computed once per layer and shared. (The
  seed alone would barely move a PCA start: it only reaches the randomized range finder.)
* ``"sklearn"`` / ``"opentsne"`` / ``"cuml"``: the row order, as in the authors' pipeline (their
  data loader reshuffles for every layer): run s >= 1 embeds the rows in a seeded permutation
  (``random_state`` stays ``seed``) and the result is put back in data order; a loop over runs.

Both sample the same chaos: measured on EfficientNet-Lite0 / 240 digits, the per-layer standard
deviation of the silhouette over 8 runs is the same (``benchmarks/RESULTS.md``).

Inputs are validated before any work: N must exceed the perplexity (scikit-learn's rule), and
``"opentsne"`` / ``"cuml"`` need N > 3 x perplexity (ours take min(N - 1, 3 x perplexity + 1)
neighbours); NaN / inf, wrong shapes and unknown options are ``ValueError``s.
"""
from __future__ import annotations

import importlib.util
import inspect
import numbers
import os
import warnings
from concurrent.futures import ThreadPoolExecutor
from typing import Any, List, Optional, Tuple, Union

import numpy as np
import torch

from sls_fast.common.checks import check_choice, check_number
from sls_fast.common.arrays import ArrayLike, array_library, as_tensor, to_library, to_numpy
from sls_fast.common.utils import progress_bar
from sls_fast.kernels.tsne import DENSE_P_MAX_N, EXPLORATION_ITER, tsne_batched

__all__ = ["tsne", "row_order", "TSNE_BACKENDS", "PERPLEXITY", "MAX_ITER", "DENSE_P_MAX_N", "TORCH_AUTO_MAX_N", "NATIVE_AUTO_MAX_N"]

PERPLEXITY = 30.0  # the authors' (scikit-learn's default)
MAX_ITER = 1000  # the authors' (scikit-learn's default)

TSNE_BACKENDS = ("auto", "native", "triton", "torch", "fft", "opentsne", "sklearn", "cuml")
# The exact repulsion is O(N^2) per iteration, the FFT-interpolated one ~O(N) plus a grid that
# grows with the embedding's span. Beyond these N "auto" uses "fft". CPU: measured crossover
# about 11,000 points on 2 cores (benchmarks/RESULTS.md, "The batched FFT-interpolation t-SNE
# on the CPU"); CUDA: where the exact Triton path stopped before (unmeasured crossover).
TORCH_AUTO_MAX_N = 20_000
NATIVE_AUTO_MAX_N = 10_000
_NEIGHBOUR_FACTOR = 3


def _has(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def _read_features(features) -> Tuple[List[torch.Tensor], str, bool]:
    """Layers as a list of 2-D tensors (zero-copy where possible), the result's library, and
    whether the input was a single ``[N, D]`` array."""
    if isinstance(features, (list, tuple)) and len(features) == 0:
        raise ValueError("features is an empty list; pass [L, N, D] or L arrays [N, D_i]")
    if isinstance(features, (list, tuple)) and all(hasattr(f, "ndim") for f in features):
        layers = []
        for i, f in enumerate(features):
            t, _ = as_tensor(f, f"features[{i}]")
            if t.ndim != 2:
                raise ValueError(f"features[{i}] must be a 2-D [N, D] array, got shape "
                                 f"{tuple(t.shape)}")
            layers.append(t)
        library, squeeze = array_library(features[0]), False
    else:
        x, library = as_tensor(features, "features")
        layers, squeeze = _split(x)
    library = "numpy" if library == "list" else library
    n = layers[0].shape[0]
    dev = layers[0].device
    for i, t in enumerate(layers):
        if t.shape[0] != n:
            raise ValueError(f"every layer must have the same N; layer 0 has {n} points, "
                             f"layer {i} has {t.shape[0]}")
        if t.device != dev:
            raise ValueError(f"all layers must be on one device; layer 0 is on {dev}, "
                             f"layer {i} on {t.device}")
        if t.shape[1] == 0:
            raise ValueError(f"layer {i} has no feature columns (shape {tuple(t.shape)})")
        if t.is_complex():
            raise TypeError(f"features must be real, got {t.dtype} in layer {i}")
        if t.dtype == torch.bool:
            raise TypeError(f"features must be numbers, got {t.dtype} in layer {i}")
    if n == 0:
        raise ValueError("features have N = 0 points")
    bad = [i for i, t in enumerate(layers)
           if t.is_floating_point() and not bool(torch.isfinite(t).all())]
    if bad:
        raise ValueError(f"features contain NaN or infinity (layers {bad[:8]})")
    return layers, library, squeeze


def _split(x: torch.Tensor):
    if x.ndim == 3:
        if x.shape[0] == 0:
            raise ValueError(f"features have L = 0 layers: shape {tuple(x.shape)}")
        return list(x.unbind(0)), False
    if x.ndim == 2:
        return [x], True
    raise ValueError(f"features must be [L, N, D] (or one layer [N, D], or a list of L arrays "
                     f"[N, D_i]); got {x.ndim}-D shape {tuple(x.shape)}")


def _check_repeats(repeats):
    if repeats is not None and (isinstance(repeats, bool) or not isinstance(
            repeats, numbers.Integral) or repeats < 1):
        raise ValueError(f"repeats must be a positive integer (or None), got {repeats!r}")


def row_order(n: int, seed: int, run: int) -> np.ndarray:
    """The row permutation of repeat ``run`` (identity for run 0), seeded by ``(seed, run)``."""
    if run == 0:
        return np.arange(n)
    return np.random.default_rng(np.random.SeedSequence([int(seed), int(run)])).permutation(n)


def _row_order_runs(run_fn, layers, repeats, seed):
    """``[S, L, N, 2]``: ``run_fn(layers)`` on each run's row order, put back in data order."""
    n = int(layers[0].shape[0])
    out = []
    for s in range(repeats):
        perm = torch.from_numpy(row_order(n, seed, s)).to(layers[0].device)
        emb = run_fn([t[perm] for t in layers])
        out.append(emb[:, torch.argsort(perm).to(emb.device)])
    return torch.stack(out)


def _check_options(backend, perplexity, max_iter, init, seed, normalize):
    """The options, checked (common.checks: wrong type TypeError, out of range ValueError) and
    returned as Python numbers (NumPy scalars are accepted)."""
    check_choice(backend, "backend", TSNE_BACKENDS)
    perplexity = check_number(perplexity, "perplexity", low=0, low_open=True)
    max_iter = check_number(max_iter, "max_iter", integer=True, low=1)
    check_choice(init, "init", ("pca", "random"))  # initial positions as an array: not offered
    seed = check_number(seed, "seed", integer=True, low=0)
    check_choice(normalize, "normalize", ("minmax", None))
    return perplexity, max_iter, seed


def _resolve(backend: str, device: torch.device, n: int) -> str:
    if backend != "auto":
        return backend
    if device.type == "cuda":
        return "triton" if n <= TORCH_AUTO_MAX_N else "fft"
    # both measured faster than openTSNE and scikit-learn at equal quality
    return "native" if n <= NATIVE_AUTO_MAX_N else "fft"


def _check_sizes(backend: str, n: int, perplexity: float, max_iter: int) -> None:
    if n < 2:
        raise ValueError(f"t-SNE needs at least 2 points per layer, got N = {n}")
    if not perplexity < n:
        raise ValueError(f"perplexity ({perplexity}) must be less than the number of points "
                         f"N = {n} (scikit-learn's rule); pass a smaller perplexity, e.g. "
                         f"perplexity={max(1, min(30, (n - 1) // 3))}")
    needs_neighbours = backend in ("opentsne", "cuml")  # ours take min(N - 1, 3 p + 1)
    if needs_neighbours and n <= _NEIGHBOUR_FACTOR * perplexity:
        k = int(_NEIGHBOUR_FACTOR * perplexity)
        raise ValueError(
            f"N = {n} points is too few for perplexity {perplexity} with backend={backend!r}: "
            f"it uses the {_NEIGHBOUR_FACTOR} x perplexity = {k} nearest neighbours of each "
            f"point, so N must exceed {k}. Pass perplexity <= {max(1, (n - 1) // 3)} "
            f"(or backend='sklearn' / 'native' / 'triton' for small N)")
    if backend == "sklearn" and max_iter < EXPLORATION_ITER:
        raise ValueError(f"backend='sklearn' needs max_iter >= {EXPLORATION_ITER} "
                         f"(scikit-learn's rule), got {max_iter}")


def _bar(iterable, progress: bool, desc: str, total=None):
    return progress_bar(iterable, progress, desc=desc, total=total, unit="layer", leave=False)


def _run_sklearn(layers, perplexity, max_iter, init, seed, progress=False):
    from sklearn.manifold import TSNE

    out = []
    for t in _bar(layers, progress, "t-SNE (scikit-learn)"):
        x = to_numpy(t)
        kwargs = dict(n_components=2, init=init, perplexity=perplexity, random_state=seed)
        if max_iter != 1000:
            kwargs["max_iter"] = max_iter
        emb = TSNE(**kwargs).fit_transform(x)
        out.append(torch.from_numpy(np.ascontiguousarray(emb)))
    return torch.stack(out)


def _opentsne_layer(x: np.ndarray, perplexity, max_iter, init, seed, n_jobs) -> np.ndarray:
    from openTSNE import TSNE

    explore = min(EXPLORATION_ITER, max_iter)
    model = TSNE(n_components=2, perplexity=perplexity, initialization=init,
                 early_exaggeration_iter=explore, n_iter=max_iter - explore,
                 negative_gradient_method="auto", random_state=seed, n_jobs=n_jobs,
                 verbose=False)
    return np.asarray(model.fit(x), dtype=np.float32)


def _run_opentsne(layers, perplexity, max_iter, init, seed, progress=False):
    if not _has("openTSNE"):
        raise ValueError("backend='opentsne' needs the openTSNE package, which is not "
                         "installed; `pip install sls_fast[tsne]` (or openTSNE), or use "
                         "backend='sklearn' or 'torch'")
    xs = [np.ascontiguousarray(to_numpy(t), dtype=np.float64) for t in layers]
    cores = os.cpu_count() or 1
    if len(xs) == 1 or cores == 1:
        embs = [_opentsne_layer(xs[0], perplexity, max_iter, init, seed, -1)] if len(xs) == 1 \
            else [_opentsne_layer(x, perplexity, max_iter, init, seed, 1) for x in xs]
    else:
        # one single-threaded openTSNE per core, layers handed out in order: its Barnes-Hut
        # loops release the GIL, and at N ~ 1,000 this scales better than n_jobs within a layer
        with ThreadPoolExecutor(max_workers=min(cores, len(xs))) as pool:
            embs = list(_bar(pool.map(
                lambda x: _opentsne_layer(x, perplexity, max_iter, init, seed, 1), xs),
                progress, "t-SNE (openTSNE)", total=len(xs)))
    return torch.stack([torch.from_numpy(np.ascontiguousarray(e)) for e in embs])


def _run_cuml(layers, perplexity, max_iter, init, seed, progress=False):
    if not _has("cuml"):
        raise ValueError("backend='cuml' needs RAPIDS cuML, which is not installed; "
                         "`pip install sls_fast[cuml]` on a CUDA machine, or use backend='torch'")
    if not torch.cuda.is_available():
        raise ValueError("backend='cuml' needs a CUDA device; none is visible")
    import cupy
    from cuml.manifold import TSNE

    params = inspect.signature(TSNE.__init__).parameters
    iters = "max_iter" if "max_iter" in params else "n_iter"
    n = layers[0].shape[0]
    out = []
    for t in _bar(layers, progress, "t-SNE (cuML)"):
        t = t.to(device="cuda" if not t.is_cuda else t.device, dtype=torch.float32)
        x = cupy.from_dlpack(t.contiguous())  # zero-copy view of the CUDA buffer
        model = TSNE(n_components=2, perplexity=perplexity, init=init, random_state=seed,
                     n_neighbors=min(n - 1, int(_NEIGHBOUR_FACTOR * perplexity)),
                     exaggeration_iter=min(EXPLORATION_ITER, max_iter),
                     output_type="cupy", **{iters: max_iter})
        emb = model.fit_transform(x)
        out.append(torch.from_dlpack(cupy.ascontiguousarray(emb, dtype=cupy.float32)))
    return torch.stack(out)


def _run_torch(layers, perplexity, max_iter, init, seed, forces=None, progress=False,
               repeats=None):
    feats = [t.detach() if t.is_floating_point() else t.to(torch.float32) for t in layers]
    if forces == "native":
        if feats[0].device.type != "cpu":
            raise ValueError(f"backend='native' runs on the CPU; the features are on "
                             f"{feats[0].device}. Use backend='triton' on CUDA, or 'auto'")
        feats = [t.cpu() for t in feats]
    if forces == "triton" and feats[0].device.type != "cuda" and \
            os.environ.get("TRITON_INTERPRET") != "1":
        raise ValueError(f"backend='triton' runs on CUDA; the features are on "
                         f"{feats[0].device}. Use backend='native' (or 'auto') on the CPU")
    problems = len(feats) * (1 if repeats is None else int(repeats))
    bar = progress_bar(None, progress, total=int(max_iter), unit="it", leave=False,
                       desc=f"t-SNE ({forces or 'torch'}, {problems} problems)")
    try:
        return tsne_batched(feats, perplexity=float(perplexity), max_iter=int(max_iter),
                            init=init, seed=int(seed), forces=forces,
                            progress=None if bar is None else bar.update,
                            repeats=None if repeats is None else int(repeats))
    finally:
        if bar is not None:
            bar.close()


def minmax_normalize(emb: torch.Tensor) -> torch.Tensor:
    """Rescale each layer's embedding per axis to [0, 1]: ``(e - min) / (max - min)`` (a
    constant axis becomes 0). ``emb``: ``[..., N, 2]`` (``[L, N, 2]`` or ``[S, L, N, 2]``)."""
    lo = emb.amin(dim=-2, keepdim=True)
    span = emb.amax(dim=-2, keepdim=True) - lo
    safe = torch.where(span > 0, span, torch.ones_like(span))
    return torch.where(span > 0, (emb - lo) / safe, torch.zeros_like(emb))


def tsne(features: Union[ArrayLike, List[ArrayLike]], *, backend: str = "auto",
         perplexity: float = PERPLEXITY, max_iter: int = MAX_ITER,
         init: str = "pca", seed: int = 0, normalize: Optional[str] = "minmax",
         repeats: Optional[int] = None, progress: bool = False) -> Any:
    """2-D t-SNE embedding of every layer's features.

    Args:
        features: ``[L, N, D]`` array, one layer ``[N, D]``, or a list of L arrays ``[N, D_i]``
            (widths may differ); NumPy, torch (any device) or CuPy.
        backend: ``"auto"``, ``"native"``, ``"triton"``, ``"torch"``, ``"fft"``,
            ``"opentsne"``, ``"sklearn"`` or ``"cuml"`` (see the module docstring).
        perplexity: Gaussian perplexity of the input affinities (must be < N; neighbour-based
            backends need N > 3 x perplexity).
        max_iter: total optimisation iterations (the first 250 with early exaggeration 12).
        init: ``"pca"`` (default, like the reference) or ``"random"``.
        seed: random seed (``random_state`` of scikit-learn / openTSNE / cuML); results on the
            CPU are deterministic given the seed.
        normalize: ``"minmax"`` (default, the reference's per-axis rescale of each layer to
            [0, 1], which changes silhouette values) or ``None`` (raw coordinates).
        repeats: ``None`` (one run, the paper) or S: S runs of every layer, returned as
            ``[S, L, N, 2]`` (run 0 equals the single run); see "Repeats" in the module
            docstring for what tells them apart.
        progress: a tqdm progress bar (over layers, or over iterations for the batched
            backends).

    Returns:
        float32 ``[L, N, 2]`` (``[N, 2]`` for a single ``[N, D]`` input) in the input's library:
        NumPy for NumPy or lists, torch on the input's device, CuPy for CuPy. With
        ``repeats=S``: ``[S, L, N, 2]`` (``[S, N, 2]`` for a single ``[N, D]`` input).

    Example:
        >>> import numpy as np, sls_fast
        >>> feats = np.random.default_rng(0).normal(size=(12, 500, 768)).astype(np.float32)
        >>> emb = sls_fast.tsne(feats)                    # our batched t-SNE, C++ on the CPU
        >>> emb.shape
        (12, 500, 2)
        >>> emb = sls_fast.tsne(feats, backend="sklearn")  # the paper's exact settings
        >>> sls_fast.tsne(feats, repeats=8).shape           # 8 runs of each layer, one batch
        (8, 12, 500, 2)
    """
    perplexity, max_iter, seed = _check_options(backend, perplexity, max_iter, init, seed,
                                                normalize)
    _check_repeats(repeats)
    layers, library, squeeze = _read_features(features)
    n = int(layers[0].shape[0])
    device = layers[0].device
    be = _resolve(backend, device, n)
    _check_sizes(be, n, perplexity, max_iter)
    loops = dict(sklearn=_run_sklearn, opentsne=_run_opentsne, cuml=_run_cuml)
    if be in loops:
        def one(ls):
            return loops[be](ls, perplexity, max_iter, init, seed, progress)
        emb = one(layers) if repeats is None else _row_order_runs(one, layers, repeats, seed)
    else:
        forces = be  # the batched t-SNE's forces: "native", "triton", "torch" or "fft"
        if be == "torch" and layers[0].device.type == "cuda":
            warnings.warn("backend='torch' on CUDA runs the Triton kernels in this version and "
                          "the plain-torch reference from the next one: ask for "
                          "backend='triton' (or 'auto') for the fast path", DeprecationWarning,
                          stacklevel=2)
            forces = "triton"
        emb = _run_torch(layers, perplexity, max_iter, init, seed, forces=forces,
                         progress=progress, repeats=repeats)
    if normalize == "minmax":
        emb = minmax_normalize(emb)
    if library in ("torch", "cupy", "dlpack"):
        emb = emb.to(device)
    if squeeze:
        emb = emb[..., 0, :, :]
    return to_library(emb, library)
