"""``<run.dir>/ledger.jsonl``: where a run's allocated wall clock went, event by event, across all its starts.

One JSON object per line, appended by global rank 0 only, each with ``event``, ``t`` (Unix time) and ``start``
(the start's number, as in state.json). ``hpcrun report`` turns it into goodput (docs/goodput.md):

    start       the job (re)started: job_id, restart, alloc_start (when Slurm allocated the nodes, and its source),
                resumed_from (the checkpoint's step), end_time
    phase       a part of this start's start-up ended: name (launch, interpreter, setup, imports, data, model,
                trainer, checkpoint load or train setup, data position), seconds
    first_step  the first optimizer step of this start ended: step
    progress    a training step ended: step (at most one a minute, and before every save)
    planned     the task says how many steps the run trains in all: steps (hpcrun status shows step N/steps)
    save        a checkpoint was written: step, began, seconds (the time training was blocked), why; a save
                written in the background also written (seconds until it was complete) and background
    signal      a stop signal was noticed at a step boundary: signal, received_at
    deadline    the deadline stop fired: step, reason
    save_every  save_every=auto chose an interval: seconds, why
    end         this start ended: status (completed, requeued, stopped, failed), reason, step

A line is small and written with one ``write`` on an append-mode file, flushed, not fsynced: a kill can lose at
most the last line, which ``hpcrun report`` tolerates (a start without ``end`` ended without a clean stop). About
one line a minute is written, a few microseconds each (docs/benchmarks.md measures it).
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Tuple

from hpcrun.rundir.layout import RunDir

PROGRESS_EVERY = 60.0  # seconds between progress events


class Ledger:
    """Appends events for one start of the run; does nothing when ``writer`` is false (ranks other than 0)."""

    def __init__(self, run_dir: Path, start: int = 0, writer: bool = True) -> None:
        self.path = RunDir(run_dir).ledger
        self.start = start
        self.writer = writer
        self._first_step_seen = False
        self._last_progress = float("-inf")
        self.last_step: Optional[int] = None  # the newest step this start recorded (for "trained to step N")
        self.phase_mark: Optional[float] = None  # when the last start-up phase ended (Unix time)

    def event(self, event: str, t: Optional[float] = None, **fields: Any) -> None:
        if not self.writer:
            return
        record = {"event": event, "t": time.time() if t is None else t, "start": self.start, **fields}
        line = json.dumps(record, separators=(",", ":")) + "\n"
        try:
            with self.path.open("a") as f:
                f.write(line)
        except OSError:  # accounting must never stop training (a full disk shows up in the save instead)
            pass

    def step(self, step: int, force: bool = False) -> None:
        """A training step ended: the first one of this start, then at most one progress event a minute."""
        now = time.time()
        self.last_step = step
        if not self._first_step_seen:
            self._first_step_seen = True
            self._last_progress = now
            self.event("first_step", now, step=step)
        elif force or now - self._last_progress >= PROGRESS_EVERY:
            self._last_progress = now
            self.event("progress", now, step=step)

    def phase(self, name: str, seconds: Optional[float] = None) -> None:
        """A start-up phase ended now: ``seconds`` long, or (None) since the previous phase ended."""
        now = time.time()
        if seconds is None and self.phase_mark is None:
            self.phase_mark = now
            return
        if seconds is None:
            seconds = now - (self.phase_mark or now)
        self.event("phase", now, name=name, seconds=round(max(0.0, seconds), 3))
        self.phase_mark = now

    def planned(self, steps: int) -> None:
        """The task's total number of steps (once per start; the task may change it between starts)."""
        self.event("planned", steps=int(steps))

    def save(self, step: int, began: float, seconds: float, why: str, written: Optional[float] = None) -> None:
        """A complete checkpoint: ``seconds`` training was blocked from ``began``; ``written``: a background
        save's whole time, until the checkpoint was complete (the event's time)."""
        if written is None:
            self.event("save", began + seconds, step=step, began=began, seconds=round(seconds, 4), why=why)
        else:
            self.event("save", began + written, step=step, began=began, seconds=round(seconds, 4), why=why,
                       written=round(written, 4), background=True)


def read_ledger(run_dir: Path) -> List[Dict[str, Any]]:
    """Every event of the run, oldest first; a torn last line (a kill mid-write) is skipped."""
    path = RunDir(run_dir).ledger
    return list(_parse(path.read_text().splitlines())) if path.exists() else []


def _parse(lines: List[str]) -> Iterator[Dict[str, Any]]:
    for line in lines:
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict) and "event" in record and "t" in record:
            yield record


def progress(events: List[Dict[str, Any]]) -> Tuple[int, Optional[int]]:
    """(the step the run is at, the steps planned) from a run's events; (0, None) before any.

    The step is the last one recorded, not the highest: a start killed after its last checkpoint recorded steps
    that the next start computes again."""
    step, planned = 0, None
    for e in events:
        if e["event"] == "planned":
            planned = int(e.get("steps") or 0) or planned
        elif e["event"] == "start":
            step = int(e.get("resumed_from") or 0)
        elif e.get("step") is not None and e["event"] in ("first_step", "progress", "save", "signal", "deadline",
                                                          "end"):
            try:
                step = int(e["step"])
            except (TypeError, ValueError):
                continue
    return step, planned
