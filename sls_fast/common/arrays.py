"""Array interchange: NumPy, torch, CuPy (anything with DLPack) and plain lists in; results go
back to the caller's library (and device). Conversions are zero-copy where the libraries allow."""
from __future__ import annotations

from typing import Any

import numpy as np
import torch

__all__ = ["ArrayLike", "array_library", "as_tensor", "to_library", "to_numpy"]

# An array in any library these functions read: NumPy, torch (any device), CuPy, anything with
# DLPack, nested lists. Any to the type checker: those libraries share no static type.
ArrayLike = Any


def array_library(x) -> str:
    """'torch', 'numpy', 'cupy', 'dlpack' or 'list' (anything else NumPy can read)."""
    if isinstance(x, torch.Tensor):
        return "torch"
    if isinstance(x, np.ndarray):
        return "numpy"
    mod = type(x).__module__.split(".")[0]
    if mod == "cupy":
        return "cupy"
    if hasattr(x, "__dlpack__") and not isinstance(x, (list, tuple)):
        return "dlpack"
    return "list"


def as_tensor(x, name: str = "X") -> tuple[torch.Tensor, str]:
    """Wrap ``x`` as a torch tensor without copying where possible; returns (tensor, library)."""
    lib = array_library(x)
    if lib == "torch":
        return x, lib
    if lib in ("cupy", "dlpack"):
        return torch.from_dlpack(x), lib
    if lib == "numpy":
        arr = x
    else:
        try:
            arr = np.asarray(x)
        except (ValueError, TypeError) as exc:
            raise TypeError(f"{name} could not be read as an array: {exc}") from exc
    if arr.dtype == object or arr.dtype.kind in "USV":
        raise TypeError(f"{name} must hold numbers, got NumPy dtype {arr.dtype}")
    if arr.dtype.kind == "c":
        raise TypeError(f"{name} must be real, got complex dtype {arr.dtype}")
    if not arr.flags.writeable or arr.dtype.byteorder not in ("=", "|", "<" if np.little_endian else ">"):
        arr = np.array(arr, dtype=arr.dtype.newbyteorder("="))
    return torch.from_numpy(arr), "numpy" if lib == "numpy" else "list"


def to_numpy(x) -> np.ndarray:
    """Any array as NumPy on the host (bfloat16 is widened to float32, which NumPy lacks)."""
    if isinstance(x, np.ndarray):
        return x
    if isinstance(x, torch.Tensor):
        x = x.detach()
        if x.dtype == torch.bfloat16:
            x = x.float()
        return x.cpu().numpy()
    if type(x).__module__.split(".")[0] == "cupy":
        return x.get()
    return np.asarray(x)


def to_library(t: torch.Tensor, library: str, *, scalar: bool = False):
    """Return ``t`` in ``library``: numpy/list -> NumPy (float for a scalar), cupy -> CuPy,
    torch -> torch (same device)."""
    if library == "torch":
        return t
    if library in ("cupy", "dlpack"):
        import cupy

        return cupy.from_dlpack(t.contiguous())
    arr = t.detach().cpu().numpy()
    if scalar:
        return float(arr)
    return arr
