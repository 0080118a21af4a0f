"""What launching a config does with its run directory: a new run, a resume, complete, or already queued.

Running the same command again (same experiment and training overrides) finds the same ``run.dir`` (see
:mod:`hpcrun.config.identity`) and resumes it; launcher keys (time, partition, account, save interval) may change
between starts and are updated in its ``config.yaml``. A run whose training config differs is refused, not
overwritten; ``run.fresh=true`` moves the old run aside and starts over. The files themselves are written by
:mod:`hpcrun.rundir.create`; this module only decides.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Optional

from hpcrun.rundir import RunDir
from hpcrun.rundir.state import ACTIVE, read_state


@dataclass
class Prepared:
    """What :func:`inspect_run_dir` found (and, once written, did)."""

    run_dir: Path
    kind: str  # "new", "resume", "complete", "active"
    message: str
    created: Optional[Path] = None  # the highest folder launching creates (removed again if sbatch refuses)
    submitted: bool = False  # sbatch took it: from then on nothing is removed (the job needs the run directory)

    @property
    def launchable(self) -> bool:
        return self.kind in ("new", "resume")


def _queued_job(state: dict) -> Optional[str]:
    """The run's Slurm job id when that job is still pending or running."""
    from hpcrun.slurm.jobs import SLURM_ACTIVE, job_states

    job = state.get("job_id")
    if not job or state.get("status") not in ACTIVE:
        return None
    slurm = job_states([str(job)]).get(str(job))
    return f"{job} ({slurm.lower()})" if slurm in SLURM_ACTIVE else None


def _newest_checkpoint(run_dir: Path) -> str:
    from hpcrun.rundir.checkpoints import newest_complete

    latest, _ = newest_complete(run_dir)
    return f"from {latest.path.name}" if latest else "from the start (no complete checkpoint yet)"


def inspect_run_dir(cfg: Any) -> Prepared:
    """What launching ``cfg`` would do with its run directory; writes nothing.

    Raises:
        UserError: the directory is not an hpcrun run (and not empty), holds a different run (its training config
            differs), or is unreadable.
    """
    from hpcrun.rundir.create import highest_missing, refuse_another_run, refuse_foreign

    run_dir = Path(cfg.run.dir)
    refuse_foreign(run_dir)
    if not RunDir(run_dir).is_run():
        # created: what launching would make (claimed() replaces it with what it made, under the lock)
        return Prepared(run_dir, "new", f"new run {cfg.run.name}", created=highest_missing(run_dir))
    if cfg.run.fresh:
        return Prepared(run_dir, "new", f"new run {cfg.run.name} (run.fresh=true: the previous one is moved aside)")
    edited = _edited_version(cfg, run_dir)
    if edited is not None:
        return edited
    run_dir = Path(cfg.run.dir)  # an edited config's own run (<run.id>.vN), when it has one
    refuse_another_run(cfg, run_dir)
    state = read_state(run_dir)
    if state.get("status") == "completed":
        same = "command" if _is_command(cfg) else "experiment"
        return Prepared(run_dir, "complete", f"run {cfg.run.name} in {run_dir} is already complete: "
                        f"{_results(run_dir)}. Nothing to do: the same {same} and overrides are the same run "
                        "wherever it runs (cluster.* is not part of it); run.name=NEW makes another run beside it, "
                        "run.fresh=true trains this one again from scratch")
    job = _queued_job(state)
    if job:
        return Prepared(run_dir, "active", f"run {cfg.run.name} is already queued or running as Slurm job "
                        f"{job}: nothing submitted")
    return Prepared(run_dir, "resume", f"resuming run {cfg.run.name} {_newest_checkpoint(run_dir)}"
                    f"{_new_shape(cfg, run_dir)}")


def _is_command(cfg: Any) -> bool:
    """Whether the run is a command of the user's own (``hpcrun run -- COMMAND``)."""
    return bool(getattr(getattr(cfg, "command", None), "argv", None))


def _results(run_dir: Path) -> str:
    """Where a completed run's results are: the built-in task's final weights, or a command's Trainer output
    folders (``outputs.json``), or the command's own places."""
    from hpcrun.rundir.checkpoints import recorded_outputs

    final = RunDir(run_dir).final
    if final.is_dir():
        return f"final weights in {final}"
    outputs = recorded_outputs(run_dir)
    if outputs:
        return f"its Trainer's output in {', '.join(str(p) for p in outputs)}"
    return f"its results are where the command wrote them (its output: hpcrun logs {run_dir})"


def _new_shape(cfg: Any, run_dir: Path) -> str:
    """For a run resumed on another number of processes than its newest checkpoint's: how the global batch is
    kept, to add to the message.

    Raises:
        ConfigError: the global batch cannot be split over the new number of processes.
    """
    from hpcrun.rundir.checkpoints import newest_complete
    from hpcrun.rundir.shape import continue_on, read_shape

    from hpcrun.config.schema import BUILTIN_SETTINGS

    if cfg.task.settings_path() != BUILTIN_SETTINGS:
        return ""  # a task of its own (a command, a custom task) chooses its batch itself
    latest, _ = newest_complete(run_dir)
    saved = read_shape(latest.path) if latest else None
    processes = cfg.cluster.nodes * cfg.cluster.tasks_per_node
    if saved is None or saved.processes == processes:
        return ""
    key = "cluster.tasks_per_node" if cfg.cluster.nodes == 1 else "cluster.nodes"
    shape = continue_on(saved, processes, cfg.train.batch_size, key, fsdp=cfg.train.fsdp)
    return f", on {processes} process(es) where it was saved by {saved.processes}: {shape.describe()}"


