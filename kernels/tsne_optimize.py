"""The t-SNE optimiser over all problems at once (scikit-learn's schedule) and the batched
t-SNE of every layer that ties the stages together. Part of :mod:`sls_fast.kernels.tsne`."""
from __future__ import annotations

from typing import Callable, Optional, Sequence, Union

import torch

from ._triton import HAS_TRITON, check_triton_tensors
from .tsne_affinities import DENSE_P_MAX_N, affinities_by_width, densify, joint_probabilities
from .tsne_forces import (MIN_GAIN, ForcesConfig, _launch_forces, attraction_edges, forces_buffers,
                          forces_config, neighbour_edges, repeats_of,
                          tsne_forces_torch, tsne_step_torch, tsne_step_triton)
from .tsne_fft import repulsion_fft
from .tsne_init import initial_embedding, reduce_layers, repeat_starts

__all__ = ["EXPLORATION_ITER", "EARLY_EXAGGERATION", "auto_learning_rate", "tsne_optimize",
           "tsne_batched"]

EXPLORATION_ITER = 250
EARLY_EXAGGERATION = 12.0


def auto_learning_rate(n: int, early_exaggeration: float = EARLY_EXAGGERATION) -> float:
    """scikit-learn's ``learning_rate="auto"``: max(N / early_exaggeration / 4, 50)."""
    return max(n / early_exaggeration / 4.0, 50.0)



ProgressFn = Callable[[int], None]


