"""What the benchmarks share: the machine's description, the t-SNE quality reference
(trustworthiness), timing on the device, and relative errors against a reference.

Every benchmark and gpu_check section imports these from here (this folder is on ``sys.path``
under pytest, and ``gpu_check.py`` puts it there), so a number in RESULTS.md is always measured
and described the same way.
"""
from __future__ import annotations

import os
import platform
import time
from typing import Any, Callable, Dict, Iterable, Optional, Tuple

import numpy as np

__all__ = ["machine", "cpu_name", "vit_like_features", "mean_trustworthiness", "synchronize",
           "cuda_time_ms", "rel_err"]


def cpu_name() -> str:
    """The CPU's model name (``/proc/cpuinfo``), else what ``platform`` says."""
    try:
        with open("/proc/cpuinfo") as f:
            return next(line.split(":", 1)[1].strip() for line in f if "model name" in line)
    except (OSError, StopIteration):
        return platform.processor() or platform.machine()


def machine() -> Dict[str, Any]:
    """The facts a timing needs beside it: CPU, cores, torch threads, library versions, date."""
    import sklearn
    import torch

    import sls_fast

    info: Dict[str, Any] = dict(
        cpu=cpu_name(), cores=os.cpu_count(), threads=torch.get_num_threads(),
        python=platform.python_version(), torch=torch.__version__,
        sklearn=sklearn.__version__, sls_fast=sls_fast.__version__,
        date=time.strftime("%Y-%m-%d"))
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name()
    return info


def vit_like_features(n: int = 1000, *, layers: int = 12, dim: int = 768, classes: int = 10,
                      seed: int = 0) -> Tuple[Any, Any]:
    """ViT-B-like class-token features, float32 ``[layers, n, dim]`` torch on the CPU, and int64
    labels ``[n]``: class centres whose separation grows with depth (as in an adapted ViT-B),
    a shared low-rank component and isotropic noise. The t-SNE benchmarks' problem."""
    import torch

    gen = torch.Generator(device="cpu").manual_seed(seed)
    labels = torch.randint(0, classes, (n,), generator=gen)
    shared = (torch.randn(n, 16, generator=gen) @ torch.randn(16, dim, generator=gen)) * 0.3
    x = torch.empty((layers, n, dim), dtype=torch.float32)
    for layer in range(layers):
        centres = torch.randn(classes, dim, generator=gen) * (0.25 + 0.12 * layer)
        x[layer] = centres[labels] + shared + torch.randn(n, dim, generator=gen)
    return x, labels


def _numpy(a: Any) -> np.ndarray:
    if hasattr(a, "detach"):
        a = a.detach().float().cpu().numpy()
    return np.asarray(a)


def mean_trustworthiness(features: Any, embeddings: Any, *, n_neighbors: int = 10,
                         layers: Optional[Iterable[int]] = None) -> float:
    """scikit-learn's trustworthiness (``n_neighbors``) of each layer's 2-D embedding of its
    features, averaged over ``layers`` (default all). ``features``: ``[L, N, D]`` or a list of
    ``[N, D_i]``; ``embeddings``: ``[L, N, 2]``; NumPy or torch (any device)."""
    from sklearn.manifold import trustworthiness

    idx = range(len(features)) if layers is None else layers
    return float(np.mean([trustworthiness(_numpy(features[i]), _numpy(embeddings[i]),
                                          n_neighbors=n_neighbors) for i in idx]))


def synchronize() -> None:
    """Wait for the GPU when CUDA is in use (a no-op otherwise)."""
    import torch

    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.synchronize()


def cuda_time_ms(fn: Callable[[], Any], *, warmup: int = 2, iters: int = 5) -> float:
    """Median milliseconds of ``fn()`` with CUDA events (warm-up excluded); on a machine without
    CUDA (a dry run) one host-clock call after one warm-up, so the same code path runs."""
    import torch

    if not torch.cuda.is_available():
        for _ in range(min(warmup, 1)):
            fn()
        t0 = time.perf_counter()
        fn()
        return (time.perf_counter() - t0) * 1e3
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(iters):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end))
    times.sort()
    return times[len(times) // 2]


def rel_err(got: Any, ref: Any) -> float:
    """``max |got - ref| / max |ref|`` in float64 (torch tensors on one device, or arrays)."""
    import torch

    g, r = (a.detach() if hasattr(a, "detach") else torch.as_tensor(np.asarray(a))
            for a in (got, ref))
    g, r = g.double(), r.double()
    return float((g - r).abs().max() / r.abs().max().clamp_min(1e-30))
