"""Requeueing the running job: by the job itself where it can reach Slurm, else by the batch script on the host.

Inside a container without a Slurm client (Singularity images usually have none; pyxis/enroot neither) the job's
python cannot run ``scontrol requeue``. So the job first writes its Slurm job id into ``<run.dir>/requeue-request``,
then tries ``scontrol requeue`` itself; done, it removes the request. Where it cannot run Slurm's commands, the
request stays, and the batch script's last lines (:func:`hpcrun.slurm.sbatch.teardown_lines`), which run on the host
after srun returns, requeue the job, unless Slurm says it was cancelled. The next start removes any request left.

Where Slurm refuses ``scontrol requeue`` (some sites forbid it to users), the run goes on in a follow-up job: the
same job entry, submitted with ``--dependency=afterany:<this job>``, so it starts once this one has ended. It is the
same run (its directory, state, ledger), counted against ``run.max_requeues`` like a requeue.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any, Optional

from hpcrun.rundir import RunDir
from hpcrun.rundir.atomic import atomic_write

log = logging.getLogger("hpcrun")


def requeue_job(run_dir: Path, job_id: str, cfg: Any = None, entry: Any = None) -> Optional[str]:
    """Has the run continue after this job: requeued (now, or by the batch script once this process has exited), or
    where Slurm refuses that, a follow-up job running ``entry`` (the job's own JobEntry) with ``cfg``'s options.
    Returns the job that continues the run (``job_id``, or the follow-up's), None when neither worked."""
    from hpcrun.slurm.client import client_here
    from hpcrun.slurm.jobs import requeue

    request = RunDir(run_dir).requeue_request
    atomic_write(request, job_id)
    if not client_here():
        log.info("no Slurm client in this process (a container?): the batch script requeues job %s on the host "
                 "once this step has ended", job_id)
        return job_id
    done = requeue(job_id)
    request.unlink(missing_ok=True)
    if done:
        return job_id
    return follow_up(cfg, job_id, entry) if cfg is not None and entry is not None else None


def follow_up(cfg: Any, job_id: str, entry: Any) -> Optional[str]:
    """Submits ``entry`` again, to start once ``job_id`` has ended (``scontrol requeue`` was refused). Returns the new
    job's id, or None when sbatch refused too."""
    from hpcrun.errors import HpcrunError
    from hpcrun.slurm.client import submit_with_retries
    from hpcrun.slurm.sbatch import executor_parameters, make_executor

    # This job's own Slurm and rank variables must not reach the new job (sbatch passes the environment on): a
    # stale SLURM_ARRAY_TASK_ID or SLURM_RESTART_COUNT would give it another job's identity.
    for key in [k for k in os.environ if k.startswith(("SLURM_", "SBATCH_", "SUBMITIT_"))]:
        del os.environ[key]
    for key in ("HPCRUN_JOB_TIMES", "RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        os.environ.pop(key, None)
    executor = make_executor(cfg)
    extra = dict(executor_parameters(cfg)["additional_parameters"], dependency=f"afterany:{job_id}")
    executor.update_parameters(additional_parameters=extra)
    try:
        job = submit_with_retries(lambda: executor.submit(entry))
    except HpcrunError as exc:
        log.error("`scontrol requeue %s` was refused, and so was a follow-up job: %s", job_id, exc)
        return None
    log.info("`scontrol requeue %s` was refused (a site policy?): the run continues in job %s, which starts once "
             "this one has ended", job_id, job.job_id)
    return str(job.job_id)


def clear_request(run_dir: Path) -> None:
    """A new start: an earlier start's request has been acted on (or its job was cancelled)."""
    RunDir(run_dir).requeue_request.unlink(missing_ok=True)
