"""Helpers for tests that talk to the real dev Slurm cluster."""

from __future__ import annotations

import re
import subprocess
import time

TERMINAL = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "PREEMPTED", "NODE_FAIL", "OUT_OF_MEMORY", "BOOT_FAIL",
            "DEADLINE"}


def job_id_from(stdout: str) -> str:
    m = re.search(r"submitted Slurm job (\d+)", stdout)
    assert m, f"no job id in hpcrun's output:\n{stdout}"
    return m.group(1)


def sacct_state(job_id: str) -> str:
    """The job's state in accounting ('' until slurmdbd has it)."""
    out = subprocess.run(["sacct", "-n", "-X", "-P", "-o", "State", "-j", job_id],
                         capture_output=True, text=True, timeout=30)
    lines = [ln.strip() for ln in out.stdout.splitlines() if ln.strip()]
    return lines[-1].split()[0] if lines else ""


def wait_for_end(job_id: str, timeout: float = 420) -> str:
    """Polls sacct until the job reaches a terminal state; returns it."""
    deadline = time.monotonic() + timeout
    state = ""
    while time.monotonic() < deadline:
        state = sacct_state(job_id)
        if state in TERMINAL:
            return state
        time.sleep(2)
    subprocess.run(["scancel", job_id])
    raise AssertionError(f"job {job_id} still {state or 'unknown'} after {timeout} s")
