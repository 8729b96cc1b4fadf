"""A Ray cluster of real nodes on this machine, for the multi-node tests and the two-node
sweep benchmark: a head (``ray start --head``) and, optionally, a worker node started by
``_ray_node.py`` under ``unshare --mount`` with a tmpfs over a folder it must not see.

Token authentication is on (RAY_AUTH_MODE=token, one token shared by the nodes and every
driver started through :meth:`Cluster.sweep`), no dashboard, every node on 127.0.0.1; every
process is stopped by PID (the node's process group and its descendants)."""
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

import psutil

NODE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "_ray_node.py")
RAY = os.path.join(os.path.dirname(sys.executable), "ray")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Cluster:
    """A head node (``ray start --head``) and a worker node that cannot see ``hidden``."""

    def __init__(self, root, hidden, head_cpus=1, worker_cpus=1, head_gpus=0, worker=True):
        self.port = _free_port()
        self.address = f"127.0.0.1:{self.port}"
        self.temp = tempfile.mkdtemp(prefix="r", dir="/tmp")  # short: Ray's socket paths
        self.env = dict(os.environ, RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=secrets.token_hex(16),
                        RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="0")  # every node on 127.0.0.1
        self.logs = root
        self.procs = {}
        self.procs["head"] = self._start(
            "head", [RAY, "start", "--head", "--port", str(self.port), "--node-ip-address",
                     "127.0.0.1", "--num-cpus", str(head_cpus), "--num-gpus", str(head_gpus),
                     "--include-dashboard", "false", "--disable-usage-stats", "--temp-dir",
                     self.temp, "--block"])
        self._wait_nodes(1)
        if worker:
            os.makedirs(hidden, exist_ok=True)
            self.procs["worker"] = self._start(
                "worker", ["unshare", "--mount", "sh", "-c",
                           f"mount -t tmpfs tmpfs '{hidden}' && exec '{sys.executable}' "
                           f"'{NODE}' {self.address} {worker_cpus} '{self.temp}'"])
            self._wait_nodes(2)

    def _start(self, name, cmd):
        log = open(os.path.join(self.logs, f"{name}.log"), "w")
        return subprocess.Popen(cmd, env=self.env, start_new_session=True, stdout=log,
                                stderr=subprocess.STDOUT)

    def _wait_nodes(self, n, tries=90):
        """Poll (a second apart, ``tries`` times) until the cluster has ``n`` live nodes."""
        code = ("import ray; ray.init(address='%s', log_to_driver=False); "
                "print(sum(x['Alive'] for x in ray.nodes()))" % self.address)
        for _ in range(tries):
            out = subprocess.run([sys.executable, "-c", code], env=self.env, capture_output=True,
                                 text=True)
            if out.returncode == 0 and out.stdout.strip().splitlines()[-1:] == [str(n)]:
                return
            time.sleep(1)
        raise RuntimeError(f"the cluster did not reach {n} nodes: {out.stderr[-2000:]}")

    def sweep(self, out, *args):
        """``sls-fast sweep --address`` this cluster, as a process (its stdout and stderr
        piped)."""
        cmd = [sys.executable, "-m", "sls_fast", "sweep", "--address", self.address,
               "--out", str(out), *args]
        return subprocess.Popen(cmd, env=self.env, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True, cwd=self.logs)

    def kill(self, name):
        """Kill a node: its process group and every descendant (Ray's workers start sessions of
        their own), by PID."""
        proc = self.procs.pop(name)
        try:
            family = psutil.Process(proc.pid).children(recursive=True)
        except psutil.NoSuchProcess:
            family = []
        with _quiet():
            os.killpg(proc.pid, signal.SIGKILL)
        for p in family:
            with _quiet():
                p.kill()
        proc.wait(timeout=30)
        psutil.wait_procs(family, timeout=30)

    def stop(self):
        for name in list(self.procs):
            self.kill(name)
        shutil.rmtree(self.temp, ignore_errors=True)


class _quiet:
    def __enter__(self):
        return self

    def __exit__(self, kind, exc, tb):
        return kind is not None and issubclass(kind, (ProcessLookupError, psutil.NoSuchProcess))
