"""Feature buffers of :func:`sls_fast.extract_features`: their size, the memory check, and
the preallocated arrays (CuPy on CUDA when available, shared with torch through DLPack; torch
otherwise) that grow by doubling when the number of images is unknown."""
from __future__ import annotations

import warnings
from typing import Optional, Sequence

import torch

from sls_fast.common.utils import proc_bytes

__all__ = ["estimate_bytes", "allocate_buffers"]


def estimate_bytes(num_samples: int, widths: Sequence[int], dtype=torch.float32) -> int:
    """Bytes of the feature buffers: ``N * sum(D_i) * itemsize`` plus the int64 labels."""
    itemsize = torch.empty((), dtype=dtype).element_size()
    return int(num_samples) * int(sum(widths)) * itemsize + 8 * int(num_samples)


def _free_bytes(device: torch.device) -> Optional[int]:
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free)
    return proc_bytes("/proc/meminfo", "MemAvailable")


def _fmt_bytes(n) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024:
            return f"{n:.1f} {unit}" if unit != "B" else f"{n} B"
        n /= 1024
    return f"{n:.1f} TiB"


class _Buffers:
    """Feature buffers: a CuPy / torch array per layer or one stacked [L, cap, D] array, with
    torch views for writing; grows by doubling when N was unknown."""

    def __init__(self, widths, capacity, dtype, device):
        self.widths, self.dtype, self.device = list(widths), dtype, device
        self.stacked = len(set(self.widths)) == 1
        self.cupy = None
        if device.type == "cuda" and dtype in (torch.float32, torch.float16):
            try:
                import cupy

                self.cupy = cupy
            except Exception:  # noqa: BLE001 - CuPy missing or broken: torch CUDA tensors
                self.cupy = None
        self.capacity = 0
        self.arrays, self.views = None, None
        self._allocate(capacity)

    def _empty(self, shape):
        if self.cupy is not None:
            cp = self.cupy
            with cp.cuda.Device(self.device.index if self.device.index is not None else torch.cuda.current_device()):
                arr = cp.empty(shape, dtype=cp.float32 if self.dtype == torch.float32 else cp.float16)
            return arr, torch.from_dlpack(arr)
        t = torch.empty(shape, dtype=self.dtype, device=self.device)
        return t, t

    def _allocate(self, capacity):
        old_views, n_old = self.views, self.capacity
        if self.stacked:
            arr, view = self._empty((len(self.widths), capacity, self.widths[0]))
            arrays, views = arr, [view[i] for i in range(len(self.widths))]
        else:
            pairs = [self._empty((capacity, d)) for d in self.widths]
            arrays, views = [a for a, _ in pairs], [v for _, v in pairs]
        if old_views is not None:
            for new, old in zip(views, old_views):
                new[:n_old].copy_(old[:n_old])
        self.arrays, self.views, self.capacity = arrays, views, capacity

    def ensure(self, rows):
        if rows > self.capacity:
            cap = max(1, self.capacity)
            while cap < rows:
                cap *= 2
            self._allocate(cap)

    def result(self, n):
        if n == self.capacity:
            return self.arrays
        if self.stacked:
            out = self.arrays[:, :n]
            return self.cupy.ascontiguousarray(out) if self.cupy is not None else out.contiguous()
        return [a[:n] for a in self.arrays]


def allocate_buffers(widths, n_hint, first_batch, dtype, device, max_bytes):
    """Buffers for ``n_hint`` rows (one batch when unknown) after checking they fit."""
    rows = n_hint if n_hint is not None else first_batch
    need = estimate_bytes(rows, widths, dtype)
    limit = max_bytes if max_bytes is not None else _free_bytes(device)
    if limit is not None and need > limit:
        what = "max_bytes" if max_bytes is not None else f"free {device.type} memory"
        raise ValueError(
            f"feature buffers need {_fmt_bytes(need)} ({rows} images x {sum(widths)} features over "
            f"{len(widths)} layers, {dtype}) but {what} is {_fmt_bytes(limit)}; use "
            "dtype=torch.float16, fewer layers (layers=...) or fewer images")
    if n_hint is None:
        warnings.warn("the data has no length: feature buffers start at one batch and grow by "
                      "doubling", RuntimeWarning, stacklevel=3)
    return _Buffers(widths, rows, dtype, device)
