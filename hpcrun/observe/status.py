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
from typing import Any, Dict, List, Optional, Sequence, Tuple

from hpcrun.durations import format_human
from hpcrun.rundir.checkpoints import MARKER, newest_complete
from hpcrun.rundir.ledger import progress, read_ledger
from hpcrun.rundir.lock import holder_gone
from hpcrun.rundir.layout import RunDir
from hpcrun.rundir.metrics import logged_steps
from hpcrun.rundir.state import FINISHED, read_state
from hpcrun.slurm.jobs import SLURM_ACTIVE


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


# Why a job may have ended as sacct says, when its run recorded no end of its own (a guess: the run cannot tell).
SLURM_ENDS = {
    "CANCELLED": "killed before it could save (scancel --signal=KILL, or its save outlasted KillWait)?",
    "FAILED": "killed (kill -9, the out-of-memory killer)?",
    "OUT_OF_MEMORY": "out of memory",
    "TIMEOUT": "its time limit came before it could save",
    "NODE_FAIL": "its node failed",
    "BOOT_FAIL": "its node did not boot",
    "PREEMPTED": "preempted, and not requeued",
    "DEADLINE": "its --deadline passed",
}


def _unrecorded_end(status: Optional[str], slurm: str) -> str:
    """The why of a run whose job ended (``slurm``: sacct's state) while the run recorded ``status``, which does
    not explain it; what Slurm says, never the run's reason from an earlier start."""
    if status in (None, "submitted"):  # no start of it ran hpcrun
        if slurm == "CANCELLED":
            return "cancelled in the queue before it started (CANCELLED in sacct)"
        return f"the job ended {slurm} (sacct) before hpcrun started in it: its Slurm log says why"
    if status == "requeued":  # its start saved and asked for a requeue; the new start never came
        if slurm == "CANCELLED":
            return ("cancelled in the queue while it waited to restart (CANCELLED in sacct); `hpcrun resume RUN` "
                    "continues it from its newest checkpoint")
        return (f"the job ended {slurm} (sacct) while it waited to restart; `hpcrun resume RUN` continues it from "
                "its newest checkpoint")
    hint = SLURM_ENDS.get(slurm, "its Slurm log may say")
    return (f"the job ended {slurm} (sacct) without hpcrun recording why: {hint}; `hpcrun resume RUN` continues it "
            "from its newest checkpoint")


def shown_state(run_dir: Path, state: Dict[str, Any], slurm_states: Dict[str, str]) -> Tuple[str, str, bool]:
    """What status shows for a run (``state``: its state.json) given Slurm's states of its jobs: (STATE, why,
    ended). ``hpcrun report`` labels its runs with it too."""
    job = state.get("job_id")
    slurm = slurm_states.get(str(job)) if job else None
    status = state.get("status")
    allocation = _allocation(state)
    allocation_state = slurm_states.get(allocation) if allocation else None
    reason = state.get("reason", "")
    ended = status in FINISHED or bool(slurm and slurm not in SLURM_ACTIVE)
    if status in FINISHED:
        shown = status.upper()
        if status == "stopped" and (slurm == "CANCELLED" or state.get("cancelled")):
            shown = "CANCELLED"
    elif status == "requeued" and slurm == "COMPLETED":
        # it saved and asked for a requeue that never came (`scontrol requeue` refused on the host, say)
        shown = "STOPPED"
        reason = (f"{state.get('reason', '')}; but job {job} ended {slurm} without being requeued: the same "
                  "hpcrun command (or hpcrun resume) continues it")
    elif slurm and slurm not in SLURM_ACTIVE:
        # the job ended without telling its run (killed, node failure, cancelled while pending): Slurm's word, not
        # the reason the run kept from an earlier start (a preemption's "signal SIGTERM")
        shown = slurm
        reason = _unrecorded_end(status, slurm)
    elif allocation_state and allocation_state not in SLURM_ACTIVE:
        ended = True  # a local run inside an allocation that ended without the run recording why
        shown = "FAILED"
        reason = (f"the Slurm allocation it ran in (job {allocation}) ended ({allocation_state}) without the run "
                  "recording why (killed at the allocation's end, out of memory, a node failure); the same command "
                  "resumes it from its newest checkpoint")
    elif status == "running" and slurm is None and (gone := holder_gone(run_dir)) is not None:
        ended = True
        # A start on this host ended without a word (kill -9, out of memory), and no Slurm job
        # will start it again: a local run, or one whose job Slurm does not know. Its lock's holder is gone.
        shown = "FAILED"
        reason = (f"its process (pid {gone['pid']} on {gone['host']}) ended without recording why (killed: "
                  "kill -9, out of memory); `hpcrun resume RUN` continues it from its newest "
                  "checkpoint")
    elif status == "requeued" and slurm in (None, "PENDING", "REQUEUED"):
        shown = "REQUEUED"
    else:
        shown = slurm or (status or "NEW").upper()
    return shown, reason, ended


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


def slurm_states_of(run_dirs: Sequence[Path]) -> Dict[str, str]:
    """Slurm's state of the runs' jobs (and of the allocations local runs run in), from one sacct call."""
    from hpcrun.slurm.jobs import job_states

    jobs = [s.get("job_id") or _allocation(s) for s in (read_state(d) for d in run_dirs)]
    return job_states([j for j in jobs if j]) if any(jobs) else {}


def statuses(run_dirs: List[Path]) -> List[RunStatus]:
    """Status of many runs with one sacct call for all their jobs."""
    states = slurm_states_of(run_dirs)
    return [run_status(d, states) for d in run_dirs]


def _allocation(state: Dict[str, Any]) -> Optional[str]:
    """The Slurm allocation a running local run runs inside (srun --pty bash, a batch script of the user's own)."""
    starts = state.get("starts") or []
    if state.get("status") != "running" or state.get("job_id") or not starts:
        return None
    return starts[-1].get("allocation")


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
