"""A sweep's results: the SQLite database (``DIR/results.sqlite``, table ``runs``, one row per
cell), its table for people, the per-criterion summary, its CSV export, and the plots
(``pareto.png``, ``depths.png``; ``criteria.png`` where cells carry the oracle).

Only the sweep's driver writes the database, one transaction per finished cell, so a row is
either complete or absent. The database runs in WAL mode: readers (``sls-fast sweep --summary``
while a sweep runs) never block the writer.
"""
from __future__ import annotations

import csv
import json
import os
import sqlite3
from typing import List, Optional

from sls_fast.common.schema import SCHEMA_VERSION
from sls_fast.common.utils import atomic_path, text_table

__all__ = ["ResultsDB", "COLUMNS", "summary_table", "criteria_summary", "write_csv",
           "plot_results"]

# name -> SQLite type; the order is the CSV's and the summary's
COLUMNS = {
    "key": "TEXT PRIMARY KEY", "task": "TEXT", "model": "TEXT", "dataset": "TEXT",
    "method": "TEXT", "alpha": "REAL", "criterion": "TEXT", "repeats": "INTEGER",
    "tsne_backend": "TEXT",
    "seed": "INTEGER", "status": "TEXT NOT NULL", "error": "TEXT", "num_layers": "INTEGER",
    "depth": "INTEGER", "confidence": "REAL", "acc_full": "REAL", "acc_pruned": "REAL",
    "img_s_full": "REAL", "img_s_pruned": "REAL", "speedup": "REAL", "speedup_status": "TEXT",
    "artifact_bytes": "INTEGER", "full_model_bytes": "INTEGER", "regret": "REAL",
    "regret_best": "REAL", "oracle": "TEXT", "wall_s": "REAL", "attempts": "INTEGER",
    "timings": "TEXT", "cache": "TEXT", "settings": "TEXT", "versions": "TEXT", "device": "TEXT",
    "host": "TEXT", "node": "TEXT",
    "cell_dir": "TEXT", "started": "TEXT", "finished": "TEXT",
}
_JSON_COLUMNS = ("timings", "cache", "settings", "versions", "oracle")
# columns added after a database may have been written: added to an older file when it opens
_ADDED_COLUMNS = ("speedup_status", "criterion", "regret", "regret_best", "oracle", "node")


class ResultsDB:
    """The ``runs`` table of a sweep in the SQLite file ``path`` (created on first use).

    Example:
        >>> import tempfile, os
        >>> db = ResultsDB(os.path.join(tempfile.mkdtemp(), "results.sqlite"))
        >>> db.write(dict(key="a", status="ok", depth=4, timings={"total": 1.0}))
        >>> db.rows()[0]["depth"], db.rows()[0]["timings"]
        (4, {'total': 1.0})
    """

    def __init__(self, path: str):
        self.path = os.fspath(path)
        folder = os.path.dirname(os.path.abspath(self.path))
        os.makedirs(folder, exist_ok=True)
        try:
            self._conn = sqlite3.connect(self.path, timeout=30)
            self._conn.execute("PRAGMA journal_mode=WAL")
            cols = ", ".join(f"{k} {t}" for k, t in COLUMNS.items())
            with self._conn:
                self._conn.execute(f"CREATE TABLE IF NOT EXISTS runs ({cols})")
                # the file's schema version (0: a database from before versions; same table)
                if self._conn.execute("PRAGMA user_version").fetchone()[0] == 0:
                    self._conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
            have = {r[1] for r in self._conn.execute("PRAGMA table_info(runs)")}
            with self._conn:
                for name in _ADDED_COLUMNS:
                    if name not in have:
                        self._conn.execute(f"ALTER TABLE runs ADD COLUMN {name} {COLUMNS[name]}")
                        have.add(name)
        except sqlite3.DatabaseError as exc:
            raise ValueError(f"{self.path} is not a readable sls-fast results database "
                             f"({exc})") from None
        missing = [k for k in COLUMNS if k not in have]
        if missing:
            raise ValueError(f"{self.path}: table 'runs' lacks the columns {missing} (written by "
                             "another version?); use a new --out folder")

    def close(self) -> None:
        self._conn.close()

    def write(self, row: dict) -> None:
        """Insert or replace one row, in one transaction. Unknown keys are a ValueError."""
        unknown = sorted(set(row) - set(COLUMNS))
        if unknown:
            raise ValueError(f"unknown result columns {unknown}")
        row = {k: (json.dumps(v, default=float) if k in _JSON_COLUMNS and v is not None else v)
               for k, v in row.items()}
        names = ", ".join(row)
        marks = ", ".join("?" for _ in row)
        with self._conn:  # one transaction: the row is complete or absent
            self._conn.execute(f"INSERT OR REPLACE INTO runs ({names}) VALUES ({marks})",
                               list(row.values()))

    def rows(self, status: Optional[str] = None) -> List[dict]:
        """Every row (or those with ``status``) as dicts, JSON columns decoded, in key order."""
        cur = self._conn.execute(
            "SELECT * FROM runs" + (" WHERE status = ?" if status else "") + " ORDER BY key",
            (status,) if status else ())
        names = [d[0] for d in cur.description]
        out = []
        for values in cur.fetchall():
            row = dict(zip(names, values))
            for k in _JSON_COLUMNS:
                if row.get(k):
                    row[k] = json.loads(row[k])
            out.append(row)
        return out

    def keys(self, status: Optional[str] = None) -> set:
        return {r["key"] for r in self.rows(status)}


