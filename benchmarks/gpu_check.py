"""One call on a CUDA machine: every CUDA path against its reference, then timings, one table.

    python benchmarks/gpu_check.py [--quick | --dry-run] [--json OUT.json] [--only SECTIONS]

Sections live beside this file (``gpu_<topic>.py``, each with ``run(report, mode)``); this
script only drives them and prints the table. It needs no network. Budget: under 8 minutes on an
H100/H200 (``--quick`` shrinks every size for a smoke run).

``--dry-run`` runs every section end to end on the CPU at tiny sizes, Triton kernels under
Triton's interpreter, so that a Python error cannot cost a lent GPU's minutes; its timings mean
nothing. ``tests/integration/test_gpu_check.py`` runs it in CI. One failing section is reported as a FAIL
row and the others still run.
"""
from __future__ import annotations

import argparse
import glob
import importlib
import json
import os
import platform
import sys
import time
import traceback

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from utils import cpu_name  # noqa: E402  (beside this file: the benchmarks' shared helpers)

# every gpu_<topic>.py beside this file is a section (found, not listed: none can be left out)
SECTIONS = sorted(os.path.splitext(os.path.basename(p))[0]
                  for p in glob.glob(os.path.join(HERE, "gpu_*.py"))
                  if os.path.basename(p) != "gpu_check.py")


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


class Mode:
    """What a section runs at: ``device`` ("cuda", or "cpu" in a dry run) and the size level
    (``quick`` for a smoke run, ``dry`` for the tiny CPU sizes of ``--dry-run``)."""

    def __init__(self, *, quick=False, dry=False):
        self.dry = dry
        self.quick = quick or dry
        self.device = "cpu" if dry else "cuda"

    def pick(self, full, quick, dry):
        """The size for this level."""
        return dry if self.dry else (quick if self.quick else full)

    def __repr__(self):
        return f"Mode(device={self.device!r}, quick={self.quick}, dry={self.dry})"


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="small sizes (smoke run)")
    ap.add_argument("--dry-run", action="store_true",
                    help="no GPU: every section on the CPU at tiny sizes, Triton interpreted")
    ap.add_argument("--json", default=None, help="also write the rows as JSON here")
    ap.add_argument("--only", default=None, help="comma-separated section modules to run")
    args = ap.parse_args(argv)
    if args.dry_run:  # before triton is imported anywhere
        os.environ["TRITON_INTERPRET"] = "1"

    import torch

    mode = Mode(quick=args.quick, dry=args.dry_run)
    if not args.dry_run and not torch.cuda.is_available():
        print("gpu_check: no CUDA device here; nothing to check (--dry-run runs the script on "
              "the CPU)", file=sys.stderr)
        return 2
    import triton

    if args.dry_run:
        device_name = f"CPU dry run ({cpu_name()})"
        print(f"device: {device_name}; Triton interpreted; timings mean nothing")
    else:
        props = torch.cuda.get_device_properties(0)
        device_name = props.name
        print(f"device: {props.name}, {props.total_memory / 2**30:.0f} GiB, SMs "
              f"{props.multi_processor_count}, cc {props.major}.{props.minor}")
    print(f"torch {torch.__version__}, triton {triton.__version__}, "
          f"python {platform.python_version()}")
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
        t_sec = time.time()
        try:
            mod.run(report, mode)
        except Exception as exc:  # keep going: one broken section must not hide the others
            traceback.print_exc()
            report(name, "section crashed", ok=False, note=repr(exc)[:120])
        report(name, "section wall time", ms=(time.time() - t_sec) * 1e3)
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    total = time.time() - t0
    failed = [r for r in report.rows if r["ok"] is False]
    print(f"\n{len(report.rows)} rows, {len(failed)} failed, {total:.1f} s total on {device_name}")
    for r in failed:
        print(f"FAILED: {r['section']}: {r['name']} {r['note']}")
    if args.json:
        tmp = args.json + ".tmp"
        with open(tmp, "w") as f:
            json.dump(dict(device=device_name, dry_run=args.dry_run, quick=mode.quick,
                           torch=torch.__version__, triton=triton.__version__,
                           rows=report.rows, seconds=total), f, indent=1)
        os.replace(tmp, args.json)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
