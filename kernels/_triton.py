"""Lazy, optional access to Triton (absent on CPU-only torch builds of some platforms)."""
import os

try:  # pragma: no cover - depends on the torch build
    import triton  # noqa: F401
    import triton.language as tl  # noqa: F401

    HAS_TRITON = True
except Exception:  # ImportError, or a broken install
    triton = None
    tl = None
    HAS_TRITON = False


# The metric kernels' sizes (points, dimensions, clusters) are not specialised on (Triton would
# compile again whenever N, D or K changes between a multiple of 16 and not, or to 1): one
# compiled kernel per configuration serves every size, so a first call at any size warms them
# (the H100 run timed 73 ms of metrics at N = 1,000 after a warm-up at N = 64, most of it a
# second compilation). Their loads are coalesced along the points either way.
UNSPECIALIZED = ("N", "D", "K")


def triton_interpreting() -> bool:
    """True when Triton kernels run in the interpreter (CPU tensors; ``TRITON_INTERPRET=1``)."""
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def check_triton_tensors(*tensors) -> None:
    """Raise a clear error unless Triton can run on these tensors."""
    if not HAS_TRITON:
        raise ValueError("backend='triton' needs the triton package, which is not importable here")
    for t in tensors:
        if not t.is_cuda and not triton_interpreting():
            raise ValueError(
                f"backend='triton' needs CUDA tensors (got a tensor on {t.device}); on a CPU use "
                "backend='native' or 'torch', or set TRITON_INTERPRET=1 before importing sls_fast "
                "to run the kernels in Triton's interpreter"
            )
