"""Benchmarks run with the same Triton-interpreter setting as the tests when CUDA is absent."""
import os

try:
    import torch

    if not torch.cuda.is_available():
        os.environ.setdefault("TRITON_INTERPRET", "1")
except Exception:  # pragma: no cover
    pass
