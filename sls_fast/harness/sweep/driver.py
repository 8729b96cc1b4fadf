"""``sls-fast sweep``: SLS over tasks x models x methods x alphas x criteria, each cell a Ray
task, with a results database, resumable.

Every cell is :func:`sls_fast.harness.pipeline.run_task` on one setting. The driver (this process) starts
a local Ray instance (or joins a cluster with ``address``), submits the cells it has not finished
before, and writes one row per finished cell into ``DIR/results.sqlite`` in one transaction. A
cell runs in a node-local folder and returns its files through Ray; the driver writes them under
``DIR/cells/<key>.tmp-<pid>/`` and renames that to ``DIR/cells/<key>/``: no node needs the
driver's disk. Stages shared between cells (the adapted weights, the features, the t-SNE scores,
the retrained pruned model) are cached (:mod:`sls_fast.harness.cache`) under ``DIR/cache/`` on the
driver's node, a node-local folder elsewhere, or ``cache_dir``, so cells that differ only in
alpha or the criterion reuse everything up to the depth.

Fault tolerance: Ray retries a cell whose worker process or node died (``max_retries``; the
driver's :class:`AttemptLedger` counts the attempts); a cell that raises
is recorded as ``failed`` with its error and the others go on; Ctrl-C records the cells that
have finished, stops Ray (and with it the running cells) and removes what they left, within
seconds; rerunning the same command skips finished cells (``retry_failed`` reruns the failed
ones).

Example:
    >>> from sls_fast.harness.sweep import SweepSpec, run_sweep
    >>> spec = SweepSpec(data=["digits", "lfw"], alphas=[0.3, 0.5], quick=True)
    >>> [c.key for c in spec.cells()][:1]                     # doctest: +SKIP
    ['digits-efficientnet_lite0-convpass-a0.3-5c0e2d41b7']
    >>> summary = run_sweep(spec, "runs/sweep")                # doctest: +SKIP
"""
from __future__ import annotations

import contextlib
import glob
import hashlib
import os
import shutil
import socket
import tempfile
import time
import traceback
import warnings
from datetime import datetime, timezone
from typing import Any, Callable, Dict, List, Optional

from sls_fast.common.signals import sigint_held
from sls_fast.harness.preflight import check_device, check_out, check_weights
from sls_fast.harness.settings import SweepOptions, TaskSettings, default_of
from sls_fast.harness.sweep.spec import (Cell, SweepSpec, SweepSpecBase, adapt_group,
                                        read_spec_file, vtab_task_facts)

__all__ = ["SweepSpec", "Cell", "run_sweep", "run_cell", "vtab_task_facts", "read_spec_file"]

STOPPED_WORKER_WAIT_S = 10.0  # how long the driver waits for stopped workers to end

# --------------------------------------------------------------------------- one cell (a worker)
def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _first_line(exc: BaseException) -> str:
    return f"{type(exc).__name__}: " + " ".join((str(exc).strip() or "").split())


def cell_workdir_root(out: str) -> str:
    """This node's folder for the cells of the sweep in ``out`` that run here: each attempt
    works in ``<root>/<key>.<pid>/`` and its files travel back to the driver through Ray."""
    sweep_id = hashlib.sha256(os.path.abspath(out).encode()).hexdigest()[:12]
    return os.path.join(tempfile.gettempdir(), "sls-fast-cells", sweep_id)


def node_cache_dir(out: str) -> str:
    """The stage cache of the sweep in ``out`` on a node other than the driver's (a node-local
    folder: the driver's ``out`` may not be mounted there)."""
    return os.path.join(os.path.dirname(cell_workdir_root(out)), "cache",
                        os.path.basename(cell_workdir_root(out)))


def _this_node() -> Optional[str]:
    """The Ray node this process runs on (None outside Ray)."""
    try:
        import ray

        return ray.get_runtime_context().get_node_id() if ray.is_initialized() else None
    except Exception:  # noqa: BLE001 - no Ray: not on a node
        return None


