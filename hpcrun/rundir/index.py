"""The user's index of runs (``hpcrun status`` without arguments) and the record of each sweep (sweep.json).

    ~/.local/state/hpcrun/runs.jsonl     one line per launch: time, run_dir (``$HPCRUN_STATE_DIR`` moves it)
    <run_root>/sweeps/<id>/sweep.json    the sweep's command, its points (overrides, run_dir) and its arrays
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any, Dict, List

from hpcrun.errors import UserError
from hpcrun.rundir.atomic import atomic_write_json, read_json
from hpcrun.rundir.layout import RunDir

SWEEP_FILE = "sweep.json"


def index_path() -> Path:
    base = os.environ.get("XDG_STATE_HOME") or os.path.expanduser("~/.local/state")
    return Path(os.environ.get("HPCRUN_STATE_DIR") or os.path.join(base, "hpcrun")) / "runs.jsonl"


def remember(*run_dirs: Path) -> None:
    """Appends runs to the user's index of runs (one short line each, in one write: concurrent launches interleave
    whole lines, and a torn last line is skipped when read)."""
    path = index_path()
    now = time.time()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("a") as f:
            f.write("".join(json.dumps({"time": now, "run_dir": str(d)}) + "\n" for d in run_dirs))
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
        except (ValueError, KeyError, TypeError):
            continue
        if d not in seen and RunDir(d).is_run():
            seen.append(d)
        if len(seen) >= limit:
            break
    return seen


def is_sweep_dir(path: Path) -> bool:
    return (Path(path) / SWEEP_FILE).is_file()


def read_sweep(sweep_dir: Path) -> Dict[str, Any]:
    """The sweep's record, or {} when it has none (or it is unreadable)."""
    data = read_json(Path(sweep_dir) / SWEEP_FILE, {})
    return data if isinstance(data, dict) else {}


def write_sweep(sweep_dir: Path, record: Dict[str, Any]) -> None:
    Path(sweep_dir).mkdir(parents=True, exist_ok=True, mode=0o700)
    atomic_write_json(Path(sweep_dir) / SWEEP_FILE, record)


def sweep_run_dirs(sweep_dir: Path) -> List[Path]:
    """The run directories of a sweep, in point order."""
    record = read_sweep(Path(sweep_dir))
    if not record:
        raise UserError(f"{sweep_dir} is not a sweep directory (no readable {SWEEP_FILE})")
    return [Path(p["run_dir"]) for p in record.get("points", [])]


def resolve_targets(target: str | None) -> List[Path]:
    """A run directory, a sweep directory, or (None) the user's recent runs."""
    if target is None:
        return recent_runs()
    path = Path(target).expanduser().resolve()
    if is_sweep_dir(path):
        return sweep_run_dirs(path)
    if RunDir(path).is_run():
        return [path]
    raise UserError(f"{target} is neither a run directory (no {RunDir.CONFIG}) nor a sweep directory "
                    f"(no {SWEEP_FILE})")
