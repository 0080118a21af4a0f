"""The run directory on the submitting side: new, resumed, complete, or already queued.

Running the same command again (same experiment and training overrides) finds the same ``run.dir`` (see
:mod:`hpcrun.config.identity`) and resumes it; launcher keys (time, partition, account, save interval) may change
between starts and are updated in its ``config.yaml``. A run whose training config differs is refused, not
overwritten; ``run.fresh=true`` moves the old directory aside and starts over.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, List, Optional

from hpcrun.config.identity import training_differences
from hpcrun.errors import UserError
from hpcrun.job.runstate import ACTIVE, read_state, write_state

CONFIG_FILE = "config.yaml"


def atomic_write_text(path: Path, text: str) -> None:
    """Writes a file so that readers see the old content or the new, never half of it."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def config_yaml(cfg: Any) -> str:
    """The YAML of a typed config (what ``config.yaml`` holds)."""
    from omegaconf import OmegaConf

    return OmegaConf.to_yaml(OmegaConf.structured(cfg), resolve=True)


@dataclass
class Prepared:
    """What :func:`prepare_run_dir` found and did."""

    run_dir: Path
    kind: str  # "new", "resume", "complete", "active"
    message: str
    created: Optional[Path] = None  # the highest folder launching creates (removed again if sbatch refuses)


def _queued_job(state: dict) -> Optional[str]:
    """The run's Slurm job id when that job is still pending or running."""
    from hpcrun.launch.slurm_info import SLURM_ACTIVE, job_states

    job = state.get("job_id")
    if not job or state.get("status") not in ACTIVE:
        return None
    slurm = job_states([str(job)]).get(str(job))
    return f"{job} ({slurm.lower()})" if slurm in SLURM_ACTIVE else None


def _newest_checkpoint(run_dir: Path) -> str:
    from hpcrun.job.checkpoint import CheckpointDir

    latest, _ = CheckpointDir(run_dir / "checkpoints").latest()
    return f"from {latest.path.name}" if latest else "from the start (no complete checkpoint yet)"


def refuse_another_run(cfg: Any, run_dir: Path) -> None:
    """Raises UserError when ``run_dir/config.yaml`` is unreadable or holds another training config than ``cfg``."""
    from omegaconf import OmegaConf

    saved_path = run_dir / CONFIG_FILE
    try:
        saved = OmegaConf.to_container(OmegaConf.load(saved_path))
    except Exception as exc:  # noqa: BLE001 - any unreadable file gets the same one-line answer
        raise UserError(f"{saved_path} is unreadable ({type(exc).__name__}); run.fresh=true starts over") from None
    diffs = training_differences(saved, OmegaConf.to_container(OmegaConf.structured(cfg)))
    if diffs:
        more = f" (and {len(diffs) - 1} more)" if len(diffs) > 1 else ""
        raise UserError(f"{run_dir} holds a run with another training config: {diffs[0]}{more}; resume it "
                        "unchanged, start over with run.fresh=true, or choose another run.dir")


def inspect_run_dir(cfg: Any) -> Prepared:
    """What launching ``cfg`` would do with its run directory; writes nothing.

    Raises:
        UserError: the directory holds a different run (its training config differs), or is unreadable.
    """
    run_dir = Path(cfg.run.dir)
    saved_path = run_dir / CONFIG_FILE
    if not saved_path.exists():
        created = None
        if not run_dir.exists():
            created = run_dir
            while not created.parent.exists():
                created = created.parent
        return Prepared(run_dir, "new", f"new run {cfg.run.name}", created=created)
    if cfg.run.fresh:
        return Prepared(run_dir, "new", f"new run {cfg.run.name} (run.fresh=true: the previous one is moved aside)")
    refuse_another_run(cfg, run_dir)
    state = read_state(run_dir)
    if state.get("status") == "completed":
        return Prepared(run_dir, "complete", f"run {cfg.run.name} in {run_dir} is already complete: final "
                        f"weights in {run_dir / 'final'}. Nothing to do (run.fresh=true starts over)")
    job = _queued_job(state)
    if job:
        return Prepared(run_dir, "active", f"run {cfg.run.name} is already queued or running as Slurm job "
                        f"{job}: nothing submitted")
    return Prepared(run_dir, "resume", f"resuming run {cfg.run.name} {_newest_checkpoint(run_dir)}")


def write_run_dir(cfg: Any, prepared: Prepared) -> None:
    """Creates the run directory (moving an old one aside for run.fresh) and saves the config in it.

    The job reads ``config.yaml`` at every start: nothing about the run is baked into the submission, so a
    requeued job finds the same config and its newest checkpoint on disk. A new folder is private to the user
    (0700): configs and logs may hold paths and tokens.
    """
    run_dir = prepared.run_dir
    if cfg.run.fresh and (run_dir / CONFIG_FILE).exists():
        aside = run_dir.with_name(f"{run_dir.name}.replaced-{time.strftime('%Y%m%d-%H%M%S')}")
        os.replace(run_dir, aside)
        prepared.message = f"new run {cfg.run.name} (run.fresh=true: the previous one moved to {aside})"
        prepared.created = run_dir
    run_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    atomic_write_text(run_dir / CONFIG_FILE, config_yaml(cfg))
    remember(run_dir)


def prepare_run_dir(cfg: Any) -> Prepared:
    """:func:`inspect_run_dir`, then :func:`write_run_dir` when there is something to launch."""
    prepared = inspect_run_dir(cfg)
    if prepared.kind in ("new", "resume"):
        write_run_dir(cfg, prepared)
    return prepared


def index_path() -> Path:
    base = os.environ.get("XDG_STATE_HOME") or os.path.expanduser("~/.local/state")
    return Path(os.environ.get("HPCRUN_STATE_DIR") or os.path.join(base, "hpcrun")) / "runs.jsonl"


def remember(run_dir: Path) -> None:
    """Appends the run to the user's index of runs (``hpcrun status`` without arguments lists the recent ones)."""
    path = index_path()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("a") as f:
            f.write(json.dumps({"time": time.time(), "run_dir": str(run_dir)}) + "\n")
    except OSError:
        pass  # an unwritable home is no reason to fail a launch


def recent_runs(limit: int = 20) -> List[Path]:
    """The user's most recently launched runs that still exist, newest first."""
    try:
        lines = index_path().read_text().splitlines()
    except OSError:
        return []
    seen: List[Path] = []
    for line in reversed(lines):
        try:
            d = Path(json.loads(line)["run_dir"])
        except (ValueError, KeyError):
            continue
        if d not in seen and (d / CONFIG_FILE).exists():
            seen.append(d)
        if len(seen) >= limit:
            break
    return seen


def record_submission(run_dir: Path, job_id: str) -> None:
    """Notes the submitted job in the run's state (the job overwrites it with "running" when it starts)."""
    state = read_state(run_dir)
    state.update(status="submitted", job_id=job_id, reason="")
    write_state(run_dir, state)
