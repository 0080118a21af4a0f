"""What hpcrun asks of Slurm about jobs: states (one batched call), requeue, a job's times, MaxArraySize.

Every call goes through :func:`hpcrun.slurm.client.run_slurm` and its one retry policy.
"""

from __future__ import annotations

import json
import os
import re
import time
from datetime import datetime
from typing import Dict, Iterable, List, Optional, Tuple

from hpcrun.console import say
from hpcrun.errors import SubmissionError
from hpcrun.resources import cache_dir
from hpcrun.rundir.atomic import atomic_write_json
from hpcrun.slurm.client import run_slurm

CACHE_TTL = 24 * 3600
# Slurm states in which a job is still coming (or running).
SLURM_ACTIVE = frozenset({"PENDING", "RUNNING", "REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED", "CONFIGURING",
                          "COMPLETING", "SUSPENDED", "RESIZING", "STAGE_OUT", "SIGNALING"})
DEFAULT_MAX_ARRAY_SIZE = 1001  # Slurm's default


def max_array_size(refresh: bool = False) -> int:
    """The cluster's MaxArraySize (an array holds at most this many tasks), cached for a day per cluster."""
    # Keyed by the login node: one login node talks to one cluster.
    cache = cache_dir() / f"slurm-config-{os.uname().nodename}.json"
    try:
        cached = json.loads(cache.read_text())
    except (OSError, ValueError):
        cached = {}
    if not refresh and time.time() - cached.get("time", 0) < CACHE_TTL and "max_array_size" in cached:
        return int(cached["max_array_size"])
    out = run_slurm(["scontrol", "show", "config"])
    m = re.search(r"^MaxArraySize\s*=\s*(\d+)", out, re.M)
    value = int(m.group(1)) if m else DEFAULT_MAX_ARRAY_SIZE
    try:
        cache.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_json(cache, {"time": time.time(), "max_array_size": value})
    except OSError:
        pass  # an unwritable cache only costs the next call a query
    return value


def expand_job_ids(text: str) -> List[str]:
    """``55_[0-3,7%2]`` (an array's pending tasks, as sacct and squeue collapse them) as ``55_0 ... 55_7``."""
    m = re.fullmatch(r"(\d+)_\[([^\]]+)\]", text.strip())
    if not m:
        return [text.strip()]
    ids = []
    for part in m.group(2).split("%")[0].split(","):
        lo, _, hi = part.partition("-")
        ids += [f"{m.group(1)}_{i}" for i in range(int(lo), int(hi or lo) + 1)]
    return ids


def job_states(job_ids: Iterable[str]) -> Dict[str, str]:
    """The current state of each job id (``123`` or ``123_4``), from one sacct call.

    For a requeued job sacct lists every run; the last row is the current one. Jobs accounting does not know yet
    (just submitted) are asked of squeue, in one call. Unknown ids are left out.
    """
    ids = sorted({str(j) for j in job_ids if j})
    if not ids:
        return {}
    states: Dict[str, str] = {}
    # An array's tasks that never started exist in accounting only as one collapsed row of the array
    # (55_[0-3]): ask for the array ids as well, still in the one call. That row stays PENDING while any task
    # waits, and its range still covers tasks that started since (36_[0-2%3] beside 36_0 RUNNING; seen on the dev
    # cluster): a task's own rows win over it, whichever sacct prints last.
    query = sorted(set(ids) | {j.split("_")[0] for j in ids if "_" in j})
    try:
        out = run_slurm(["sacct", "-n", "-X", "-P", "-o", "JobID,State", "-j", ",".join(query)], attempts=2,
                        first_delay=1.0)
        collapsed: Dict[str, str] = {}
        for line in out.splitlines():
            if "|" in line:
                jid, state = line.split("|", 1)
                state = state.split()[0].rstrip("+") if state.strip() else ""
                for one in expand_job_ids(jid):
                    (collapsed if "[" in jid else states)[one] = state
        for one, state in collapsed.items():
            states.setdefault(one, state)
    except SubmissionError as exc:
        say(f"accounting did not answer ({exc}); states from squeue and the runs' own files")
    for j in ids:  # an array cancelled before any task started has one row under the bare array id
        if j not in states and "_" in j and j.split("_")[0] in states:
            states[j] = states[j.split("_")[0]]
    missing = [j for j in ids if j not in states]
    if missing:
        try:
            out = run_slurm(["squeue", "-h", "-r", "-o", "%i|%T", "-j", ",".join(missing)], attempts=2)
            for line in out.splitlines():
                if "|" in line:
                    jid, state = line.split("|", 1)
                    states.setdefault(jid.strip(), state.strip())
        except SubmissionError as exc:
            say(f"the controller did not answer ({exc}); {len(missing)} job(s) shown from the runs' own files")
    return {j: states[j] for j in ids if j in states}


