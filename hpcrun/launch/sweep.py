"""Hydra multirun sweeps as sbatch job arrays.

``hpcrun -m +experiment=tiny_llama train.lr=1e-4,3e-4 train.seed=0,1`` expands the overrides with Hydra's own
sweeper rules (the cartesian product of the comma lists), composes and checks every point before anything is
written, and gives each point the run directory the same single command would get (run identity), so a point
and the single run with the same overrides are the same run.

Points whose sbatch options are identical go into one job array, ONE sbatch call per array, throttled to
``cluster.array_throttle`` tasks at once (``--array=0-N%K``); more points than the cluster's MaxArraySize become
several arrays. Re-running the same sweep is safe: complete points are skipped, pending or running ones are not
submitted twice, stopped or failed ones resume.
"""

from __future__ import annotations

import hashlib
import json
import re
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple

from hpcrun.config.identity import command_hash, is_launch_key
from hpcrun.errors import SubmissionError, SubmissionUncertain, UserError
from hpcrun.rundir import RunDir
from hpcrun.rundir.index import SWEEP_FILE, read_sweep, write_sweep

_UNSAFE = re.compile(r"[^A-Za-z0-9._=,+\-]")
_WRITERS = 16  # threads writing run directories (file system waits, not Python, are most of it)


def expand(overrides: Sequence[str]) -> List[List[str]]:
    """The sweep's points: one list of plain overrides per point (Hydra's BasicSweeper expansion)."""
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    parser = OverridesParser.create()
    parsed = []
    for text in overrides:  # one at a time, so that an error names the override
        try:
            (override,) = parser.parse_overrides([text])
        except HydraException as exc:
            why = str(exc).splitlines()[0].split(" expecting ")[0]
            raise UserError(f"cannot parse the override {text!r} ({why}): list a sweep's values with commas "
                            "(train.lr=1e-4,3e-4), none at either end; quote a value with spaces or commas") from None
        if override.is_delete():
            raise UserError(f"{text!r}: a sweep's overrides set values (KEY=VALUE, GROUP=CHOICE); leave the key out "
                            "instead of deleting it")
        if override.is_sweep_override() and (not override.is_discrete_sweep()
                                             or type(override.value()).__name__ == "Glob"):
            function = text.split("=", 1)[1].split("(", 1)[0].strip()
            raise UserError(f"{text!r}: hpcrun's sweep takes listed values (a,b,c), choice(a,b) or range(start,stop"
                            f"[,step]), not {function}(...)")
        parsed.append(override)
    try:
        (batch,) = BasicSweeper.split_arguments(parsed, max_batch_size=None)
    except HydraException as exc:
        raise UserError(f"cannot expand the sweep: {str(exc).splitlines()[0]}") from None
    return [list(point) for point in batch]


def sweep_id(overrides: Sequence[str], command: Sequence[str] = ()) -> str:
    """A readable, stable name for the sweep: its non-launcher overrides, sorted (hashed when long); with
    ``hpcrun run``'s command, its short hash too."""
    parts = sorted(o.lstrip("+~") for o in overrides if not is_launch_key(o.split("=", 1)[0].lstrip("+~")))
    if command:
        parts.append(command_hash(command))
    text = _UNSAFE.sub("_", "__".join(parts)) or "sweep"
    if len(text) > 100:
        text = f"{text[:89]}-{hashlib.sha1(text.encode()).hexdigest()[:10]}"
    return text


@dataclass
class Point:
    overrides: List[str]
    cfg: Any
    prepared: Any = None
    job_id: Optional[str] = None


@dataclass
class Sweep:
    sweep_dir: Path
    points: List[Point]
    arrays: List[Dict[str, Any]] = field(default_factory=list)

    def by_kind(self, kind: str) -> List[Point]:
        return [p for p in self.points if p.prepared.kind == kind]


def _group_key(cfg: Any) -> str:
    from hpcrun.slurm.sbatch import executor_parameters, python_command

    params = executor_parameters(cfg)
    params.pop("job_name", None)
    params.pop("teardown", None)  # names the run directory: an array's teardown lists each task's
    return json.dumps([params, python_command(cfg.cluster)], sort_keys=True, default=str)


def compose_sweep(overrides: Sequence[str], config_dirs: Sequence[str] = (), command: Sequence[str] = ()) -> Sweep:
    """Composes and checks every point (``command``: hpcrun run's); writes nothing. :func:`distinct_runs` and
    :func:`classify` come next (after the site's checks, and for a submission under :func:`submitting`)."""
    from hpcrun.config.overrides import check_sweep
    from hpcrun.config.points import PointComposer

    overrides = check_sweep(overrides)  # a key given twice: its last (said); a value listed twice: refused
    composer = PointComposer(config_dirs, command)  # each shape of point composed in full once (its docstring)
    points = [Point(o, composer.compose(o)) for o in expand(overrides)]
    root = Path(points[0].cfg.cluster.run_root).expanduser()
    return Sweep(root.resolve() / "sweeps" / sweep_id(overrides, command), points)


