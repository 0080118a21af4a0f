"""The one step-and-save protocol every training framework goes through.

At the end of each optimizer step, on every rank, :func:`decide` asks the run's time triggers (periodic save,
log, evaluation, the deadline) and the stop flags (a signal on any rank), shares the answer over the ranks (one
small all-reduce), and records it in the ledger: every rank saves at the same step and stops together, and the
decision is taken on rank 0 only (a signal counts from any rank).

To save, :func:`checkpoint_save` runs the save sequence: clear what an interrupted save left, let every rank write
its part into the staging folder, then (rank 0) the completion marker and the rename to ``checkpoints/step-N``,
prune old ones, and record the save's time. A full disk becomes a :class:`~hpcrun.errors.DiskFullError` with the
half-written save removed.

The adapters (:mod:`hpcrun.frameworks`) and the custom-loop context (:class:`hpcrun.job.context.JobContext`) only
call these two; none repeats them.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import shutil
import signal
import time
from pathlib import Path
from typing import Any, Iterator, Optional

from hpcrun.errors import DiskFullError
from hpcrun.job.faults import save_pause
from hpcrun.job.ranks import barrier, share_max
from hpcrun.job.signals import signal_reason
from hpcrun.job.triggers import Decision

log = logging.getLogger("hpcrun")

# How a full disk or quota shows through the writers: OSError's own words; torch's zip writer says "file write
# failed" or "unexpected pos N vs M" (a short write); safetensors passes the OS error's text on.
_FULL = ("No space left on device", "Disk quota exceeded", "file write failed", "unexpected pos")
LOW_SPACE = 64 * 2**20  # less than this free where a save failed: the disk is full, whatever the writer said


def decide(triggers: Any, stop_flags: Any, is_main: bool, ledger: Any = None, step: Optional[int] = None) -> Decision:
    """The end of an optimizer step: save? log? evaluate? stop? The same answer on every rank.

    Args:
        triggers: the run's :class:`~hpcrun.job.triggers.TimeTriggers`.
        stop_flags: the :class:`~hpcrun.job.signals.StopFlags` (None: signals are not handled).
        is_main: whether this is global rank 0 (the time decisions are its).
        ledger: where the step, a signal or the deadline is recorded (None: nowhere).
        step: the global step that just ended (for the ledger and the log).

    Returns:
        The decision; ``decision.why`` says which kind of save it asks for (periodic, deadline, signal).
    """
    take_background(triggers, ledger, wait=False)  # a background save that finished: recorded now
    d = triggers.step_ended()
    signalled = stop_flags.pending() if stop_flags else None
    save, log_, evaluate, deadline, sig = share_max([
        int(is_main and d.save), int(is_main and d.log), int(is_main and d.evaluate), int(is_main and d.stop),
        int(signal.Signals[signalled[0]]) if signalled else 0,  # the signal itself: every rank names it
    ])
    decision = Decision(save=bool(save), log=bool(log_), evaluate=bool(evaluate), stop=bool(deadline),
                        reason=d.reason if is_main else "")
    if sig:
        name = signal.Signals(sig).name
        if signalled is None and stop_flags is not None:
            stop_flags.learned(name)  # from another rank: this rank's stop is recorded as that signal's
        decision.save = decision.stop = True
        decision.reason = signal_reason(name)
        decision.why = "signal"
    elif deadline:
        decision.save = True
        decision.reason = d.reason if is_main else "deadline (decided on rank 0)"
        decision.why = "deadline"
    elif save:
        decision.why = "periodic"
    if ledger is not None and step is not None:
        ledger.step(step, force=decision.save)
        if sig:
            ledger.event("signal", step=step, signal=name, received_at=signalled[1] if signalled else None)
        elif deadline:
            ledger.event("deadline", step=step, reason=decision.reason)
    triggers.save_why = decision.why
    if decision.stop:
        log.info("stopping after step %s: %s%s; saving now", step, decision.reason,
                 "" if not sig or signalled else " (received by another rank)")
    elif decision.save and is_main:
        log.info("step %s: %s", step, decision.reason)
    return decision


def disk_full(exc: BaseException, where: Any = None) -> bool:
    """Whether ``exc`` (or what caused it) says the disk or the quota is full, or ``where`` has (almost) no space."""
    seen: Optional[BaseException] = exc
    while seen is not None:
        if isinstance(seen, OSError) and seen.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        if any(m in str(seen) for m in _FULL):
            return True
        seen = seen.__cause__ or seen.__context__
    if where is not None:
        try:
            return shutil.disk_usage(where).free < LOW_SPACE
        except OSError:
            return False
    return False


# Saves that may be written in the background (hpcrun.job.background): not one that stops the run (a signal, the
# deadline: written before the job requeues or ends).
BACKGROUND = ("periodic", "trainer")


def take_background(triggers: Any, ledger: Any = None, wait: bool = True, checkpoints: Any = None,
                    timeout: Optional[float] = None) -> None:
    """Records a background save that finished (``wait``: waits for the one in progress, if any) in the time
    triggers and the ledger, as a synchronous save records itself; raises its error (a full disk as
    :class:`~hpcrun.errors.DiskFullError`, its staging folder removed)."""
    writer = getattr(triggers, "writer", None)
    if writer is None:
        return
    step, checkpoints = writer.step, checkpoints or writer.checkpoints
    try:
        done = writer.wait(timeout) if wait else writer.poll()
    except Exception as exc:  # noqa: BLE001 - only a full disk is turned into a DiskFullError
        root = getattr(checkpoints, "root", None)
        if not disk_full(exc, root):
            raise
        removed = checkpoints.clear_staging() if checkpoints is not None and writer.rank == 0 else []
        raise DiskFullError(f"disk full while saving step {step} in {root} (written in the background: {exc}); "
                            f"{'the half-written save was removed; ' if removed else ''}the earlier checkpoints are "
                            "intact") from exc
    if done is None:
        return
    triggers.written(done.seconds, done.blocked)
    if ledger is not None:
        ledger.save(done.step, done.began, done.blocked, done.why, written=done.seconds)
    log.info("checkpoint step-%d written in the background: %.1f s in all, training blocked %.2f s", done.step,
             done.seconds, done.blocked)


@contextlib.contextmanager
def checkpoint_save(checkpoints: Any, step: int, *, is_main: bool, triggers: Any, ledger: Any = None,
                    why: Optional[str] = None) -> Iterator[Path]:
    """Saves checkpoint ``step`` atomically, with every rank taking part: yields the staging folder, into which
    every rank writes its part inside the ``with`` block; on leaving it, rank 0 commits.

    With a background writer (``triggers.writer``, checkpoint.async_save), a periodic save's torch.save and
    safetensors writes are only copied out inside the block; writing them and the commit happen in the background
    (:mod:`hpcrun.job.background`). Any save first waits for the previous background one.

    Args:
        checkpoints: the run's :class:`~hpcrun.rundir.checkpoints.CheckpointDir`.
        step: the global step being saved.
        is_main: whether this is global rank 0 (it prepares, commits and prunes).
        triggers: the run's time triggers (their state goes into the checkpoint; the save time is measured).
        ledger: where the save is recorded.
        why: periodic, deadline, signal (default: what the last :func:`decide` asked for).

    Raises:
        DiskFullError: the disk or quota filled up; the staging folder is removed, older checkpoints are intact.
        Any other error of the writer: the staging folder stays, and the next start removes it.
    """
    why = why or getattr(triggers, "save_why", "") or "periodic"
    take_background(triggers, ledger, wait=True, checkpoints=checkpoints)  # never two saves at once
    writer = getattr(triggers, "writer", None)
    background = writer is not None and why in BACKGROUND
    started, wall = time.monotonic(), time.time()
    try:
        if is_main:
            checkpoints.clear_staging()
            checkpoints.staging(step).mkdir(parents=True)
        barrier()
        if background:
            from hpcrun.job.snapshots import capture_writes

            with capture_writes(checkpoints.staging(step)) as writes:
                yield checkpoints.staging(step)
        else:
            yield checkpoints.staging(step)
        barrier()  # every rank's part is written (in the background: copied out)
        if background:
            extra = triggers.state()  # this moment's, as a synchronous save records it

            def commit() -> None:
                _pause_before_commit(step)
                path = checkpoints.commit(step, extra_state=extra)
                deleted = checkpoints.prune()
                log.info("checkpoint %s complete%s", path.name,
                         f"; deleted step {', '.join(map(str, deleted))}" if deleted else "")

            writer.start(step, checkpoints.staging(step), writes, commit if is_main else (lambda: None), wall,
                         time.monotonic() - started, why, started, time.monotonic, checkpoints=checkpoints)
            triggers.handed_off()
            return
        _pause_before_commit(step)
        if is_main:
            path = checkpoints.commit(step, extra_state=triggers.state())
            deleted = checkpoints.prune()
            log.info("checkpoint %s complete%s", path.name,
                     f"; deleted step {', '.join(map(str, deleted))}" if deleted else "")
        barrier()  # nobody goes on (or exits) before the checkpoint is in place
    except Exception as exc:  # noqa: BLE001 - only a full disk is turned into a DiskFullError
        if not disk_full(exc, checkpoints.root):
            raise
        removed = checkpoints.clear_staging() if is_main else []
        raise DiskFullError(
            f"disk full while saving step {step} in {checkpoints.root} ({exc}); "
            f"{'the half-written save was removed; ' if removed else ''}the earlier checkpoints are intact"
        ) from exc
    seconds = time.monotonic() - started
    triggers.saved(seconds)
    if ledger is not None:
        ledger.save(step, wall, seconds, why)


def _pause_before_commit(step: int) -> None:
    """HPCRUN_FAULTS' pause (tests: a kill while a save is written leaves the previous checkpoint the newest)."""
    pause = save_pause()
    if pause:
        log.warning("HPCRUN_FAULTS: pausing %g s before completing step-%d", pause, step)
        time.sleep(pause)
