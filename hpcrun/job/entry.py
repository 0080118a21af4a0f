"""The job's entry point: the one callable both launchers run.

On Slurm, submitit pickles a :class:`JobEntry` and runs it under ``srun`` on the compute node; locally hpcrun
calls the same object in the foreground. It holds nothing but the run directory: every start (first, requeued,
resumed) reads the saved config from disk, so no stale state travels inside the submission.
"""

from __future__ import annotations

import importlib
import logging
import sys
from pathlib import Path
from typing import Any, Callable

from hpcrun.job.context import JobContext

log = logging.getLogger("hpcrun")
FINAL_DIR = "final"


def import_target(path: str) -> Callable[..., Any]:
    """Imports ``package.module.function`` (the config's ``task._target_``)."""
    module_name, _, attr = path.rpartition(".")
    if not module_name:
        raise ImportError(f"task._target_={path!r} is not a dotted path such as package.module.function")
    return getattr(importlib.import_module(module_name), attr)


def setup_logging(ctx: JobContext) -> None:
    """One log format for hpcrun and transformers; ranks other than 0 only warn."""
    level = logging.INFO if ctx.is_main else logging.WARNING
    prefix = f"[rank {ctx.rank}] " if ctx.world_size > 1 else ""
    logging.basicConfig(
        level=level,
        format=f"%(asctime)s {prefix}%(levelname)s %(name)s: %(message)s",
        datefmt="%Y-%m-%d %H:%M:%S",
        stream=sys.stderr,
        force=True,
    )


class JobEntry:
    """Runs the task of the run in ``run_dir``.

    Args:
        run_dir: the run directory holding ``config.yaml``.
    """

    def __init__(self, run_dir: str | Path) -> None:
        self.run_dir = str(run_dir)

    def __call__(self) -> str:
        from hpcrun.config.compose import load_saved
        from hpcrun.launch.rundir import CONFIG_FILE

        run_dir = Path(self.run_dir)
        ctx = JobContext.from_env(run_dir)
        setup_logging(ctx)
        cfg = load_saved(run_dir / CONFIG_FILE)
        where = f"Slurm job {ctx.job_id} (restart {ctx.restart})" if ctx.on_slurm else "this machine (local)"
        log.info("run %s in %s on %s, rank %d of %d", cfg.run.name, run_dir, where, ctx.rank, ctx.world_size)
        task = import_target(cfg.task._target_)
        result = task(cfg, ctx)
        return str(result)

    def __repr__(self) -> str:
        return f"JobEntry({self.run_dir!r})"