def distinct_runs(sweep: Sweep) -> None:
    """Refuses a sweep two of whose points are one run (one run directory), naming them and why."""
    from hpcrun.config.overrides import same_run

    first: Dict[str, Point] = {}
    for p in sweep.points:
        other = first.setdefault(str(p.cfg.run.dir), p)
        if other is not p:
            raise same_run(other.overrides, p.overrides, p.cfg)


def classify(sweep: Sweep) -> None:
    """What each point needs (new, resume, complete, active), from its run directory as it is now."""
    from hpcrun.launch.prepare import inspect_run_dir

    for p in sweep.points:
        p.prepared = inspect_run_dir(p.cfg)


@contextmanager
def submitting(sweep: Sweep) -> Iterator[None]:
    """Holds the sweep's lock while a command classifies and submits its points: the same sweep command started
    twice at once would otherwise find every point new in both and submit each twice (two arrays, the second's
    jobs recorded over the first's, which then trained runs that ``hpcrun cancel`` no longer knew of). One lock
    for the sweep rather than one per point (measured: +0.4 s on a 1000-point sweep). The second command is
    refused in one line; once the first is done, the same command finds its points queued and skips them."""
    from hpcrun.rundir.create import make_dirs, remove_new
    from hpcrun.rundir.lock import LAUNCHING, RunBusy, RunLock

    created = make_dirs(sweep.sweep_dir)
    lock = RunLock(sweep.sweep_dir, LAUNCHING)
    try:
        lock.acquire()
    except RunBusy:
        raise UserError(f"sweep {sweep.sweep_dir.name} is being submitted by another hpcrun command "
                        f"({_holder(lock)}): nothing submitted; once it is done, the same command skips what it "
                        "submitted") from None
    try:
        yield
    finally:
        lock.release()
        if created is not None and not (sweep.sweep_dir / SWEEP_FILE).exists():
            remove_new(sweep.sweep_dir, created)  # (nothing went in: the folder made for the lock goes again)


def _holder(lock: Any) -> str:
    from hpcrun.rundir.lock import _holder_text

    return _holder_text(lock.holder_now())


def sweep_record(sweep: Sweep, command: str) -> Tuple[List[Path], Dict[str, Any]]:
    """The sweep directory (made if new: the folders made are returned) and its record, with this command and its
    points (run directories), not yet written."""
    from hpcrun.rundir.create import make_dirs

    created = make_dirs(sweep.sweep_dir)
    record = read_sweep(sweep.sweep_dir)
    record.update(command=command, points=[{"overrides": p.overrides, "run_dir": p.cfg.run.dir}
                                           for p in sweep.points])
    return created, record


def write_local_sweep(sweep: Sweep, command: str, ended: bool = False) -> None:
    """A sweep run here, point after point: its directory and record, as a submitted sweep's (no arrays), so that
    ``hpcrun status``, ``results``, ``report`` and ``wait`` take it. ``ended``: the command running it has ended
    (``local_ended_at``): a point it did not reach will not start (``hpcrun wait`` stops waiting for it)."""
    _, record = sweep_record(sweep, command)
    record.pop("local_ended_at", None)
    if ended:
        record["local_ended_at"] = time.time()
    _write_record(sweep.sweep_dir, record, [])


def submit_arrays(sweep: Sweep, command: str, launcher: Any) -> Sweep:
    """Writes the points' run directories and submits the new and resumable points as job arrays (one sbatch
    call per array). A point whose array sbatch refused leaves no run directory behind; a sweep directory that
    holds no submitted point is removed again."""
    from hpcrun.launch.prepare import write_prepared
    from hpcrun.rundir.create import record_submission, remove_new
    from hpcrun.rundir.index import remember
    from hpcrun.slurm.jobs import chunks, max_array_size

    todo = [p for p in sweep.points if p.prepared.launchable]
    sweep_created, record = sweep_record(sweep, command)  # sweep_created: the only thing it may remove again
    if todo:
        limit = max_array_size()
        groups: Dict[str, List[Point]] = {}
        for p in todo:
            groups.setdefault(_group_key(p.cfg), []).append(p)
        for members in groups.values():
            for chunk in chunks(members, limit):
                _make_run_dirs(chunk)
                _each(lambda p: write_prepared(p.cfg, p.prepared, durable=False, index=False), chunk)
                remember(*(p.cfg.run.dir for p in chunk))
                _durable(chunk)  # before sbatch: every task finds its config
                # Held until every point's job is recorded: a task that started before its point's record would
                # have that record written over its own start (which its other ranks wait for). One release call
                # rather than a lock per point (measured: +0.4 s on a 1000-point sweep). A hold the user asked
                # for (cluster.sbatch_extra.hold) is theirs to release.
                hold = not _user_hold(chunk[0].cfg)
                try:
                    job_ids = launcher.launch_array([p.cfg for p in chunk], sweep.sweep_dir / RunDir.SLURM,
                                                    what=f"sbatch of an array of {_points(len(chunk))}", held=hold)
                except SubmissionError as exc:
                    if not isinstance(exc, SubmissionUncertain):
                        for p in reversed(chunk):  # the last made first: its parents may be an earlier one's
                            if p.prepared.kind == "new":
                                remove_new(Path(p.cfg.run.dir), p.prepared.created)
                    if sweep.arrays or isinstance(exc, SubmissionUncertain):
                        _write_record(sweep.sweep_dir, record, sweep.arrays)
                    else:  # nothing of this sweep went in: leave nothing behind
                        remove_new(sweep.sweep_dir, sweep_created)
                    held_note = ("; an array of this that did go in waits held (JobHeldUser in `squeue --me`): "
                                 "scancel it, then run the same command"
                                 if hold and isinstance(exc, SubmissionUncertain) else "")
                    raise SubmissionError(f"{exc}{held_note}; {_submitted_so_far(sweep)}") from None
                array_id = job_ids[0].split("_")[0]
                for p, job_id in zip(chunk, job_ids):
                    p.job_id = job_id
                try:  # no lock per point: no task starts while held (by hpcrun here, or by the user)
                    _each(lambda p: record_submission(Path(p.cfg.run.dir), p.job_id, p.cfg, durable=False,
                                                      take_lock=False), chunk)
                    _durable(chunk)
                    sweep.arrays.append({"job_id": array_id, "submitted_at": time.time(),
                                         "tasks": [p.cfg.run.dir for p in chunk]})
                finally:  # (also after an error or a Ctrl-C while recording: never an array left held)
                    if hold:
                        _release(array_id, sweep, record)
    _write_record(sweep.sweep_dir, record, sweep.arrays)
    return sweep