EDITED = ".v"  # <run.id>.v2, .v3, ...: the same command after its experiment's files changed


def _edited_version(cfg: Any, run_dir: Path) -> Optional[Prepared]:
    """The same command, but its config files were edited since the run was made (the composed training config
    differs while the command line, hence ``run.id``, is the same): the run of this config beside the first,
    ``<run.id>.v2`` (then .v3, ...), resumed when it exists, new otherwise; ``cfg.run.dir`` is set to it. None
    when the training config is the same, or ``run.dir`` was set explicitly (that folder is then refused)."""
    from hpcrun.rundir.create import describe_diffs, highest_missing, refuse_foreign, training_diffs

    if run_dir.name != cfg.run.id or run_dir.parent.name != cfg.run.name:
        return None  # run.dir given by hand: the user chose that folder
    diffs = training_diffs(cfg, run_dir)
    if not diffs:
        return None
    n = 2
    while True:
        version = run_dir.with_name(f"{run_dir.name}{EDITED}{n}")
        refuse_foreign(version)
        if not RunDir(version).is_run():
            cfg.run.dir = str(version)
            return Prepared(version, "new", f"new run {cfg.run.name} in {version}: the training config differs "
                            f"from the run of the same command in {run_dir.name} ({describe_diffs(diffs)}: its "
                            "config files changed), which is left as it is", created=highest_missing(version))
        if not training_diffs(cfg, version):
            cfg.run.dir = str(version)
            return None  # that edit's own run: resumed (or complete, or queued) as any run
        n += 1


def write_prepared(cfg: Any, prepared: Prepared, durable: bool = True, index: bool = True) -> None:
    """Writes what :func:`inspect_run_dir` decided: moves an old run aside for run.fresh, creates the run
    directory with its config, and adds it to the user's index of runs (``index=False``: the caller does, for
    many runs at once)."""
    from hpcrun.rundir.create import move_aside, write_run_dir
    from hpcrun.rundir.index import remember

    run_dir = prepared.run_dir
    if cfg.run.fresh and RunDir(run_dir).is_run():
        aside = move_aside(run_dir)
        prepared.message = f"new run {cfg.run.name} (run.fresh=true: the previous one moved to {aside})"
        prepared.created = run_dir
    write_run_dir(cfg, run_dir, durable)
    if index:
        remember(run_dir)


@contextlib.contextmanager
def claimed(cfg: Any) -> Iterator[Prepared]:
    """Holds the run's lock while a command decides and writes (and, for Slurm, submits): two ``hpcrun`` commands
    for one run started together cannot both find it new and submit a job each; the second is refused with one
    line, or finds the first one's job queued. A run whose Slurm job is running (its start holds the lock) is
    "active", as before. Yields what :func:`inspect_run_dir` found, written when launchable. A launch that fails
    while it holds the lock leaves nothing it created behind. Release it before running the job here: the job's
    start takes the lock itself."""
    from hpcrun.rundir.create import make_dirs, refuse_foreign, remove_new
    from hpcrun.rundir.lock import LAUNCHING, RunBusy, RunLock

    # An edited config's own run (<run.id>.vN) is chosen first: its folder is the one to lock (the first run's job
    # may be running, and holds that one's lock).
    edited = _edited_version(cfg, Path(cfg.run.dir)) if RunDir(Path(cfg.run.dir)).is_run() else None
    run_dir = Path(cfg.run.dir)
    refuse_foreign(run_dir)  # never a lock file in a folder that is not a run
    created = make_dirs(run_dir)  # what this command made: the only thing it may remove again
    lock = RunLock(run_dir, LAUNCHING)
    try:
        lock.acquire()
    except RunBusy:
        holder = lock.holder_now()
        if holder.get("job_id"):  # the run's own Slurm job is training it: nothing to launch
            yield Prepared(run_dir, "active", f"run {cfg.run.name} is already running as Slurm job "
                           f"{holder['job_id']}: nothing submitted")
            return
        raise  # another command, or a local start: one line naming it (the folder is theirs, not removed)
    prepared: Optional[Prepared] = None
    try:
        prepared = inspect_run_dir(cfg)
        if prepared.kind == "new" and prepared.run_dir == run_dir:
            prepared.created = created
            if edited is not None:
                prepared.message = edited.message
        if prepared.launchable:
            write_prepared(cfg, prepared)
        yield prepared
    except BaseException as exc:
        from hpcrun.errors import SubmissionUncertain

        # (a job sbatch took keeps its run: an error after it, e.g. a closed pipe when its line is printed, is
        # the terminal's, not the launch's)
        if not isinstance(exc, SubmissionUncertain) and (prepared is None or (prepared.kind == "new"
                                                                                and not prepared.submitted)):
            # the job may exist only when sbatch's answer was lost
            if prepared is not None and prepared.run_dir != run_dir:
                remove_new(prepared.run_dir, prepared.created)
            remove_new(run_dir, created)
        raise
    finally:
        lock.release()
