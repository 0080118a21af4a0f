"""Slurm through submitit: the cluster config becomes sbatch options, the job becomes ``srun python -m submitit``.

The same executor renders (``hpcrun render``) and submits, so the printed script is the one sbatch gets.
"""

from __future__ import annotations

import re
import shlex
import sys
from pathlib import Path
from typing import Any, Dict

from hpcrun.config.schema import ClusterConfig
from hpcrun.durations import format_slurm_time
from hpcrun.errors import ConfigError, SubmissionError

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


# sbatch reads each '#SBATCH' line by itself, shell quotes included (submitit quotes every value), but drops
# backslashes: a line break would end the line and bash would run the rest; a backslash would change the value.
_NOT_ON_SBATCH_LINE = re.compile(r"[\x00-\x1f\x7f\\]")


def _sbatch_line_safe(key: str, value: Any) -> Any:
    """``value``, or a ConfigError naming ``key`` if it cannot stand on an ``#SBATCH`` line."""
    if _NOT_ON_SBATCH_LINE.search(str(value)):
        raise ConfigError(key, value, "no line break, control character or backslash (the value goes on an "
                          "'#SBATCH' line, which sbatch reads to the line's end and without backslashes)")
    return value


def executor_parameters(cfg: Any) -> Dict[str, Any]:
    """submitit SlurmExecutor parameters for a composed config; a value unsafe on an ``#SBATCH`` line is refused."""
    cluster: ClusterConfig = cfg.cluster
    extra: Dict[str, Any] = {}
    for key, value in cluster.sbatch_extra.items():
        option = str(key).replace("_", "-")
        if not re.fullmatch(r"[A-Za-z][A-Za-z0-9-]*", option):
            raise ConfigError(f"cluster.sbatch_extra.{key}", value, "an sbatch option name (letters, digits, '-')")
        extra[option] = _sbatch_line_safe(f"cluster.sbatch_extra.{key}", value)
    # --requeue always: a site with JobRequeue=0 would otherwise refuse the job's own `scontrol requeue`.
    extra["requeue"] = True
    extra["time"] = format_slurm_time(cluster.time_seconds())
    # No "B:": the signal goes to every job step, i.e. to the python under srun, not only to the batch shell.
    extra["signal"] = f"{cluster.signal}@{cluster.signal_delay_seconds()}"
    params: Dict[str, Any] = {
        "job_name": _sbatch_line_safe("run.name", cfg.run.name),
        "nodes": cluster.nodes,
        "ntasks_per_node": cluster.tasks_per_node,
        "cpus_per_task": cluster.cpus_per_task,
        "signal_delay_s": cluster.signal_delay_seconds(),
        "setup": list(cluster.setup),
        "srun_args": list(cluster.srun_args),
        "additional_parameters": extra,
        "stderr_to_stdout": False,
    }
    _sbatch_line_safe("run.dir", cfg.run.dir)  # submitit's --output and --error are <run.dir>/slurm/...
    for key in ("partition", "account", "qos", "mem", "constraint"):
        value = getattr(cluster, key)
        if value is not None:
            params[key] = str(_sbatch_line_safe(f"cluster.{key}", value))
    if cluster.gpus_per_node:
        params["gpus_per_node"] = (
            f"{_sbatch_line_safe('cluster.gpu_type', cluster.gpu_type)}:{cluster.gpus_per_node}"
            if cluster.gpu_type else cluster.gpus_per_node
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
    from hpcrun.job.entry import JobEntry
    from hpcrun.launch.slurm_info import submit_with_retries

    executor = make_executor(cfg)
    job = submit_with_retries(lambda: executor.submit(JobEntry(cfg.run.dir)))
    return str(job.job_id)
