"""What the submitting side asks Slurm, gently: one batched call, retried with back-off, cached where it can be.

* :func:`max_array_size`: the cluster's MaxArraySize, read from ``scontrol show config`` once a day and cached.
* :func:`job_states`: the states of many jobs from ONE ``sacct`` call (never one call per job), falling back to
  one ``squeue`` call when accounting does not answer.
* :func:`submit_with_retries`: sbatch (through submitit) retried with back-off while the controller cannot be
  reached, and only then: a retried sbatch whose first request may have arrived could submit the job twice.

Retry policy (docs/reliability.md): ``HPCRUN_SLURM_ATTEMPTS`` tries (default 4), sleeping
``HPCRUN_SLURM_BACKOFF`` seconds (default 2) after the first failure and doubling after each. Each Slurm client
call itself spends ~9 s trying to connect to a controller that is down, so the defaults give up after about 50 s.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from typing import Callable, Dict, Iterable, List, Optional, Sequence, Tuple, TypeVar

from hpcrun.errors import SubmissionError, SubmissionUncertain
from hpcrun.resources import cache_dir

CACHE_TTL = 24 * 3600
# Slurm states in which a job is still coming (or running).
SLURM_ACTIVE = frozenset({"PENDING", "RUNNING", "REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED", "CONFIGURING",
                          "COMPLETING", "SUSPENDED", "RESIZING", "STAGE_OUT", "SIGNALING"})
DEFAULT_MAX_ARRAY_SIZE = 1001  # Slurm's default


# What Slurm's clients print when they could not reach the controller at all: nothing was done, a retry is safe.
UNREACHABLE = ("Unable to contact slurm controller", "Connection refused", "Transport endpoint is not connected")
# What they print when a request may have reached the controller before the answer was lost.
UNCERTAIN = ("Socket timed out", "Zero Bytes were transmitted")

T = TypeVar("T")


def retry_policy() -> Tuple[int, float]:
    """(attempts, first back-off in seconds), from HPCRUN_SLURM_ATTEMPTS and HPCRUN_SLURM_BACKOFF."""
    try:
        attempts = max(1, int(os.environ.get("HPCRUN_SLURM_ATTEMPTS", "4")))
        backoff = max(0.0, float(os.environ.get("HPCRUN_SLURM_BACKOFF", "2")))
    except ValueError:
        return 4, 2.0
    return attempts, backoff


def _say(message: str) -> None:
    print(f"hpcrun: {message}", file=sys.stderr, flush=True)


def run_slurm(command: Sequence[str], attempts: Optional[int] = None, first_delay: Optional[float] = None,
              timeout: float = 60) -> str:
    """Runs a Slurm client command (a query: safe to repeat); retries with exponential back-off.

    Raises:
        SubmissionError: the command still failed after the last attempt (one line, with Slurm's own words).
    """
    default_attempts, default_delay = retry_policy()
    attempts = default_attempts if attempts is None else attempts
    delay = default_delay if first_delay is None else first_delay
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
        out = run_slurm(["sacct", "-n", "-X", "-P", "-o", "JobID,State", "-j", ",".join(query)], attempts=2,
                        first_delay=1.0)
        for line in out.splitlines():
            if "|" in line:
                jid, state = line.split("|", 1)
                for one in expand_job_ids(jid):
                    states[one] = state.split()[0].rstrip("+") if state.strip() else ""
    except SubmissionError as exc:
        _say(f"accounting did not answer ({exc}); states from squeue and the runs' own files")
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
            _say(f"the controller did not answer ({exc}); {len(missing)} job(s) shown from the runs' own files")
    return {j: states[j] for j in ids if j in states}


def chunks(items: List, size: int) -> List[List]:
    return [items[i: i + size] for i in range(0, len(items), size)]



def submit_with_retries(submit: Callable[[], T], what: str = "sbatch") -> T:
    """Calls ``submit`` (an sbatch through submitit), retrying with back-off while the controller is unreachable.

    Raises:
        SubmissionError: sbatch refused the job, or the controller stayed unreachable (nothing was submitted), or
            the answer was lost (the job may have been submitted: the message says how to check).
    """
    import submitit

    attempts, delay = retry_policy()
    started = time.monotonic()
    for attempt in range(1, attempts + 1):
        try:
            return submit()
        except (submitit.core.utils.FailedJobError, OSError) as exc:
            reason = sbatch_reason(exc)
        if any(u in reason for u in UNCERTAIN):
            raise SubmissionUncertain(f"{what} got no answer from the controller ({reason}): the job may or may not "
                                  "have been submitted; check `squeue --me` before submitting again")
        if not any(u in reason for u in UNREACHABLE):
            raise SubmissionError(f"sbatch refused the job: {reason}")
        if attempt == attempts:
            break
        _say(f"Slurm's controller did not answer ({reason}); trying again in {delay:.0f} s "
             f"(attempt {attempt + 1} of {attempts})")
        time.sleep(delay)
        delay *= 2
    raise SubmissionError(f"{what} failed {attempts} times over {time.monotonic() - started:.0f} s and submitted "
                          f"nothing: {reason}")


def sbatch_reason(exc: BaseException) -> str:
    """The line of sbatch's output that says why (submitit's FailedJobError holds the whole output)."""
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    return next((ln for ln in lines if "error" in ln.lower()), lines[-1] if lines else repr(exc))
