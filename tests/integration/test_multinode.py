"""sls-fast sweep on a real two-node Ray cluster on this machine: the worker node runs in its own
mount namespace with a tmpfs over the parent of the driver's --out, so it cannot see the
driver's disk; results must travel through Ray. Token authentication is on (RAY_AUTH_MODE=token,
one token shared by the nodes and the driver), no dashboard, every node on 127.0.0.1; every
process a test starts is stopped by PID (the node's process group and its descendants).

Cells are tiny (timm's test_vit at 32 px, one epoch): the harness is under test, not the method."""
import json
import os
import shutil
import sqlite3
import sys
import threading
import time

import pytest

pytestmark = pytest.mark.slow
pytest.importorskip("ray")
psutil = pytest.importorskip("psutil")

def _can_hide_a_folder() -> bool:
    """Whether this machine lets a process mount a tmpfs in a mount namespace of its own."""
    if not sys.platform.startswith("linux") or os.geteuid() != 0 or not shutil.which("unshare"):
        return False
    import subprocess
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        return subprocess.run(["unshare", "--mount", "sh", "-c", f"mount -t tmpfs tmpfs '{d}'"],
                              capture_output=True).returncode == 0


if not _can_hide_a_folder():
    pytest.skip("needs Linux, root and unshare --mount with tmpfs (a node that cannot see the "
                "driver's disk)", allow_module_level=True)

from _ray_cluster import Cluster  # noqa: E402
from sls_fast.harness.sweep.driver import cell_workdir_root  # noqa: E402

TINY = ["--quick", "--models", "test_vit", "--image-size", "32", "--tsne-iter", "250",
        "--score-points", "200", "--no-progress"]


def _rows(out):
    con = sqlite3.connect(os.path.join(out, "results.sqlite"))
    con.row_factory = sqlite3.Row
    rows = [dict(r) for r in con.execute("SELECT * FROM runs ORDER BY key")]
    con.close()
    return rows


class _Cluster(Cluster):
    def sweep(self, out, *args):
        return super().sweep(out, *TINY, *args)


@pytest.fixture
def cluster(tmp_path):
    c = _Cluster(str(tmp_path), str(tmp_path / "driver"))
    yield c
    c.stop()


def test_a_sweep_over_two_nodes_without_a_shared_disk(cluster, tmp_path):
    out = tmp_path / "driver" / "out"  # the worker node has a tmpfs over tmp_path/driver
    # one CPU per node and no --cpus-per-cell: the default request (2) is cut to fit the nodes
    run = cluster.sweep(out, "--data", "digits", "lfw", "--alphas", "0.3", "0.9")
    _, err = run.communicate(timeout=900)
    assert run.returncode == 0, err
    rows = _rows(out)
    assert len(rows) == 4 and all(r["status"] == "ok" for r in rows), err
    assert len({r["node"] for r in rows}) == 2  # both nodes ran cells
    for r in rows:
        cell = out / "cells" / r["key"]
        for name in ("report.json", "layers.json", "pruned.safetensors", "scores.png",
                     "log.txt"):
            assert (cell / name).is_file(), (r["key"], name)
        report = json.loads((cell / "report.json").read_text())
        assert report["depth"] == r["depth"] and r["attempts"] == 1
    # a group's second cell ran where its first one left the cache
    by = {}
    for r in rows:
        by.setdefault(r["task"], []).append(r)
    for task, (first, second) in by.items():
        hits = sorted([json.loads(first["cache"])["adapt"], json.loads(second["cache"])["adapt"]])
        assert hits == ["hit", "miss"] and first["node"] == second["node"], task
    assert sorted(os.listdir(out / "cells")) == sorted(r["key"] for r in rows)
    assert not (out / "running").exists()
    # a request no node can hold is refused at once, naming the largest node
    run = cluster.sweep(tmp_path / "other", "--data", "digits", "--cpus-per-cell", "2")
    _, err = run.communicate(timeout=120)
    assert run.returncode == 2 and "no Ray node has that: the largest has 1 CPUs" in err, err
    # rerun: every cell skipped, nothing runs
    run = cluster.sweep(out, "--data", "digits", "lfw", "--alphas", "0.3", "0.9")
    _, err = run.communicate(timeout=300)
    assert run.returncode == 0 and "4 finished before (skipped)" in err and "0 to run" in err


def _on_other_node(pid):
    """Whether process ``pid`` runs in another mount namespace than this one (the worker node)."""
    try:
        return os.readlink(f"/proc/{pid}/ns/mnt") != os.readlink("/proc/self/ns/mnt")
    except OSError:
        return False


def test_a_lost_node_costs_one_attempt(cluster, tmp_path):
    out = tmp_path / "driver" / "out"
    root = cell_workdir_root(str(out))
    killed = []

    def kill_worker_node_mid_cell():
        for _ in range(3000):  # polls 0.1 s apart: up to about 5 minutes
            for name in os.listdir(root) if os.path.isdir(root) else []:
                pid = int(name.rsplit(".", 1)[1])
                if _on_other_node(pid):
                    killed.append(name.rsplit(".", 1)[0])
                    cluster.kill("worker")
                    return
            time.sleep(0.1)

    killer = threading.Thread(target=kill_worker_node_mid_cell, daemon=True)
    killer.start()
    run = cluster.sweep(out, "--data", "digits", "lfw")
    _, err = run.communicate(timeout=900)
    killer.join(timeout=10)
    assert killed, "no cell was seen running on the worker node"
    assert run.returncode == 0, err
    rows = _rows(out)
    assert len(rows) == 2 and len({r["key"] for r in rows}) == 2
    assert all(r["status"] == "ok" for r in rows), err
    attempts = {r["key"]: r["attempts"] for r in rows}
    assert attempts[killed[0]] == 2 and sum(attempts.values()) == 3, attempts
    assert {r["node"] for r in rows} == {rows[0]["node"]}  # both finished on the head node
    assert sorted(os.listdir(out / "cells")) == sorted(attempts)  # no partial folder


def test_half_a_gpu_per_cell_runs_two_cells_per_declared_gpu(tmp_path):
    """GPU scheduling on a CPU machine: the head declares one GPU; cells asking for half of it
    run two at a time and fall back to the CPU (torch sees no CUDA device)."""
    c = _Cluster(str(tmp_path), None, head_cpus=2, head_gpus=1, worker=False)
    try:
        out = tmp_path / "out"
        run = c.sweep(out, "--data", "digits", "lfw", "--gpus-per-cell", "0.5")
        _, err = run.communicate(timeout=900)
        assert run.returncode == 0, err
        assert "each cell asks for 1 CPUs and 0.5 GPUs" in err
        rows = _rows(out)
        assert len(rows) == 2 and all(r["status"] == "ok" for r in rows), err
        assert all(r["device"].startswith("cpu (") for r in rows)  # no CUDA: the CPU
        a, b = rows  # two cells, two groups: both started before either finished
        assert a["started"] <= b["finished"] and b["started"] <= a["finished"]
    finally:
        c.stop()
