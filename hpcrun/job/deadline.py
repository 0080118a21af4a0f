"""When does this job end? Read from Slurm on a cluster, from cluster.time locally."""

from __future__ import annotations

import logging
import os
from typing import Mapping, Optional, Tuple

log = logging.getLogger("hpcrun")


def slurm_times(environ: Mapping[str, str], attempts: int = 3) -> Tuple[Optional[float], Optional[float], str]:
    """The running Slurm job's allocation start and end times, and where they came from.

    ``SLURM_JOB_START_TIME``/``SLURM_JOB_END_TIME`` exist from Slurm 23.02 on; before that, squeue tells: asked by
    the batch script on the host (``HPCRUN_JOB_TIMES``), else here (:func:`hpcrun.slurm.jobs.allocation_times`). Every start of the job asks again, so a requeued job gets its new
    times.
    """
    start, end = environ.get("SLURM_JOB_START_TIME", ""), environ.get("SLURM_JOB_END_TIME", "")
    if start.isdigit() and end.isdigit():
        return float(start), float(end), "SLURM_JOB_END_TIME"
    job = environ.get("SLURM_JOB_ID")
    if not job:
        return None, None, "not a Slurm job"
    from hpcrun.slurm.client import client_here
    from hpcrun.slurm.jobs import allocation_times, parse_slurm_timestamp

    # Asked by the batch script on the host before srun (hpcrun.slurm.sbatch.setup_lines): a container may have
    # no squeue.
    fields = environ.get("HPCRUN_JOB_TIMES", "").split()
    if len(fields) == 2 and parse_slurm_timestamp(fields[1]) is not None:
        return parse_slurm_timestamp(fields[0]), parse_slurm_timestamp(fields[1]), "squeue %e (batch script)"
    if not client_here():
        return None, None, "no Slurm client here, and the batch script did not tell"

    begun, ends = allocation_times(job, attempts)
    if ends is not None:
        return begun, ends, "squeue %e"
    return None, None, "squeue could not tell the end time"


def slurm_end_time(environ: Mapping[str, str], attempts: int = 3) -> Tuple[Optional[float], str]:
    """The running Slurm job's end time and where it came from (see :func:`slurm_times`)."""
    _, end, source = slurm_times(environ, attempts)
    return end, source


def job_times(limit_seconds: int, on_slurm: bool, started: float, environ: Optional[Mapping[str, str]] = None,
              inside_allocation: bool = False) -> Tuple[float, Optional[float], str]:
    """When this start's allocation began (locally: the process start), the end time it must save before, and the
    end time's source (for the log). A local run inside an allocation ends at cluster.time or at the allocation's
    end, whichever comes first."""
    env = os.environ if environ is None else environ
    if inside_allocation and not on_slurm:
        _, end, source = slurm_times(env)
        if end is not None and end < started + limit_seconds:
            return started, end, f"{source}: this allocation's end"
    if on_slurm:
        begun, end, source = slurm_times(env)
        if end is not None:
            return begun or started, end, source
        # The job started before this process did: count from SLURM_JOB_START_TIME (23.02+) or a minute earlier.
        start = env.get("SLURM_JOB_START_TIME", "")
        begun = float(start) if start.isdigit() else started - 60
        log.warning("no end time from Slurm (%s): assuming start + cluster.time", source)
        return begun, begun + limit_seconds, "cluster.time (Slurm did not tell)"
    return started, started + limit_seconds, "cluster.time (local)"
