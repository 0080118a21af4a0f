"""``<run.dir>/state.json``: what happened to a run across all its starts, for the job and for the user.

Written by global rank 0 only, atomically. Read by the next start (crash-loop breaker, requeue budget), by the
submitting side (is the run complete? is it queued?), and by people.

    {"status": "running" | "requeued" | "stopped" | "completed" | "failed",
     "reason": "...", "job_id": "123", "requeues": 2, "no_progress_restarts": 0,
     "starts": [{"n": 1, "job_id": "123", "restart": 0, "host": "...", "started_at": ..., "resumed_from": 0,
                 "ended_at": ..., "end": "requeued: deadline ...", "step": 150}, ...]}
"""

from __future__ import annotations

import os
import socket
import time
from pathlib import Path
from typing import Any, Dict, Optional

from hpcrun.rundir.atomic import atomic_write_json, read_json
from hpcrun.rundir.layout import RunDir
from hpcrun.rundir.lock import start_ticks

# A run in one of these is coming back (or running): its job, if any, may still be in Slurm.
ACTIVE = ("running", "submitted", "requeued")
# A run in one of these has ended until somebody acts (resume, run again).
FINISHED = ("completed", "failed", "stopped")


def read_state(run_dir: Path) -> Dict[str, Any]:
    """The run's state, or {} for a run that never started (or whose state file is unreadable)."""
    data = read_json(RunDir(run_dir).state, {})
    return data if isinstance(data, dict) else {}


def write_state(run_dir: Path, state: Dict[str, Any], durable: bool = True) -> None:
    atomic_write_json(RunDir(run_dir).state, state, durable=durable)


class RunState:
    """The state of one run, as seen by the current start of its job (rank 0 writes; other ranks only read)."""

    def __init__(self, run_dir: Path, writer: bool = True) -> None:
        self.run_dir = Path(run_dir)
        self.writer = writer
        self.data: Dict[str, Any] = read_state(run_dir)
        self.data.setdefault("starts", [])
        self.data.setdefault("requeues", 0)
        self.data.setdefault("no_progress_restarts", 0)
        self.ledger: Any = None  # a hpcrun.rundir.ledger.Ledger: end() records there too

    def save(self) -> None:
        if self.writer:
            write_state(self.run_dir, self.data)

    @property
    def status(self) -> Optional[str]:
        return self.data.get("status")

    @property
    def previous_start(self) -> Optional[Dict[str, Any]]:
        return self.data["starts"][-1] if self.data["starts"] else None

    def begin(self, job_id: Optional[str], restart: int, resumed_from: int, processes: int = 1,
              allocation: Optional[str] = None) -> Dict[str, Any]:
        """Records a new start; counts it against the crash-loop budget when the previous start made no progress.

        Progress means the checkpoint this start resumes from is newer than the one the previous start resumed
        from. A first start, or one after progress, resets the count; so does one after a clean stop (a stop
        signal or the deadline, saved for and requeued): that is no crash, and ``run.max_requeues`` bounds it (a
        command of the user's own may keep its progress where hpcrun cannot see it).
        """
        prev = self.previous_start
        if prev is not None and resumed_from <= prev.get("resumed_from", 0) and not prev.get("clean_stop"):
            self.data["no_progress_restarts"] += 1
        else:
            self.data["no_progress_restarts"] = 0
        start = {
            "n": len(self.data["starts"]) + 1,
            "job_id": job_id,
            "restart": restart,
            "host": socket.gethostname(),
            "pid": os.getpid(),  # with start_ticks: the process (hpcrun cancel signals only it, while it runs)
            "start_ticks": start_ticks(),
            "started_at": time.time(),
            "resumed_from": resumed_from,
            "processes": processes,
        }
        if allocation:  # a local run inside a Slurm allocation: its end is the run's (status asks Slurm about it)
            start["allocation"] = allocation
        self.data["starts"].append(start)
        self.data.update(status="running", reason="", job_id=job_id)
        self.data.pop("cancelled", None)
        self.save()
        return start

    def note(self, **fields: Any) -> None:
        """Adds facts to the current start's record (e.g. its end time)."""
        if self.data["starts"]:
            self.data["starts"][-1].update(fields)
            self.save()

    def end(self, status: str, reason: str, step: Optional[int] = None, clean_stop: bool = False,
            cancelled: bool = False) -> None:
        """Records how this start ended, and the run's status (``clean_stop``: it stopped on a signal or the
        deadline, as asked, rather than crashing; ``cancelled``: a stop the user asked for with ``hpcrun cancel``,
        shown as CANCELLED)."""
        if self.data["starts"]:
            self.data["starts"][-1].update(ended_at=time.time(), end=f"{status}: {reason}", step=step)
            if clean_stop:
                self.data["starts"][-1]["clean_stop"] = True
        self.data.update(status=status, reason=reason)
        if cancelled:
            self.data["cancelled"] = True
        if status == "requeued":
            self.data["requeues"] += 1
        self.save()
        if self.ledger is not None:
            self.ledger.event("end", status=status, reason=reason, step=step)


def mean_time_between_failures(state: Dict[str, Any], now: Optional[float] = None) -> Optional[float]:
    """The run's observed mean time between *unannounced* interruptions (a start that ended without a clean stop:
    kill -9, node failure, OOM, a preemption whose grace ran out), over the wall clock of its earlier starts.
    None when none has been seen (the caller uses its prior). Announced stops (signal, deadline) are saved for
    and are not counted: periodic saves exist for the others."""
    now = time.time() if now is None else now
    starts = state.get("starts", [])[:-1]  # the earlier starts; the last one is the current
    if not starts:
        return None
    following = state.get("starts", [])[1:]
    elapsed = 0.0
    failures = 0
    for s, nxt in zip(starts, following):
        end = s.get("ended_at") or nxt.get("started_at") or now
        elapsed += max(0.0, end - s.get("started_at", end))
        failures += "ended_at" not in s
    return elapsed / failures if failures else None
