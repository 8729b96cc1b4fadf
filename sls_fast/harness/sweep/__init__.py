"""Sweeps: which cells (``spec``), the Ray driver (``driver``) and the results database
(``results``). The names below are the sweep's public API."""
from sls_fast.harness.sweep.driver import Cell, SweepSpec, read_spec_file, run_cell, run_sweep, vtab_task_facts

__all__ = ["SweepSpec", "Cell", "run_sweep", "run_cell", "vtab_task_facts", "read_spec_file"]
