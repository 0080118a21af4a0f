"""The batch script: the cluster config becomes sbatch options, for submitit's script and for the standalone one.

The same executor renders (``hpcrun render``) and submits (:mod:`hpcrun.launch.launchers`), so the printed script is
the one sbatch gets. Every value bound for an ``#SBATCH`` line passes :func:`sbatch_value`, the one check.
A new sbatch option goes into :func:`executor_parameters`.
"""

from __future__ import annotations

import re
import shlex
import sys
from pathlib import Path
from typing import Any, Dict, List, Sequence, Tuple

from hpcrun.config.schema import ClusterConfig
from hpcrun.durations import format_slurm_time
from hpcrun.errors import ConfigError, SubmissionError
from hpcrun.rundir import RunDir



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


# The job's Slurm id as sacct and scontrol name it: <array>_<task> for an array task, else the job id.
_JOB_ID = 'hpcrun_job=${SLURM_ARRAY_JOB_ID:+${SLURM_ARRAY_JOB_ID}_${SLURM_ARRAY_TASK_ID}}; hpcrun_job=${hpcrun_job:-$SLURM_JOB_ID}'


def setup_lines() -> List[str]:
    """Batch-script lines before srun, on the host: the job's start and end times, for a job whose python cannot
    ask squeue itself (a container without a Slurm client; hpcrun.job.deadline reads HPCRUN_JOB_TIMES); and a
    SIGTERM handler, so that the shell outlives the hard time limit and a cancel. Slurm sends their SIGTERM to the
    batch shell as well as to the job's steps; bash without a trap died of it at once, before srun returned, and the
    teardown (:func:`teardown_lines`) never ran (checked on the dev cluster). With a handler bash waits for srun (the
    steps save and exit within KillWait) and then runs it. A handler, not ``trap '' TERM``: an ignored signal would
    stay ignored in srun and the processes it starts."""
    return ["# hpcrun: the job's times, asked here where the Slurm client is (a container may have none)",
            'HPCRUN_JOB_TIMES="$(squeue -h -j "$SLURM_JOB_ID" -o "%S %e" 2>/dev/null || true)"',
            "export HPCRUN_JOB_TIMES",
            "# hpcrun: the time limit's SIGTERM (and a cancel's) reaches this shell too: it waits for srun, then runs",
            "# the lines after it (a requeue the job asked for), instead of dying at once",
            "trap : TERM"]


def teardown_lines(run_dir: str = "", run_dirs: Sequence[str] = (), run_dir_expr: str = "") -> List[str]:
    """Batch-script lines after srun, on the host: the requeue the job asked for and could not do itself (no Slurm
    client in its container; hpcrun.job.requeue), while the controller says RUNNING, or COMPLETING with the reason
    TimeLimit (the hard time limit, during KillWait). A cancelled job reads COMPLETING at once with the reason None
    (never CANCELLED while it ends; checked on the dev cluster), and ``scontrol requeue`` would bring it back; a
    preempted one stays RUNNING through its grace time. A controller that answers nothing is asked twice more, 2 s
    apart; still silent, no requeue on a guess. The run directory is
    ``run_dir``, or by task id one of an array's ``run_dirs``, or the shell's ``run_dir_expr`` (``"$RUN_DIR"``)."""
    if run_dir_expr:
        where = [f'hpcrun_request={run_dir_expr}/requeue-request']
    elif run_dirs:
        where = [f"hpcrun_runs=({' '.join(shlex.quote(str(d)) for d in run_dirs)})",
                 'hpcrun_request="${hpcrun_runs[$SLURM_ARRAY_TASK_ID]}/requeue-request"']
    else:
        where = [f"hpcrun_request={shlex.quote(str(RunDir(run_dir).requeue_request))}"]
    return ["# hpcrun: the requeue the job asked for, done here where the Slurm client is (see hpcrun.job.requeue);",
            "# the job's exit status stays srun's (a failed run must stay FAILED in Slurm's accounting)",
            "hpcrun_status=$?", _JOB_ID, *where,
            'if [ "$(cat "$hpcrun_request" 2>/dev/null)" = "$hpcrun_job" ]; then',
            "  for hpcrun_try in 1 2 3; do  # a busy controller answers nothing at times: asked again, 2 s apart",
            '    hpcrun_state="$(squeue -h -j "$hpcrun_job" -o "%T %r" 2>/dev/null || true)"',
            '    [ -n "$hpcrun_state" ] || [ "$hpcrun_try" = 3 ] && break; sleep 2',
            "  done",
            '  case "$hpcrun_state" in  # a cancel reads "COMPLETING None": it stays cancelled',
            '    RUNNING*|"COMPLETING TimeLimit") scontrol requeue "$hpcrun_job" && rm -f "$hpcrun_request" ;;',
            "  esac",
            "fi",
            'exit "$hpcrun_status"']


