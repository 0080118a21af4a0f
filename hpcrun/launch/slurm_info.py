"""What the submitting side asks Slurm, gently: one batched call, retried with back-off, cached where it can be.

* :func:`max_array_size`: the cluster's MaxArraySize, read from ``scontrol show config`` once a day and cached.
* :func:`job_states`: the states of many jobs from ONE ``sacct`` call (never one call per job), falling back to
  one ``squeue`` call when accounting does not answer.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import time
from pathlib import Path
from typing import Dict, Iterable, List, Sequence

from hpcrun.errors import SubmissionError

CACHE_TTL = 24 * 3600
# Slurm states in which a job is still coming (or running).
SLURM_ACTIVE = frozenset({"PENDING", "RUNNING", "REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED", "CONFIGURING",
                          "COMPLETING", "SUSPENDED", "RESIZING", "STAGE_OUT", "SIGNALING"})
DEFAULT_MAX_ARRAY_SIZE = 1001  # Slurm's default


def cache_dir() -> Path:
    base = os.environ.get("HPCRUN_CACHE_DIR") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "hpcrun")
    return Path(base)


def run_slurm(command: Sequence[str], attempts: int = 4, first_delay: float = 1.0, timeout: float = 60) -> str:
    """Runs a Slurm client command; retries with exponential back-off while the controller does not answer.

    Raises:
        SubmissionError: the command still failed after the last attempt (one line, with Slurm's own words).
    """
    delay = first_delay
    last = ""
    for attempt in range(attempts):
        try:
            out = subprocess.run(list(command), capture_output=True, text=True, timeout=timeout)
        except FileNotFoundError:
            raise SubmissionError(f"{command[0]} not found: is this a Slurm machine?") from None
        except subprocess.TimeoutExpired:
            last = f"no answer within {timeout:.0f} s"
        else:
            if out.returncode == 0:
                return out.stdout
            last = (out.stderr.strip() or out.stdout.strip()).splitlines()[-1:] or [f"exit {out.returncode}"]
            last = last[0]
        if attempt + 1 < attempts:
            time.sleep(delay)
            delay *= 2
    raise SubmissionError(f"`{' '.join(command[:2])}` failed {attempts} times: {last}")


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
    cache.parent.mkdir(parents=True, exist_ok=True)
    cache.write_text(json.dumps({"time": time.time(), "max_array_size": value}))
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
    # (55_[0-3]): ask for the array ids as well, still in the one call.
    query = sorted(set(ids) | {j.split("_")[0] for j in ids if "_" in j})
    try:
        out = run_slurm(["sacct", "-n", "-X", "-P", "-o", "JobID,State", "-j", ",".join(query)])
        for line in out.splitlines():
            if "|" in line:
                jid, state = line.split("|", 1)
                for one in expand_job_ids(jid):
                    states[one] = state.split()[0].rstrip("+") if state.strip() else ""
    except SubmissionError:
        pass
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
        except SubmissionError:
            pass
    return {j: states[j] for j in ids if j in states}


def chunks(items: List, size: int) -> List[List]:
    return [items[i: i + size] for i in range(0, len(items), size)]

