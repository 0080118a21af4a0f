"""The launching commands: ``hpcrun [-m] OVERRIDES`` and ``hpcrun resume RUN``. Login node (no torch).

compose -> check the site -> prepare the run directory -> the launcher (foreground here, or sbatch).
"""

from __future__ import annotations

import signal
import textwrap
from pathlib import Path
from typing import Any, List, Sequence

from hpcrun.console import say
from hpcrun.errors import UserError
from hpcrun.launch.launchers import CANCELLED_EXIT, STOPPED_EXITS, launcher_for


def _wait(target: Path) -> int:
    from hpcrun.observe.manage import wait

    return wait(str(target))


def launch(overrides: Sequence[str], config_dirs: Sequence[str], wait: bool = False,
           command: Sequence[str] = ()) -> int:
    """``hpcrun OVERRIDES`` (``hpcrun run OVERRIDES -- COMMAND``): one run."""
    from hpcrun.config.compose import compose
    from hpcrun.launch.prepare import claimed

    cfg = compose(overrides, config_dirs, command=command)
    launcher = launcher_for(cfg)
    launcher.check([cfg])  # the site's own limits, before anything is written
    with claimed(cfg) as prepared:
        if not prepared.launchable:
            say(prepared.message)
            return 0
        if launcher.submits:  # said once submitted: a refused sbatch is one line, the error's
            job_id = launcher.launch(cfg, prepared)
        say(prepared.message)
    if not launcher.submits:
        return launcher.launch(cfg, prepared)  # the job's start takes the run's lock itself
    run_dir = prepared.run_dir
    print(textwrap.dedent(f"""\
        submitted Slurm job {job_id} for run {cfg.run.name} on {cfg.cluster.name}
          run dir: {run_dir}
          status:  hpcrun status {run_dir}
          logs:    hpcrun logs -f {run_dir}
          cancel:  hpcrun cancel {run_dir}"""), flush=True)
    return _wait(run_dir) if wait else 0


def launch_sweep(overrides: Sequence[str], config_dirs: Sequence[str], command: str, wait: bool = False,
                 argv: Sequence[str] = ()) -> int:
    """``hpcrun -m OVERRIDES`` (``hpcrun -m run OVERRIDES -- ARGV``): every point, as job arrays on Slurm or one
    after another here. ``command`` is the hpcrun command line, for the sweep's record."""
    from hpcrun.launch.sweep import classify, compose_sweep, distinct_runs, submit_arrays, submitting

    sweep = compose_sweep(overrides, config_dirs, argv)
    points = sweep.points
    launcher = launcher_for(points[0].cfg)
    if not launcher.submits:
        distinct_runs(sweep)
        classify(sweep)
        return _run_local_sweep(sweep, command, launcher, _skipped(sweep))
    # The site's own limits (each partition once), every point's, before anything is written or submitted: a bad
    # value is named as such, also where the points are complete (nothing to submit, and no record rewritten).
    launcher.check([p.cfg for p in points])
    distinct_runs(sweep)
    with submitting(sweep):
        classify(sweep)
        skipped = _skipped(sweep)
        launcher.check_job_limit([p.cfg for p in points if p.prepared.launchable])
        submit_arrays(sweep, command, launcher)
    resumed = len(sweep.by_kind("resume"))
    submitted = sum(len(a["tasks"]) for a in sweep.arrays)
    arrays = ", ".join(f"{a['job_id']} ({len(a['tasks'])} tasks)" for a in sweep.arrays) or "none"
    print(textwrap.dedent(f"""\
        sweep {sweep.sweep_dir.name}: {len(points)} points; submitted {submitted} ({resumed} resuming) as job \
arrays {arrays}; skipped {len(skipped)}
          sweep dir: {sweep.sweep_dir}
          status:    hpcrun status {sweep.sweep_dir}
          wait:      hpcrun wait {sweep.sweep_dir}
          cancel:    hpcrun cancel {sweep.sweep_dir}"""), flush=True)
    for s in skipped:
        print(f"  skipped: {s}")
    return _wait(sweep.sweep_dir) if wait else 0


def _skipped(sweep: Any) -> List[str]:
    return [f"{p.cfg.run.name}/{p.cfg.run.id} ({label})"
            for kind, label in (("complete", "complete"), ("active", "already queued or running"))
            for p in sweep.by_kind(kind)]


