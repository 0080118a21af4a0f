"""``hpcrun render --standalone``: a self-contained sbatch script from the Jinja2 templates in slurm_templates/.

The script needs hpcrun importable by the job's python on the compute node, but not hpcrun's submitter: the run's
config travels inside the script (a quoted heredoc, so the shell expands nothing in it), ``python -m hpcrun.job
prepare`` writes it into the run directory on the batch host, and ``srun python -m hpcrun.job run`` starts the same
job entry as a submitted run, with the same signal, deadline, checkpoint and ``scontrol requeue`` behaviour. When
Slurm requeues the job it reruns the whole script: ``prepare`` finds the same config and the run resumes.

Templates (chosen from the config, or by ``--template``): single (one process), multi_gpu (one node, one process
per GPU), multi_node, array (a sweep; one run per array task), singularity (any of the first three inside
Singularity/Apptainer with an overlay, NYU Greene's model). Every value that reaches the shell is quoted with
``shlex.quote``; values that reach ``#SBATCH`` lines are refused if sbatch could misread them.

Submitting side: no torch.
"""

from __future__ import annotations

import re
import shlex
import sys
from pathlib import Path
from typing import Any, Dict, List, Sequence, Tuple

from hpcrun.errors import ConfigError, UserError

TEMPLATES = ("single", "multi_gpu", "multi_node", "array", "singularity")
CONFIG_END = "HPCRUN_CONFIG_END"
# What sbatch reads from a #SBATCH line without surprises: no whitespace, quotes, backslashes or '#'. Matched with
# fullmatch: a pattern ending in '$' also accepts a value that ends in a line break.
_SBATCH_SAFE = re.compile(r"[A-Za-z0-9_.,:=%@+\-/\[\]|&!*()~]+")
# What a '#' comment line cannot hold as is: a line break would end the comment and bash would run the rest.
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")

SBATCH_KEYS = {  # sbatch option -> the config key it comes from (for error messages)
    "job-name": "run.name", "partition": "cluster.partition", "account": "cluster.account", "qos": "cluster.qos",
    "mem": "cluster.mem", "constraint": "cluster.constraint", "output": "run.dir", "error": "run.dir",
}


def choose_template(cfgs: Sequence[Any]) -> str:
    if len(cfgs) > 1:
        return "array"
    c = cfgs[0].cluster
    if c.container.enabled:
        return "singularity"
    if c.nodes > 1:
        return "multi_node"
    if c.tasks_per_node > 1:
        return "multi_gpu"
    return "single"


def _sbatch_value(option: str, value: Any) -> str:
    text = str(value)
    if not _SBATCH_SAFE.fullmatch(text):
        key = SBATCH_KEYS.get(option, f"cluster.sbatch_extra.{option}")
        raise ConfigError(key, value, f"a value sbatch reads verbatim in '#SBATCH --{option}=' (no spaces, "
                          "quotes, '#' or backslashes)")
    return text


def _comment(value: Any) -> str:
    """``value`` for a ``#`` comment line: control characters as Python escapes (a line break becomes ``\\n``)."""
    return _CONTROL.sub(lambda m: repr(m.group())[1:-1], str(value))