# sbatch reads each '#SBATCH' line by itself, shell quotes included (submitit quotes every value), but drops
# backslashes: a line break would end the line and bash would run the rest; a backslash would change the value.
_NOT_ON_SBATCH_LINE = re.compile(r"[\x00-\x1f\x7f\\]")
# What sbatch reads from an unquoted #SBATCH line (the standalone scripts) without surprises: no whitespace, quotes,
# backslashes or '#'. Matched with fullmatch: a pattern ending in '$' also accepts a value that ends in a line break.
_UNQUOTED_SAFE = re.compile(r"[A-Za-z0-9_.,:=%@+\-/\[\]|&!*()~]+")
# sbatch option -> the config key it comes from (for error messages).
SBATCH_KEYS = {
    "job-name": "run.name", "partition": "cluster.partition", "account": "cluster.account", "qos": "cluster.qos",
    "mem": "cluster.mem", "constraint": "cluster.constraint", "output": "run.dir", "error": "run.dir",
}


def sbatch_value(key: str, value: Any, quoted: bool = True) -> Any:
    """``value``, or a ConfigError naming ``key`` if it cannot stand on an ``#SBATCH`` line: with ``quoted``
    (submitit's script quotes every value) no line break, control character or backslash; unquoted (the standalone
    scripts) nothing but plain characters either."""
    if _NOT_ON_SBATCH_LINE.search(str(value)):
        raise ConfigError(key, value, "no line break, control character or backslash (the value goes on an "
                          "'#SBATCH' line, which sbatch reads to the line's end and without backslashes)")
    if not quoted and not _UNQUOTED_SAFE.fullmatch(str(value)):
        raise ConfigError(key, value, f"a value sbatch reads verbatim in '#SBATCH --{_option_of(key)}=' (no "
                          "spaces, quotes, '#' or backslashes)")
    return value


def _option_of(key: str) -> str:
    if key.startswith("cluster.sbatch_extra."):
        return key[len("cluster.sbatch_extra."):].replace("_", "-")
    return next((o for o, k in SBATCH_KEYS.items() if k == key), key.rpartition(".")[2].replace("_", "-"))


def sbatch_flag(cluster: Any, name: str) -> bool:
    """Whether ``cluster.sbatch_extra.<name>`` turns an sbatch flag on (``hold=true``, ``overcommit=1``, ...)."""
    return cluster.sbatch_extra.get(name) in (True, "true", "yes", "1", 1)


def overcommits(cluster: Any) -> bool:
    """``cluster.sbatch_extra.overcommit=true`` on one node: its processes share ``cluster.cpus_per_task`` CPUs,
    asked for as ``--ntasks`` (:func:`executor_parameters`). On several nodes each process keeps its own."""
    return cluster.nodes == 1 and sbatch_flag(cluster, "overcommit")


