"""Watching and steering launched runs: ``hpcrun logs``, ``cancel`` and ``wait``. Login node (no torch)."""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import List, Optional, Sequence

from hpcrun.console import say
from hpcrun.errors import UserError
from hpcrun.rundir import RunDir
from hpcrun.rundir.state import read_state


def run_dir_of(target: str) -> Path:
    """The run directory ``target`` names, or a UserError."""
    path = Path(target).expanduser().resolve()
    if not RunDir(path).is_run():
        raise UserError(f"{target} is not a run directory (no {RunDir.CONFIG})")
    return path


def logs(target: str, follow: bool = False, restart: Optional[int] = None) -> int:
    """Prints a run's log: the newest start's, or start ``restart + 1``'s; ``follow`` keeps printing."""
    run_dir = run_dir_of(target)
    rd = RunDir(run_dir)
    logs_dir = rd.logs
    path = rd.latest_log if restart is None else rd.start_log(restart + 1)
    if not path.exists():
        starts = sorted(p.name for p in logs_dir.glob("start-*.log")) if logs_dir.exists() else []
        if restart is not None:
            raise UserError(f"--restart={restart} has no log in {logs_dir}; there are: {', '.join(starts) or 'none'}")
        if not follow:
            say(f"{run_dir} has no log yet (its job has not started)")
            return 0
    if follow:
        return _follow(run_dir, None if restart is None else path)
    sys.stdout.write(path.read_text(errors="replace"))
    return 0


def _follow(run_dir: Path, only: Optional[Path] = None, poll: float = 0.5, ask_slurm_every: float = 30.0,
            ask_local_every: float = 3.0, ask_pending_every: float = 10.0, unknown_for: float = 300.0) -> int:
    """Prints the run's log as it grows, across restarts (a line marks each new start), until the run has ended:
    its state is completed, failed or stopped, its Slurm job is over without a word (cancelled while pending), or
    its process died unwatched (kill -9 of a local run). A job neither squeue nor sacct has known for
    ``unknown_for`` seconds while its log stood still (accounting purged or off) ends it too, with a line saying
    so. ``only``: that one start's log."""
    from hpcrun.observe.status import statuses
    from hpcrun.rundir.state import FINISHED

    rd = RunDir(run_dir)
    current: Optional[Path] = None
    handle = None
    asked = time.monotonic()
    grew = unknown_since = row = None
    try:
        while True:
            target = only or (rd.latest_log.resolve() if rd.latest_log.exists() else None)
            if target is not None and target != current:
                if handle is not None:
                    sys.stdout.write(handle.read())
                    handle.close()
                    sys.stdout.write(f"----- {target.name} (a new start) -----\n")
                handle, current = open(target, errors="replace"), target
            if handle is not None:
                text = handle.read()
                if text:
                    grew = time.monotonic()
                    sys.stdout.write(text)
                sys.stdout.flush()
            state = read_state(run_dir)
            ended = state.get("status") in FINISHED
            job = state.get("job_id")
            # Slurm is asked every ask_slurm_every s while the job writes its log, every ask_pending_every s before
            # (pending: it may be cancelled there); a local run's lock is looked at every ask_local_every s.
            every = (ask_slurm_every if handle is not None else ask_pending_every) if job else ask_local_every
            if not ended and time.monotonic() - asked > every:
                asked = time.monotonic()
                row = statuses([run_dir])[0]
                ended = row.ended
                unknown_since = (unknown_since or asked) if job and row.slurm_state is None else None
                if (not ended and unknown_since is not None and asked - unknown_since >= unknown_for
                        and asked - (grew or unknown_since) >= unknown_for):
                    say(f"stopped following: Slurm has not known job {job} for {unknown_for:g} s (neither squeue "
                        f"nor sacct) and its log stood still; `hpcrun status {run_dir}` shows what the run recorded")
                    ended = True
            if ended and handle is None:
                say(f"{run_dir} ended ({row.state if row else state.get('status')}) before it wrote a log")
                return 0
            if ended:
                time.sleep(poll)  # the last lines written after the state
                if handle is not None:
                    sys.stdout.write(handle.read())
                sys.stdout.flush()
                return 0
            time.sleep(poll)
    finally:
        if handle is not None:
            handle.close()


def _job_ids(run_dirs: Sequence[Path]) -> List[str]:
    from hpcrun.slurm.jobs import SLURM_ACTIVE, job_states

    jobs = {str(j) for j in (read_state(d).get("job_id") for d in run_dirs) if j}
    states = job_states(jobs)
    return sorted(j for j in jobs if states.get(j) in SLURM_ACTIVE)


def cancel(target: str) -> int:
    """Cancels a run or sweep: its active Slurm jobs with one scancel call, its local runs with a SIGTERM to their
    process (:mod:`hpcrun.rundir.cancel`). Each running one saves first; ``hpcrun resume`` continues it later.
    Non-zero when a local run could not be reached from here (another host, another user's process)."""
    from hpcrun.rundir.index import resolve_targets
    from hpcrun.slurm.jobs import cancel as scancel

    run_dirs = resolve_targets(target)
    jobs = _job_ids(run_dirs)
    if jobs:
        scancel(jobs)
        say(f"cancelled {len(jobs)} job(s): {' '.join(jobs)} (running ones save before they stop; "
            f"`hpcrun resume RUN` continues one later)")
    local = [d for d in run_dirs if _runs_locally(d)]
    unreached = [problem for problem in (_cancel_local(d) for d in local) if problem]
    for problem in unreached:
        say(problem)
    if not jobs and not local:
        say(f"nothing to cancel: no pending or running job or local run for {target}")
    return 1 if unreached else 0


