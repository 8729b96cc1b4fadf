"""Batched exact t-SNE of every layer at once: affinities, forces, optimiser.

Everything works on a stack of L independent problems (one per layer) of the same N points.
Repeats: S runs of every layer are S x L problems (run-major) over the L layers' affinities;
the force kernels read the affinities of problem l at layer ``l % L`` (computed once, never
copied), and the runs differ by their start (:func:`repeat_starts`).

1. **Initialisation** (:mod:`.tsne_init`: :func:`pca_project`, :func:`initial_embedding`): each layer's first two
   principal components (seeded randomized range finder with 4 power iterations when D > 12,
   exact otherwise; the small factorisations run on the CPU in float64), scaled so that the
   first has standard deviation 1e-4, as scikit-learn's ``init="pca"``.
2. **Affinities** (:mod:`.tsne_affinities`: :func:`joint_probabilities`): squared Euclidean distances (float64) of the
   full features, as scikit-learn computes them, then a per-point bisection on the Gaussian
   precision beta = 1 / (2 sigma^2) until the conditional distribution's perplexity matches
   (scikit-learn's search: start at beta = 1, double
   or halve until bracketed, then bisect; 100 steps at most, entropy tolerance 1e-5), all layers
   and points at once. The conditional P is symmetrised and normalised per layer.

   Not PCA-50 by default: the common practice of computing P on 50 principal components
   (``tsne_batched(..., pca_dims=50)``) hurts on the ViT-like benchmark set (noise-dominated
   early layers lose trustworthiness, the early-exaggeration phase collapsing the embedding);
   full-width distances are one batched matrix product, cheap on a GPU.

   * **neighbour lists** (the default, any N): the k = min(N - 1, int(3 * perplexity + 1))
     nearest neighbours of each point, exactly the P of scikit-learn's default method
     (Barnes-Hut), which is what the authors ran. The symmetrised P is kept as padded
     neighbour lists ``nbr, pval`` of shape ``[L, M, N]`` (M = the largest row count, at most
     2k; padding has p = 0), "layer, slot, point" order for coalesced loads on a GPU; the C++
     optimiser compresses them to rows once. Measured on the default run's 16 x 1,077 problem
     (benchmarks/RESULTS.md): the same trustworthiness as scikit-learn, and cheaper per
     iteration than streaming a dense P.
   * **dense** (``dense=True``, N <= :data:`DENSE_P_MAX_N` = 2,048): scikit-learn's exact
     method, every pair j != i a candidate neighbour, P a float32 ``[L, N, N]`` buffer.

   The bisection runs in C++/OpenMP on the CPU (:func:`conditional_p_native`), as one Triton
   launch on CUDA (:func:`conditional_p_triton`), with :func:`conditional_p_torch` as reference.
   On the CPU the neighbour lists take two C++ calls after the distances: the k nearest of every
   row and its bisection in one pass (:func:`knn_conditional_native`, = ``torch.topk`` + the
   bisection), then the symmetrisation (:func:`symmetrize_native`, float64 sums, the same bits as
   the reference :func:`symmetrize_torch` on the default run's data).
3. **Forces** (:mod:`.tsne_forces`; exact repulsion, no Barnes-Hut): with w_ij = 1 / (1 + |y_i - y_j|^2),
   Z = sum_{i != j} w_ij, the gradient is
   ``grad_i = 4 * (exaggeration * sum_j p_ij w_ij (y_i - y_j) - sum_j w_ij^2 (y_i - y_j) / Z)``.
   :func:`tsne_forces_torch` is the reference (any device, rows in chunks);
   :func:`tsne_forces_triton` computes the same per block of points i, walking its share of
   the j tiles, so the N x N matrix of w is never stored: one launch covers all layers (grid
   ``(L, cdiv(N, BLOCK_I), split)``: the j range is cut into ``split`` parts that run as
   separate programs, :func:`forces_config`, so that 12 x 1,000 points fill a GPU), each
   program keeps tile-shaped sums and reduces them once, and every split writes its own
   partial sums, which the update kernel adds in a fixed order (deterministic, no atomics).
   The attraction also runs over the non-zeros of P as compressed rows
   (:func:`neighbour_edges`, :func:`attraction_edges`: C++ on the CPU), which the FFT
   repulsion (:mod:`.tsne_fft`, ``forces="fft"``) uses: padded lists are as long as the
   largest row.
4. **Optimiser** (:mod:`.tsne_optimize`): scikit-learn's schedule: early exaggeration 12 with
   momentum 0.5 for 250 iterations, then (update and gains reset) momentum 0.8 up to
   ``max_iter``; delta-bar-delta gains (+0.2 / x0.8, min 0.01); learning rate "auto" =
   max(N / 12 / 4, 50). No early stop on the gradient norm (a batch runs ``max_iter`` steps).
   On Triton a second small kernel fuses the update (gradient from forces and Z, gains,
   momentum, step), so one iteration is two launches for all layers, and on a GPU every 50
   iterations are captured once in a CUDA graph and replayed. On the CPU (``forces="native"``)
   the whole schedule is one C++/OpenMP call (``kernels/csrc/tsne_optimize.cpp``): no Python
   per iteration, each pair's repulsion computed once for both points, rows in pairs sharing
   the loads (AVX2 intrinsics where the CPU has them, chosen at run time), the attraction over
   neighbour rows padded to whole vectors, the result independent of the thread count; with
   16 or more problems each problem runs its whole schedule in one task (no barrier per step).

Stages live in their own modules, as openTSNE splits them: :mod:`.tsne_init` (PCA, starts,
repeats), :mod:`.tsne_affinities`, :mod:`.tsne_forces`, :mod:`.tsne_optimize`; this module
re-exports them. Kernels report progress through a callback and never import pipeline code.

Shapes: embeddings ``y`` are ``[L, N, 2]`` float32, contiguous.
"""
from __future__ import annotations