def run_cell(settings: dict, key: str, task: str, out: str, threads: Optional[int] = None, *,
             cache_dir: Optional[str] = None, home_node: Optional[str] = None,
             ledger: Any = None) -> dict:
    """Run one cell in this process; return ``dict(row=..., files=...)``: its database row
    (status ``ok`` or ``failed``) and its files as ``{relative path: bytes}`` (report.json,
    layers.json, the plots, the pruned artifact, log.txt), for the driver to write.

    The cell works in a node-local folder (:func:`cell_workdir_root`), removed when it returns:
    nothing is written under ``out`` by a cell, so its node need not see the driver's disk.
    The stage cache is ``cache_dir`` when given (a path every node can reach), else
    ``out/cache`` on the driver's node (``home_node``) and a node-local folder elsewhere
    (:func:`node_cache_dir`). ``ledger`` (the driver's attempt ledger, a Ray actor) is told
    when an attempt starts, so attempts whose worker or node died are counted."""
    import torch

    from sls_fast.harness.cache import StageCache
    from sls_fast.harness.pipeline import run_task

    pid, started, t0 = os.getpid(), _now(), time.perf_counter()
    node = _this_node()
    if ledger is not None:
        import ray

        ray.get(ledger.start.remote(key))
    root = cell_workdir_root(out)
    _remove_dead_attempts(root)
    tmp = os.path.join(root, f"{key}.{pid}")
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(tmp)
    if cache_dir is None:
        cache_dir = os.path.join(out, "cache") if node is None or node == home_node \
            else node_cache_dir(out)
    s = TaskSettings.from_dict(settings)
    row = dict(key=key, task=task, model=s.model, dataset=s.data, method=s.method,
               alpha=s.alpha, criterion=s.criterion, repeats=s.repeats,
               tsne_backend=s.tsne_backend, seed=s.seed, settings=settings,
               host=socket.gethostname(), node=node, started=started)
    if threads:
        torch.set_num_threads(int(threads))
    try:
        with open(os.path.join(tmp, "log.txt"), "w") as log, \
                warnings.catch_warnings(record=True) as ws:
            warnings.simplefilter("always")
            try:
                result = run_task(s, tmp, progress=False, cache=StageCache(cache_dir),
                                  log=lambda m: print(m, file=log, flush=True)).to_dict()
                row.update(_row_of(result, s.criterion))
            except Exception as exc:  # noqa: BLE001 - recorded as a failed cell; the sweep goes on
                row.update(status="failed", error=_first_line(exc))
                traceback.print_exc(file=log)
            for w in ws:
                print(f"warning: {w.message}", file=log)
        row.update(finished=_now(), wall_s=time.perf_counter() - t0)
        files = {}
        for folder, _, names in os.walk(tmp):
            for name in names:
                path = os.path.join(folder, name)
                with open(path, "rb") as f:
                    files[os.path.relpath(path, tmp)] = f.read()
        return dict(row=row, files=files)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _row_of(result: dict, criterion: str) -> dict:
    """The database columns of a finished run's report."""
    row = dict(status="ok", num_layers=result["num_layers"], depth=result["depth"],
               confidence=result["confidence"],
               acc_full=result["accuracy"]["full"], acc_pruned=result["accuracy"]["pruned"],
               img_s_full=result["throughput"]["full"],
               img_s_pruned=result["throughput"]["pruned"],
               speedup=result["throughput"]["speedup"],
               speedup_status=result["throughput"]["status"],
               artifact_bytes=result["storage"]["artifact_bytes"],
               full_model_bytes=result["storage"]["full_model_bytes"],
               timings=result["timings"], cache=result["cache"],
               versions=result["versions"], device=result["device"])
    oracle = result.get("oracle")
    if oracle is not None:  # the deciding criterion's regret, and the curve to plot
        mine = oracle["criteria"][criterion]
        row.update(regret=mine["regret_full"], regret_best=mine["regret_best"], oracle=oracle)
    return row


