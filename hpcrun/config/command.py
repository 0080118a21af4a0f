"""``hpcrun run -- COMMAND`` on the login node: what the command line tells before anything runs (torch-free).

The run's name from the command, whether it is a launcher that starts its own workers, and whether its program and
script exist. The task itself (its settings and the job side) is :mod:`hpcrun.tasks.command`.
"""

from __future__ import annotations

import functools
import os
from pathlib import Path
from typing import Any, Sequence

from hpcrun.errors import ConfigError

# Commands that start one worker process per GPU themselves (torchrun, accelerate launch, deepspeed, trl sft): the
# job runs them once per node, not once per GPU under srun.
_LAUNCHER_PROGRAMS = {"torchrun", "deepspeed"}
_LAUNCHER_MODULES = {"torch.distributed.run", "torch.distributed.launch", "accelerate.commands.launch"}
_TRL_NOT_TRAINING = {"env", "vllm-serve"}  # trl's commands that train nothing (trl/cli/commands)


def _script_index(args: Sequence[str]) -> int:
    """Where the command's script is (its first ``.py``/``.sh`` argument), or len(args)."""
    return next((i for i, a in enumerate(args) if i > 0 and a.endswith((".py", ".sh")) and not a.startswith("-")),
                len(args))


def _module(args: Sequence[str]) -> str:
    """The module of ``python -m MODULE`` (or a launcher's ``-m MODULE``), or "". A ``-m`` after the script is
    the script's own argument (a Hydra app's ``-m`` for multirun)."""
    before = args[1:_script_index(args)]
    return next((before[i + 1] for i, a in enumerate(before[:-1]) if a == "-m"), "")


def starts_workers(argv: Sequence[str]) -> bool:
    """Whether ``argv`` is a launcher that starts its own worker processes (torchrun, accelerate launch, ...)."""
    if not argv:
        return False
    name = os.path.basename(argv[0])
    if name in _LAUNCHER_PROGRAMS:
        return True
    if name == "accelerate":
        return len(argv) > 1 and argv[1] == "launch"
    if name == "trl":  # its training commands (sft, dpo, grpo, ...) run `accelerate launch` in their process
        return len(argv) > 1 and not argv[1].startswith("-") and argv[1] not in _TRL_NOT_TRAINING
    return name.startswith("python") and _module(argv) in _LAUNCHER_MODULES


def command_name(argv: Sequence[str]) -> str:
    """A run name for a command: its module's (``-m pkg.train``, before any script), its script's (``run_clm`` for
    ``python run_clm.py``, ``train`` for ``torchrun --nproc_per_node=2 train.py`` or ``python train.py -m
    lr=1,2``), or the program's."""
    args = list(argv)
    module = _module(args)
    if module:
        return module.rpartition(".")[2] or "command"
    script = _script_index(args)
    if script < len(args):
        return Path(args[script]).stem or "command"
    return Path(args[0]).name if args else "command"


def check_runnable(argv: Sequence[str], cfg: Any, cwd: Path) -> None:
    """On the login node: the program exists where the job will look for it (this PATH: sbatch passes the
    environment on), and a script named after python exists. Not checked inside a container, or after
    ``cluster.setup`` lines, which change what the job finds."""
    import shutil

    program = argv[0]
    if cfg.cluster.container.enabled or cfg.cluster.setup:
        return
    if "/" in program:
        path = Path(program) if Path(program).is_absolute() else cwd / program
        if path.is_file() and not os.access(path, os.X_OK):
            interpreter = {".py": "python", ".sh": "bash"}.get(path.suffix, "its interpreter")
            raise ConfigError("command", program, f"an executable file ({path} is not executable: chmod +x it, or "
                              f"name its interpreter: {interpreter} {program})")
        if not path.is_file():
            raise ConfigError("command", program, f"an executable file (there is none at {path})")
    elif shutil.which(program) is None:
        raise ConfigError("command", program, "a program on the PATH the job gets (this one: not found)")
    name = os.path.basename(program)
    shell = name in ("sh", "bash", "zsh", "dash")
    if (name.startswith("python") or shell) and len(argv) > 1 and argv[1].endswith(".sh" if shell else ".py"):
        script = Path(argv[1]) if Path(argv[1]).is_absolute() else cwd / argv[1]
        if not script.is_file():
            what = "shell script" if shell else "Python script"
            raise ConfigError("command", argv[1], f"a {what} (there is none at {script})")
    if os.path.basename(program).startswith("python"):
        python = str(Path(program) if "/" in program and Path(program).is_absolute() else
                     cwd / program if "/" in program else shutil.which(program))
        _warn_without_hpcrun(python, program)


@functools.lru_cache(maxsize=None)
def _warn_without_hpcrun(python: str, program: str) -> None:
    """One line on stderr when the command's python cannot import hpcrun (the system python where the venv was not
    activated): its Trainer would run without hpcrun's saves and resume, and its script may miss torch as well.
    A warning, not a refusal: a plain command runs fine without hpcrun."""
    import subprocess
    import sys

    if os.path.abspath(python) == os.path.abspath(sys.executable):  # (not realpath: a venv's python is a link)
        return
    try:
        found = subprocess.run([python, "-c", "import importlib.util, sys; "
                                "sys.exit(importlib.util.find_spec('hpcrun') is None)"],
                               capture_output=True, timeout=30).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return
    if not found:
        who = f"{program} is {python}, which" if program != python else program
        print(f"hpcrun: warning: {who} cannot import hpcrun (not this environment's "
              f"python, {sys.executable}): a Trainer in the command runs without hpcrun's saves and resume. Activate "
              "the environment, or name its python", file=sys.stderr, flush=True)
