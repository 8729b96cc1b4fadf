"""Every Triton kernel of sls_fast.kernels compiles ahead of time to cubin for sm_80 (A100) and
sm_90 (H100/H200) on this CPU-only machine, in every constexpr configuration and dtype its
launcher uses, within the card's shared memory (cases: tests/aot_cases.py). The compilation runs
once, in a subprocess without TRITON_INTERPRET, two cases at a time."""
import importlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import aot_cases  # noqa: E402

pytestmark = pytest.mark.slow  # every test here takes seconds to minutes

triton = pytest.importorskip("triton")

PARAMS = [(c, cc) for cc in aot_cases.TARGETS for c in aot_cases.CASES]


@pytest.fixture(scope="module")
def compiled(tmp_path_factory):
    out = tmp_path_factory.mktemp("aot") / "aot.json"
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    proc = subprocess.run([sys.executable, str(HERE / "aot_cases.py"), "--json", str(out),
                           "--jobs", "2"], env=env, capture_output=True, text=True,
                          timeout=1200)
    if not out.exists():
        pytest.fail(f"aot_cases.py wrote nothing (exit {proc.returncode}):\n"
                    f"{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    data = json.loads(out.read_text())
    return {r["id"]: r for r in data["results"]}


@pytest.mark.parametrize("case,cc", PARAMS, ids=[aot_cases.case_id(c, cc) for c, cc in PARAMS])
def test_compiles(compiled, case, cc):
    r = compiled[aot_cases.case_id(case, cc)]
    assert r["ok"], f"{r['id']} failed to compile: {r.get('error')}"
    assert r["cubin_bytes"] > 0
    limit = aot_cases.TARGETS[cc]
    assert r["shared"] <= limit, (f"{r['id']} needs {r['shared']} bytes of shared memory; "
                                  f"sm_{cc} allows {limit}")
    print(f"{r['id']}: shared memory {r['shared']} B, cubin {r['cubin_bytes']} B")


def test_every_kernel_has_cases():
    """A new ``*_kernel`` (or a kernel module) without AOT cases fails here."""
    import pkgutil

    import sls_fast.kernels as kernels

    found = set()
    for info in pkgutil.iter_modules(kernels.__path__):
        mod = importlib.import_module(f"sls_fast.kernels.{info.name}")
        for name, obj in vars(mod).items():
            if name.endswith("_kernel") and hasattr(obj, "fn") and callable(obj.fn):
                found.add((info.name, name))
    covered = {(c["module"], c["kernel"]) for c in aot_cases.CASES}
    assert found, "no Triton kernels found (is triton importable?)"
    assert found == covered, f"kernels without AOT cases: {sorted(found - covered)}; " \
                             f"cases for missing kernels: {sorted(covered - found)}"


def test_the_metric_kernels_compile_once_for_every_size(compiled):
    """The metric kernels do not specialise on N, D or K (kernels/_triton.py, UNSPECIALIZED):
    a warm-up call at any size serves every later size."""
    metric = [c for c in aot_cases.CASES if c["module"] in ("silhouette", "cluster_stats")]
    assert len({c["kernel"] for c in metric}) == 3
    for case in metric:
        r = compiled[aot_cases.case_id(case, 90)]
        assert r["unspecialized"] == ["N", "D", "K"], r["id"]
