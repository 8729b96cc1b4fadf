"""One call on a CUDA machine: every CUDA path against its reference, then timings, one table.

    python benchmarks/gpu_check.py [--quick] [--json OUT.json]

Sections live beside this file (``gpu_<topic>.py``, each with ``run(report, quick)``); this
script only drives them and prints the table. It needs no network. Budget: under 8 minutes on an
H100/H200 (``--quick`` shrinks every size for a smoke run).
"""
from __future__ import annotations

import argparse
import importlib
import json
import os
import platform
import sys
import time
import traceback

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

SECTIONS = ["gpu_metrics", "gpu_tsne", "gpu_extract", "gpu_prune", "gpu_pipeline"]


class Report:
    """Collects rows: (section, name, ok, max_err, ms, note)."""

    def __init__(self):
        self.rows = []

    def __call__(self, section, name, *, ok=None, max_err=None, ms=None, note=""):
        row = dict(section=section, name=name, ok=ok, max_err=max_err, ms=ms, note=note)
        self.rows.append(row)
        flag = {True: "PASS", False: "FAIL", None: "    "}[ok]
        err = "" if max_err is None else f"err={max_err:.2e}"
        t = "" if ms is None else f"{ms:10.3f} ms"
        print(f"[{flag}] {section:<10} {name:<52} {err:<13} {t:<14} {note}", flush=True)


def cuda_time_ms(fn, *, warmup=2, iters=5):
    """Median milliseconds of fn() with CUDA events (warm-up excluded)."""
    import torch

    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(iters):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end))
    times.sort()
    return times[len(times) // 2]


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="small sizes (smoke run)")
    ap.add_argument("--json", default=None, help="also write the rows as JSON here")
    ap.add_argument("--only", default=None, help="comma-separated section modules to run")
    args = ap.parse_args(argv)

    import torch

    if not torch.cuda.is_available():
        print("gpu_check: no CUDA device here; nothing to check", file=sys.stderr)
        return 2
    import triton

    props = torch.cuda.get_device_properties(0)
    print(f"device: {props.name}, {props.total_memory / 2**30:.0f} GiB, SMs {props.multi_processor_count}; "
          f"torch {torch.__version__}, triton {triton.__version__}, python {platform.python_version()}")
    report = Report()
    t0 = time.time()
    sections = args.only.split(",") if args.only else SECTIONS
    for name in sections:
        try:
            mod = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name == name:
                print(f"(section {name} not present)")
                continue
            raise
        try:
            mod.run(report, quick=args.quick)
        except Exception as exc:  # keep going: one broken section must not hide the others
            traceback.print_exc()
            report(name, "section crashed", ok=False, note=repr(exc)[:120])
        torch.cuda.empty_cache()
    total = time.time() - t0
    failed = [r for r in report.rows if r["ok"] is False]
    print(f"\n{len(report.rows)} rows, {len(failed)} failed, {total:.1f} s total on {props.name}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(dict(device=props.name, rows=report.rows, seconds=total), f, indent=1)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
