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

No torch at import time: torch.distributed is used only when a process group is up.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Mapping, Optional

log = logging.getLogger("hpcrun")


def _distributed() -> bool:
    try:
        import torch.distributed as dist
    except ImportError:
        return False
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def barrier() -> None:
    """Waits for every rank (no-op in a single process)."""
    if _distributed():
        import torch.distributed as dist

        dist.barrier()


def share_max(flags: list) -> list:
    """Element-wise max of integer flags over all ranks (identity in a single process)."""
    if not _distributed():
        return flags
    import torch
    import torch.distributed as dist

    t = torch.tensor(flags, dtype=torch.int32)
    if dist.get_backend() == "nccl":
        t = t.cuda()
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return [int(x) for x in t.cpu().tolist()]


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
        triggers: the run's :class:`~hpcrun.job.triggers.TimeTriggers` (checkpoint.* and the deadline), restored
            from ``resume_from``.
        ledger: the run's :class:`~hpcrun.job.ledger.Ledger` (``ledger.jsonl``, for ``hpcrun report``).
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


    # -- helpers for a training loop of your own ------------------------------------------------------------

    def step_started(self) -> None:
        """Call at the start of each optimizer step (times the steps for the deadline arithmetic)."""
        self.triggers.step_started()

    def step_ended(self, step: Optional[int] = None) -> Any:
        """Call after each optimizer step, on every rank, with the step count (for the ledger). Returns a
        :class:`~hpcrun.job.triggers.Decision`: ``save`` (checkpoint now: periodic, deadline or a stop signal) and
        ``stop`` (then return :meth:`stopped`), decided on rank 0 and by a signal on any rank, shared by all ranks.
        """
        from hpcrun.job.triggers import Decision

        d = self.triggers.step_ended()
        signalled = self.stop_flags.pending() if self.stop_flags else None
        save, stop, sig = share_max([int(self.is_main and d.save), int(self.is_main and d.stop),
                                     int(signalled is not None)])
        decision = Decision(save=bool(save), stop=bool(stop), reason=d.reason if self.is_main else "")
        if sig:
            decision.save = decision.stop = True
            decision.reason = f"signal {signalled[0]}" if signalled else "a stop signal (on another rank)"
        elif stop and not self.is_main:
            decision.reason = "deadline (decided on rank 0)"
        if self.ledger is not None and step is not None:
            self.ledger.step(step, force=decision.save)
            if sig:
                self.ledger.event("signal", step=step, signal=decision.reason[len("signal "):] if signalled else
                                  decision.reason, received_at=signalled[1] if signalled else None)
            elif stop:
                self.ledger.event("deadline", step=step, reason=decision.reason)
        self.triggers.save_why = "signal" if sig else "deadline" if stop else "periodic"
        return decision

    @contextlib.contextmanager
    def saving(self, step: int) -> Iterator[Path]:
        """Yields the folder to write checkpoint ``step`` into, on every rank; on a clean exit the checkpoint is
        committed (marker, then rename to ``checkpoints/step-N``) once every rank has written its part, and old
        ones pruned. An exception leaves only a staging folder, which the next start removes."""
        started = time.monotonic()
        folder = self.checkpoints.staging(step)
        if self.is_main:
            self.checkpoints.clear_staging()
            folder.mkdir(parents=True)
        barrier()
        yield folder
        barrier()  # every rank's part is written
        if self.is_main:
            path = self.checkpoints.commit(step, extra_state=self.triggers.state())
            deleted = self.checkpoints.prune()
            log.info("checkpoint %s complete%s", path.name,
                     f"; deleted step {', '.join(map(str, deleted))}" if deleted else "")
        barrier()  # nobody goes on (or exits) before the checkpoint is in place
        seconds = time.monotonic() - started
        self.triggers.saved(seconds)
        if self.ledger is not None:
            self.ledger.save(step, time.time() - seconds, seconds, getattr(self.triggers, "save_why", "periodic"))

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
    """

    step: int
    reason: str
    signal: Optional[str] = None