def _runs_locally(run_dir: Path) -> bool:
    """A run recorded as running that no Slurm job of its own runs (a local run, inside an allocation or not)."""
    state = read_state(run_dir)
    return state.get("status") == "running" and not state.get("job_id")


def _cancel_local(run_dir: Path) -> Optional[str]:
    """Asks the process training a local run to save and stop; None when it was asked (or has ended: nothing to
    cancel), else why it could not be.

    Only the process that the run's newest start record and its lock both name (pid and start ticks, this boot,
    this PID namespace), while that start has not recorded its end, is ever signalled: not a pid reused since, and
    not a local sweep's process after the point has ended (it may be training the next one).
    """
    import getpass
    import os
    import signal
    import socket

    from hpcrun.rundir.cancel import cancel_request_of, request_cancel
    from hpcrun.rundir.lock import START, RunLock, command_processes, holder_gone, holder_here

    holder = holder_here(run_dir)
    start = (read_state(run_dir).get("starts") or [{}])[-1]
    if holder is None:
        recorded = RunLock(run_dir, "").holder_now(wait=0.0)
        host = recorded.get("host") or start.get("host") or "?"
        if host != socket.gethostname():
            inside = start.get("allocation")
            return (f"{run_dir}: it runs on {host} (pid {recorded.get('pid', '?')}"
                    f"{f', inside Slurm job {inside}' if inside else ''}), which this machine cannot signal: run "
                    f"`hpcrun cancel {run_dir}` on {host}")
        left = command_processes(run_dir)
        if left:
            return (f"{run_dir}: hpcrun's process for it is gone, but processes of its command still run (pids "
                    f"{' '.join(map(str, left))}): stop them yourself (kill -TERM PID lets a Trainer save)")
        if holder_gone(run_dir) is None and recorded.get("pid"):
            return (f"{run_dir}: its process (pid {recorded['pid']}) is not one this shell can see (another PID "
                    "namespace: a container of its own; the machine rebooted since; or a lock file of an older "
                    "hpcrun): stop it where it runs (Ctrl-C in its terminal)")
        say(f"{run_dir}: its process is gone (killed without a word): nothing to cancel; `hpcrun status` shows it "
            "FAILED and `hpcrun resume` continues it")
        return None
    pid = holder["pid"]
    if (holder.get("what") != START or start.get("pid") != pid or start.get("start_ticks") != holder["start_ticks"]
            or "ended_at" in start):
        if "ended_at" in start:
            say(f"{run_dir}: its start has just ended ({start.get('end', '?')}): nothing to cancel")
            return None
        if holder.get("what") == START and "start_ticks" not in start:
            return f"{run_dir}: an older hpcrun runs it (pid {pid}): stop it with Ctrl-C in its terminal"
        return f"{run_dir}: hpcrun is starting it right now (pid {pid}); cancel it again in a few seconds"
    earlier = cancel_request_of(run_dir, holder)
    if earlier is not None:
        say(f"{run_dir}: already cancelled ({earlier}); it saves and stops")
        return None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        say(f"{run_dir}: its process ended meanwhile: nothing to cancel")
        return None
    except PermissionError:
        return f"{run_dir}: its process (pid {pid}) belongs to another user: only they can cancel it"
    try:
        request_cancel(run_dir, holder, by=getpass.getuser())
    except OSError as exc:
        return f"{run_dir}: cannot write {RunDir.CANCEL_REQUEST} there ({exc.strerror or exc}): nothing was signalled"
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:  # it ended meanwhile
        RunDir(run_dir).cancel_request.unlink(missing_ok=True)
        say(f"{run_dir}: its process ended meanwhile: nothing to cancel")
        return None
    say(f"cancelled the local run {run_dir} (pid {pid}): it saves at its next step boundary and stops; "
        f"`hpcrun resume {run_dir}` continues it later")
    return None


def wait(target: str, poll: float = 15.0) -> int:
    """Blocks until every run of ``target`` has ended, showing progress; non-zero if any did not complete."""
    from hpcrun.observe.status import statuses
    from hpcrun.rundir.index import resolve_targets

    run_dirs = resolve_targets(target)
    tty = sys.stderr.isatty()
    delay = poll
    while True:
        rows = statuses(run_dirs)
        # Ended: the run says so, or its job is over in Slurm's eyes (killed before it could say so); or it never
        # started, in a local sweep whose command has ended (stopped, or killed, before it reached the point).
        unreached = _local_sweep_ended(target)
        done = [r for r in rows if r.ended or (unreached and not r.recorded and not r.job_id)]
        counts = {}
        for r in rows:
            counts[r.state] = counts.get(r.state, 0) + 1
        line = f"{len(done)}/{len(rows)} ended: " + ", ".join(f"{n} {s.lower()}" for s, n in sorted(counts.items()))
        print(("\r" if tty else "") + f"hpcrun: {line}", end="" if tty else "\n", file=sys.stderr, flush=True)
        if len(done) == len(rows):
            break
        time.sleep(delay)
    if tty:
        print(file=sys.stderr)
    failed = [r for r in rows if r.state != "COMPLETED"]
    for r in failed:
        reason = r.reason or ("not started: the local sweep ended before this point (the same command runs it)"
                              if not r.recorded else "")
        say(f"{r.name}/{r.id}: {r.state}{': ' + reason if reason else ''}")
    return 1 if failed else 0


def _local_sweep_ended(target: str) -> bool:
    """Whether ``target`` is a sweep run here whose command has ended (hpcrun.launch.sweep.write_local_sweep)."""
    from hpcrun.rundir.index import is_sweep_dir, read_sweep

    path = Path(target).expanduser().resolve()
    return is_sweep_dir(path) and "local_ended_at" in read_sweep(path)