def tsne_optimize(y: torch.Tensor, P: Optional[torch.Tensor] = None,
                  nbr: Optional[torch.Tensor] = None, pval: Optional[torch.Tensor] = None, *,
                  max_iter: int = 1000, learning_rate: Union[str, float] = "auto",
                  early_exaggeration: float = EARLY_EXAGGERATION,
                  exploration_iter: int = EXPLORATION_ITER, forces: str = "torch",
                  progress: Optional[ProgressFn] = None, num_threads: int = 0,
                  cuda_graph: Optional[bool] = None, config: Optional[ForcesConfig] = None,
                  dense_p: Optional[bool] = None) -> torch.Tensor:
    """Run scikit-learn's gradient-descent schedule on all layers at once (each problem
    re-centred after every step, which only removes float32 drift: see :func:`_recentre`).

    Args:
        y: ``[L, N, 2]`` float32 start (modified in place and returned); ``L`` may be
            ``S x LP`` (S runs of each of the LP layers of the affinities, run-major: see
            :func:`repeat_starts`), the runs of a layer sharing its affinities.
        P / nbr, pval: affinities from :func:`joint_probabilities` (``LP`` layers): a dense
            P, or the neighbour lists as ``nbr, pval`` or as the tuple in ``P``'s place.
        max_iter: total iterations, counted as scikit-learn does (exploration iterations
            0..249, then 251..max_iter-1).
        forces: ``"torch"`` (reference, any device; one Python step per iteration),
            ``"triton"`` (two fused launches per iteration, captured in CUDA graphs on a GPU),
            ``"native"`` (the whole loop in one C++/OpenMP call on the CPU, each pair's
            repulsion computed once) or ``"fft"`` (torch, any device: the repulsion by FFT
            interpolation, O(N) per iteration, :mod:`.tsne_fft`; an approximation like
            openTSNE's, for large N; the attraction over the non-zeros of P, by the C++ kernel
            on the CPU).
        progress: called with the number of iterations completed since the last call (e.g. a
            tqdm bar's ``update``); kernels never build bars themselves.
        num_threads: OpenMP threads of ``"native"`` and of ``"fft"``'s attraction on the CPU
            (0: OpenMP's default).
        cuda_graph: capture the Triton iterations in CUDA graphs (default: on a CUDA device).
        config: the Triton forces' tiles and j split (default: :func:`forces_config`; the
            GPU check times several to choose the defaults).
        dense_p: ``"triton"`` with neighbour lists: stream them as a dense P (default: on CUDA
            up to ``DENSE_P_MAX_N`` points) instead of walking their compressed rows.

    Returns:
        ``y``, the ``[L, N, 2]`` embeddings.

    Example:
        >>> y = tsne_optimize(y0, P, max_iter=1000)  # doctest: +SKIP
    """
    if forces not in ("torch", "triton", "native", "fft"):
        raise ValueError(f"unknown forces implementation {forces!r}; use 'torch', 'triton', "
                         "'native' or 'fft'")
    if isinstance(P, tuple):  # joint_probabilities' neighbour lists, as returned
        P, nbr, pval = None, *P
    L, N, _ = y.shape
    repeats_of(L, P if P is not None else nbr)  # validated once, before the hot loop
    lr = (auto_learning_rate(N, early_exaggeration) if learning_rate == "auto"
          else float(learning_rate))
    if forces == "native":
        return _optimize_native(y, P, nbr, pval, max_iter=max_iter, learning_rate=lr,
                                early_exaggeration=early_exaggeration,
                                exploration_iter=exploration_iter, progress=progress,
                                num_threads=num_threads)
    y = y.to(torch.float32).contiguous()
    if forces == "triton":
        tensors = [y] + ([P] if P is not None else [nbr, pval])
        check_triton_tensors(*tensors)
        if dense_p is None:
            # the same P, streamed densely: faster on a GPU than walking the padded lists
            # (benchmarks/RESULTS.md, the H100's second and third runs; measured before the
            # kernel walked compressed rows: gpu_tsne_forces times both again)
            dense_p = y.is_cuda and N <= DENSE_P_MAX_N
        if P is None and dense_p:
            P, nbr, pval = densify(nbr, pval), None, None
        edges = (None if P is not None else  # the kernel reads float32 p
                 neighbour_edges(nbr=nbr, pval=pval.to(torch.float32)))
        if P is not None:
            P = P.to(torch.float32).contiguous()
        cfg = (forces_config(L, N, y.device) if config is None else  # validated, no empty split
               forces_config(L, N, y.device, split=config.split, block_i=config.block_i,
                             block_j=config.block_j))
        attr, rep, zpart = forces_buffers(y, cfg)
        if cuda_graph is None:
            cuda_graph = y.is_cuda
    if forces == "fft":  # the attraction walks the non-zeros only (see neighbour_edges)
        edges = neighbour_edges(P, nbr, pval)
        edges = edges._replace(p=edges.p.to(torch.float32))  # cast once, not every iteration
    n_explore = min(exploration_iter, max_iter)
    phases = [(early_exaggeration, 0.5, n_explore),
              (1.0, 0.8, max(0, max_iter - exploration_iter - 1))]
    for exaggeration, momentum, n_steps in phases:
        update = torch.zeros_like(y)
        gains = torch.ones_like(y)
        if forces == "triton":
            def step(exaggeration=exaggeration, momentum=momentum, update=update, gains=gains):
                _launch_forces(y, P, edges, attr, rep, zpart, cfg)
                tsne_step_triton(y, update, gains, attr, rep, zpart, exaggeration=exaggeration,
                                 momentum=momentum, learning_rate=lr)
                _recentre(y)
            _run_steps(step, n_steps, progress, graph=bool(cuda_graph))
            continue
        for _ in range(n_steps):
            if forces == "fft":  # exact attraction over P, repulsion by FFT interpolation
                attr_ = attraction_edges(y, edges, num_threads=num_threads)
                rep_, Z = repulsion_fft(y)
            else:
                attr_, rep_, Z = tsne_forces_torch(y, P, nbr, pval)
            tsne_step_torch(y, update, gains, attr_, rep_, Z, exaggeration=exaggeration,
                            momentum=momentum, learning_rate=lr)
            _recentre(y)
            if progress is not None:
                progress(1)
    return y


def _recentre(y: torch.Tensor) -> None:
    """Subtract each problem's mean, in place. The gradient is translation invariant, so the
    trajectory is unchanged in exact arithmetic; in float32 it keeps an embedding that early
    exaggeration shrank to ~1e-7 from losing its points' differences to a drifted centre
    (benchmarks/RESULTS.md, "Quality": one ViT-like layer collapsed without it)."""
    y.sub_(y.mean(dim=1, keepdim=True))


# iterations per captured CUDA graph: few replays (little launch overhead) and a progress report
# every GRAPH_STEPS iterations
GRAPH_STEPS = 50


def _run_steps(step: Callable[[], None], n_steps: int, progress: Optional[ProgressFn], *,
               graph: bool) -> None:
    """``n_steps`` calls of ``step`` (which only launches work on fixed buffers). With
    ``graph``: the first call runs eagerly (it compiles the kernels), the next GRAPH_STEPS are
    captured once in a CUDA graph that is replayed, the remainder runs eagerly."""
    done = 0
    if graph and n_steps > GRAPH_STEPS:
        step()
        done = 1
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        g = torch.cuda.CUDAGraph()
        with torch.cuda.stream(stream):
            with torch.cuda.graph(g, stream=stream):
                for _ in range(GRAPH_STEPS):
                    step()
        torch.cuda.current_stream().wait_stream(stream)
        if progress is not None:
            progress(1)
        while n_steps - done >= GRAPH_STEPS:
            g.replay()
            done += GRAPH_STEPS
            if progress is not None:
                progress(GRAPH_STEPS)
    for _ in range(n_steps - done):
        step()
        if progress is not None:
            progress(1)


