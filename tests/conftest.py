"""Test setup: Triton kernels run in Triton's interpreter on CPU tensors when CUDA is absent
(this must happen before triton or sls_fast is imported), and the ``cuda`` / ``cuml`` markers
skip only what truly needs a GPU or cuML."""
import importlib.util
import os
import sys

import pytest

# tests/unit and tests/integration import the shared helpers of tests/_helpers.py
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

try:
    import torch

    _HAS_CUDA = torch.cuda.is_available()
except Exception:  # pragma: no cover
    _HAS_CUDA = False

if not _HAS_CUDA:
    os.environ.setdefault("TRITON_INTERPRET", "1")
# Ray instances the tests start bind to 127.0.0.1, never to the machine's outward address
# (read by Ray when it is imported; the multi-node tests give it to their nodes too)
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")

_HAS_CUML = importlib.util.find_spec("cuml") is not None and _HAS_CUDA


def pytest_collection_modifyitems(config, items):
    skip_cuda = pytest.mark.skip(reason="needs a CUDA device")
    skip_cuml = pytest.mark.skip(reason="needs cuML on a CUDA device")
    for item in items:
        if "cuda" in item.keywords and not _HAS_CUDA:
            item.add_marker(skip_cuda)
        if "cuml" in item.keywords and not _HAS_CUML:
            item.add_marker(skip_cuml)


@pytest.fixture
def rng(request):
    """A fresh random generator per test (seed printed on failure via the test id)."""
    import numpy as np

    seed = int.from_bytes(os.urandom(4), "little")
    request.node.user_properties.append(("seed", seed))
    print(f"random seed {seed}")
    return np.random.default_rng(seed)


@pytest.fixture(scope="module")
def one_thread():
    """Tiny models: one intra-op thread is faster, and immune to OpenMP spin-waits on a busy
    machine. Use with ``pytestmark = pytest.mark.usefixtures("one_thread")``."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