def _user_hold(cfg: Any) -> bool:
    from hpcrun.slurm.sbatch import sbatch_flag

    return sbatch_flag(cfg.cluster, "hold")


def _release(array_id: str, sweep: Sweep, record: Dict[str, Any]) -> None:
    """Releases an array submitted held (its points are recorded); a release Slurm refused is said in one line."""
    from hpcrun.slurm.jobs import release

    try:
        release(array_id)
    except SubmissionError as exc:
        _write_record(sweep.sweep_dir, record, sweep.arrays)
        raise SubmissionError(f"array {array_id} went in held (until its points were recorded), and `scontrol "
                              f"release {array_id}` failed: {exc}; run that command to start it; "
                              f"{_submitted_so_far(sweep)}") from None


def _make_run_dirs(chunk: List[Point]) -> None:
    """Creates the points' run directories, their parents here in order (a failed array removes the points in
    reverse, each up to the highest folder it created: remove_new), the run directories themselves in parallel."""
    import os

    from hpcrun.rundir.create import make_dirs

    owner: Dict[Path, Optional[Path]] = {}
    for p in chunk:
        parent = Path(p.cfg.run.dir).parent
        if parent not in owner:
            owner[parent] = make_dirs(parent)
            first = True
        else:
            first = False
        p.prepared.created = owner[parent] if first else None

    def leaf(p: Point) -> None:
        run_dir = Path(p.cfg.run.dir)
        try:
            os.mkdir(run_dir, 0o700)
        except FileExistsError:
            return
        if p.prepared.kind == "new" and p.prepared.created is None:
            p.prepared.created = run_dir

    _each(leaf, chunk)
    for p in chunk:
        if p.prepared.kind != "new":
            p.prepared.created = None


def _durable(chunk: List[Point]) -> None:
    """Makes what was written for these points durable: one sync of each file system their runs are on."""
    import os

    from hpcrun.rundir.atomic import sync_filesystem

    devices: Dict[int, Path] = {}
    for p in chunk:
        path = Path(p.cfg.run.dir)
        devices.setdefault(os.stat(path).st_dev, path)
    for path in devices.values():
        sync_filesystem(path)


def _each(write: Any, points: List[Point]) -> None:
    """``write(point)`` for each point, several at once: each run directory's files are written and fsynced
    apart from the others', and a file system serves many of them at once (a journal commits several fsyncs
    together; a parallel file system's metadata servers create files in parallel). Raises the first error."""
    from concurrent.futures import ThreadPoolExecutor

    if len(points) < 8:
        for p in points:
            write(p)
        return
    with ThreadPoolExecutor(max_workers=_WRITERS) as pool:
        for _ in pool.map(write, points):
            pass


def _submitted_so_far(result: Sweep) -> str:
    """Which points went in before a failed array, for the error message (sweep.json lists them too)."""
    done = [t for a in result.arrays for t in a["tasks"]]
    if not done:
        return "no point of this sweep was submitted by this command"
    arrays = ", ".join(f"{a['job_id']} ({_points(len(a['tasks']))})" for a in result.arrays)
    names = ", ".join(Path(t).name for t in done[:10]) + (", ..." if len(done) > 10 else "")
    return (f"{_points(len(done))} went in before it, as job arrays {arrays}: {names} (all listed in "
            f"{result.sweep_dir / SWEEP_FILE}); the same command submits the rest and skips those")


def _points(n: int) -> str:
    return f"{n} point" if n == 1 else f"{n} points"


def _write_record(sweep_dir: Path, record: Dict[str, Any], arrays: List[Dict[str, Any]]) -> None:
    record.setdefault("arrays", []).extend(arrays)
    write_sweep(sweep_dir, record)