def executor_parameters(cfg: Any) -> Dict[str, Any]:
    """submitit SlurmExecutor parameters for a composed config; a value unsafe on an ``#SBATCH`` line is refused."""
    cluster: ClusterConfig = cfg.cluster
    extra: Dict[str, Any] = {}
    for key, value in cluster.sbatch_extra.items():
        option = str(key).replace("_", "-")
        if not re.fullmatch(r"[A-Za-z][A-Za-z0-9-]*", option):
            raise ConfigError(f"cluster.sbatch_extra.{key}", value, "an sbatch option name (letters, digits, '-')")
        extra[option] = sbatch_value(f"cluster.sbatch_extra.{key}", value)
    # --requeue always: a site with JobRequeue=0 would otherwise refuse the job's own `scontrol requeue`.
    extra["requeue"] = True
    extra["time"] = format_slurm_time(cluster.time_seconds())
    # No "B:": the signal goes to every job step, i.e. to the python under srun, not only to the batch shell.
    extra["signal"] = f"{cluster.signal}@{cluster.signal_delay_seconds()}"
    # More processes than CPUs on one node (--overcommit): Slurm 22.05 finds no node for --ntasks-per-node above
    # the node's CPUs, --overcommit or not ("never runnable"), but takes --ntasks=N on one node (--nodes=1 stays:
    # submitit's default)
    per_node = not overcommits(cluster)
    if not per_node:
        extra["ntasks"] = cluster.tasks_per_node
    params: Dict[str, Any] = {
        "job_name": sbatch_value("run.name", cfg.run.name),
        "nodes": cluster.nodes,
        "ntasks_per_node": cluster.tasks_per_node,
        "cpus_per_task": cluster.cpus_per_task,
        "signal_delay_s": cluster.signal_delay_seconds(),
        "setup": [*cluster.setup, *setup_lines()],
        "teardown": teardown_lines(cfg.run.dir),
        "srun_args": list(cluster.srun_args),
        "additional_parameters": extra,
        "stderr_to_stdout": False,
    }
    if not per_node:  # (absent, not None: submitit counts its tasks from ntasks_per_node)
        del params["ntasks_per_node"]
    sbatch_value("run.dir", cfg.run.dir)  # submitit's --output and --error are <run.dir>/slurm/...
    for key in ("partition", "account", "qos", "mem", "constraint"):
        value = getattr(cluster, key)
        if value is not None:
            params[key] = str(sbatch_value(f"cluster.{key}", value))
    if cluster.gpus_per_node:
        params["gpus_per_node"] = (
            f"{sbatch_value('cluster.gpu_type', cluster.gpu_type)}:{cluster.gpus_per_node}"
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
    folder = Path(folder) if folder is not None else RunDir(cfg.run.dir).slurm
    try:
        executor = cls(folder=folder, python=python_command(cfg.cluster), max_num_timeout=0)
    except RuntimeError as exc:  # "Could not detect srun": not on a Slurm machine
        raise SubmissionError(f"cluster={cfg.cluster.name} needs Slurm here: {exc}") from None
    executor.update_parameters(**executor_parameters(cfg))
    return executor


def render(cfg: Any) -> str:
    """The exact sbatch script :class:`~hpcrun.launch.launchers.SlurmLauncher` hands to sbatch for this config.
    Submits nothing."""
    executor = make_executor(cfg, render_only=True)
    return executor._make_submission_file_text(executor._submitit_command_str, "render")


def standalone_options(cfg: Any, array: str = "") -> List[Tuple[str, str]]:
    """The ``#SBATCH`` options, from the same mapping the submitit path uses (:func:`executor_parameters`).

    Slurm's own output goes to ``<job name>-<job id>.out`` in the directory sbatch runs from: Slurm opens it before
    the script runs, when the run directory may not exist yet. hpcrun's log of each start is in ``RUN_DIR/logs/``.
    """
    p = executor_parameters(cfg)
    pattern = "%x-%A_%a" if array else "%x-%j"
    opts: Dict[str, Any] = {
        "job-name": p["job_name"], "nodes": p["nodes"], "ntasks-per-node": p.get("ntasks_per_node"),
        "cpus-per-task": p["cpus_per_task"],
    }
    for key in ("partition", "account", "qos", "mem", "constraint", "gpus_per_node"):
        if key in p:
            opts[key.replace("_", "-")] = p[key]
    opts.update(p["additional_parameters"])
    opts["open-mode"] = "append"  # a requeued job appends to the same log
    opts["output"] = f"{pattern}.out"
    opts["error"] = f"{pattern}.err"
    if array:
        opts["array"] = array
    out = []
    for option in sorted(opts):
        value = opts[option]
        if value is True:
            out.append((option, ""))
        elif value not in (False, None):
            key = SBATCH_KEYS.get(option, f"cluster.sbatch_extra.{option}")
            out.append((option, str(sbatch_value(key, value, quoted=False))))
    return out
