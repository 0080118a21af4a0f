"""Atomic checkpoints: ``<run.dir>/checkpoints/step-N/``, complete only with their marker.

A save writes every file into ``checkpoints/.staging/checkpoint-N/`` (Trainer's own layout), then a marker
``hpcrun-complete.json`` listing every file and its size, written last, then renames the folder to ``step-N``.
A kill at any instant leaves either the previous checkpoints untouched plus a staging folder (removed at the next
start), or a complete ``step-N``. Resume takes the newest ``step-N`` whose marker exists and whose files all
exist at their recorded sizes, and logs every newer folder it skipped and why. (transformers'
``get_last_checkpoint`` takes the highest number without checking completeness; hpcrun does not use it.)

No torch here: the submitting side (status) reads checkpoints too.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

from hpcrun.rundir.atomic import fsync_dir, write_synced

log = logging.getLogger("hpcrun")

MARKER = "hpcrun-complete.json"
STATE_FILE = "hpcrun-state.json"  # hpcrun's own state inside a checkpoint (time triggers, save times)


def _write_json_synced(path: Path, data: Dict[str, Any]) -> None:
    write_synced(path, json.dumps(data, indent=1, sort_keys=True))


@dataclass(frozen=True)
class Checkpoint:
    step: int
    path: Path


class CheckpointDir:
    """The checkpoints of one run.

    Args:
        root: ``<run.dir>/checkpoints`` (or a Trainer's ``output_dir``, for a command of the user's own).
        keep_last: how many complete checkpoints to keep (at least 2: the newest may be in progress elsewhere,
            e.g. a save interrupted mid-way, and the one before it is the fallback); None: prune nothing (a
            Trainer's own ``save_total_limit`` rotates its ``output_dir``).
        prefix: the complete checkpoints' names, ``<prefix><step>`` (``checkpoint-`` in a Trainer's output_dir,
            where transformers' ``get_last_checkpoint`` looks).
        staging: the folder under ``root`` that saves are written into; hidden, so that nothing that looks for
            ``<prefix>N`` ever sees a half-written save.
    """

    def __init__(self, root: Path, keep_last: Optional[int] = 2, prefix: str = "step-",
                 staging: str = ".staging") -> None:
        self.root = Path(root)
        self.keep_last = None if keep_last is None else max(2, keep_last)
        self.prefix = prefix
        self._name = re.compile(rf"^{re.escape(prefix)}(\d+)$")
        self._staging = staging

    @classmethod
    def in_output_dir(cls, output_dir: Path) -> "CheckpointDir":
        """The atomic ``checkpoint-N`` folders hpcrun writes into a Trainer's own ``output_dir``."""
        return cls(output_dir, keep_last=None, prefix="checkpoint-", staging=".hpcrun-staging")

    @property
    def staging_root(self) -> Path:
        return self.root / self._staging

    def staging(self, step: int) -> Path:
        """Where a save of ``step`` is written before it is complete (Trainer's ``checkpoint-N`` naming)."""
        return self.staging_root / f"checkpoint-{step}"

    def clear_staging(self) -> List[str]:
        """Removes what interrupted saves left; returns their names (for the log)."""
        if not self.staging_root.exists():
            return []
        names = sorted(p.name for p in self.staging_root.iterdir())
        shutil.rmtree(self.staging_root, ignore_errors=True)
        return names

    def folders(self) -> List[Checkpoint]:
        """Every ``<prefix>N`` folder, newest first (complete or not)."""
        if not self.root.is_dir():
            return []
        found = []
        for p in self.root.iterdir():
            m = self._name.match(p.name)
            if m and p.is_dir():
                found.append(Checkpoint(int(m.group(1)), p))
        return sorted(found, key=lambda c: c.step, reverse=True)

    @staticmethod
    def problem(path: Path) -> Optional[str]:
        """Why ``path`` is not a complete checkpoint, or None if it is."""
        marker = path / MARKER
        if not marker.exists():
            return "no completion marker (the save was interrupted)"
        try:
            manifest = json.loads(marker.read_text())
            files = manifest["files"]
        except (OSError, ValueError, KeyError, TypeError) as exc:
            return f"unreadable completion marker ({exc})"
        for name, size in files.items():
            f = path / name
            if not f.exists():
                return f"missing file {name}"
            if f.stat().st_size != size:
                return f"{name} has {f.stat().st_size} bytes, the marker says {size} (truncated?)"
        return None

    def latest(self) -> Tuple[Optional[Checkpoint], List[Tuple[Checkpoint, str]]]:
        """The newest complete checkpoint, and the newer ones skipped with the reason for each."""
        skipped = []
        for ckpt in self.folders():
            why = self.problem(ckpt.path)
            if why is None:
                return ckpt, skipped
            skipped.append((ckpt, why))
        return None, skipped

    def commit(self, step: int, extra_state: Optional[Dict[str, Any]] = None) -> Path:
        """Makes the staged save of ``step`` a complete checkpoint: state file, marker last, then the rename.

        Call on one process (global rank 0), after every rank finished writing its part.
        """
        staging = self.staging(step)
        if extra_state is not None:
            _write_json_synced(staging / STATE_FILE, extra_state)
        files = {}
        for f in sorted(staging.rglob("*")):
            if f.is_file():
                with f.open("rb") as fh:
                    os.fsync(fh.fileno())
                files[str(f.relative_to(staging))] = f.stat().st_size
        _write_json_synced(staging / MARKER, {"step": step, "time": time.time(), "files": files})
        fsync_dir(staging)
        final = self.root / f"{self.prefix}{step}"
        if final.exists():  # e.g. the same step saved again after a resume: keep the newer write
            trash = self.staging_root / f"replaced-{self.prefix}{step}"
            os.replace(final, trash)
            shutil.rmtree(trash, ignore_errors=True)
        os.replace(staging, final)
        fsync_dir(self.root)
        try:
            self.staging_root.rmdir()  # only when empty: another save may be staging
        except OSError:
            pass
        return final

    def prune(self) -> List[int]:
        """Deletes complete checkpoints beyond ``keep_last`` (oldest first); incomplete ones older than the
        newest complete one go too. Returns the steps deleted (none when ``keep_last`` is None)."""
        deleted: List[int] = []
        if self.keep_last is None:
            return deleted
        complete = 0
        for ckpt in self.folders():
            if self.problem(ckpt.path) is None:
                complete += 1
                if complete <= self.keep_last:
                    continue
            elif complete == 0:
                continue  # newer than every complete one: leave it for the logs of the next start
            shutil.rmtree(ckpt.path, ignore_errors=True)
            deleted.append(ckpt.step)
        return deleted

    @staticmethod
    def read_state(ckpt: Checkpoint) -> Dict[str, Any]:
        path = ckpt.path / STATE_FILE
        try:
            return json.loads(path.read_text())
        except (OSError, ValueError):
            return {}


def recorded_outputs(run_dir: Path) -> List[Path]:
    """The Trainer output folders a command of the user's own saves its checkpoints into (``outputs.json``)."""
    from hpcrun.rundir.atomic import read_json
    from hpcrun.rundir.layout import RunDir

    data = read_json(RunDir(run_dir).outputs, [])
    return [Path(p) for p in data if isinstance(p, str)] if isinstance(data, list) else []


def record_output(run_dir: Path, output_dir: Path) -> None:
    """Adds a Trainer's output folder to the run's (rank 0 of the command; once per Trainer)."""
    from hpcrun.rundir.atomic import atomic_write_json
    from hpcrun.rundir.layout import RunDir

    known = recorded_outputs(run_dir)
    if Path(output_dir) not in known:
        atomic_write_json(RunDir(run_dir).outputs, [str(p) for p in [*known, Path(output_dir)]])


def record_training(run_dir: Path, start: int, key: str, output_dir: Path) -> None:
    """Records that a Trainer of start ``start`` starts training into ``output_dir`` (``trainings.json``, per start
    the Trainers in the order they started, each ``{"key", "dir"}``; rank 0 of the command). ``key`` tells one
    Trainer of the command from another across starts: the same on every start for the same training (not its
    folder), another for another stage or sweep job."""
    from hpcrun.rundir.atomic import atomic_write_json

    data = _trainings(run_dir)
    data[str(start)] = [*data.get(str(start), []), {"key": key, "dir": str(output_dir)}]
    atomic_write_json(_trainings_file(run_dir), data)


def earlier_training(run_dir: Path, start: int, key: str, nth: int) -> Optional[Tuple[int, Checkpoint]]:
    """Where the ``nth`` Trainer with ``key`` of start ``start`` saved on an earlier start, for a command that names
    a new output folder on every start (a timestamp, Hydra's run directory): the newest complete checkpoint in the
    folder of the ``nth`` Trainer with that key of the latest earlier start that has one, as (that start, the
    checkpoint); None when no earlier start's Trainer with that key saved one."""
    data = _trainings(run_dir)
    for earlier in range(start - 1, 0, -1):
        same = [e["dir"] for e in data.get(str(earlier), []) if e.get("key") == key]
        if len(same) >= nth:
            latest, _ = CheckpointDir.in_output_dir(Path(same[nth - 1])).latest()
            if latest is not None:
                return earlier, latest
    return None


def _trainings_file(run_dir: Path) -> Path:
    from hpcrun.rundir.layout import RunDir

    return RunDir(run_dir).trainings


def _trainings(run_dir: Path) -> Dict[str, List[Dict[str, str]]]:
    from hpcrun.rundir.atomic import read_json

    data = read_json(_trainings_file(run_dir), {})
    if not isinstance(data, dict):
        return {}
    return {str(k): [e for e in v if isinstance(e, dict) and isinstance(e.get("dir"), str)]
            for k, v in data.items() if isinstance(v, list)}


OUTPUT_OWNER = ".hpcrun-run"  # in a Trainer's output_dir: the run whose checkpoints it holds


def claim_output(run_dir: Path, output_dir: Path, write: bool) -> None:
    """Marks ``output_dir`` as ``run_dir``'s when a Trainer of the run's command starts training in it (``write``: on
    its rank 0; every rank checks). Two runs training into one output folder (a relative ``--output_dir out`` typed
    for both, or a sweep's points) would rotate each other's checkpoints away and resume from each other's: the
    second is refused while the first still exists. The mark is made with O_EXCL, so of two runs that start
    together only one makes it; one left by a run that is gone is taken over.

    Raises:
        SharedOutputError: another existing run trains into ``output_dir``.
    """
    import os

    from hpcrun.rundir.atomic import atomic_write
    from hpcrun.rundir.layout import RunDir

    marker = Path(output_dir) / OUTPUT_OWNER
    if write:
        Path(output_dir).mkdir(parents=True, exist_ok=True)
        try:
            fd = os.open(marker, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            pass
        else:
            with os.fdopen(fd, "w") as f:
                f.write(f"{run_dir}\n")
                f.flush()
                os.fsync(f.fileno())
            return
    try:
        owner: Optional[Path] = Path(marker.read_text().strip())
    except (OSError, ValueError):
        owner = None
    if owner is None or owner == Path(run_dir):
        return
    if RunDir(owner).is_run():
        raise SharedOutputError(
            f"output_dir {output_dir} is the checkpoint folder of another run, {owner}: this run would resume from "
            "that run's checkpoints and rotate them away; give each run its own output folder (--output_dir "
            "'${run.dir}/out'; a Hydra app's: hydra.run.dir='${run.dir}/hydra'), or move that run aside")
    if write:  # its run is gone: this one takes the folder over
        atomic_write(marker, f"{run_dir}\n")


def untouched_outputs_as_they_were(run_dir: Path) -> List[Path]:
    """Before a start's command runs (the job's main process, before any of the command's processes): each of
    the run's output folders that holds nothing but hpcrun's own files, this run's mark and an interrupted save's
    staging, is left empty again, as the script left it without hpcrun. A script grown from transformers' older
    examples refuses an output folder that holds anything and no checkpoint ("Output directory ... already exists
    and is not empty"), so a run killed before its first checkpoint (a preemption, kill -9, a node failure) failed
    on its restart because of hpcrun's mark. The mark is made again when the Trainer starts training. Returns the
    folders tidied."""
    import os
    import shutil

    tidied = []
    for out in recorded_outputs(run_dir):
        try:
            entries = set(os.listdir(out))
        except OSError:
            continue
        staging = CheckpointDir.in_output_dir(out).staging_root
        if OUTPUT_OWNER not in entries or not entries <= {OUTPUT_OWNER, staging.name}:
            continue
        try:
            if Path((out / OUTPUT_OWNER).read_text().strip()) != Path(run_dir):
                continue  # another run's mark (taken over while this one was away): not this run's to remove
        except OSError:
            continue
        shutil.rmtree(staging, ignore_errors=True)
        (out / OUTPUT_OWNER).unlink(missing_ok=True)
        tidied.append(out)
    return tidied


class SharedOutputError(RuntimeError):
    """A Trainer's output_dir belongs to another run."""


def run_checkpoint_dirs(run_dir: Path, keep_last: Optional[int] = 2) -> List[CheckpointDir]:
    """Every place the run keeps checkpoints: ``<run.dir>/checkpoints``, then its Trainers' output folders."""
    from hpcrun.rundir.layout import RunDir

    return [CheckpointDir(RunDir(run_dir).checkpoints, keep_last),
            *(CheckpointDir.in_output_dir(p) for p in recorded_outputs(run_dir))]


def newest_complete(run_dir: Path, keep_last: Optional[int] = 2
                    ) -> Tuple[Optional[Checkpoint], List[Tuple[Checkpoint, str]]]:
    """The run's newest complete checkpoint wherever it keeps them, and the newer ones skipped with why."""
    best: Optional[Checkpoint] = None
    skipped: List[Tuple[Checkpoint, str]] = []
    for d in run_checkpoint_dirs(run_dir, keep_last):
        latest, passed = d.latest()
        skipped += passed
        if latest is not None and (best is None or latest.step > best.step):
            best = latest
    return best, [(c, why) for c, why in skipped if best is None or c.step > best.step]
