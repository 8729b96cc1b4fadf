"""The ``sls-fast sweep`` subcommand: its options, running a sweep, and a finished sweep's table
(the work itself is :func:`sls_fast.harness.sweep.run_sweep`)."""
from __future__ import annotations

import argparse
import dataclasses
import os

from sls_fast.cli.common import _emit, _say
from sls_fast.cli.options import add_sweep_options, add_task_options

SWEEP_EPILOG = """\
examples:
  sls-fast sweep --quick --data digits lfw --alphas 0.3 0.5 --out runs/sweep
  sls-fast sweep --quick --data digits lfw --criteria all --out runs/criteria
  sls-fast sweep --models vit_base_patch16_224 --checkpoint vit_base_patch16_224=ViT-B_16.npz \\
                 --data 'vtab:/data/vtab-1k/*' --methods convpass repadapter --out runs/vtab
  sls-fast sweep --spec sweep.toml --address auto       # on a running Ray cluster
  sls-fast sweep --summary runs/vtab --csv runs/vtab.csv
"""


def cmd_sweep(args) -> dict:
    """Run (or resume) a sweep, or print a finished one's table (--summary)."""
    if args.summary:
        return _sweep_summary(args)
    from sls_fast.cli.options import sweep_from_args
    from sls_fast.harness.sweep.driver import run_sweep
    from sls_fast.harness.sweep.results import summary_table

    spec, options = sweep_from_args(args)
    where = dataclasses.asdict(options)  # SweepOptions' fields are run_sweep's arguments
    summary = run_sweep(spec, where.pop("out"), **where, progress=args.progress,
                        log=lambda m: _say(args, m))
    text = summary_table(summary["rows"]) + _by_criterion(summary["rows"]) + (
        f"\n\n{summary['cells']} cells: {summary['skipped']} skipped (finished before), "
        f"{summary['ok']} ok and {summary['failed']} failed in this run\nwritten: "
        + ", ".join(summary["files"].values()))
    _emit(args, summary, text)
    return summary


def _sweep_summary(args) -> dict:
    from sls_fast.harness.sweep.results import ResultsDB, summary_table, write_csv

    path = os.path.join(args.summary, "results.sqlite")
    if not os.path.isfile(path):
        raise ValueError(f"{path} not found; run 'sls-fast sweep --out {args.summary}' first")
    db = ResultsDB(path)
    rows = db.rows()
    db.close()
    if args.csv:
        write_csv(rows, args.csv)
    counts = {s: sum(r["status"] == s for r in rows) for s in ("ok", "failed")}
    _emit(args, dict(rows=rows, **counts), summary_table(rows) + _by_criterion(rows) +
          f"\n\n{len(rows)} cells: {counts['ok']} ok, {counts['failed']} failed"
          + (f"\nwritten: {args.csv}" if args.csv else ""))
    return dict(rows=rows, **counts)


def _by_criterion(rows) -> str:
    """The per-criterion means, as a second table, when the rows hold more than SLS's."""
    from sls_fast.harness.sweep.results import criteria_summary

    text = criteria_summary(rows)
    return "\n\nper criterion (means over the tasks):\n" + text if text else ""


def add_sweep_parser(sub, *, common) -> None:
    """Add the ``sweep`` subcommand to ``sub`` (``common`` adds the shared options)."""
    w = sub.add_parser("sweep", help="SLS over tasks x models x methods x alphas x criteria "
                       "on Ray, resumable, into a results database",
                       formatter_class=argparse.RawDescriptionHelpFormatter,
                       description="Every cell (data x model x method x alpha x criterion) is "
                       "the 'run' job, run as a Ray task: a local Ray instance starts and stops "
                       "with the command (or --address joins a cluster). One row per cell goes "
                       "to OUT/results.sqlite; each cell's files to OUT/cells/KEY/, written by "
                       "this process (cells return them through Ray: no shared disk needed); "
                       "shared stages (adapted weights, features, t-SNE scores) are cached in "
                       "OUT/cache/ (or --cache-dir). "
                       "Rerunning the same command skips finished cells; Ctrl-C keeps them.",
                       epilog=SWEEP_EPILOG)
    w.add_argument("--spec", default=None, metavar="FILE", help="a TOML file with the same keys "
                   "(models = [...], alphas = [...], quick = true, ...); flags override it")
    w.add_argument("--summary", default=None, metavar="DIR",
                   help="print the table of a sweep's results (with --json: its rows) and exit")
    w.add_argument("--csv", default=None, metavar="FILE", help="with --summary: export the rows")
    w.add_argument("--quick", action="store_const", const=True, default=argparse.SUPPRESS,
                   help="the reduced setting of 'run --quick' for every cell (options given "
                   "explicitly override it)")
    w.add_argument("--checkpoint", dest="checkpoints", nargs="+", default=argparse.SUPPRESS,
                   metavar="MODEL=FILE", help="base weights of a model without bundled weights")
    add_task_options(w, sweep=True)
    add_sweep_options(w)
    common(w, settings=False)
    w.set_defaults(func=cmd_sweep)
