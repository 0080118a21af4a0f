"""``<run.dir>/ledger.jsonl``: where a run's allocated wall clock went, event by event, across all its starts.

One JSON object per line, appended by global rank 0 only, each with ``event``, ``t`` (Unix time) and ``start``
(the start's number, as in state.json). ``hpcrun report`` turns it into goodput (docs/goodput.md):

    start       the job (re)started: job_id, restart, alloc_start (when Slurm allocated the nodes, and its source),
                resumed_from (the checkpoint's step), end_time
    first_step  the first optimizer step of this start ended: step
    progress    a training step ended: step (at most one a minute, and before every save)
    save        a checkpoint was written: step, began, seconds (the time training was blocked), why
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
from typing import Any, Dict, Iterator, List, Optional

LEDGER_FILE = "ledger.jsonl"
PROGRESS_EVERY = 60.0  # seconds between progress events


class Ledger:
    """Appends events for one start of the run; does nothing when ``writer`` is false (ranks other than 0)."""

    def __init__(self, run_dir: Path, start: int = 0, writer: bool = True) -> None:
        self.path = Path(run_dir) / LEDGER_FILE
        self.start = start
        self.writer = writer
        self._first_step_seen = False
        self._last_progress = float("-inf")

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
        if not self._first_step_seen:
            self._first_step_seen = True
            self._last_progress = now
            self.event("first_step", now, step=step)
        elif force or now - self._last_progress >= PROGRESS_EVERY:
            self._last_progress = now
            self.event("progress", now, step=step)

    def save(self, step: int, began: float, seconds: float, why: str) -> None:
        self.event("save", began + seconds, step=step, began=began, seconds=round(seconds, 4), why=why)


def read_ledger(run_dir: Path) -> List[Dict[str, Any]]:
    """Every event of the run, oldest first; a torn last line (a kill mid-write) is skipped."""
    path = Path(run_dir) / LEDGER_FILE
    return list(_parse(path.read_text().splitlines())) if path.exists() else []


def _parse(lines: List[str]) -> Iterator[Dict[str, Any]]:
    for line in lines:
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict) and "event" in record and "t" in record:
            yield record
