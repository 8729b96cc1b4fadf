"""``python -m sls_fast`` and the ``sls-fast`` command: the command line of :mod:`sls_fast.cli`.

This module imports nothing heavy itself, so a Ctrl-C while torch and the rest load (the first
second or two of every command) ends as any other interrupt does: one line, exit code 130."""
import sys
from typing import List, Optional


def main(argv: Optional[List[str]] = None) -> int:
    try:
        from .cli import main as cli_main
    except KeyboardInterrupt:
        print("sls-fast: interrupted", file=sys.stderr)
        return 130
    return cli_main(argv)


if __name__ == "__main__":
    sys.exit(main())
