"""The one way hpcrun runs a Slurm client command (sbatch, sacct, squeue, scontrol, scancel), on either side.

* :func:`run_slurm`: a query or an idempotent action, retried with back-off under the one retry policy;
* :func:`submit_with_retries`: sbatch (through submitit) retried with back-off while the controller cannot be
  reached, and only then: a retried sbatch whose first request may have arrived could submit the job twice.

What is asked lives beside it: :mod:`hpcrun.slurm.jobs` (job states, requeue, a job's times, MaxArraySize),
:mod:`hpcrun.slurm.site` (the site's limits), :mod:`hpcrun.slurm.sbatch` (the batch script).

Retry policy (docs/reliability.md): ``HPCRUN_SLURM_ATTEMPTS`` tries (default 4), sleeping
``HPCRUN_SLURM_BACKOFF`` seconds (default 2) after the first failure and doubling after each. Each Slurm client
call itself spends ~9 s trying to connect to a controller that is down, so the defaults give up after about 50 s.
"""

from __future__ import annotations

import contextlib
import functools
import io
import os
import subprocess
import time
from typing import Callable, Optional, Sequence, Tuple, TypeVar

from hpcrun.console import say
from hpcrun.errors import SubmissionError, SubmissionUncertain

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


@functools.lru_cache(maxsize=None)
def client_here() -> bool:
    """Whether this process can run Slurm's commands at all (``scontrol --version``, which asks the controller
    nothing). Inside a container without a Slurm client it cannot: the job then leaves the Slurm-facing steps to the
    batch script on the host (:mod:`hpcrun.job.requeue`)."""
    try:
        return subprocess.run(["scontrol", "--version"], capture_output=True, timeout=10).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def run_slurm(command: Sequence[str], attempts: Optional[int] = None, first_delay: Optional[float] = None,
              timeout: float = 60, done_if: Sequence[str] = ()) -> str:
    """Runs a Slurm client command (a query, or an action that is safe to repeat); retries with exponential back-off.

    Args:
        command: the command and its arguments.
        attempts, first_delay: override the retry policy (e.g. one attempt for a check that may step aside).
        timeout: seconds one attempt may take.
        done_if: words of an error that mean the action is already done (``scontrol requeue`` of a job that is
            already pending): the call then succeeds, returning the error text.

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
            text = out.stderr.strip() or out.stdout.strip()
            if any(w in text.lower() for w in done_if):
                return text
            last = (text.splitlines()[-1:] or [f"exit {out.returncode}"])[0]
        if attempt + 1 < attempts:
            time.sleep(delay)
            delay *= 2
    raise SubmissionError(f"`{' '.join(command[:2])}` failed {attempts} times: {last}")


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
            # submitit prints sbatch's stderr itself when sbatch fails; hpcrun's one line quotes its reason instead
            with contextlib.redirect_stderr(io.StringIO()):
                return submit()
        except submitit.core.utils.FailedSubmissionError as exc:
            # sbatch said something other than "Submitted batch job N" (a wrapper of the site's, --parsable):
            # nothing of this submission is recorded, and the user is told what sbatch said.
            answer = _sbatch_answer(exc)
            raise SubmissionError(f"sbatch answered {answer!r}, which is not 'Submitted batch job N': nothing was "
                                  "recorded; if a job was submitted after all (`squeue --me`), scancel it") from None
        except (submitit.core.utils.FailedJobError, OSError) as exc:
            reason = sbatch_reason(exc)
        if any(u in reason for u in UNCERTAIN):
            raise SubmissionUncertain(f"{what} got no answer from the controller ({reason}): the job may or may not "
                                  "have been submitted; check `squeue --me` before submitting again")
        if not any(u in reason for u in UNREACHABLE):
            raise SubmissionError(f"sbatch refused the job: {reason}")
        if attempt == attempts:
            break
        say(f"Slurm's controller did not answer ({reason}); trying again in {delay:.0f} s "
             f"(attempt {attempt + 1} of {attempts})")
        time.sleep(delay)
        delay *= 2
    raise SubmissionError(f"{what} failed {attempts} times over {time.monotonic() - started:.0f} s and submitted "
                          f"nothing: {reason}")


def _sbatch_answer(exc: BaseException) -> str:
    """What sbatch printed, from submitit's 'Could not make sense of sbatch output "..."' message."""
    text = str(exc)
    start, end = text.find('"'), text.find('"\n')
    answer = text[start + 1:end] if 0 <= start < end else text.splitlines()[0] if text else ""
    return " ".join(answer.split())[:200]


def sbatch_reason(exc: BaseException) -> str:
    """The line of sbatch's output that says why (submitit's FailedJobError holds the whole output)."""
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    return next((ln for ln in lines if "error" in ln.lower()), lines[-1] if lines else repr(exc))
