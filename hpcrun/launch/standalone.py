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
from typing import Any, Sequence, Tuple

from hpcrun.errors import ConfigError, UserError

TEMPLATES = ("single", "multi_gpu", "multi_node", "array", "singularity")
CONFIG_END = "HPCRUN_CONFIG_END"
# What a '#' comment line cannot hold as is: a line break would end the comment and bash would run the rest.
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")

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


def _comment(value: Any) -> str:
    """``value`` for a ``#`` comment line: control characters as Python escapes (a line break becomes ``\\n``)."""
    return _CONTROL.sub(lambda m: repr(m.group())[1:-1], str(value))


def job_commands(cluster: Any) -> Tuple[str, str]:
    """The prepare command (batch host) and ``srun ... PYTHON -u -m hpcrun.job run "$RUN_DIR"`` (every rank),
    both inside the container when it is enabled (:func:`~hpcrun.slurm.sbatch.python_command`)."""
    from hpcrun.slurm.sbatch import python_command

    python = python_command(cluster)
    srun = " ".join(["srun", "--unbuffered", *(shlex.quote(a) for a in cluster.srun_args)])
    return f"{python} -m hpcrun.job prepare", f'{srun} {python} -u -m hpcrun.job run "$RUN_DIR"'


def render_standalone(cfgs: Sequence[Any], command: str, template: str = "", throttle: int = 0) -> str:
    """The script for one run (``cfgs`` of one) or a sweep (one array task per config)."""
    import jinja2

    from hpcrun.slurm.sbatch import setup_lines, standalone_options, teardown_lines

    from hpcrun import __version__
    from hpcrun.rundir.create import config_yaml
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
        sbatch=standalone_options(first, array), configs=configs, config_end=CONFIG_END,
        n_runs=len(cfgs), python=python, prepare=prepare_cmd, launch=launch_cmd,
        setup=[*first.cluster.setup, *setup_lines()], teardown=teardown_lines(run_dir_expr='"$RUN_DIR"'),
    )
