"""Slurm through submitit: the cluster config becomes sbatch options, the job becomes ``srun python -m submitit``.

The same executor renders (``hpcrun render``) and submits, so the printed script is the one sbatch gets.
"""

from __future__ import annotations

import shlex
import sys
from pathlib import Path
from typing import Any, Dict

from hpcrun.config.schema import ClusterConfig
from hpcrun.durations import format_slurm_time
from hpcrun.errors import SubmissionError

SLURM_SUBDIR = "slurm"  # <run.dir>/slurm/: the batch script, submitit's pickles, and %j_%t_log.{out,err}


def python_command(cluster: ClusterConfig) -> str:
    """The command that starts the job's python on a compute node (submitit appends ``-u -m ...``).

    With a container, python runs inside ``singularity exec`` after the overlay's environment script; the
    arguments submitit appends reach python through ``"$@"`` (the ``hpcrun`` word is bash's $0).
    """
    c = cluster.container
    if not c.enabled:
        return shlex.quote(cluster.python or sys.executable)
    args = [c.runtime, "exec"]
    if c.nv:
        args.append("--nv")
    if c.overlay:
        args += ["--overlay", f"{c.overlay}:ro"]
    for b in c.binds:
        args += ["--bind", b]
    inner = f'exec {shlex.quote(c.python)} "$@"'
    if c.env_script:
        inner = f"source {shlex.quote(c.env_script)}; {inner}"
    args += [str(c.image), "/bin/bash", "-c", inner, "hpcrun"]
    return " ".join(shlex.quote(a) for a in args)


def executor_parameters(cfg: Any) -> Dict[str, Any]:
    """submitit SlurmExecutor parameters for a composed config."""
    cluster: ClusterConfig = cfg.cluster
    extra: Dict[str, Any] = {str(k).replace("_", "-"): v for k, v in cluster.sbatch_extra.items()}
    # --requeue always: a site with JobRequeue=0 would otherwise refuse the job's own `scontrol requeue`.
    extra["requeue"] = True
    extra["time"] = format_slurm_time(cluster.time_seconds())
    # No "B:": the signal goes to every job step, i.e. to the python under srun, not only to the batch shell.
    extra["signal"] = f"{cluster.signal}@{cluster.signal_delay_seconds()}"
    params: Dict[str, Any] = {
        "job_name": cfg.run.name,
        "nodes": cluster.nodes,
        "ntasks_per_node": cluster.tasks_per_node,
        "cpus_per_task": cluster.cpus_per_task,
        "signal_delay_s": cluster.signal_delay_seconds(),
        "setup": list(cluster.setup),
        "srun_args": list(cluster.srun_args),
        "additional_parameters": extra,
        "stderr_to_stdout": False,
    }
    for key in ("partition", "account", "qos", "mem", "constraint"):
        value = getattr(cluster, key)
        if value is not None:
            params[key] = str(value)
    if cluster.gpus_per_node:
        params["gpus_per_node"] = (
            f"{cluster.gpu_type}:{cluster.gpus_per_node}" if cluster.gpu_type else cluster.gpus_per_node
        )
    return params


def make_executor(cfg: Any, render_only: bool = False, folder: Any = None) -> Any:
    """submitit's SlurmExecutor set up for ``cfg``; its job folder is ``<run.dir>/slurm`` unless given."""
    import submitit

    class RenderOnlyExecutor(submitit.SlurmExecutor):
        """The real executor, minus its check that srun exists here: rendering needs no Slurm."""

        @classmethod
        def affinity(cls) -> int:
            return 1

    cls = RenderOnlyExecutor if render_only else submitit.SlurmExecutor
    folder = Path(folder) if folder is not None else Path(cfg.run.dir) / SLURM_SUBDIR
    try:
        executor = cls(folder=folder, python=python_command(cfg.cluster), max_num_timeout=0)
    except RuntimeError as exc:  # "Could not detect srun": not on a Slurm machine
        raise SubmissionError(f"cluster={cfg.cluster.name} needs Slurm here: {exc}") from None
    executor.update_parameters(**executor_parameters(cfg))
    return executor


def render(cfg: Any) -> str:
    """The exact sbatch script ``submit`` would hand to sbatch for this config. Submits nothing."""
    executor = make_executor(cfg, render_only=True)
    return executor._make_submission_file_text(executor._submitit_command_str, "render")


def submit(cfg: Any) -> str:
    """Submits the run's job with sbatch and returns the Slurm job id. Returns at once."""
    import submitit

    from hpcrun.job.entry import JobEntry

    executor = make_executor(cfg)
    try:
        job = executor.submit(JobEntry(cfg.run.dir))
    except (submitit.core.utils.FailedJobError, OSError) as exc:
        lines = [ln for ln in str(exc).splitlines() if ln.strip()]
        reason = next((ln for ln in lines if "error" in ln.lower()), lines[-1] if lines else repr(exc))
        raise SubmissionError(f"sbatch refused the job: {reason.strip()}") from None
    return str(job.job_id)
