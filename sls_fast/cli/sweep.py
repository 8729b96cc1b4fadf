"""The ``sls-fast sweep`` subcommand: its options, running a sweep, and a finished sweep's table
(the work itself is :func:`sls_fast.harness.sweep.run_sweep`)."""
from __future__ import annotations

import argparse
import os

from sls_fast.cli.common import _emit, _positive_int, _say

SWEEP_EPILOG = """\
examples:
  sls-fast sweep --quick --data digits lfw --alphas 0.3 0.5 --out runs/sweep
  sls-fast sweep --models vit_base_patch16_224 --checkpoint vit_base_patch16_224=ViT-B_16.npz \\
                 --data 'vtab:/data/vtab-1k/*' --methods convpass repadapter --out runs/vtab
  sls-fast sweep --spec sweep.toml --address auto       # on a running Ray cluster
  sls-fast sweep --summary runs/vtab --csv runs/vtab.csv
"""


_SWEEP_OPTIONS = ("models", "data", "methods", "alphas", "repeats", "tsne_backend", "strategy",
                  "epochs", "prune_epochs", "image_size", "batch_size", "tsne_iter",
                  "score_points", "quick", "seed", "device", "checkpoints")
_SWEEP_RUN_OPTIONS = ("out", "address", "num_cpus", "gpus_per_cell", "cpus_per_cell",
                      "retry_failed", "max_retries")


def cmd_sweep(args) -> dict:
    """Run (or resume) a sweep, or print a finished one's table (--summary)."""
    if args.summary:
        return _sweep_summary(args)
    from sls_fast.harness.sweep.driver import SweepSpec, read_spec_file, run_sweep

    given = read_spec_file(args.spec) if args.spec else {}
    unknown = sorted(set(given) - set(_SWEEP_OPTIONS) - set(_SWEEP_RUN_OPTIONS))
    if unknown:
        raise ValueError(f"{args.spec}: unknown key(s) {unknown}; known: "
                         f"{sorted(_SWEEP_OPTIONS + _SWEEP_RUN_OPTIONS)}")
    for k in _SWEEP_OPTIONS + _SWEEP_RUN_OPTIONS:  # the command line overrides the file
        v = getattr(args, k, None)
        if v is not None and v is not False:
            given[k] = v
    if isinstance(given.get("checkpoints"), list):
        given["checkpoints"] = _pairs(given["checkpoints"])
    run_opts = {k: given.pop(k) for k in _SWEEP_RUN_OPTIONS if k in given}
    out = run_opts.pop("out", "sls_sweep")
    spec = SweepSpec.from_dict(given)
    summary = run_sweep(spec, out, progress=args.progress, log=lambda m: _say(args, m),
                        **run_opts)
    from sls_fast.harness.sweep.results import summary_table

    text = summary_table(summary["rows"]) + (
        f"\n\n{summary['cells']} cells: {summary['skipped']} skipped (finished before), "
        f"{summary['ok']} ok and {summary['failed']} failed in this run\nwritten: "
        + ", ".join(summary["files"].values()))
    _emit(args, summary, text)
    return summary


def _pairs(items) -> dict:
    out = {}
    for item in items:
        name, sep, path = str(item).partition("=")
        if not sep or not name or not path:
            raise ValueError(f"--checkpoint takes MODEL=FILE, got {item!r}")
        out[name] = path
    return out


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
    _emit(args, dict(rows=rows, **counts), summary_table(rows) +
          f"\n\n{len(rows)} cells: {counts['ok']} ok, {counts['failed']} failed"
          + (f"\nwritten: {args.csv}" if args.csv else ""))
    return dict(rows=rows, **counts)


def add_sweep_parser(sub, *, common) -> None:
    """Add the ``sweep`` subcommand to ``sub`` (``common`` adds the shared options)."""
    w = sub.add_parser("sweep", help="SLS over tasks x models x methods x alphas on Ray, "
                       "resumable, into a results database",
                       formatter_class=argparse.RawDescriptionHelpFormatter,
                       description="Every cell (data x model x method x alpha) is the 'run' job, "
                       "run as a Ray task: a local Ray instance starts and stops with the command "
                       "(or --address joins a cluster). One row per cell goes to "
                       "OUT/results.sqlite; each cell's files to OUT/cells/KEY/; shared stages "
                       "(adapted weights, features, t-SNE scores) are cached in OUT/cache/. "
                       "Rerunning the same command skips finished cells; Ctrl-C keeps them.",
                       epilog=SWEEP_EPILOG)
    w.add_argument("--spec", default=None, metavar="FILE", help="a TOML file with the same keys "
                   "(models = [...], alphas = [...], quick = true, ...); flags override it")
    w.add_argument("--summary", default=None, metavar="DIR",
                   help="print the table of a sweep's results (with --json: its rows) and exit")
    w.add_argument("--csv", default=None, metavar="FILE", help="with --summary: export the rows")
    w.add_argument("--out", default=None, help="the sweep's folder (default sls_sweep)")
    w.add_argument("--models", nargs="+", default=None, metavar="M",
                   help="timm names or hf:FOLDER (default efficientnet_lite0)")
    w.add_argument("--data", nargs="+", default=None, metavar="SPEC", help="digits | lfw | "
                   "vtab:PATH | vtab:DIR/* (every task folder) | folder:PATH (default digits)")
    w.add_argument("--methods", nargs="+", default=None, choices=("convpass", "repadapter", "lora"),
                   help="PETL methods (default convpass)")
    w.add_argument("--alphas", nargs="+", type=float, default=None, metavar="A",
                   help="SLS thresholds (default 0.3)")
    w.add_argument("--checkpoint", dest="checkpoints", nargs="+", default=None,
                   metavar="MODEL=FILE", help="base weights of a model without bundled weights")
    w.add_argument("--quick", action="store_true", default=None,
                   help="the reduced setting of 'run --quick' for every cell")
    w.add_argument("--repeats", type=_positive_int, default=None, metavar="S")
    w.add_argument("--tsne-backend", default=None)
    w.add_argument("--tsne-iter", type=int, default=None)
    w.add_argument("--score-points", type=int, default=None, metavar="N",
                   help="score on the first N training images")
    w.add_argument("--strategy", default=None, choices=("FT", "CLR", "TFS"))
    w.add_argument("--epochs", type=int, default=None)
    w.add_argument("--prune-epochs", type=int, default=None)
    w.add_argument("--image-size", type=int, default=None)
    w.add_argument("--batch-size", type=int, default=None)
    g = w.add_argument_group("Ray")
    g.add_argument("--address", default=None, help="join a Ray cluster: auto | HOST:PORT "
                   "(default: a local instance that stops with the sweep)")
    g.add_argument("--num-cpus", type=int, default=None, help="CPUs of the local instance "
                   "(default all)")
    g.add_argument("--gpus-per-cell", type=float, default=None,
                   help="GPUs per cell (default 1 when there are GPUs; fractions share a GPU)")
    g.add_argument("--cpus-per-cell", type=float, default=None,
                   help="CPUs per cell (default 1 with GPUs, else 2); also its torch threads")
    g.add_argument("--max-retries", type=int, default=None,
                   help="retries of a cell whose worker process died (default 3)")
    g.add_argument("--retry-failed", action="store_true", default=None,
                   help="rerun the cells recorded as failed")
    common(w)
    w.set_defaults(func=cmd_sweep, seed=None)
