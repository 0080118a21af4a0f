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
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

from hpcrun.config.identity import is_launch_key
from hpcrun.errors import SubmissionError, SubmissionUncertain, UserError

SWEEP_FILE = "sweep.json"
_UNSAFE = re.compile(r"[^A-Za-z0-9._=,+\-]")


def expand(overrides: Sequence[str]) -> List[List[str]]:
    """The sweep's points: one list of plain overrides per point (Hydra's BasicSweeper expansion)."""
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    try:
        parsed = OverridesParser.create().parse_overrides(list(overrides))
        (batch,) = BasicSweeper.split_arguments(parsed, max_batch_size=None)
    except HydraException as exc:
        raise UserError(f"cannot expand the sweep: {str(exc).splitlines()[0]}") from None
    return [list(point) for point in batch]


def sweep_id(overrides: Sequence[str]) -> str:
    """A readable, stable name for the sweep: its non-launcher overrides, sorted (hashed when long)."""
    parts = sorted(o.lstrip("+~") for o in overrides if not is_launch_key(o.split("=", 1)[0].lstrip("+~")))
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
class SweepResult:
    sweep_dir: Path
    points: List[Point]
    arrays: List[Dict[str, Any]] = field(default_factory=list)

    def by_kind(self, kind: str) -> List[Point]:
        return [p for p in self.points if p.prepared.kind == kind]


def _group_key(cfg: Any) -> str:
    from hpcrun.launch.slurm import executor_parameters, python_command

    params = executor_parameters(cfg)
    params.pop("job_name", None)
    return json.dumps([params, python_command(cfg.cluster)], sort_keys=True, default=str)


def plan(overrides: Sequence[str], config_dirs: Sequence[str] = ()) -> SweepResult:
    """Composes, checks and classifies every point; writes nothing."""
    from hpcrun.config.compose import compose
    from hpcrun.launch.rundir import inspect_run_dir

    points = [Point(o, compose(o, config_dirs)) for o in expand(overrides)]
    dirs = [p.cfg.run.dir for p in points]
    if len(set(dirs)) != len(dirs):
        raise UserError("two sweep points share a run directory (run.dir is set explicitly?): "
                        "leave run.dir out of a sweep, each point gets its own")
    for p in points:
        p.prepared = inspect_run_dir(p.cfg)
    root = Path(points[0].cfg.cluster.run_root).expanduser()
    return SweepResult(root.resolve() / "sweeps" / sweep_id(overrides), points)


def submit(result: SweepResult, command: str) -> SweepResult:
    """Writes the points' run directories and submits the new and resumable points as job arrays."""
    from hpcrun.job.entry import JobEntry
    from hpcrun.launch.rundir import record_submission, write_run_dir
    from hpcrun.launch.slurm import make_executor
    from hpcrun.launch.slurm_info import chunks, max_array_size, submit_with_retries

    todo = [p for p in result.points if p.prepared.kind in ("new", "resume")]
    result.sweep_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    record = _read_record(result.sweep_dir)
    record.update(command=command, points=[{"overrides": p.overrides, "run_dir": p.cfg.run.dir}
                                           for p in result.points])
    if todo:
        limit = max_array_size()
        groups: Dict[str, List[Point]] = {}
        for p in todo:
            groups.setdefault(_group_key(p.cfg), []).append(p)
        for members in groups.values():
            for chunk in chunks(members, limit):
                for p in chunk:
                    write_run_dir(p.cfg, p.prepared)
                executor = make_executor(chunk[0].cfg, folder=result.sweep_dir / "slurm")
                executor.update_parameters(array_parallelism=chunk[0].cfg.cluster.array_throttle or len(chunk))

                def submit_array() -> List[Any]:
                    with executor.batch():
                        return [executor.submit(JobEntry(p.cfg.run.dir)) for p in chunk]

                try:
                    jobs = submit_with_retries(submit_array, what=f"sbatch of an array of {_points(len(chunk))}")
                except SubmissionError as exc:
                    if not isinstance(exc, SubmissionUncertain):
                        for p in chunk:
                            if p.prepared.created:  # this point's own folder only: others share its parents
                                shutil.rmtree(p.cfg.run.dir, ignore_errors=True)
                    _write_record(result.sweep_dir, record, result.arrays)
                    raise SubmissionError(f"{exc}; {_submitted_so_far(result)}") from None
                array_id = str(jobs[0].job_id).split("_")[0]
                for p, job in zip(chunk, jobs):
                    p.job_id = str(job.job_id)
                    record_submission(Path(p.cfg.run.dir), p.job_id)
                result.arrays.append({"job_id": array_id, "submitted_at": time.time(),
                                      "tasks": [p.cfg.run.dir for p in chunk]})
    _write_record(result.sweep_dir, record, result.arrays)
    return result


def _submitted_so_far(result: SweepResult) -> str:
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


def _read_record(sweep_dir: Path) -> Dict[str, Any]:
    try:
        return json.loads((sweep_dir / SWEEP_FILE).read_text())
    except (OSError, ValueError):
        return {}


def _write_record(sweep_dir: Path, record: Dict[str, Any], arrays: List[Dict[str, Any]]) -> None:
    from hpcrun.launch.rundir import atomic_write_text

    record.setdefault("arrays", []).extend(arrays)
    atomic_write_text(sweep_dir / SWEEP_FILE, json.dumps(record, indent=1))


def sweep_run_dirs(sweep_dir: Path) -> List[Path]:
    """The run directories of a sweep, in point order."""
    record = _read_record(Path(sweep_dir))
    if not record:
        raise UserError(f"{sweep_dir} is not a sweep directory (no readable {SWEEP_FILE})")
    return [Path(p["run_dir"]) for p in record.get("points", [])]
