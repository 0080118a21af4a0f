"""Requeueing the running job: by the job itself where it can reach Slurm, else by the batch script on the host.

Inside a container without a Slurm client (Singularity images usually have none; pyxis/enroot neither) the job's
python cannot run ``scontrol requeue``. So the job first writes its Slurm job id into ``<run.dir>/requeue-request``,
then tries ``scontrol requeue`` itself; done, it removes the request. Where it cannot run Slurm's commands, the
request stays, and the batch script's last lines (:func:`hpcrun.slurm.sbatch.teardown_lines`), which run on the host
after srun returns, requeue the job, unless Slurm says it was cancelled. The next start removes any request left.
"""

from __future__ import annotations

import logging
from pathlib import Path

from hpcrun.rundir import RunDir
from hpcrun.rundir.atomic import atomic_write

log = logging.getLogger("hpcrun")


def requeue_job(run_dir: Path, job_id: str) -> bool:
    """Requeues ``job_id`` (now, or from the batch script once this process has exited). False when Slurm refused
    (a site that forbids ``scontrol requeue``); the request is then withdrawn."""
    from hpcrun.slurm.client import client_here
    from hpcrun.slurm.jobs import requeue

    request = RunDir(run_dir).requeue_request
    atomic_write(request, job_id)
    if not client_here():
        log.info("no Slurm client in this process (a container?): the batch script requeues job %s on the host "
                 "once this step has ended", job_id)
        return True
    done = requeue(job_id)
    request.unlink(missing_ok=True)
    return done


def clear_request(run_dir: Path) -> None:
    """A new start: an earlier start's request has been acted on (or its job was cancelled)."""
    RunDir(run_dir).requeue_request.unlink(missing_ok=True)
