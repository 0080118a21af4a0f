"""What a task learns about the process it runs in: run directory, rank, Slurm job."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Optional


@dataclass(frozen=True)
class JobContext:
    """Handed to every task next to the config.

    Attributes:
        run_dir: the run directory (everything the run writes lands here).
        rank: this process's global rank (``SLURM_PROCID``; 0 locally).
        world_size: number of processes (``SLURM_NTASKS``; 1 locally).
        local_rank: rank on this node (``SLURM_LOCALID``; 0 locally).
        job_id: the Slurm job id (``<array>_<index>`` for array tasks), or None locally.
        restart: how many times Slurm restarted the job (``SLURM_RESTART_COUNT``; 0 for the first start).
        checkpoints: the run's :class:`~hpcrun.job.checkpoint.CheckpointDir`.
        resume_from: the newest complete checkpoint to resume from (None: start from scratch).
        end_time: when the job ends, as a Unix time (None: unknown).
        stop_flags: the :class:`~hpcrun.job.signals.StopFlags` set by stop signals.
    """

    run_dir: Path
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    job_id: Optional[str] = None
    restart: int = 0
    checkpoints: Any = None
    resume_from: Any = None
    end_time: Optional[float] = None
    stop_flags: Any = None

    @property
    def on_slurm(self) -> bool:
        return self.job_id is not None

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @classmethod
    def from_env(cls, run_dir: Path, environ: Optional[Mapping[str, str]] = None) -> "JobContext":
        env = os.environ if environ is None else environ
        job_id = env.get("SLURM_JOB_ID")
        if env.get("SLURM_ARRAY_JOB_ID") and env.get("SLURM_ARRAY_TASK_ID"):
            job_id = f"{env['SLURM_ARRAY_JOB_ID']}_{env['SLURM_ARRAY_TASK_ID']}"
        return cls(
            run_dir=Path(run_dir),
            rank=int(env.get("SLURM_PROCID", env.get("RANK", 0))),
            world_size=int(env.get("SLURM_NTASKS", env.get("WORLD_SIZE", 1))),
            local_rank=int(env.get("SLURM_LOCALID", env.get("LOCAL_RANK", 0))),
            job_id=job_id,
            restart=int(env.get("SLURM_RESTART_COUNT", 0)),
        )


@dataclass(frozen=True)
class Stopped:
    """What a task returns when it saved and stopped early (signal or deadline) rather than finishing.

    Attributes:
        step: the global step of the checkpoint it saved.
        reason: why it stopped, for the log and the run's state.
        signal: the signal's name (``SIGTERM``, ``SIGUSR2``, ``SIGINT``) when a signal stopped it.
    """

    step: int
    reason: str
    signal: Optional[str] = None
