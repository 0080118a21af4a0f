"""``hpcrun status``: one line per run, from the runs' own state files and ONE batched sacct call.

Submitting side: no torch. The ``--json`` form is stable (docs/commands.md): a list of objects with the keys of
:class:`RunStatus`.
"""

from __future__ import annotations

import json
import os
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

from hpcrun.durations import format_human
from hpcrun.rundir.checkpoints import MARKER, newest_complete
from hpcrun.rundir.ledger import progress, read_ledger
from hpcrun.rundir.layout import RunDir
from hpcrun.rundir.metrics import logged_steps
from hpcrun.rundir.state import read_state
from hpcrun.observe.states import shown_state, slurm_states_of


@dataclass
class RunStatus:
    """One run, as ``hpcrun status --json`` prints it."""

    run_dir: str
    name: str
    id: str
    state: str  # what to tell the user: PENDING, RUNNING, REQUEUED, COMPLETED, FAILED, STOPPED, CANCELLED, ...
    recorded: Optional[str]  # what the run recorded (state.json): submitted/running/requeued/stopped/completed/failed
    slurm_state: Optional[str]  # sacct's state of its current job, when it has one
    reason: str
    restarts: int
    step: int
    max_steps: int
    last_checkpoint_step: Optional[int]
    last_checkpoint_age_s: Optional[float]
    elapsed_s: float
    time_left_s: Optional[float]
    job_id: Optional[str]
    goodput: Optional[float]  # training time over allocated time so far, from the run's ledger (hpcrun report)
    ended: bool  # it will not go on by itself: it recorded its end, its job is over, or its process died unwatched
    allocation: Optional[str] = None  # a local run's newest start ran inside this Slurm job (srun --pty bash, ...)


def _progress(run_dir: Path, events: List[Dict[str, Any]]) -> Tuple[int, int]:
    """(step, steps planned): from the ledger, which every task has; a newer metrics.jsonl record refines it."""
    step, planned = progress(events)
    # A start's own events (its start too: a record of a killed earlier start is older) say where the run is.
    last_event = max((float(e["t"]) for e in events if e.get("step") is not None or e["event"] == "start"),
                     default=0.0)
    logged_at, logged = (logged_steps(run_dir, tail_bytes=4096) or [(0.0, 0)])[-1]
    if logged_at > last_event:
        step = logged
    return step, planned or 0


def _start_end(run_dir: Path, start: Dict[str, Any], live: bool, now: float, newest: bool) -> float:
    """When a start ended: as it recorded; now, while it runs; else (killed before it could say) its last write:
    to its log, and for the newest start (``newest``) to the run's ledger or metrics too (a quiet command)."""
    if start.get("ended_at"):
        return float(start["ended_at"])
    if live:
        return now
    rd = RunDir(run_dir)
    last = float(start["started_at"])
    shared = (rd.ledger, rd.metrics) if newest else ()  # (an earlier start's: written by later starts too)
    for path in (rd.start_log(int(start.get("n", 0))), *shared):  # its last sign of life
        try:
            last = max(last, path.stat().st_mtime)
        except OSError:
            pass
    return min(last, now)


def run_status(run_dir: Path, slurm_states: Dict[str, str], now: Optional[float] = None) -> RunStatus:
    now = time.time() if now is None else now
    state = read_state(run_dir)
    starts = state.get("starts", [])
    job = state.get("job_id")
    slurm = slurm_states.get(str(job)) if job else None
    status = state.get("status")
    latest, _ = newest_complete(run_dir)
    ckpt_age = None
    if latest is not None:
        try:
            ckpt_age = now - (latest.path / MARKER).stat().st_mtime
        except OSError:
            pass
    shown, reason, ended = shown_state(run_dir, state, slurm_states)
    elapsed = sum(_start_end(run_dir, s, live=not ended and i == len(starts) - 1, now=now,
                             newest=i == len(starts) - 1) - s["started_at"]
                  for i, s in enumerate(starts) if "started_at" in s)
    time_left = None
    if shown == "RUNNING" and starts and starts[-1].get("end_time"):
        time_left = max(0.0, starts[-1]["end_time"] - now)
    events = read_ledger(run_dir)
    step, planned = _progress(run_dir, events)
    planned = planned or int(state.get("planned_steps") or 0)  # before the task said: what its settings plan
    name, rid = run_dir.parent.name, run_dir.name
    try:
        from hpcrun.observe.report import run_report

        goodput = run_report(run_dir, None, events).goodput  # the ledger's own times: no extra sacct call
    except Exception:  # noqa: BLE001 - a status line never fails on one odd run
        goodput = None
    return RunStatus(
        run_dir=str(run_dir), name=name, id=rid, state=shown, recorded=status, slurm_state=slurm,
        reason=reason, restarts=max(0, len(starts) - 1), step=step, max_steps=planned,
        last_checkpoint_step=latest.step if latest else None, last_checkpoint_age_s=ckpt_age, elapsed_s=elapsed,
        time_left_s=time_left, job_id=job, goodput=None if goodput is None else round(goodput, 4), ended=ended,
        allocation=None if job or not starts else starts[-1].get("allocation"),
    )


def statuses(run_dirs: List[Path]) -> List[RunStatus]:
    """Status of many runs with one sacct call for all their jobs."""
    states = slurm_states_of(run_dirs)
    return [run_status(d, states) for d in run_dirs]


COLUMNS = ("RUN", "STATE", "RESTARTS", "STEP", "CKPT AGE", "ELAPSED", "LEFT", "GOODPUT", "JOB")
# States whose reason the table does not repeat under the row (--json always has it).
QUIET_STATES = ("COMPLETED", "RUNNING", "PENDING", "REQUEUED", "NEW")
REASON_WIDTH = 300
COLOURS = {"COMPLETED": "32", "RUNNING": "36", "FAILED": "31", "CANCELLED": "33", "STOPPED": "33",
           "REQUEUED": "35", "PENDING": "2"}


def table(rows: List[RunStatus], colour: Optional[bool] = None) -> str:
    colour = sys.stdout.isatty() and os.environ.get("NO_COLOR") is None if colour is None else colour
    cells = []
    for r in rows:
        cells.append([
            f"{r.name}/{r.id}", r.state, str(r.restarts),
            f"{r.step}/{r.max_steps}" if r.max_steps else (str(r.step) if r.step else "-"),
            format_human(r.last_checkpoint_age_s) if r.last_checkpoint_age_s is not None else "-",
            format_human(r.elapsed_s), format_human(r.time_left_s) if r.time_left_s is not None else "-",
            f"{r.goodput:.0%}" if r.goodput is not None else "-",
            r.job_id or (f"({r.allocation})" if r.allocation else "-"),
        ])
    widths = [max([len(c)] + [len(row[i]) for row in cells]) for i, c in enumerate(COLUMNS)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(COLUMNS, widths)).rstrip()]
    for r, row in zip(rows, cells):
        text = "  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip()
        if colour and r.state in COLOURS:
            padded = row[1].ljust(widths[1])
            text = text.replace(padded, f"\033[{COLOURS[r.state]}m{padded}\033[0m", 1)
        lines.append(text)
        if r.reason and r.state not in QUIET_STATES:  # why it failed or stopped, under its row
            why = " ".join(r.reason.split())
            lines.append(f"    why: {why[:REASON_WIDTH - 3] + '...' if len(why) > REASON_WIDTH else why}")
    return "\n".join(lines)


def status_json(rows: List[RunStatus]) -> str:
    return json.dumps([asdict(r) for r in rows], indent=1)
