"""For a script of your own started by ``hpcrun run -- python train.py``: the decisions hpcrun's own task gets.

A plain training loop asks four things (docs/own-script.md):

    from hpcrun import script

    start = 0
    ckpt = script.latest_checkpoint()           # the newest complete checkpoint, or None
    if ckpt is not None:
        start = load(ckpt / "state.pt")          # your own loading
    for step in range(start, total):
        train_one_step()
        decision = script.step_ended(step + 1)   # should I save now? (periodic, deadline, stop signal)
        if decision.save:
            with script.saving(step + 1) as folder:   # every rank writes into folder; committed atomically
                save(folder / "state.pt")
        if decision.stop:
            script.stop_and_requeue(step + 1)    # I have stopped: requeue me (exits the process)

Outside ``hpcrun run`` the same script runs as before: ``step_ended`` never asks for a save, ``latest_checkpoint``
is None. Under several processes (torchrun, srun) every rank calls ``step_ended`` and ``saving``; the decision is
the same on all of them (one all-reduce over torch.distributed once it is initialised).

A transformers Trainer in the command needs none of this: hpcrun adopts it (hpcrun.frameworks.transformers.adopt).
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import os
from pathlib import Path
from typing import Any, Dict, Iterator, Optional

log = logging.getLogger("hpcrun")
_session: Optional["Session"] = None


def active() -> bool:
    """Whether this process runs under ``hpcrun run``."""
    return bool(os.environ.get("HPCRUN_RUN_DIR"))


def rank() -> int:
    """This process's global rank: torch.distributed's once initialised, else the launcher's RANK, else 0."""
    import sys

    dist = sys.modules.get("torch.distributed")
    if dist is not None and dist.is_available() and dist.is_initialized():
        return int(dist.get_rank())
    return int(os.environ.get("RANK", os.environ.get("SLURM_PROCID", "0")) or 0)


class Session:
    """What the command's process knows of its run (from the environment ``hpcrun run`` gives it): the config,
    this start's ledger, the stop signals (handlers installed here), and the time triggers per checkpoint folder."""

    def __init__(self, env: Optional[Dict[str, str]] = None) -> None:
        from hpcrun.config.compose import load_saved
        from hpcrun.job.signals import StopFlags
        from hpcrun.rundir import RunDir
        from hpcrun.rundir.ledger import Ledger

        env = dict(os.environ if env is None else env)
        if not log.handlers:  # the command's own logging setup is its business: hpcrun's lines go to stderr
            handler = logging.StreamHandler()
            handler.setFormatter(logging.Formatter("hpcrun: %(message)s"))
            log.addHandler(handler)
            log.setLevel(logging.INFO if rank() == 0 else logging.WARNING)
            log.propagate = False
        self.run_dir = Path(env["HPCRUN_RUN_DIR"])
        self.start = int(env.get("HPCRUN_START") or 1)
        self.end_time = float(env["HPCRUN_END_TIME"]) if env.get("HPCRUN_END_TIME") else None
        self.cfg = load_saved(RunDir(self.run_dir).config)
        self.ledger = Ledger(self.run_dir, self.start, writer=rank() == 0)
        signals = [s for s in (env.get("HPCRUN_SIGNALS") or "SIGUSR2,SIGTERM").split(",") if s]
        self.flags = StopFlags().install(signals)
        self._triggers: Dict[Path, Any] = {}
        self.last_step: Optional[int] = None
        self.stop_requested = False
        self.stop_decided = False  # a step_ended() told the loop to stop (the signal came during its training)
        atexit.register(self._exit)

    def _exit(self) -> None:
        """Where the command got to, for ``hpcrun status`` (progress is otherwise recorded once a minute); and a
        stop signal that came after the training (the process exits without having saved for it or asked for a
        requeue, and no step_ended() told a loop to stop for it: its training had ended, and what came after ran
        to its end), for the job's entry. A loop that was told to stop and left without stop_and_requeue() stays
        a stopped run, as before."""
        if self.last_step is not None:
            self.ledger.step(self.last_step, force=True)
        if self.flags.signal and not (self.stop_requested or self.stop_decided) and rank() == 0:
            import time

            from hpcrun.rundir import RunDir
            from hpcrun.rundir.atomic import atomic_write_json

            atomic_write_json(RunDir(self.run_dir).signal_after_training, {
                "start": self.start, "signal": self.flags.signal, "t": time.time()})

    @property
    def restarted(self) -> bool:
        """Whether an earlier start of this run came before (its checkpoints are the ones to resume from)."""
        return self.start > 1

    def checkpoints(self) -> Any:
        """The run's own checkpoint folder, ``<run.dir>/checkpoints`` (``step-N``, pruned to keep_last)."""
        from hpcrun.rundir import RunDir
        from hpcrun.rundir.checkpoints import CheckpointDir

        return CheckpointDir(RunDir(self.run_dir).checkpoints, self.cfg.checkpoint.keep_last)

    def triggers(self, checkpoints: Any) -> Any:
        """The time triggers of saves into ``checkpoints``, continued from its newest complete checkpoint."""
        if checkpoints.root not in self._triggers:
            from hpcrun.job.entry import JobEntry
            from hpcrun.rundir.state import RunState

            latest, _ = checkpoints.latest()
            triggers = JobEntry.triggers(self.cfg, RunState(self.run_dir, writer=False), latest, self.end_time,
                                         self.ledger)
            triggers.step_started()
            self._triggers[checkpoints.root] = triggers
        return self._triggers[checkpoints.root]

    def request_stop(self, step: int, reason: str) -> None:
        """Tells the job's entry that this command saved and stopped to be requeued (rank 0 writes it)."""
        import time

        from hpcrun.job.ranks import barrier
        from hpcrun.rundir import RunDir
        from hpcrun.rundir.atomic import atomic_write_json

        self.stop_requested = True
        if rank() == 0:
            atomic_write_json(RunDir(self.run_dir).stop_request, {
                "start": self.start, "step": int(step), "reason": reason, "signal": self.flags.signal,
                "t": time.time()})
        barrier()


