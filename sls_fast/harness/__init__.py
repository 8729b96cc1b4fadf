"""Running the method as jobs: the task pipeline (``pipeline``), its stage cache (``cache``) and
sweeps of tasks over Ray (``sweep``)."""