def _fmt(v, spec):
    return "-" if v is None else format(v, spec)


def summary_table(rows: List[dict]) -> str:
    """The rows as a table for people: one line per cell."""
    if not rows:
        return "(no finished cells)"
    by = any(_criterion(r) != "sls" for r in rows)  # a criterion column where they differ
    lines = []
    for r in rows:
        ok = r["status"] == "ok"
        lines.append((
            r.get("task") or r.get("dataset") or "?", r.get("model") or "?", r.get("method") or "?",
            _fmt(r.get("alpha"), "g")) + ((_criterion(r),) if by else ()) + (r["status"],
            f"{r['depth']}/{r['num_layers']}" if ok else "-",
            _fmt(r.get("confidence"), ".0%") if ok else "-",
            f"{r['acc_full']:.3f} -> {r['acc_pruned']:.3f}" if ok else "-",
            f"{r['img_s_full']:.0f} -> {r['img_s_pruned']:.0f} ({_speedup(r)})" if ok else "-",
            _fmt(r.get("wall_s"), ".0f"),
            "" if ok else (r.get("error") or "")[:60]))
    return text_table(lines, ("task", "model", "method", "alpha") + (("criterion",) if by else ())
                      + ("status", "K/L", "conf", "accuracy full -> pruned",
                         "images/s full -> pruned", "wall s", "error"))


def _criterion(row: dict) -> str:
    return row.get("criterion") or "sls"  # a row from before criteria: SLS's


def criteria_summary(rows: List[dict]) -> str:
    """Per criterion, over the ``ok`` rows: how many cells, the mean share of layers kept, the
    mean test accuracy of the pruned model, the mean regret against the oracle's full model
    and against the best depth <= K (rows run with the oracle), and the mean speed-up (rows
    with a speed-up; a cut that kept every block counts 1.0). Empty when every row is SLS's."""
    import numpy as np

    rows = [r for r in rows if r["status"] == "ok"]
    names = list(dict.fromkeys(_criterion(r) for r in rows))
    if names in ([], ["sls"]):
        return ""

    def mean(values, spec):
        values = [v for v in values if v is not None]
        return format(float(np.mean(values)), spec) if values else "-"

    lines = []
    for name in names:
        mine = [r for r in rows if _criterion(r) == name]
        lines.append((name, str(len(mine)), mean([r["depth"] / r["num_layers"] for r in mine],
                                                 ".2f"),
                      mean([r["depth"] for r in mine], ".1f"),
                      mean([r["acc_pruned"] for r in mine], ".3f"),
                      mean([r.get("regret") for r in mine], "+.3f"),
                      mean([r.get("regret_best") for r in mine], "+.3f"),
                      mean([1.0 if r.get("speedup_status") == "not pruned" else r.get("speedup")
                            for r in mine], ".2f")))
    kinds = {str(r["oracle"]["kind"]) for r in rows if r.get("oracle")}
    note = ("regret: accuracy lost against the full model (positive: lost), on the oracle "
            f"({', '.join(sorted(kinds))}) of each cell" if kinds else
            "regret: run the sweep with --oracle to measure it")
    return text_table(lines, ("criterion", "cells", "K/L", "mean K", "pruned acc.", "regret",
                              "vs best <= K", "speed-up")) + "\n" + note