def _run_local_sweep(sweep: Any, command: str, launcher: Any, skipped: List[str]) -> int:
    """A sweep here: its points one after another. A point that fails is reported and the next one runs (as in a
    job array); a stop (Ctrl-C, the time limit) stops the sweep, and the same command continues it (completed
    points are skipped)."""
    from hpcrun.errors import JobError
    from hpcrun.launch.prepare import write_prepared
    from hpcrun.launch.sweep import write_local_sweep

    launcher.check([p.cfg for p in sweep.points], sweep=True)
    write_local_sweep(sweep, command)
    say(f"sweep {sweep.sweep_dir.name}: {len(sweep.points)} points, run here one after another; sweep dir: "
        f"{sweep.sweep_dir} (hpcrun status, results, report and wait take it)")
    status = 0
    # A SIGTERM between two points (hpcrun cancel of a point that just ended) stops the sweep, rather than killing
    # it before it records its end; during a point, the point's own handlers take it (hpcrun.job.signals).
    between: List[int] = []
    previous = signal.signal(signal.SIGTERM, lambda signum, frame: between.append(signum))
    try:
        for p in sweep.points:
            if between:
                say(f"sweep cancelled (SIGTERM) before point {p.cfg.run.id}; the same command continues it")
                status = max(status, CANCELLED_EXIT)
                break
            if not p.prepared.launchable:
                continue
            write_prepared(p.cfg, p.prepared)
            say(f"point {p.cfg.run.id}: {p.prepared.message}")
            try:
                code = launcher.launch(p.cfg, p.prepared)
            except JobError as exc:
                say(f"point {p.cfg.run.id} failed: {exc}")
                status = max(status, 1)
                continue
            status = max(status, code)
            if code in STOPPED_EXITS:  # stopped, resumable: the user (or the time limit) stops the sweep
                say(f"sweep stopped at point {p.cfg.run.id}; the same command continues it")
                break
    finally:
        signal.signal(signal.SIGTERM, previous)
        write_local_sweep(sweep, command, ended=True)
    if skipped:
        say(f"skipped {len(skipped)}: {', '.join(skipped)}")
    say(f"sweep dir: {sweep.sweep_dir} (hpcrun results {sweep.sweep_dir})")
    return status


def resume(target: str, overrides: Sequence[str]) -> int:
    """``hpcrun resume RUN``: resubmits a stopped or failed run from its saved config; only launcher keys change."""
    from omegaconf import OmegaConf

    from hpcrun.config.compose import from_container, load_saved, to_container
    from hpcrun.config.identity import is_launch_key
    from hpcrun.launch.prepare import claimed
    from hpcrun.observe.manage import run_dir_of
    from hpcrun.rundir import RunDir
    from hpcrun.rundir.state import read_state, write_state

    run_dir = run_dir_of(target)
    saved = load_saved(RunDir(run_dir).config)
    for o in overrides:
        key = o.split("=", 1)[0]
        if "=" not in o or not is_launch_key(key) or key in ("run.dir", "run.name", "run.id"):
            raise UserError(f"{o!r}: resume takes launcher keys only (cluster.*, checkpoint.*, run.max_requeues, "
                            "run.max_restarts_without_progress); a run with other training keys is a new run")
    keys = {o.split("=", 1)[0] for o in overrides}
    container = to_container(saved)
    cluster = container.get("cluster", {})
    if "cluster.gpus_per_node" in keys and "cluster.tasks_per_node" not in keys and \
            cluster.get("tasks_per_node") == max(1, cluster.get("gpus_per_node") or 0):
        cluster["tasks_per_node"] = None  # one process per GPU, as it was: derived again from the new count
    merged = OmegaConf.merge(OmegaConf.create(container), OmegaConf.from_dotlist(list(overrides)))
    cfg = from_container(merged)
    launcher = launcher_for(cfg)
    launcher.check([cfg])  # as a first launch: the site's limits, or (locally) that here is the allocation
    with claimed(cfg) as prepared:
        say(prepared.message)
        if not prepared.launchable:
            return 0
        state = read_state(run_dir)
        if state.get("no_progress_restarts"):
            state["no_progress_restarts"] = 0  # the user looked at it: the crash-loop budget starts again
            write_state(run_dir, state)
        if launcher.submits:
            job_id = launcher.launch(cfg, prepared)
    if not launcher.submits:
        return launcher.launch(cfg, prepared)
    print(f"submitted Slurm job {job_id} to resume {run_dir}", flush=True)
    return 0
