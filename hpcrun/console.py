"""What hpcrun tells the person at the terminal: one line on stderr, prefixed ``hpcrun:`` (stdout stays for the
output a command is asked for, such as a script or JSON). Both sides; standard library only."""

from __future__ import annotations

import sys

PROG = "hpcrun"


def say(message: str) -> None:
    """One line for the user on stderr."""
    print(f"{PROG}: {message}", file=sys.stderr, flush=True)
