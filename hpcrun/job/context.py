"""What a task learns about the process it runs in, and the helpers a hand-written training loop needs.

A task is any importable function ``task(cfg, ctx)``. Besides where it runs (run directory, rank, Slurm job), the
context carries the run's time triggers, so a loop of your own saves on the same wall-clock schedule, stops on the
same signals and before the same deadline as hpcrun's Trainer task (see examples/accelerate_task.py):

    for step in range(start, cfg.train.max_steps):
        ctx.step_started()
        ...                                      # forward, backward, optimizer step
        decision = ctx.step_ended(step + 1)      # the same answer on every rank
        if decision.save:                        # periodic, deadline or signal: the should-checkpoint flag
            with ctx.saving(step + 1) as folder:
                accelerator.save_state(folder)   # every rank writes its part; committed atomically after
        if decision.stop:
            return ctx.stopped(step + 1, decision)

The decisions and the save sequence are :mod:`hpcrun.job.steps`'s, the same ones the Trainer adapter uses.
No torch at import time: torch.distributed is used only when a process group is up.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ContextManager, Mapping, Optional

log = logging.getLogger("hpcrun")


def slurm_job_id(env: Mapping[str, str]) -> Optional[str]:
    """This process's Slurm job: ``<array>_<index>`` for an array task (how sacct and scontrol name it), else the
    job id; None outside Slurm."""
    if env.get("SLURM_ARRAY_JOB_ID") and env.get("SLURM_ARRAY_TASK_ID"):
        return f"{env['SLURM_ARRAY_JOB_ID']}_{env['SLURM_ARRAY_TASK_ID']}"
    return env.get("SLURM_JOB_ID")


def machine(cpuinfo: str = "/proc/cpuinfo") -> str:
    """The host, its CPU model and the CPUs this process may run on, for a start's log: a bit-for-bit continuation
    holds on the same kind of machine and thread count, and a requeue may land on another kind."""
    import socket

    model = "unknown CPU"
    try:
        with open(cpuinfo, errors="replace") as f:
            for line in f:
                if line.startswith(("model name", "Model", "cpu model")) and ":" in line:
                    model = line.split(":", 1)[1].strip() or model
                    break
    except OSError:
        pass
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return f"{socket.gethostname()}: {model}, {cpus} CPUs"


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
        checkpoints: the run's :class:`~hpcrun.rundir.checkpoints.CheckpointDir`.
        resume_from: the newest complete checkpoint to resume from (None: start from scratch).
        end_time: when the job ends, as a Unix time (None: unknown).
        stop_flags: the :class:`~hpcrun.job.signals.StopFlags` set by stop signals.
        triggers: the run's :class:`~hpcrun.job.triggers.TimeTriggers` (checkpoint.* and the deadline), restored
            from ``resume_from``.
        ledger: the run's :class:`~hpcrun.rundir.ledger.Ledger` (``ledger.jsonl``, for ``hpcrun report``).
        allocation: the Slurm job a local run runs inside (an interactive ``srun --pty`` or ``salloc`` session, or
            a batch script of the user's own), whose end it saves before; None elsewhere.
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
    triggers: Any = None
    ledger: Any = None
    allocation: Optional[str] = None

    @property
    def deadline(self) -> Optional[float]:
        """Seconds until the job's end (None: no known end)."""
        return None if self.end_time is None else self.end_time - time.time()

    @property
    def on_slurm(self) -> bool:
        return self.job_id is not None

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @classmethod
    def from_env(cls, run_dir: Path, environ: Optional[Mapping[str, str]] = None,
                 local: bool = False) -> "JobContext":
        """This process's context. ``local``: the local launcher's one process, in the foreground: not the Slurm
        job's, even inside an allocation (its ranks, requeues and signals are the batch job's, not this run's)."""
        env = os.environ if environ is None else environ
        job_id = slurm_job_id(env)
        if local:
            return cls(run_dir=Path(run_dir), allocation=job_id)
        return cls(
            run_dir=Path(run_dir),
            rank=int(env.get("SLURM_PROCID", env.get("RANK", 0))),
            world_size=int(env.get("SLURM_NTASKS", env.get("WORLD_SIZE", 1))),
            local_rank=int(env.get("SLURM_LOCALID", env.get("LOCAL_RANK", 0))),
            job_id=job_id,
            restart=int(env.get("SLURM_RESTART_COUNT", 0)),
        )


    # -- helpers for a training loop of your own ------------------------------------------------------------

    def step_started(self) -> None:
        """Call at the start of each optimizer step (times the steps for the deadline arithmetic)."""
        self.triggers.step_started()

    def planned(self, steps: int) -> None:
        """Tells hpcrun how many steps the run trains in all (``hpcrun status`` shows step N/steps)."""
        if self.ledger is not None:
            self.ledger.planned(steps)

    def step_ended(self, step: Optional[int] = None) -> Any:
        """Call after each optimizer step, on every rank, with the step count (for the ledger). Returns a
        :class:`~hpcrun.job.triggers.Decision`: ``save`` (checkpoint now: periodic, deadline or a stop signal) and
        ``stop`` (then return :meth:`stopped`), decided on rank 0 and by a signal on any rank, shared by all ranks.
        """
        from hpcrun.job.steps import decide

        return decide(self.triggers, self.stop_flags, self.is_main, self.ledger, step)

    def saving(self, step: int) -> ContextManager[Path]:
        """Yields the folder to write checkpoint ``step`` into, on every rank; on a clean exit the checkpoint is
        committed (marker, then rename to ``checkpoints/step-N``) once every rank has written its part, and old
        ones pruned. An exception leaves only a staging folder, which the next start removes; a full disk raises
        :class:`~hpcrun.errors.DiskFullError` (the run stops resumable)."""
        from hpcrun.job.steps import checkpoint_save

        return checkpoint_save(self.checkpoints, step, is_main=self.is_main, triggers=self.triggers,
                               ledger=self.ledger)

    def stopped(self, step: int, decision: Any) -> "Stopped":
        """What to return after the save when ``decision.stop``: the job then requeues itself (Slurm) or says
        how to resume (locally)."""
        signal = self.stop_flags.signal if self.stop_flags else None
        return Stopped(step=step, reason=decision.reason, signal=signal)


@dataclass(frozen=True)
class Stopped:
    """What a task returns when it saved and stopped early (signal or deadline) rather than finishing.

    Attributes:
        step: the global step of the checkpoint it saved.
        reason: why it stopped, for the log and the run's state.
        signal: the signal's name (``SIGTERM``, ``SIGUSR2``, ``SIGINT``) when a signal stopped it.
        saved: whether ``step`` was saved on the way out (False: a command of the user's own that hpcrun saw end,
            with no word of a save; ``step`` is then the last step it recorded).
    """

    step: int
    reason: str
    signal: Optional[str] = None
    saved: bool = True
