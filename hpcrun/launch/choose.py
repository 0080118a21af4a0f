"""Which cluster config a run gets when the command line names none."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
from typing import Mapping, Optional, Tuple

ENV_VAR = "HPCRUN_CLUSTER"


def default_cluster(environ: Optional[Mapping[str, str]] = None) -> Tuple[str, str]:
    """Picks the cluster config for a command line without ``cluster=``.

    In order: ``$HPCRUN_CLUSTER`` (e.g. ``greene`` in a Greene user's ~/.bashrc); ``local`` inside a Slurm
    allocation (an interactive ``srun --pty`` session runs the job right there); ``slurm`` where ``sbatch`` is on
    the PATH; ``local`` otherwise.

    Returns:
        The choice and the reason, for the one line hpcrun prints about it.
    """
    env = os.environ if environ is None else environ
    if env.get(ENV_VAR):
        return env[ENV_VAR], f"from ${ENV_VAR}"
    if env.get("SLURM_JOB_ID"):
        return "local", f"inside Slurm job {env['SLURM_JOB_ID']}: running in this allocation"
    if shutil.which("sbatch", path=env.get("PATH")):
        return "slurm", "sbatch is on the PATH"
    return "local", "no sbatch on the PATH"


def sbatch_cluster(environ: Optional[Mapping[str, str]] = None) -> Tuple[str, str]:
    """The cluster config for a command about Slurm (``render``, ``plan``, ``doctor``) whose command line names
    none: ``$HPCRUN_CLUSTER`` (a Greene user's ``greene``: the script checked is the one a submission sends), unless
    it names ``local``, which has no script; else the generic ``slurm``."""
    env = os.environ if environ is None else environ
    if env.get(ENV_VAR) and env[ENV_VAR] != "local":
        return env[ENV_VAR], f"from ${ENV_VAR}"
    return "slurm", "the generic Slurm cluster: this command is about sbatch"


def off_the_allocation(environ: Optional[Mapping[str, str]] = None) -> Optional[str]:
    """Why a local run here would train outside the Slurm allocation it seems to be in, or None.

    salloc (without ``LaunchParameters=use_interactive_step``) starts its shell on the submitting host, usually a
    login node: ``SLURM_JOB_ID`` is set, but no slurmd started the shell (no ``SLURMD_NODENAME``), and the host is
    not one of the job's nodes (``scontrol show hostnames``; without scontrol hpcrun cannot tell, and lets it run).
    """
    env = os.environ if environ is None else environ
    job, nodes = env.get("SLURM_JOB_ID"), env.get("SLURM_JOB_NODELIST", "")
    if not job or env.get("SLURMD_NODENAME") or not nodes:
        return None
    scontrol = shutil.which("scontrol", path=env.get("PATH"))
    if scontrol is None:
        return None
    try:
        out = subprocess.run([scontrol, "show", "hostnames", nodes], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return None
    names = out.stdout.split() if out.returncode == 0 else []
    host = socket.gethostname()
    if not names or host in names or host.split(".")[0] in names:
        return None
    return (f"this shell is salloc's, on {host}, not on a node of Slurm job {job} ({nodes}): a local run would "
            f"train on {host}. Run it in the allocation (srun --pty bash, then hpcrun there; or srun hpcrun ...), "
            "or submit it with cluster=slurm")


def copies_under_srun(environ: Optional[Mapping[str, str]] = None) -> Optional[str]:
    """Why this is one of several copies of hpcrun that ``srun -n N hpcrun ...`` started, or None. A local run is
    one process: each copy would claim the same run (one trains, the others wait for its lock and are refused)."""
    env = os.environ if environ is None else environ
    tasks = env.get("SLURM_STEP_NUM_TASKS", "")
    if not (tasks.isdigit() and int(tasks) > 1 and env.get("SLURM_PROCID") is not None):
        return None
    return (f"srun started {tasks} copies of hpcrun (SLURM_STEP_NUM_TASKS={tasks}); a local run is one process. "
            f"For {tasks} processes submit it (cluster=slurm cluster.tasks_per_node={tasks}: hpcrun's job starts the "
            "ranks), or run one hpcrun with a launcher: hpcrun run -- torchrun --nproc_per_node "
            f"{tasks} ...")