def _speedup(row: dict) -> str:
    """The row's speed-up as the table shows it: the ratio, flagged when noisy, or why none."""
    status = row.get("speedup_status")
    timing = (row.get("settings") or {}).get("timing")
    named = f", {timing} timing" if timing and timing != "default" else ""
    if row.get("speedup") is None:
        return (status or "-") + named
    return f"{row['speedup']:.2f}x" + (" noisy" if status == "noisy" else "") + named


def write_csv(rows: List[dict], path: str) -> None:
    """Every column of ``rows`` to a CSV file (JSON columns as JSON text), atomically."""
    with atomic_path(path) as tmp:
        with open(tmp, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=list(COLUMNS))
            w.writeheader()
            for r in rows:
                w.writerow({k: (json.dumps(r[k]) if k in _JSON_COLUMNS and r.get(k) is not None
                                else r.get(k)) for k in COLUMNS})


def plot_results(rows: List[dict], directory: str) -> List[str]:
    """``pareto.png`` (test accuracy vs images/s, full and pruned, one colour per task) and
    ``depths.png`` (K / L per task x setting) from the ``ok`` rows; returns the paths written."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    rows = [r for r in rows if r["status"] == "ok"]
    if not rows:
        return []
    written = []
    tasks = sorted({r["task"] for r in rows})
    several = len({_criterion(r) for r in rows}) > 1  # then every label names its criterion
    settings = sorted({_setting(r, several) for r in rows})
    colours = plt.get_cmap("tab20" if len(tasks) > 10 else "tab10")
    shapes = "osD^vP*Xh<>"

    fig, ax = plt.subplots(figsize=(8.5, 5.5))
    for r in rows:
        c = colours(tasks.index(r["task"]) % colours.N)
        m = shapes[settings.index(_setting(r, several)) % len(shapes)]
        ax.annotate("", xy=(r["img_s_pruned"], r["acc_pruned"]),
                    xytext=(r["img_s_full"], r["acc_full"]),
                    arrowprops=dict(arrowstyle="->", color=c, alpha=0.6, lw=1))
        ax.scatter(r["img_s_full"], r["acc_full"], marker=m, s=60, facecolors="none",
                   edgecolors=[c], linewidths=1.5)
        trusted = r.get("speedup_status") in (None, "ok")  # noisy or not a result: hollow
        ax.scatter(r["img_s_pruned"], r["acc_pruned"], marker=m, s=60,
                   facecolors=[c] if trusted else "none", edgecolors=[c],
                   linewidths=1.5, linestyle="-" if trusted else ":")
    from matplotlib.lines import Line2D

    handles = [Line2D([], [], ls="", marker="s", color=colours(i % colours.N), label=t)
               for i, t in enumerate(tasks)]
    handles += [Line2D([], [], ls="", marker=shapes[i % len(shapes)], color="0.3", label=s)
                for i, s in enumerate(settings)]
    handles += [Line2D([], [], ls="", marker="o", mfc="none", mec="0.3", label="full model"),
                Line2D([], [], ls="", marker="o", color="0.3", label="pruned"),
                Line2D([], [], ls="", marker="o", mfc="none", mec="0.3", mew=1.5,
                       label="pruned, timing noisy or not a result (dotted)")]
    ax.legend(handles=handles, fontsize=8, loc="center left", bbox_to_anchor=(1.01, 0.5),
              frameon=False)
    ax.set_xscale("log")
    ax.set_xlabel("throughput (images/s, log scale)")
    ax.set_ylabel("test accuracy")
    ax.set_title("SLS: accuracy vs throughput, full (hollow) -> pruned (filled)")
    ax.grid(alpha=0.3, which="both")
    fig.tight_layout()
    written.append(_save(fig, os.path.join(directory, "pareto.png")))
    plt.close(fig)

    grid = np.full((len(tasks), len(settings)), np.nan)
    text = {}
    for r in rows:
        i, j = tasks.index(r["task"]), settings.index(_setting(r, several))
        grid[i, j] = r["depth"] / r["num_layers"]
        text[i, j] = f"{r['depth']}/{r['num_layers']}"
    fig, ax = plt.subplots(figsize=(max(4.5, 1.4 * len(settings) + 2.5),
                                    max(2.5, 0.45 * len(tasks) + 1.5)))
    im = ax.imshow(grid, cmap="viridis", vmin=0, vmax=1, aspect="auto")
    for (i, j), t in text.items():
        ax.text(j, i, t, ha="center", va="center", fontsize=9,
                color="white" if grid[i, j] < 0.6 else "black")
    ax.set_xticks(range(len(settings)), settings, rotation=30, ha="right", fontsize=8)
    ax.set_yticks(range(len(tasks)), tasks, fontsize=8)
    ax.set_title("layers kept (K / L)" + ("" if several else " by SLS"))
    fig.colorbar(im, ax=ax, label="K / L")
    fig.tight_layout()
    written.append(_save(fig, os.path.join(directory, "depths.png")))
    plt.close(fig)
    with_oracle = [r for r in rows if r.get("oracle")]
    if with_oracle:
        written.append(_plot_criteria(with_oracle, os.path.join(directory, "criteria.png")))
    return written


def _plot_criteria(rows: List[dict], path: str) -> str:
    """``criteria.png``: per task (and model, method, alpha) the oracle's accuracy against depth
    with the depth each criterion chose marked on it."""
    import matplotlib.pyplot as plt

    groups: dict = {}
    for r in rows:
        groups.setdefault((r["task"], r["model"], r["method"], r["alpha"]), []).append(r)
    names = list(dict.fromkeys(_criterion(r) for r in rows))
    markers = "os^vD<>ph*"
    colours = plt.get_cmap("tab10")
    cols = min(3, len(groups))
    nrows = -(-len(groups) // cols)
    fig, axes = plt.subplots(nrows, cols, figsize=(5.2 * cols, 3.8 * nrows), squeeze=False)
    for ax in axes.flat[len(groups):]:
        ax.set_visible(False)
    for ax, ((task, model, method, alpha), group) in zip(axes.flat, groups.items()):
        oracle = group[0]["oracle"]
        ks = sorted(int(k) for k in oracle["accuracy"])
        acc = [oracle["accuracy"][str(k)] for k in ks]
        ax.plot(ks, acc, "-", color="0.4", lw=1.2, zorder=1)
        ax.axhline(oracle.get("full_accuracy", acc[-1]), color="0.4", ls="--", lw=0.8)
        seen: dict = {}
        for r in sorted(group, key=lambda r: names.index(_criterion(r))):
            k = int(r["depth"])
            lift = 0.04 * seen.get(k, 0) * ((max(acc) - min(acc)) or 1)  # stacked, not hidden
            seen[k] = seen.get(k, 0) + 1
            i = names.index(_criterion(r))
            ax.plot([k], [acc[k - 1] + lift], markers[i % len(markers)], ms=8,
                    color=colours(i % 10), zorder=2)
        ax.set_title(f"{task}: {model} {method} a={alpha:g}", fontsize=9)
        ax.set_xlabel("depth K (blocks kept)", fontsize=8)
        ax.set_ylabel(f"accuracy ({oracle['kind']} oracle, {oracle.get('split', 'val')})",
                      fontsize=8)
        ax.grid(alpha=0.3)
    from matplotlib.lines import Line2D

    handles = [Line2D([], [], ls="", marker=markers[i % len(markers)], ms=8,
                      color=colours(i % 10), label=n) for i, n in enumerate(names)]
    handles += [Line2D([], [], color="0.4", label="accuracy at every depth (the oracle)"),
                Line2D([], [], color="0.4", ls="--", lw=0.8, label="the full model")]
    fig.legend(handles=handles, loc="lower center", ncol=min(5, len(handles)), fontsize=8,
               frameon=False)
    fig.suptitle("the depth each criterion chose, on the accuracy-vs-depth oracle", fontsize=10)
    fig.tight_layout(rect=(0, 0.06 + 0.04 * (len(handles) > 5), 1, 1))
    _save(fig, path)
    plt.close(fig)
    return path


def _setting(r: dict, criterion: bool = False) -> str:
    by = f" {_criterion(r)}" if criterion or _criterion(r) != "sls" else ""
    return f"{r['model']} {r['method']} a={r['alpha']:g}{by}"


def _save(fig, path: str) -> str:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=120, format="png")
    return path

