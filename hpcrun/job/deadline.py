"""When does this job end? Read from Slurm on a cluster, from cluster.time locally."""

from __future__ import annotations

import logging
import os
import subprocess
import time
from datetime import datetime
from typing import Mapping, Optional, Tuple

log = logging.getLogger("hpcrun")


def parse_slurm_timestamp(text: str) -> Optional[float]:
    """``2026-11-25T10:40:00`` (Slurm prints local time) as a Unix time; None for ``N/A``, ``Unknown``, ``NONE``."""
    text = text.strip()
    try:
        return datetime.strptime(text, "%Y-%m-%dT%H:%M:%S").timestamp()
    except ValueError:
        return None


def slurm_times(environ: Mapping[str, str], attempts: int = 3) -> Tuple[Optional[float], Optional[float], str]:
    """The running Slurm job's allocation start and end times, and where they came from.

    ``SLURM_JOB_START_TIME``/``SLURM_JOB_END_TIME`` exist from Slurm 23.02 on; before that, ``squeue -j JOB -o
    "%S %e"`` tells (a few tries with back-off: the controller may be busy). Every start of the job asks again, so a
    requeued job gets its new times.
    """
    start, end = environ.get("SLURM_JOB_START_TIME", ""), environ.get("SLURM_JOB_END_TIME", "")
    if start.isdigit() and end.isdigit():
        return float(start), float(end), "SLURM_JOB_END_TIME"
    job = environ.get("SLURM_JOB_ID")
    if not job:
        return None, None, "not a Slurm job"
    delay = 1.0
    for attempt in range(attempts):
        try:
            out = subprocess.run(["squeue", "-h", "-j", job, "-o", "%S %e"], capture_output=True, text=True,
                                 timeout=30)
            fields = out.stdout.split() if out.returncode == 0 else []
            if len(fields) >= 2 and parse_slurm_timestamp(fields[1]) is not None:
                return parse_slurm_timestamp(fields[0]), parse_slurm_timestamp(fields[1]), "squeue %e"
        except (OSError, subprocess.TimeoutExpired):
            pass
        if attempt + 1 < attempts:
            time.sleep(delay)
            delay *= 2
    return None, None, "squeue could not tell the end time"


def slurm_end_time(environ: Mapping[str, str], attempts: int = 3) -> Tuple[Optional[float], str]:
    """The running Slurm job's end time and where it came from (see :func:`slurm_times`)."""
    _, end, source = slurm_times(environ, attempts)
    return end, source


def job_times(limit_seconds: int, on_slurm: bool, started: float,
              environ: Optional[Mapping[str, str]] = None) -> Tuple[float, Optional[float], str]:
    """When this start's allocation began (locally: the process start), the end time it must save before, and the
    end time's source (for the log)."""
    if on_slurm:
        env = os.environ if environ is None else environ
        begun, end, source = slurm_times(env)
        if end is not None:
            return begun or started, end, source
        # The job started before this process did: count from SLURM_JOB_START_TIME (23.02+) or a minute earlier.
        start = env.get("SLURM_JOB_START_TIME", "")
        begun = float(start) if start.isdigit() else started - 60
        log.warning("no end time from Slurm (%s): assuming start + cluster.time", source)
        return begun, begun + limit_seconds, "cluster.time (Slurm did not tell)"
    return started, started + limit_seconds, "cluster.time (local)"


def job_end_time(limit_seconds: int, on_slurm: bool, started: float,
                 environ: Optional[Mapping[str, str]] = None) -> Tuple[Optional[float], str]:
    """The end time this job must save before, and its source (for the log)."""
    _, end, source = job_times(limit_seconds, on_slurm, started, environ)
    return end, source
