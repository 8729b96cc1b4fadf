"""benchmarks/gpu_check.py --dry-run: every GPU section runs end to end on this CPU (tiny sizes,
Triton interpreted), so that the first lent GPU cannot lose its minutes to a Python error; and a
crashing section is reported while the others still run."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "benchmarks" / "gpu_check.py"


def _run(args, tmp_path, extra_path=None):
    env = dict(os.environ, TRITON_INTERPRET="1", PYTHONUNBUFFERED="1")
    if extra_path:
        env["PYTHONPATH"] = os.pathsep.join([str(extra_path), env.get("PYTHONPATH", "")])
    out = tmp_path / "rows.json"
    proc = subprocess.run([sys.executable, str(SCRIPT), "--dry-run", "--json", str(out), *args],
                          env=env, capture_output=True, text=True, timeout=900)
    assert out.exists(), f"no JSON written (exit {proc.returncode}):\n{proc.stdout[-4000:]}\n" \
                         f"{proc.stderr[-4000:]}"
    return proc, json.loads(out.read_text())


@pytest.mark.slow
def test_dry_run_every_section(tmp_path):
    proc, data = _run([], tmp_path)
    failed = [r for r in data["rows"] if r["ok"] is False]
    assert proc.returncode == 0 and not failed, f"{failed}\n{proc.stdout[-4000:]}"
    assert data["dry_run"] is True
    sys.path.insert(0, str(SCRIPT.parent))
    import gpu_check

    ran = {r["section"] for r in data["rows"] if r["name"] == "section wall time"}
    assert ran == set(gpu_check.SECTIONS)
    assert len(data["rows"]) > 30


@pytest.mark.slow
def test_crashing_section_is_isolated(tmp_path):
    (tmp_path / "gpu_boom.py").write_text(
        "def run(report, mode):\n    raise RuntimeError('boom')\n")
    (tmp_path / "gpu_fine.py").write_text(
        "def run(report, mode):\n    report('fine', 'ran on ' + mode.device, ok=True)\n")
    proc, data = _run(["--only", "gpu_boom,gpu_fine"], tmp_path, extra_path=tmp_path)
    rows = {(r["section"], r["name"]): r for r in data["rows"]}
    assert rows[("gpu_boom", "section crashed")]["ok"] is False
    assert "boom" in rows[("gpu_boom", "section crashed")]["note"]
    assert rows[("fine", "ran on cpu")]["ok"] is True
    assert proc.returncode == 1
    assert "FAILED: gpu_boom" in proc.stdout