def session() -> Session:
    """This process's session (made at the first call: the stop-signal handlers are installed then)."""
    global _session
    if _session is None:
        if not active():
            raise RuntimeError("hpcrun.script needs a command started by `hpcrun run -- COMMAND`")
        _session = Session()
    return _session


def restarted() -> bool:
    """Whether this start of the run follows an earlier one (False outside hpcrun)."""
    return active() and session().restarted


def latest_checkpoint(folder: Optional[str] = None) -> Optional[Path]:
    """The newest complete checkpoint (``<run.dir>/checkpoints/step-N``, or in ``folder``); None when there is
    none, or outside hpcrun. A save that was interrupted is never returned."""
    if not active():
        return None
    from hpcrun.rundir.checkpoints import CheckpointDir

    where = CheckpointDir(Path(folder)) if folder else session().checkpoints()
    latest, skipped = where.latest()
    for ckpt, why in skipped:
        log.warning("skipping %s: %s", ckpt.path, why)
    return latest.path if latest else None


def planned(steps: int) -> None:
    """Tells hpcrun how many steps the run trains in all (``hpcrun status`` shows step N/steps)."""
    if active() and rank() == 0:
        session().ledger.planned(steps)


def step_ended(step: int) -> Any:
    """Call after each optimizer step, on every rank: returns a Decision whose ``save`` says to checkpoint now
    (periodic, deadline or a stop signal) and ``stop`` to stop after that save (then :func:`stop_and_requeue`)."""
    from hpcrun.job.triggers import Decision

    if not active():
        return Decision()
    from hpcrun.job.steps import decide

    s = session()
    triggers = s.triggers(s.checkpoints())
    decision = decide(triggers, s.flags, rank() == 0, s.ledger, step)
    s.last_step = step
    s.stop_decided = s.stop_decided or bool(decision.stop)
    triggers.step_started()  # the next step is timed from here
    return decision


@contextlib.contextmanager
def saving(step: int) -> Iterator[Path]:
    """Yields the folder to write checkpoint ``step`` into, on every rank; leaving the block commits it
    atomically (marker, then the rename to ``<run.dir>/checkpoints/step-N``) and prunes old ones."""
    from hpcrun.job.steps import checkpoint_save

    s = session()
    checkpoints = s.checkpoints()
    with checkpoint_save(checkpoints, step, is_main=rank() == 0, triggers=s.triggers(checkpoints),
                         ledger=s.ledger) as folder:
        yield folder


def stop_and_requeue(step: int, reason: str = "") -> None:
    """After the save that ``decision.stop`` asked for: tells hpcrun to requeue the run and exits (status 0)."""
    from hpcrun.job.ranks import close_process_group
    from hpcrun.job.signals import signal_reason

    s = session()
    signal = s.flags.signal
    s.request_stop(step, reason or (signal_reason(signal) if signal else "deadline"))
    close_process_group()
    raise SystemExit(0)
