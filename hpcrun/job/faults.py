"""Fault injection for hpcrun's own tests (and for users checking their cluster): ``HPCRUN_FAULTS``.

A comma-separated list read by the job at start (sbatch passes the environment on):

* ``save_pause=SECONDS``: sleep after a save's files are written and before its completion marker, to kill a job
  in the middle of a save on purpose;
* ``transient_error``: raise a ConnectionError before training, as a flaky network or filesystem would;
* ``setup_pause=SECONDS``: sleep once the stop signals are handled and before the task starts, to signal a job
  while it starts, on purpose (a stop signal ends the pause).

Unset, nothing changes.
"""

from __future__ import annotations

import os
from typing import Dict

ENV = "HPCRUN_FAULTS"


def faults() -> Dict[str, str]:
    out = {}
    for item in os.environ.get(ENV, "").split(","):
        if item.strip():
            key, _, value = item.strip().partition("=")
            out[key] = value
    return out


def save_pause() -> float:
    return float(faults().get("save_pause", 0) or 0)


def setup_pause() -> float:
    return float(faults().get("setup_pause", 0) or 0)


def maybe_transient_error() -> None:
    if "transient_error" in faults():
        raise ConnectionError(f"injected by {ENV}=transient_error")