def cancelled(job_id: str, restart: int = 0, wait: float = 10.0, poll: float = 1.0) -> bool:
    """Whether this running job, which just got a SIGTERM, was cancelled (then it must not requeue itself).

    The controller still says RUNNING while a preemption's or a time limit's warning is acted on, and COMPLETING at
    once for a cancel (also for a hard time limit, a node failure, or a requeue by Slurm itself). Checked on the dev
    cluster: during a cancel's KillWait, ``squeue -o %T`` and ``scontrol show job`` both say COMPLETING, ``squeue -t
    CANCELLED`` lists nothing, and ``scontrol requeue`` of the job succeeds (the cancel would be undone). A requeue
    by Slurm (an admin's ``scontrol requeue``, a preemption without grace time) raises the controller's restart
    count at once, past this start's ``restart`` (``SLURM_RESTART_COUNT``; checked: COMPLETING with RestartCnt 1,
    sacct REQUEUED): no cancel, and no need to ask accounting. The hard time limit (no warning signal came first)
    gives the controller's reason TimeLimit at once, a cancel None (checked on the dev cluster, Slurm 22.05: during
    KillWait, COMPLETING with Reason TimeLimit, sacct TIMEOUT): no cancel either. Otherwise why a job is ending is
    accounting's word (sacct: CANCELLED, ...), which slurmdbd writes apart from the controller, at times late: for a
    job the controller is ending, sacct is asked again for up to ``wait`` seconds. With no answer by then the job
    counts as cancelled: a run left stopped (``hpcrun resume`` continues it) costs less than a cancel undone. Each
    query may take 5 s at most: all of this runs inside Slurm's KillWait, after which the job is killed.
    """
    try:
        fields = run_slurm(["squeue", "-h", "-j", job_id, "-O", "State,RestartCnt,Reason"], attempts=2,
                           first_delay=0.5, timeout=5).split()
    except SubmissionError:
        fields = []
    controller = fields[0] if fields else ""
    if controller == "RUNNING":
        return False
    if len(fields) > 1 and fields[1].isdigit() and int(fields[1]) > restart:
        return False  # Slurm requeued the job itself
    if fields[2:3] == ["TimeLimit"]:
        return False  # Slurm is ending it at its time limit
    deadline = time.monotonic() + (wait if controller else 0.0)  # no controller: accounting's first word
    while True:
        try:
            rows = [ln.split() for ln in run_slurm(["sacct", "-n", "-X", "-P", "-o", "State", "-j", job_id],
                                                   attempts=1, timeout=5).splitlines() if ln.strip()]
        except SubmissionError:
            rows = []
        why = rows[-1][0].rstrip("+") if rows else ""  # the newest run's; "CANCELLED by 1000"
        if why and why not in ("RUNNING", "PENDING", "REQUEUED", "SUSPENDED"):
            return why == "CANCELLED"
        if time.monotonic() >= deadline:
            return bool(controller)  # ending, and accounting silent: taken for a cancel
        time.sleep(poll)


def chunks(items: List, size: int) -> List[List]:
    return [items[i: i + size] for i in range(0, len(items), size)]


def requeue(job_id: str) -> bool:
    """``scontrol requeue JOB`` under the retry policy; True once Slurm took it (or had already requeued it)."""
    import logging

    try:
        run_slurm(["scontrol", "requeue", job_id], done_if=("already", "pending"))
        return True
    except SubmissionError as exc:
        logging.getLogger("hpcrun").warning("scontrol requeue %s failed: %s", job_id, exc)
        return False


def release(job_id: str) -> None:
    """``scontrol release JOB`` (a job, or a whole array, submitted with ``--hold``) under the retry policy."""
    run_slurm(["scontrol", "release", job_id])


def cancel(job_ids: List[str]) -> None:
    """``scancel`` of every job in one call (running ones get SIGTERM and save first)."""
    run_slurm(["scancel", *job_ids])


def parse_slurm_timestamp(text: str) -> Optional[float]:
    """``2026-11-25T10:40:00`` (Slurm prints local time) as a Unix time; None for ``N/A``, ``Unknown``, ``NONE``."""
    try:
        return datetime.strptime(text.strip(), "%Y-%m-%dT%H:%M:%S").timestamp()
    except ValueError:
        return None


def allocation_times(job_id: str, attempts: int = 3) -> Tuple[Optional[float], Optional[float]]:
    """A running job's allocation start and end (``squeue -j JOB -o "%S %e"``), or (None, None). Asked again, with
    back-off, while squeue fails or does not know the job yet (a busy controller answers with nothing)."""
    delay = 1.0
    for attempt in range(attempts):
        try:
            fields = run_slurm(["squeue", "-h", "-j", job_id, "-o", "%S %e"], attempts=1, timeout=30).split()
        except SubmissionError:
            fields = []
        if len(fields) >= 2 and parse_slurm_timestamp(fields[1]) is not None:
            return parse_slurm_timestamp(fields[0]), parse_slurm_timestamp(fields[1])
        if attempt + 1 < attempts:
            time.sleep(delay)
            delay *= 2
    return None, None
