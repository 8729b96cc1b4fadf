"""The thread policy (sls_fast.common.threads): a core another process keeps busy is not used,
an explicit count wins, bad counts are refused."""
import os
import subprocess
import sys
import time

import pytest
import torch

from sls_fast.common.threads import (allowed_cores, apply_threads, busy_cores,
                                     choose_threads)

linux = pytest.mark.skipif(not os.path.exists("/proc/stat") or
                           not hasattr(os, "sched_setaffinity"), reason="reads /proc/stat")


@linux
def test_a_core_kept_busy_by_another_process_is_left_out():
    cpu = sorted(os.sched_getaffinity(0))[-1]
    hog = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        os.sched_setaffinity(hog.pid, {cpu})  # pinned: its core is busy the whole sample
        time.sleep(0.3)
        assert busy_cores(0.3) >= 1
        assert choose_threads(0.3) <= max(1, allowed_cores() - 1)
    finally:
        hog.kill()
        hog.wait()


def test_an_explicit_count_wins_and_bad_counts_are_refused():
    before = torch.get_num_threads()
    try:
        assert apply_threads(3) == 3 and torch.get_num_threads() == 3
        assert 1 <= apply_threads(None) <= allowed_cores()
        for bad in (0, -1, 1.5, True):
            with pytest.raises(ValueError, match="threads must be a positive integer"):
                apply_threads(bad)
    finally:
        torch.set_num_threads(before)


def test_the_command_line_refuses_zero_threads(capsys):
    from sls_fast.cli import main

    with pytest.raises(SystemExit) as e:
        main(["run", "--threads", "0", "--quiet"])
    assert e.value.code == 2 and "--threads: must be a positive integer" in capsys.readouterr().err