def sbatch_options(cfg: Any, array: str = "") -> List[Tuple[str, str]]:
    """The ``#SBATCH`` options, from the same mapping the submitit path uses (:func:`executor_parameters`).

    Slurm's own output goes to ``<job name>-<job id>.out`` in the directory sbatch runs from: Slurm opens it before
    the script runs, when the run directory may not exist yet. hpcrun's log of each start is in ``RUN_DIR/logs/``.
    """
    from hpcrun.launch.slurm import executor_parameters

    p = executor_parameters(cfg)
    pattern = "%x-%A_%a" if array else "%x-%j"
    opts: Dict[str, Any] = {
        "job-name": p["job_name"], "nodes": p["nodes"], "ntasks-per-node": p["ntasks_per_node"],
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
            out.append((option, _sbatch_value(option, value)))
    return out


def job_commands(cluster: Any) -> Tuple[str, str]:
    """The prepare command (batch host) and ``srun ... PYTHON -u -m hpcrun.job run "$RUN_DIR"`` (every rank),
    both inside the container when it is enabled (:func:`~hpcrun.launch.slurm.python_command`)."""
    from hpcrun.launch.slurm import python_command

    python = python_command(cluster)
    srun = " ".join(["srun", "--unbuffered", *(shlex.quote(a) for a in cluster.srun_args)])
    return f"{python} -m hpcrun.job prepare", f'{srun} {python} -u -m hpcrun.job run "$RUN_DIR"'


def render_standalone(cfgs: Sequence[Any], command: str, template: str = "", throttle: int = 0) -> str:
    """The script for one run (``cfgs`` of one) or a sweep (one array task per config)."""
    import jinja2

    from hpcrun import __version__
    from hpcrun.launch.rundir import config_yaml
    from hpcrun.resources import templates_dir

    template = template or choose_template(cfgs)
    if template not in TEMPLATES:
        raise ConfigError("--template", template, choices=TEMPLATES)
    if (template == "array") != (len(cfgs) > 1):
        raise UserError(f"--template={template} is for {'a sweep (-m)' if template == 'array' else 'one run'}; "
                        f"this is {'a sweep' if len(cfgs) > 1 else 'one run'}")
    first = cfgs[0]
    configs = [config_yaml(c) for c in cfgs]
    for text in configs:
        if any(line.strip() == CONFIG_END for line in text.splitlines()):
            raise UserError(f"a config value is the line {CONFIG_END}, which ends the embedded config")
    array = ""
    if len(cfgs) > 1:
        array = f"0-{len(cfgs) - 1}" + (f"%{throttle}" if throttle else "")
    python = first.cluster.container.python if first.cluster.container.enabled else (
        first.cluster.python or sys.executable)
    prepare_cmd, launch_cmd = job_commands(first.cluster)
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(str(templates_dir())), undefined=jinja2.StrictUndefined,
                             keep_trailing_newline=True, trim_blocks=True, lstrip_blocks=True, autoescape=False)
    env.filters["q"] = lambda v: shlex.quote(str(v))
    env.filters["comment"] = _comment
    return env.get_template(f"{template}.sbatch.j2").render(
        version=__version__, command=command, cfg=first, cluster=first.cluster,
        sbatch=sbatch_options(first, array), configs=configs, config_end=CONFIG_END,
        n_runs=len(cfgs), python=python, prepare=prepare_cmd, launch=launch_cmd,
        setup=list(first.cluster.setup),
    )


def prepare(text: str, index: int, job_id: str = "") -> Path:
    """``python -m hpcrun.job prepare``: writes config ``index`` of the embedded YAML documents into its run
    directory (refusing a directory that holds another run), records the Slurm job, returns the run directory."""
    import yaml
    from omegaconf import OmegaConf

    from hpcrun.config.compose import check
    from hpcrun.config.schema import Config, register
    from hpcrun.job.runstate import read_state
    from hpcrun.launch.rundir import CONFIG_FILE, Prepared, record_submission, refuse_another_run, write_run_dir

    docs = [d for d in yaml.safe_load_all(text) if d]
    if not 0 <= index < len(docs):
        raise UserError(f"SLURM_ARRAY_TASK_ID={index}: the script holds {len(docs)} run(s)")
    register()
    cfg = check(OmegaConf.merge(OmegaConf.structured(Config), docs[index]))
    run_dir = Path(cfg.run.dir)
    if (run_dir / CONFIG_FILE).exists():
        refuse_another_run(cfg, run_dir)  # the job fails with that line rather than mixing two runs
    else:
        cfg.run.fresh = False
        write_run_dir(cfg, Prepared(run_dir, "new", ""))
    state = read_state(run_dir)
    if job_id and state.get("status") != "completed" and state.get("job_id") != job_id:
        record_submission(run_dir, job_id)  # hpcrun status/cancel/logs find the job
    return run_dir
