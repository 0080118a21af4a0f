"""How a start that did not complete ends, once the task has returned or raised.

Stopped after its save (a signal, the deadline): on Slurm the job requeues itself, unless Slurm says it was cancelled
(scancel) or ``run.max_requeues`` is spent; locally the run is marked stopped and the resume command is printed, or
cancelled where ``hpcrun cancel`` asked for it. Failed: a Python error would repeat, so the run fails; a transient
one (a flaky GPU, network or filesystem) requeues within the budgets; a full disk stops it, resumable.

``entry`` is the job's own :class:`hpcrun.job.entry.JobEntry`: where Slurm refuses ``scontrol requeue``, a follow-up
job runs it again (:mod:`hpcrun.job.requeue`).
"""

from __future__ import annotations

import logging
import shlex
import sys
from typing import Any

from hpcrun.errors import DiskFullError, JobError
from hpcrun.job.context import JobContext, Stopped
from hpcrun.job.ranks import barrier
from hpcrun.rundir import RunDir
from hpcrun.rundir.state import RunState

log = logging.getLogger("hpcrun")


def is_transient(exc: BaseException) -> bool:
    """Errors a restart may cure (a flaky GPU, network or filesystem); any other Python error would repeat."""
    import errno

    text = str(exc)
    if isinstance(exc, (ConnectionError, TimeoutError)):
        return True
    if isinstance(exc, OSError) and exc.errno in (errno.EIO, errno.ESTALE, errno.ETIMEDOUT):
        return True
    markers = ("NCCL", "CUDA error", "ECC error", "unspecified launch failure", "DistNetworkError",
               "DistBackendError")
    return type(exc).__name__ in ("DistNetworkError", "DistBackendError") or (
        isinstance(exc, RuntimeError) and any(m in text for m in markers)
    )


def stopped(entry: Any, cfg: Any, ctx: JobContext, state: RunState, stop: Stopped) -> str:
    """After the save on a signal or the deadline: requeue on Slurm, or tell the user how to resume."""
    barrier()
    if not ctx.on_slurm:
        from hpcrun.rundir.cancel import cancel_request

        command = shlex.join(["hpcrun", *sys.argv[1:]])
        # (whatever stopped it first: a cancel that came while it saved for Ctrl-C is a cancel all the same)
        cancel = cancel_request(ctx.run_dir)
        if cancel is not None:
            saved = f"saved step {stop.step}" if stop.saved and stop.step else stop.reason
            reason = f"cancelled with hpcrun cancel ({cancel}); {saved}"
            state.end("stopped", reason, stop.step, cancelled=True)
            RunDir(ctx.run_dir).cancel_request.unlink(missing_ok=True)
            log.info("%s; hpcrun resume %s continues it", reason, ctx.run_dir)
            return f"cancelled{_at(stop)}"
        state.end("stopped", stop.reason, stop.step)
        log.info("stopped%s (%s); resume with: %s", _at(stop, "after"), stop.reason, command)
        return f"stopped{_at(stop)}"
    if not ctx.is_main:
        return f"stopped{_at(stop)}"
    # scancel sends SIGTERM too, and a cancelled job must stay cancelled (its checkpoint stays, to resume
    # later). A preempted job reads RUNNING here, one at its hard time limit TimeLimit: those requeue.
    from hpcrun.job.requeue import requeue_job
    from hpcrun.slurm.client import client_here
    from hpcrun.slurm.jobs import cancelled

    # (Without a Slurm client here, the batch script checks for a cancel on the host before it requeues.)
    if stop.signal == "SIGTERM" and client_here() and cancelled(ctx.job_id or "", ctx.restart):
        state.end("stopped", f"cancelled (SIGTERM); {_saved(stop)}", stop.step, cancelled=True)
        log.info("job cancelled: %s, not requeueing", _saved(stop))
        return f"cancelled{_at(stop)}"
    if state.data["requeues"] >= cfg.run.max_requeues:
        reason = f"run.max_requeues={cfg.run.max_requeues} reached; {_saved(stop)}, not requeueing"
        state.end("failed", reason, stop.step)
        log.error(reason)
        raise JobError(reason)
    continued = requeue_job(ctx.run_dir, ctx.job_id or "", cfg, entry)
    if continued:
        reason = stop.reason
        if continued != ctx.job_id:  # a follow-up job: status, logs and cancel follow it
            state.data["job_id"] = continued
            reason = f"{reason}; continued by job {continued} (`scontrol requeue` refused)"
        state.end("requeued", reason, stop.step, clean_stop=True)
        log.info("%s and requeued job %s (%s)", _saved(stop), ctx.job_id, stop.reason)
        return f"requeued{_at(stop)}"
    reason = f"{_saved(stop)} but `scontrol requeue {ctx.job_id}` failed; resubmit to resume"
    state.end("failed", reason, stop.step)
    raise JobError(reason)


def _saved(stop: Stopped) -> str:
    """What the stop saved: its step, or (a command of the user's own that ended without a save for it, or with no
    step hpcrun knows) that the newest complete checkpoint is where it resumes."""
    if stop.saved and stop.step:
        return f"saved step {stop.step}"
    return "nothing saved for this stop (it resumes from the newest complete checkpoint)"


def _at(stop: Stopped, word: str = "at") -> str:
    """' at step N' where the stop's step is known (never 'step 0' for a command that reported none)."""
    return f" {word} step {stop.step}" if stop.step else ""


def failed(entry: Any, cfg: Any, ctx: JobContext, state: RunState, exc: Exception) -> str:
    """A Python error repeats on restart: fail. A transient one may not: requeue, within the budgets."""
    step = ctx.resume_from.step if ctx.resume_from else 0
    if isinstance(exc, DiskFullError):  # not a bug, and a restart would fill the disk again: stop, resumable
        latest, _ = ctx.checkpoints.latest() if ctx.checkpoints else (None, [])
        where = f"resumes from {latest.path.name}" if latest else "starts over (no complete checkpoint yet)"
        reason = f"{exc}. Free space (or raise the quota), then the same hpcrun command {where}"
        state.end("stopped", reason, latest.step if latest else 0)
        log.error("%s", reason)
        raise JobError(reason) from None
    if ctx.on_slurm and is_transient(exc) and state.data["requeues"] < cfg.run.max_requeues:
        log.exception("transient error; requeueing (the crash-loop breaker stops repeated restarts "
                      "without progress)")
        from hpcrun.job.requeue import requeue_job

        continued = requeue_job(ctx.run_dir, ctx.job_id or "", cfg, entry) if ctx.is_main else None
        if continued:
            state.data["job_id"] = continued
            state.end("requeued", f"transient error: {type(exc).__name__}: {exc}", step)
            return "requeued after a transient error"
    if isinstance(exc, JobError):  # e.g. a command of the user's own exited non-zero: its own words
        state.end("failed", f"{exc} (not requeued: it would repeat)", None)
        log.error("run failed: %s", exc)
        raise exc
    reason = f"{type(exc).__name__}: {exc}"
    state.end("failed", f"{reason} (a Python error is not requeued: it would repeat)", None)
    log.error("run failed: %s", reason)
    raise exc
