"""Checkpoint writes in the background: training waits for the state to be copied out, not for the disk.

A save with :class:`BackgroundSaves` (``checkpoint.async_save=true``, the default) goes:

1. in the training thread, on every rank: the previous save's background work is waited for; the framework's save
   code runs as before, but its large writes are deferred (:func:`hpcrun.job.snapshots.capture_writes`: tensors
   copied to CPU memory); every rank waits for the others (one barrier); training goes on;
2. in a background thread, on every rank: the deferred files are written into the staging folder, then a file
   ``.rank-R.written`` says this rank's part is complete;
3. then, in rank 0's background thread: once every rank's file is there, the checkpoint is committed as any save
   is (every file fsynced, the marker written last, the folder renamed to ``step-N``, old ones pruned).

So a kill during the background write leaves a staging folder (removed at the next start) and the previous
checkpoint the newest complete one. A save never overlaps the one before it. A save that stops the run (a signal,
the deadline) is written at once, not in the background, and so is done before the job requeues; so is one whose
framework writes are not deferrable. The background thread uses no collective (no barrier, no all-reduce: those
stay in the training thread); the ranks meet through the files.

The result of a background save (its step, how long training was blocked, how long until it was complete) is
taken back in the training thread (:meth:`BackgroundSaves.poll` at each step's end, :meth:`BackgroundSaves.wait`
before the next save and at the end), which records it in the time triggers and the ledger, as a synchronous save
records itself. An error of the background write is raised there too.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, List, Optional

log = logging.getLogger("hpcrun")
WRITTEN = ".rank-{rank}.written"
FAILED = ".rank-{rank}.failed"


@dataclass
class Finished:
    """A background save, once complete: what the triggers and the ledger record."""

    step: int
    began: float  # Unix time the save began
    blocked: float  # seconds training waited (the copy)
    seconds: float  # seconds from the save's start until the checkpoint was complete
    why: str
    nbytes: int


class BackgroundSaves:
    """The background writer of one process (see the module docstring).

    Args:
        rank: this process's global rank; rank 0 commits.
        world_size: how many ranks write parts of each checkpoint.
        poll_seconds: how often rank 0 looks for the other ranks' ``.written`` files.
    """

    def __init__(self, rank: int = 0, world_size: int = 1, poll_seconds: float = 0.05) -> None:
        self.rank = rank
        self.world_size = world_size
        self.poll_seconds = poll_seconds
        self._thread: Optional[threading.Thread] = None
        self._result: Optional[Finished] = None
        self._error: Optional[BaseException] = None
        self._abandon = threading.Event()
        self.step: Optional[int] = None  # the step being written, while one is
        self.checkpoints: Any = None  # where (a CheckpointDir), while one is

    @property
    def busy(self) -> bool:
        return self._thread is not None

    def start(self, step: int, staging: Path, writes: List[Any], commit: Callable[[], Any], began: float,
              blocked: float, why: str, started_clock: float, clock: Callable[[], float],
              checkpoints: Any = None) -> None:
        """Writes ``writes`` into ``staging`` in the background; rank 0 then waits for every rank's part and calls
        ``commit``."""
        if self._thread is not None:
            raise RuntimeError("a background save is still in progress: wait() for it first")
        nbytes = sum(w.nbytes for w in writes)

        def run() -> None:
            try:
                for w in writes:
                    w.write()
                (staging / WRITTEN.format(rank=self.rank)).write_text("")
                if self.rank == 0:
                    self._wait_for_ranks(staging)
                    for r in range(self.world_size):
                        (staging / WRITTEN.format(rank=r)).unlink(missing_ok=True)
                    commit()
                self._result = Finished(step, began, blocked, clock() - started_clock, why, nbytes)
            except BaseException as exc:  # noqa: BLE001 - handed to the training thread, which raises it
                self._error = exc
                try:
                    (staging / FAILED.format(rank=self.rank)).write_text(f"{type(exc).__name__}: {exc}")
                except OSError:
                    pass

        self.step, self.checkpoints = step, checkpoints
        self._abandon.clear()
        # A daemon: a process that is failing does not wait forever for a rank that died mid-save (wait() with a
        # timeout, then exit); a run that ends well waits for it explicitly (wait()).
        self._thread = threading.Thread(target=run, name=f"hpcrun-save-{step}", daemon=True)
        self._thread.start()

    def _wait_for_ranks(self, staging: Path) -> None:
        while not self._abandon.is_set():
            missing = [r for r in range(self.world_size) if not (staging / WRITTEN.format(rank=r)).exists()]
            if not missing:
                return
            failed = [r for r in missing if (staging / FAILED.format(rank=r)).exists()]
            if failed:
                text = (staging / FAILED.format(rank=failed[0])).read_text()
                raise OSError(f"rank {failed[0]} could not write its part of the checkpoint: {text}")
            time.sleep(self.poll_seconds)
        raise OSError("the save was abandoned before every rank had written its part (the job is failing)")

    def poll(self) -> Optional[Finished]:
        """The finished background save, once (None while it runs, or when there is none); raises its error."""
        if self._thread is None or self._thread.is_alive():
            return None
        return self._take()

    def wait(self, timeout: Optional[float] = None) -> Optional[Finished]:
        """Waits for the background save, if any, and returns it (raises its error). With ``timeout`` (a failing
        job): at most that long; a save still unfinished then is abandoned (its staging folder stays, and the
        next start removes it)."""
        if self._thread is None:
            return None
        self._thread.join(timeout)
        if self._thread.is_alive():
            self._abandon.set()
            self._thread = None
            self.step = self.checkpoints = None
            raise TimeoutError(f"the background save did not finish within {timeout:.0f} s: abandoned")
        return self._take()

    def _take(self) -> Optional[Finished]:
        self._thread = None
        self.step = self.checkpoints = None
        error, result = self._error, self._result
        self._error = self._result = None
        if error is not None:
            raise error
        return result
