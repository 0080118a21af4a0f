"""Making and claiming run directories: the only code that creates one, writes its config, or moves one aside.

hpcrun never writes into, moves or deletes a folder that is not one of its runs (a folder with the run marker, or
with the config.yaml of a run made before the marker existed) or an empty folder: ``run.dir=.`` in a project
folder, or ``run.dir=$HOME``, is refused with one line instead of filling or renaming it.
"""

from __future__ import annotations

import functools
import os
import time
from pathlib import Path
from typing import Any, List, Optional

from hpcrun.errors import UserError
from hpcrun.rundir.atomic import atomic_write
from hpcrun.rundir.layout import RunDir
from hpcrun.rundir.lock import LAUNCHING, RunBusy, RunLock
from hpcrun.rundir.state import read_state, write_state


def config_yaml(cfg: Any) -> str:
    """The YAML of a typed config (what ``config.yaml`` holds): what ``OmegaConf.to_yaml`` writes (a string that
    reads as a number or a boolean is quoted, so OmegaConf reads it back as a string), written by libyaml's emitter
    when PyYAML has it (a sweep writes a thousand of these)."""
    import yaml

    from hpcrun.config.compose import to_container

    # Each top-level section's block is written on its own and kept (by its repr, which tells 1, 1.0, '1' and True
    # apart): a sweep's points share most of theirs.
    parts = []
    for name, value in to_container(cfg).items():
        key = (name, repr(value))
        text = _SECTION_YAML.get(key)
        if text is None:
            text = yaml.dump({name: value}, Dumper=_dumper(), default_flow_style=False, allow_unicode=True,
                             sort_keys=False)
            if len(_SECTION_YAML) < 1024:
                _SECTION_YAML[key] = text
        parts.append(text)
    return "".join(parts)


_SECTION_YAML: dict = {}


@functools.lru_cache(maxsize=None)
def _dumper() -> type:
    import yaml
    from omegaconf._utils import OmegaConfDumper

    base = getattr(yaml, "CDumper", yaml.Dumper)
    dumper = type("ConfigDumper", (base,), {})
    dumper.add_representer(str, OmegaConfDumper.str_representer)
    return dumper


def _looks_like_a_run(path: Path) -> bool:
    rd = RunDir(path)
    if not rd.config.is_file():
        return False
    import yaml

    try:  # a run made before the marker existed: its config has hpcrun's own sections
        data = yaml.safe_load(rd.config.read_text())
    except (OSError, yaml.YAMLError):
        return False
    return isinstance(data, dict) and isinstance(data.get("run"), dict) and isinstance(data.get("cluster"), dict)


def is_hpcrun_run(path: Path) -> bool:
    """Whether ``path`` holds an hpcrun run: its marker, or a run's config.yaml from before the marker."""
    return RunDir(path).marker.is_file() or _looks_like_a_run(path)


def refuse_foreign(path: Path, key: str = "run.dir") -> None:
    """Raises UserError unless ``path`` is missing, empty, or an hpcrun run: hpcrun never writes into, moves or
    deletes anything else."""
    path = Path(path)
    if not path.exists():
        return
    if not path.is_dir():
        raise UserError(f"{key}={str(path)!r} is a file, not a run directory: choose another {key}")
    if is_hpcrun_run(path):
        return
    # hpcrun's own files (the lock; a marker being written, or whose write was killed: ..hpcrun-run.XXXX.tmp) do
    # not make a folder foreign.
    if any(not p.name.lstrip(".").startswith("hpcrun-") for p in path.iterdir()):
        raise UserError(f"{key}={str(path)!r} is a folder that is not an hpcrun run and is not empty: hpcrun never "
                        f"writes into, moves or deletes it; choose another {key} (or leave it out: the default is "
                        "<cluster.run_root>/<run.name>/<run.id>)")


def training_diffs(cfg: Any, run_dir: Path) -> List[str]:
    """How ``cfg``'s training config differs from the one in ``run_dir/config.yaml`` (``key: old -> new``; [] for
    none). Raises UserError when that file is unreadable."""
    import yaml

    from hpcrun.config.compose import to_container
    from hpcrun.config.identity import training_differences

    saved_path = RunDir(run_dir).config
    try:
        saved = yaml.safe_load(saved_path.read_text())
        if not isinstance(saved, dict):
            raise ValueError("not a mapping")
    except Exception as exc:  # noqa: BLE001 - any unreadable file gets the same one-line answer
        raise UserError(f"{saved_path} is unreadable ({type(exc).__name__}); run.fresh=true starts over") from None
    return training_differences(saved, to_container(cfg))


def describe_diffs(diffs: List[str]) -> str:
    return diffs[0] + (f" (and {len(diffs) - 1} more)" if len(diffs) > 1 else "")


