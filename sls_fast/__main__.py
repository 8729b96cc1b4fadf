"""``python -m sls_fast`` and the ``sls-fast`` command: the command line of :mod:`sls_fast.cli`.

The command line and torch are imported with Ctrl-C held back: a library's import may swallow
a KeyboardInterrupt (exit 0 after a Ctrl-C; benchmarks/RESULTS.md, "Ctrl-C of a sweep") or, caught or not, make
CPython end the process by SIGINT (exit -2). Held, the interrupt arrives here, whole, when the
imports are done, and ends as any other: one line on stderr, exit code 130."""
import sys
from typing import List, Optional

from sls_fast.common.signals import sigint_held


def main(argv: Optional[List[str]] = None) -> int:
    try:
        with sigint_held():
            import torch  # noqa: F401 - the long import, whole
            from sls_fast.cli import main as cli_main
    except KeyboardInterrupt:
        print("sls-fast: interrupted", file=sys.stderr)
        return 130
    return cli_main(argv)


if __name__ == "__main__":
    sys.exit(main())