def _optimize_native(y, P, nbr, pval, *, max_iter, learning_rate, early_exaggeration,
                     exploration_iter, progress, num_threads) -> torch.Tensor:
    """The whole schedule in one call of the C++ optimiser (``sls_fast._C.tsne_optimize_f32``)."""
    from .native import native_module

    if y.device.type != "cpu":
        raise ValueError(f"native t-SNE runs on the CPU; y is on {y.device}")
    out = y.detach().to(torch.float32).contiguous()
    args = (None if P is None else P.to(torch.float32).contiguous().numpy(),
            None if nbr is None else nbr.to(torch.int32).contiguous().numpy(),
            None if pval is None else pval.to(torch.float32).contiguous().numpy())
    last = [0]

    def report(done: int) -> None:
        if progress is not None:
            progress(done - last[0])
        last[0] = done

    native_module().tsne_optimize_f32(out.numpy(), *args, int(max_iter), int(exploration_iter),
                                      float(early_exaggeration), float(learning_rate),
                                      float(MIN_GAIN), int(num_threads), report, 50)
    if out.data_ptr() != y.data_ptr() and y.dtype == torch.float32 and y.is_contiguous():
        y.copy_(out)
        return y
    return out


def tsne_batched(features: Union[torch.Tensor, Sequence[torch.Tensor]], *,
                 perplexity: float = 30.0, max_iter: int = 1000, init: str = "pca",
                 seed: int = 0, dense: Optional[bool] = None, pca_dims: Optional[int] = None,
                 forces: Optional[str] = None, repeats: Optional[int] = None,
                 progress: Optional[ProgressFn] = None, num_threads: int = 0) -> torch.Tensor:
    """Exact t-SNE of every layer at once (the ``backend="torch"`` engine of :func:`sls_fast.tsne`).

    Args:
        features: ``[L, N, D]`` tensor or a list of L ``[N, D_i]`` tensors on one device.
        perplexity, max_iter, init, seed: as :func:`sls_fast.tsne`.
        dense: the exact method's dense ``[L, N, N]`` P, or (default) the neighbour lists of
            scikit-learn's default method (see :func:`joint_probabilities`).
        pca_dims: compute the affinities on each layer's first ``pca_dims`` principal
            components (the common practice, e.g. 50) instead of the full features (default:
            full features, like scikit-learn; see the module docstring for the measurement).
        forces: ``"triton"`` (default on CUDA when Triton is importable), ``"torch"`` (the
            reference; default elsewhere), ``"native"`` (C++/OpenMP on the CPU) or ``"fft"``
            (the FFT-interpolation repulsion, any device, for large N).
        progress: called with the number of iterations completed since its last call.
        num_threads: OpenMP threads of ``forces="native"`` (0: OpenMP's default).
        repeats: S independent runs of every layer (starts from :func:`repeat_starts`),
            optimised as one problem of S x L embeddings; the affinities are computed once
            per layer and shared by its runs. ``None``: a single run.

    Returns:
        float32 ``[L, N, 2]`` raw embeddings on the features' device; ``[S, L, N, 2]`` with
        ``repeats=S`` (run 0 equals the single run).

    Example:
        >>> tsne_batched(torch.randn(4, 300, 64), max_iter=500).shape
        torch.Size([4, 300, 2])
    """
    layers = list(features.unbind(0)) if isinstance(features, torch.Tensor) else list(features)
    dev = layers[0].device
    if forces is None:
        forces = "triton" if (dev.type == "cuda" and HAS_TRITON) else "torch"
    y = initial_embedding(reduce_layers(layers, seed, 2), init, seed)
    L = y.shape[0]
    if repeats is not None:
        y = repeat_starts(y, repeats, seed)
    if pca_dims:
        aff = joint_probabilities(reduce_layers(layers, seed, pca_dims), perplexity, dense=dense)
    else:
        aff = affinities_by_width(layers, perplexity, dense)
    opts = dict(max_iter=max_iter, forces=forces, progress=progress, num_threads=num_threads)
    if isinstance(aff, tuple):
        y = tsne_optimize(y, nbr=aff[0], pval=aff[1], **opts)
    else:
        y = tsne_optimize(y, aff, **opts)
    return y if repeats is None else y.view(repeats, L, *y.shape[1:])