def refuse_another_run(cfg: Any, run_dir: Path) -> None:
    """Raises UserError when ``run_dir/config.yaml`` is unreadable or holds another training config than ``cfg``."""
    diffs = training_diffs(cfg, run_dir)
    if diffs:
        raise UserError(f"{run_dir} holds a run with another training config: {describe_diffs(diffs)}; resume it "
                        "unchanged, start over with run.fresh=true, or choose another run.dir")


def highest_missing(path: Path) -> Optional[Path]:
    """The highest folder of ``path`` that does not exist yet (what creating it would add), or None."""
    if path.exists():
        return None
    created = path
    while not created.parent.exists():
        created = created.parent
    return created


def make_dirs(path: Path) -> Optional[Path]:
    """Creates ``path`` and its missing parents (0700); returns the highest folder THIS call created (None: all
    existed). Folder by folder, so that of two processes making the same path, each knows what was its own."""
    path = Path(path)
    missing = []
    p = path
    while not p.exists():
        missing.append(p)
        p = p.parent
    created = None
    for p in reversed(missing):
        try:
            os.mkdir(p, 0o700)
        except FileExistsError:
            continue
        created = created or p
    return created


def remove_new(path: Path, created: Optional[Path]) -> None:
    """Removes what a launch that failed made: ``path`` itself (a run or sweep folder this process created and
    still owns), then each parent up to ``created`` while it is empty, never a folder that holds anything else."""
    import shutil

    if created is None:
        return
    path = Path(path)
    shutil.rmtree(path, ignore_errors=True)
    p = path.parent
    while p != created.parent and p.is_relative_to(created):
        try:
            p.rmdir()
        except OSError:
            return  # not empty: another run lives here
        p = p.parent


def move_aside(run_dir: Path) -> Path:
    """Moves a previous run out of the way (``run.fresh=true``) and returns where it went. Only an hpcrun run
    is ever moved."""
    if not is_hpcrun_run(run_dir):
        raise UserError(f"run.dir={str(run_dir)!r} is not an hpcrun run: run.fresh=true moves only runs aside")
    aside = run_dir.with_name(f"{run_dir.name}.replaced-{time.strftime('%Y%m%d-%H%M%S')}")
    os.replace(run_dir, aside)
    return aside


def write_run_dir(cfg: Any, run_dir: Path, durable: bool = True) -> None:
    """Creates the run directory if needed, marks it as a run, and saves the config in it (``durable=False``: the
    caller makes a batch durable at once, :func:`hpcrun.rundir.atomic.sync_filesystem`).

    The job reads ``config.yaml`` at every start: nothing about the run is baked into the submission, so a
    requeued job finds the same config and its newest checkpoint on disk. A new folder is private to the user
    (0700): configs and logs may hold paths and tokens.
    """
    refuse_foreign(run_dir)
    rd = RunDir(run_dir)
    rd.path.mkdir(parents=True, exist_ok=True, mode=0o700)
    try:  # a run is marked by the marker's existence: the folder's fsync after config.yaml makes it durable
        with open(rd.marker, "x") as f:
            f.write("hpcrun run directory: hpcrun may write, move and delete what is in it\n")
    except FileExistsError:
        pass
    atomic_write(rd.config, config_yaml(cfg), durable=durable)


def record_submission(run_dir: Path, job_id: str, cfg: Any = None, durable: bool = True,
                      take_lock: bool = True) -> None:
    """Notes the submitted job in the run's state (the job overwrites it with "running" when it starts), and the
    steps the run plans when the task's settings can tell before it starts (a settings class with
    ``planned_steps()``), so ``hpcrun status`` shows ``0/N`` for a run still in the queue (the task's own word, in
    the ledger, wins once it has started).

    The job may already have started when this runs: under the run's lock (``take_lock``; a caller that holds it,
    or whose job cannot start yet, passes False), a run whose job holds the lock, or has recorded a start of
    ``job_id``, is left as the job wrote it. Without that, this read-modify-write could drop the job's start record,
    which the job's other ranks wait for.
    """
    lock = None
    if take_lock:
        try:
            lock = RunLock(run_dir, LAUNCHING).acquire()
        except RunBusy:
            return  # the job's start holds the run: what it records is newer than this
    try:
        state = read_state(run_dir)
        if any(s.get("job_id") == job_id for s in state.get("starts", [])):
            return  # the job started (and maybe ended) already
        state.update(status="submitted", job_id=job_id, reason="")
        planned = getattr(getattr(cfg, "settings", None), "planned_steps", None)
        if callable(planned):
            try:  # a task's own code, after the job went in: never a reason to lose the record of it
                state["planned_steps"] = int(planned())
            except Exception:  # noqa: BLE001
                pass
        write_state(run_dir, state, durable=durable)
    finally:
        if lock is not None:
            lock.release()