def _remove_dead_attempts(root: str, *, wait: float = 0.0) -> None:
    """Delete this node's attempt folders whose process is gone (a killed worker's: an
    interrupted sweep's, or one whose worker died), and the folder when it is left empty.

    ``wait``: seconds to wait for attempt processes that are still alive to end (the driver
    after stopping Ray: a worker can outlive the shutdown by a moment, seen once in the
    Ctrl-C test); one still alive after that keeps its folder, which the next attempt on this
    node removes."""
    deadline = time.monotonic() + wait
    while True:
        alive = 0
        for path in glob.glob(os.path.join(root, "*.*")):
            try:
                pid = int(path.rsplit(".", 1)[1])
            except ValueError:
                continue
            if pid == os.getpid():
                continue
            if _alive(pid):
                alive += 1
            else:
                shutil.rmtree(path, ignore_errors=True)
        if not alive or time.monotonic() >= deadline:
            break
        time.sleep(0.1)
    with contextlib.suppress(OSError):
        os.rmdir(root)  # only when empty


def _alive(pid: int) -> bool:
    """Whether process ``pid`` runs (a zombie, dead but not yet reaped, does not)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:  # ended between the signal and the read
        return False
    except (OSError, IndexError):
        return True


def _write_cell(out: str, key: str, files: Dict[str, bytes]) -> str:
    """The driver writes a cell's files: into ``out/cells/<key>.tmp-<pid>/``, renamed to
    ``out/cells/<key>/`` when complete. Returns the final folder."""
    tmp = os.path.join(out, "cells", f"{key}.tmp-{os.getpid()}")
    final = os.path.join(out, "cells", key)
    shutil.rmtree(tmp, ignore_errors=True)
    for rel, data in files.items():
        path = os.path.normpath(os.path.join(tmp, rel))
        if not path.startswith(tmp + os.sep):
            raise ValueError(f"cell {key}: a file outside its folder: {rel!r}")
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "wb") as f:
            f.write(data)
    os.makedirs(tmp, exist_ok=True)
    _replace_dir(tmp, final)
    return final


def _replace_dir(src: str, dst: str) -> None:
    """Move folder ``src`` to ``dst``, replacing an older ``dst`` (a retried cell's)."""
    if os.path.exists(dst):
        old = f"{dst}.old-{os.getpid()}"
        os.replace(dst, old)
        os.replace(src, dst)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(src, dst)


# --------------------------------------------------------------------------- the driver
def _remove_partial(out: str, key: Optional[str] = None) -> None:
    """Delete the driver's unfinished writes (of ``key``, or of every cell): temporary and
    replaced cell folders."""
    pattern = key or "*"
    for path in glob.glob(os.path.join(out, "cells", f"{pattern}.tmp-*")) + \
            glob.glob(os.path.join(out, "cells", f"{pattern}.old-*")):
        shutil.rmtree(path, ignore_errors=True)


class AttemptLedger:
    """The driver's count of each cell's attempts, kept in a Ray actor on the driver's node:
    an attempt tells it when it starts, wherever it runs, so an attempt whose worker process or
    whole node died is counted though it wrote nothing the driver can see."""

    def __init__(self) -> None:
        self.attempts: Dict[str, int] = {}
        self.live: set = set()  # the cells with an attempt that has started and not returned

    def start(self, key: str) -> None:
        self.attempts[key] = self.attempts.get(key, 0) + 1
        self.live.add(key)

    def finish(self, key: str) -> int:
        """The attempts of a cell whose result the driver has; it is no longer running."""
        self.live.discard(key)
        return self.attempts.get(key, 0)

    def running(self) -> int:
        return len(self.live)


def _start_ray(ray, address: Optional[str], num_cpus: Optional[int], say) -> None:
    """``ray.init`` with SIGINT held back: a Ctrl-C meanwhile is delivered when it returns, so
    the shutdown that follows meets a whole instance, never a half-built one (which crashed or
    left Ray's agents running, measured). Processes Ray starts inherit the block: a terminal's
    Ctrl-C reaches the driver alone, which stops them."""
    kwargs = dict(include_dashboard=False, log_to_driver=False, configure_logging=True,
                  logging_level="ERROR")
    with sigint_held():
        if address:
            say(f"joining the Ray cluster at {address}")
            ray.init(address=address, **kwargs)
        else:  # "local": always a new instance, never a cluster the user did not name
            ray.init(address="local", num_cpus=num_cpus or os.cpu_count(), **kwargs)


def _stop_ray(ray) -> None:
    """Disconnect; a local instance's processes (workers included) are stopped and waited for.
    Called unconditionally: ``ray.init`` interrupted half-way has started processes too."""
    try:
        ray.shutdown(wait_for_processes=True)
    except TypeError:  # Ray without that argument
        ray.shutdown()


def _remove_unrecorded(out: str, db, keys) -> None:
    """Delete the folders of ``keys`` that have no database row: a cell whose worker finished
    its folder while the sweep was interrupted, before the driver recorded it. The rerun
    recomputes it (from the stage cache); without this the folder would look finished."""
    for key in set(keys) - db.keys():
        shutil.rmtree(os.path.join(out, "cells", key), ignore_errors=True)


def run_sweep(spec: SweepSpecBase, out: str, *, address: Optional[str] = None,
              num_cpus: Optional[int] = None, gpus_per_cell: Optional[float] = None,
              cpus_per_cell: Optional[float] = None, retry_failed: bool = False,
              max_retries: int = default_of("max_retries", SweepOptions),
              cache_dir: Optional[str] = None, progress: bool = True,
              log: Optional[Callable[[str], None]] = None) -> dict:
    """Run every cell of ``spec`` not finished before, on Ray; write ``out/results.sqlite``,
    ``out/results.csv``, ``out/pareto.png`` and ``out/depths.png`` (and ``out/criteria.png``
    when the cells ran the oracle).

    Args:
        spec: the :class:`SweepSpec`.
        out: the sweep's folder (rerun with the same folder to resume).
        address: a Ray cluster to join (``"auto"`` or ``"HOST:PORT"``); None starts a local Ray
            instance (``num_cpus`` CPUs, default all) that stops with the sweep.
        gpus_per_cell: GPUs a cell requests (default 1 when the cluster has GPUs, fractions allowed).
        cpus_per_cell: CPUs a cell requests (default 1 with GPUs, else min(2, the largest
            node's)); also the cell's torch threads. A request no node can hold is refused.
        retry_failed: rerun the cells recorded as failed.
        max_retries: Ray's retries of a cell whose worker process or node died.
        cache_dir: the stage cache, a folder every node can reach (an NFS mount); default
            ``out/cache`` on the driver's node and a node-local folder on the others.
        progress: a progress bar over the cells; log: called with one line per event.

    Only the driver writes ``out``: a cell returns its row and files through Ray's object
    store, so the nodes need no shared disk. Cells of one adaptation group run on the node
    that holds their cache where it has room.

    Returns:
        ``dict(cells, skipped, ran, ok, failed, rows, files)``.

    Raises:
        KeyboardInterrupt: on Ctrl-C, after Ray was stopped (finished rows stay, unfinished
            cells leave nothing behind).
    """
    from sls_fast.common.utils import progress_bar
    from sls_fast.harness.sweep.results import ResultsDB, plot_results, write_csv

    say = log or (lambda msg: None)
    out = check_out(out)  # preflight: before Ray starts (sls_fast.harness.preflight)
    cells = spec.cells()
    for model, checkpoint in sorted({(c.settings.model, c.settings.checkpoint) for c in cells},
                                    key=str):
        check_weights(model, checkpoint)
    for device in {c.settings.device for c in cells if c.settings.device}:
        check_device(device)
    os.makedirs(os.path.join(out, "cells"), exist_ok=True)
    db = ResultsDB(os.path.join(out, "results.sqlite"))
    ok_keys, failed_keys = db.keys("ok"), db.keys("failed")
    todo = [c for c in cells if c.key not in ok_keys and (retry_failed or c.key not in failed_keys)]
    skipped_ok = sum(c.key in ok_keys for c in cells)
    skipped_failed = sum(c.key in failed_keys for c in cells) if not retry_failed else 0
    say(f"sweep: {len(cells)} cells; {skipped_ok} finished before (skipped), "
        + (f"{skipped_failed} failed before (skipped; --retry-failed reruns them), "
           if skipped_failed else "") + f"{len(todo)} to run")
    _remove_partial(out)
    ran = dict(ok=0, failed=0)
    if todo:
        import ray

        try:  # an interrupt while Ray starts must stop what has started too
            _start_ray(ray, address, num_cpus, say)
            _drive(ray, todo, out, db, ran, gpus_per_cell, cpus_per_cell, max_retries,
                   progress_bar, progress, say,
                   cache_dir=os.path.abspath(cache_dir) if cache_dir else None)
        finally:
            _stop_ray(ray)
            _remove_partial(out)
            # this node's, of the workers just stopped
            _remove_dead_attempts(cell_workdir_root(out), wait=STOPPED_WORKER_WAIT_S)
            _remove_unrecorded(out, db, {c.key for c in todo})
    every_row = db.rows()
    keys = {c.key for c in cells}
    rows = [r for r in every_row if r["key"] in keys]
    files = dict(database=db.path, csv=os.path.join(out, "results.csv"))
    write_csv(every_row, files["csv"])
    for path in plot_results(rows, out):
        files[os.path.basename(path).split(".")[0]] = path
    db.close()
    return dict(cells=len(cells), skipped=skipped_ok + skipped_failed, ran=len(todo),
                ok=ran["ok"], failed=ran["failed"], rows=rows, files=files)


def cell_request(ray, todo, gpus_per_cell: Optional[float],
                 cpus_per_cell: Optional[float]) -> tuple:
    """``(cpus, gpus)`` a cell asks for: the given values, else 1 CPU and 1 GPU where the
    cluster has GPUs and the cells may use them, else 2 CPUs or the largest node's CPUs if it
    has fewer. ValueError, naming the request and the largest node, when no node can hold it
    (Ray would wait for it forever)."""
    nodes = [n.get("Resources", {}) for n in ray.nodes() if n.get("Alive")]
    largest_cpus = max((r.get("CPU", 0) for r in nodes), default=0)
    largest_gpus = max((r.get("GPU", 0) for r in nodes), default=0)
    devices = {c.settings.device for c in todo}
    use_gpu = largest_gpus > 0 and not devices <= {"cpu"}
    if gpus_per_cell and not use_gpu:
        raise ValueError(f"--gpus-per-cell {gpus_per_cell:g}: Ray sees no GPU" if not largest_gpus
                         else f"--gpus-per-cell {gpus_per_cell:g} with device 'cpu'")
    gpus = (gpus_per_cell if gpus_per_cell is not None else 1) if use_gpu else 0
    cpus = cpus_per_cell if cpus_per_cell is not None else (
        1 if use_gpu else min(2, max(1, largest_cpus)))
    if not any(r.get("CPU", 0) >= cpus and r.get("GPU", 0) >= gpus for r in nodes):
        best: Dict[str, float] = max(nodes, key=lambda r: (r.get("CPU", 0), r.get("GPU", 0)),
                                     default={})
        raise ValueError(f"a cell asks for {cpus:g} CPUs and {gpus:g} GPUs, but no Ray node has "
                         f"that: the largest has {best.get('CPU', 0):g} CPUs and "
                         f"{best.get('GPU', 0):g} GPUs ({len(nodes)} nodes); lower "
                         "--cpus-per-cell / --gpus-per-cell")
    return cpus, gpus


def _drive(ray, todo, out, db, ran, gpus_per_cell, cpus_per_cell, max_retries, progress_bar,
           progress, say, cache_dir=None):
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    num_cpus, num_gpus = cell_request(ray, todo, gpus_per_cell, cpus_per_cell)
    resources = ray.cluster_resources()
    nodes = sum(1 for n in ray.nodes() if n.get("Alive"))
    say(f"Ray: {nodes} node{'s' if nodes > 1 else ''}, {resources.get('CPU', 0):g} CPUs, "
        f"{resources.get('GPU', 0):g} GPUs; each cell asks for {num_cpus:g} CPUs"
        + (f" and {num_gpus:g} GPUs" if num_gpus else ""))
    home = ray.get_runtime_context().get_node_id()  # the driver's node: out/cache is here
    ledger = ray.remote(AttemptLedger).options(
        num_cpus=0, scheduling_strategy=NodeAffinitySchedulingStrategy(home, soft=False)).remote()
    task = ray.remote(run_cell)
    request = dict(num_cpus=num_cpus, num_gpus=num_gpus, max_retries=max_retries,
                   retry_exceptions=False)
    threads = max(1, int(num_cpus))
    # Cells that share the adaptation (they differ only in alpha or the scoring/retraining
    # settings) form a group: its first cell runs alone and fills the cache; the rest start when
    # it ends, on the node that holds that cache (softly: a lost node does not block them), and
    # read the adapted weights, features and scores back instead of computing them.
    groups: Dict[str, List[Cell]] = {}
    for c in todo:
        groups.setdefault(adapt_group(c.settings), []).append(c)
    waiting = {id(g[0]): g[1:] for g in groups.values()}

    def submit(c, node=None):
        where = {} if node is None else dict(
            scheduling_strategy=NodeAffinitySchedulingStrategy(node, soft=True))
        return task.options(**request, **where).remote(
            c.settings.to_dict(), c.key, c.task, out, threads, cache_dir=cache_dir,
            home_node=home, ledger=ledger)

    pending = {submit(g[0]): g[0] for g in groups.values()}
    bar = progress_bar(total=len(todo), enabled=progress, desc="cells", unit="cell")

    def record(ref) -> tuple:
        cell = pending.pop(ref)
        try:
            got = ray.get(ref)
            row = got["row"]
            row["cell_dir"] = _write_cell(out, cell.key, got["files"])
        except ray.exceptions.RayError as exc:  # the worker (or node) died more than max_retries
            row = dict(key=cell.key, task=cell.task, model=cell.settings.model,
                       dataset=cell.settings.data, method=cell.settings.method,
                       alpha=cell.settings.alpha, criterion=cell.settings.criterion,
                       settings=cell.settings.to_dict(),
                       status="failed", error=_first_line(exc).splitlines()[0][:500],
                       finished=_now())
        row["attempts"] = max(1, ray.get(ledger.finish.remote(cell.key)))
        db.write(row)
        ran[row["status"]] += 1
        say(f"cell {cell.key}: {row['status']}"
            + (f" (depth {row['depth']}/{row['num_layers']})" if row["status"] == "ok"
               else f": {row.get('error')}"))
        if bar is not None:
            bar.update(1)
        return cell, row.get("node")

    shown = None
    try:
        while pending:
            ready, _ = ray.wait(list(pending), num_returns=1, timeout=1.0)
            for ref in ready:
                cell, node = record(ref)
                for c in waiting.pop(id(cell), []):
                    pending[submit(c, node)] = c
            if bar is not None:
                running = ray.get(ledger.running.remote())
                state = dict(done=ran["ok"], running=running, failed=ran["failed"])
                if len(pending) > running:  # submitted, not started: no node has room yet
                    state["waiting for resources"] = len(pending) - running
                if state != shown:  # redraw only on a change: quiet in log files
                    bar.set_postfix(state)
                    shown = state
    except KeyboardInterrupt:
        _interrupt(ray, pending, record)
        left = len(pending) + sum(len(v) for v in waiting.values())
        say(f"interrupted: {left} unfinished cells stopped; "
            f"{ran['ok'] + ran['failed']} finished in this run are saved")
        raise
    finally:
        if bar is not None:
            bar.close()


def _interrupt(ray, pending: dict, record) -> None:
    """Ctrl-C: record the cells that have finished already (their results are in), and cancel
    nothing: the caller's ``ray.shutdown`` stops the rest with the instance (a local one's
    workers are killed; on a cluster the job ends with its driver, and Ray kills its workers).

    Measured against ``ray.cancel(force=True)`` and a plain ``ray.cancel`` with a bounded wait
    (benchmarks/bench_sweep_interrupt.py, RESULTS.md): a cancel races with a completion reply
    in flight inside Ray's core worker; a shutdown drops the replies with the connection."""
    try:
        if pending:
            ready, _ = ray.wait(list(pending), num_returns=len(pending), timeout=0)
            for ref in ready:
                record(ref)
    except KeyboardInterrupt:  # a second Ctrl-C: stop at once
        pass
