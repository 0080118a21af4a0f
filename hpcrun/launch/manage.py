"""Steering runs after launch: ``hpcrun logs``, ``cancel``, ``resume`` and ``wait``. Submitting side."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import List, Optional, Sequence

from hpcrun.config.identity import is_launch_key
from hpcrun.errors import UserError
from hpcrun.job.runstate import read_state, write_state


def _say(message: str) -> None:
    print(f"hpcrun: {message}", file=sys.stderr, flush=True)


def _run_dir(target: str) -> Path:
    from hpcrun.launch.rundir import CONFIG_FILE

    path = Path(target).expanduser().resolve()
    if not (path / CONFIG_FILE).exists():
        raise UserError(f"{target} is not a run directory (no {CONFIG_FILE})")
    return path


def logs(target: str, follow: bool = False, restart: Optional[int] = None) -> int:
    """Prints a run's log: the newest start's, or start ``restart + 1``'s; ``follow`` keeps printing."""
    run_dir = _run_dir(target)
    logs_dir = run_dir / "logs"
    path = logs_dir / ("latest.log" if restart is None else f"start-{restart + 1}.log")
    if not path.exists():
        starts = sorted(p.name for p in logs_dir.glob("start-*.log")) if logs_dir.exists() else []
        if restart is not None:
            raise UserError(f"--restart={restart} has no log in {logs_dir}; there are: {', '.join(starts) or 'none'}")
        if not follow:
            _say(f"{run_dir} has no log yet (its job has not started)")
            return 0
    if follow:
        # tail -F follows latest.log across restarts (the link is replaced at each start).
        os.execvp("tail", ["tail", "-n", "+1", "-F", str(path)])
    sys.stdout.write(path.read_text(errors="replace"))
    return 0


def _job_ids(run_dirs: Sequence[Path]) -> List[str]:
    from hpcrun.launch.slurm_info import SLURM_ACTIVE, job_states

    jobs = {str(j) for j in (read_state(d).get("job_id") for d in run_dirs) if j}
    states = job_states(jobs)
    return sorted(j for j in jobs if states.get(j) in SLURM_ACTIVE)


def cancel(target: str) -> int:
    """Cancels every active job of a run or sweep with one scancel call. Each running job saves first."""
    from hpcrun.launch.slurm_info import run_slurm
    from hpcrun.status import resolve_targets

    jobs = _job_ids(resolve_targets(target))
    if not jobs:
        _say(f"nothing to cancel: no pending or running job for {target}")
        return 0
    run_slurm(["scancel", *jobs])
    _say(f"cancelled {len(jobs)} job(s): {' '.join(jobs)} (running ones save before they stop; "
         f"`hpcrun resume RUN` continues one later)")
    return 0


def resume(target: str, overrides: Sequence[str]) -> int:
    """Resubmits a stopped or failed run from its saved config; only launcher keys may change."""
    from omegaconf import OmegaConf

    from hpcrun.config.compose import check, load_saved
    from hpcrun.launch.rundir import CONFIG_FILE, inspect_run_dir, write_run_dir
    from hpcrun.launch.runner import run_here, submit_one

    run_dir = _run_dir(target)
    saved = load_saved(run_dir / CONFIG_FILE)
    for o in overrides:
        key = o.split("=", 1)[0]
        if "=" not in o or not is_launch_key(key) or key in ("run.dir", "run.name", "run.id"):
            raise UserError(f"{o!r}: resume takes launcher keys only (cluster.*, checkpoint.*, run.max_requeues, "
                            "run.max_restarts_without_progress); a run with other training keys is a new run")
    merged = OmegaConf.merge(OmegaConf.structured(saved), OmegaConf.from_dotlist(list(overrides)))
    cfg = check(merged)
    prepared = inspect_run_dir(cfg)
    if prepared.kind in ("complete", "active"):
        _say(prepared.message)
        return 0
    state = read_state(run_dir)
    if state.get("no_progress_restarts"):
        state["no_progress_restarts"] = 0  # the user looked at it: the crash-loop budget starts again
        write_state(run_dir, state)
    write_run_dir(cfg, prepared)
    _say(prepared.message)
    if cfg.cluster.launcher != "slurm":
        return run_here(run_dir)
    job_id = submit_one(cfg, prepared)
    print(f"submitted Slurm job {job_id} to resume {run_dir}", flush=True)
    return 0


def wait(target: str, poll: float = 15.0) -> int:
    """Blocks until every run of ``target`` has ended, showing progress; non-zero if any did not complete."""
    from hpcrun.launch.slurm_info import SLURM_ACTIVE
    from hpcrun.status import FINISHED, collect, resolve_targets

    run_dirs = resolve_targets(target)
    tty = sys.stderr.isatty()
    delay = poll
    while True:
        rows = collect(run_dirs)
        # Ended: the run says so, or its job is over in Slurm's eyes (killed before it could say so).
        done = [r for r in rows if r.status in FINISHED or (r.slurm_state and r.slurm_state not in SLURM_ACTIVE)]
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
        _say(f"{r.name}/{r.id}: {r.state}{': ' + r.reason if r.reason else ''}")
    return 1 if failed else 0
