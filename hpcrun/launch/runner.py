"""Launching a composed run or sweep: in the foreground here, or through sbatch. What `hpcrun [-m]` does."""

from __future__ import annotations

import shutil
import sys
import textwrap
from pathlib import Path
from typing import Any, List, Sequence

from hpcrun.errors import UserError


def _say(message: str) -> None:
    print(f"hpcrun: {message}", file=sys.stderr, flush=True)


def run_here(run_dir: Path) -> int:
    """Runs the run in the foreground, exactly as the Slurm job would (same JobEntry); returns the exit status."""
    from hpcrun.job.entry import JobEntry
    from hpcrun.job.runstate import read_state

    _say(f"running in the foreground in {run_dir} (Ctrl-C saves and stops)")
    result = JobEntry(run_dir)()
    state = read_state(run_dir)
    if state.get("status") == "stopped":
        # Resumable, not finished: 130 after Ctrl-C as shells expect, else 75 (EX_TEMPFAIL: try again).
        _say(f"stopped: {state.get('reason')}; the same command resumes it")
        return 130 if "SIGINT" in str(state.get("reason")) else 75
    _say(f"done: final weights in {result}")
    return 0


def submit_one(cfg: Any, prepared: Any) -> str:
    """sbatch for one prepared run; a refused new run leaves no directory behind."""
    from hpcrun.errors import SubmissionUncertain
    from hpcrun.launch.rundir import record_submission
    from hpcrun.launch.slurm import submit

    try:
        job_id = submit(cfg)
    except SubmissionUncertain:
        raise  # the job may exist and will need its run directory
    except UserError:
        if prepared.created:
            shutil.rmtree(prepared.created, ignore_errors=True)
        raise
    record_submission(prepared.run_dir, job_id)
    return job_id


def launch(overrides: Sequence[str], config_dirs: Sequence[str], wait: bool = False) -> int:
    """``hpcrun OVERRIDES``: one run."""
    from hpcrun.config.compose import compose
    from hpcrun.launch.rundir import prepare_run_dir

    cfg = compose(overrides, config_dirs)
    if cfg.cluster.launcher == "slurm":  # the site's own limits, before anything is written
        from hpcrun.launch.site_limits import check_site_limits

        check_site_limits([cfg])
    prepared = prepare_run_dir(cfg)
    _say(prepared.message)
    if prepared.kind in ("complete", "active"):
        return 0
    run_dir = prepared.run_dir
    if cfg.cluster.launcher != "slurm":
        return run_here(run_dir)
    job_id = submit_one(cfg, prepared)
    print(textwrap.dedent(f"""\
        submitted Slurm job {job_id} for run {cfg.run.name} on {cfg.cluster.name}
          run dir: {run_dir}
          status:  hpcrun status {run_dir}
          logs:    hpcrun logs -f {run_dir}
          cancel:  hpcrun cancel {run_dir}"""), flush=True)
    if wait:
        from hpcrun.launch.manage import wait as wait_for

        return wait_for(str(run_dir))
    return 0


def launch_sweep(overrides: Sequence[str], config_dirs: Sequence[str], command: str, wait: bool = False) -> int:
    """``hpcrun -m OVERRIDES``: every point, as job arrays on Slurm or one after another here."""
    from hpcrun.launch.sweep import plan, submit

    result = plan(overrides, config_dirs)
    points = result.points
    skipped: List[str] = []
    for kind, label in (("complete", "complete"), ("active", "already queued or running")):
        for p in result.by_kind(kind):
            skipped.append(f"{p.cfg.run.name}/{p.cfg.run.id} ({label})")
    if points[0].cfg.cluster.launcher != "slurm":
        from hpcrun.launch.rundir import write_run_dir

        status = 0
        for p in points:
            if p.prepared.kind in ("new", "resume"):
                write_run_dir(p.cfg, p.prepared)
                _say(f"point {p.cfg.run.id}: {p.prepared.message}")
                status = max(status, run_here(p.prepared.run_dir))
        if skipped:
            _say(f"skipped {len(skipped)}: {', '.join(skipped)}")
        return status
    from hpcrun.launch.site_limits import check_site_limits

    # The site's own limits (each partition once, the job limit), before anything is written or submitted.
    check_site_limits([p.cfg for p in points if p.prepared.kind in ("new", "resume")], sweep=True)
    submit(result, command)
    resumed = len(result.by_kind("resume"))
    submitted = sum(len(a["tasks"]) for a in result.arrays)
    arrays = ", ".join(f"{a['job_id']} ({len(a['tasks'])} tasks)" for a in result.arrays) or "none"
    print(textwrap.dedent(f"""\
        sweep {result.sweep_dir.name}: {len(points)} points; submitted {submitted} ({resumed} resuming) as job \
arrays {arrays}; skipped {len(skipped)}
          sweep dir: {result.sweep_dir}
          status:    hpcrun status {result.sweep_dir}
          wait:      hpcrun wait {result.sweep_dir}
          cancel:    hpcrun cancel {result.sweep_dir}"""), flush=True)
    for s in skipped:
        print(f"  skipped: {s}")
    if wait:
        from hpcrun.launch.manage import wait as wait_for

        return wait_for(str(result.sweep_dir))
    return 0