from .tsne_affinities import (DENSE_P_MAX_N, affinities_by_width, conditional_p_native, densify,
                              conditional_p_torch, conditional_p_triton, joint_probabilities,
                              knn_conditional_native, neighbour_count, symmetrize_native,
                              symmetrize_torch)
from .tsne_forces import (MAX_SPLIT, MIN_GAIN, ForcesConfig, NeighbourEdges, attraction_edges,
                          attraction_edges_torch, forces_config, gradient_from_forces,
                          neighbour_edges, repeats_of, tsne_forces_torch, tsne_forces_triton,
                          tsne_step_torch, tsne_step_triton)
from .tsne_init import (PCA_DIMS, REPEAT_JITTER, initial_embedding, pca_project,
                        reduce_layers, repeat_starts)
from .tsne_optimize import (EARLY_EXAGGERATION, EXPLORATION_ITER, auto_learning_rate,
                            tsne_batched, tsne_optimize)
from ._triton import HAS_TRITON

__all__ = [
    "DENSE_P_MAX_N", "PCA_DIMS", "EXPLORATION_ITER", "EARLY_EXAGGERATION", "MIN_GAIN",
    "REPEAT_JITTER", "HAS_TRITON",
    "pca_project", "initial_embedding", "repeat_starts", "reduce_layers",
    "joint_probabilities", "affinities_by_width", "densify", "neighbour_count", "conditional_p_torch",
    "conditional_p_native", "conditional_p_triton", "knn_conditional_native", "symmetrize_native",
    "symmetrize_torch",
    "tsne_forces_torch", "tsne_forces_triton", "gradient_from_forces", "MAX_SPLIT",
    "ForcesConfig", "forces_config", "NeighbourEdges", "neighbour_edges", "attraction_edges",
    "attraction_edges_torch",
    "repeats_of", "tsne_step_torch", "tsne_step_triton", "auto_learning_rate", "tsne_optimize",
    "tsne_batched",
]
