"""``hpcrun status``: one line per run, from the runs' own state files and ONE batched sacct call.

Submitting side: no torch. The ``--json`` form is stable (docs/commands.md): a list of objects with the keys of
:class:`RunStatus`.
"""

from __future__ import annotations

import json
import os
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Dict, List, Optional

from hpcrun.durations import format_human
from hpcrun.errors import UserError
from hpcrun.job.checkpoint import CheckpointDir
from hpcrun.job.runstate import read_state
from hpcrun.launch.slurm_info import SLURM_ACTIVE

FINISHED = {"completed", "failed", "stopped"}


@dataclass
class RunStatus:
    """One run, as ``hpcrun status --json`` prints it."""

    run_dir: str
    name: str
    id: str
    state: str  # what to tell the user: PENDING, RUNNING, REQUEUED, COMPLETED, FAILED, STOPPED, CANCELLED, ...
    status: Optional[str]  # the run's own status (state.json): submitted/running/requeued/stopped/completed/failed
    slurm_state: Optional[str]  # sacct's state of its current job, when it has one
    reason: str
    restarts: int
    step: int
    max_steps: int
    last_checkpoint_step: Optional[int]
    last_checkpoint_age_s: Optional[float]
    elapsed_s: float
    time_left_s: Optional[float]
    job_id: Optional[str]
    goodput: Optional[float]  # training time over allocated time so far, from the run's ledger (hpcrun report)


def _last_logged_step(run_dir: Path) -> int:
    path = run_dir / "metrics.jsonl"
    try:
        with path.open("rb") as f:
            f.seek(max(0, path.stat().st_size - 4096))
            lines = f.read().decode(errors="replace").splitlines()
    except OSError:
        return 0
    for line in reversed(lines):
        try:
            return int(json.loads(line)["step"])
        except (ValueError, KeyError):
            continue
    return 0


def _max_steps(run_dir: Path) -> int:
    try:
        import yaml

        return int(yaml.safe_load((run_dir / "config.yaml").read_text())["train"]["max_steps"])
    except Exception:  # noqa: BLE001 - a status line never fails on one odd run
        return 0


def run_status(run_dir: Path, slurm_states: Dict[str, str], now: Optional[float] = None) -> RunStatus:
    now = time.time() if now is None else now
    state = read_state(run_dir)
    starts = state.get("starts", [])
    job = state.get("job_id")
    slurm = slurm_states.get(str(job)) if job else None
    status = state.get("status")
    latest, _ = CheckpointDir(run_dir / "checkpoints").latest()
    ckpt_age = None
    if latest is not None:
        try:
            ckpt_age = now - (latest.path / "hpcrun-complete.json").stat().st_mtime
        except OSError:
            pass
    elapsed = sum((s.get("ended_at") or now) - s["started_at"] for s in starts if "started_at" in s)
    if status in FINISHED:
        shown = status.upper()
        if status == "stopped" and slurm == "CANCELLED":
            shown = "CANCELLED"
    elif slurm and slurm not in SLURM_ACTIVE:
        shown = slurm  # the job ended without telling its run (killed, node failure, cancelled while pending)
    elif status == "requeued" and slurm in (None, "PENDING", "REQUEUED"):
        shown = "REQUEUED"
    else:
        shown = slurm or (status or "NEW").upper()
    time_left = None
    if shown == "RUNNING" and starts and starts[-1].get("end_time"):
        time_left = max(0.0, starts[-1]["end_time"] - now)
    step = max(_last_logged_step(run_dir), latest.step if latest else 0)
    name, rid = run_dir.parent.name, run_dir.name
    try:
        from hpcrun.report import run_report

        goodput = run_report(run_dir, None).goodput  # the ledger's own times: no extra sacct call
    except Exception:  # noqa: BLE001 - a status line never fails on one odd run
        goodput = None
    return RunStatus(
        run_dir=str(run_dir), name=name, id=rid, state=shown, status=status, slurm_state=slurm,
        reason=state.get("reason", ""), restarts=max(0, len(starts) - 1), step=step, max_steps=_max_steps(run_dir),
        last_checkpoint_step=latest.step if latest else None, last_checkpoint_age_s=ckpt_age, elapsed_s=elapsed,
        time_left_s=time_left, job_id=job, goodput=None if goodput is None else round(goodput, 4),
    )


def collect(run_dirs: List[Path]) -> List[RunStatus]:
    """Status of many runs with one sacct call for all their jobs."""
    from hpcrun.launch.slurm_info import job_states

    jobs = [read_state(d).get("job_id") for d in run_dirs]
    states = job_states([j for j in jobs if j]) if any(jobs) else {}
    return [run_status(d, states) for d in run_dirs]


def resolve_targets(target: Optional[str]) -> List[Path]:
    """A run directory, a sweep directory, or (None) the user's recent runs."""
    from hpcrun.launch.rundir import CONFIG_FILE, recent_runs
    from hpcrun.launch.sweep import SWEEP_FILE, sweep_run_dirs

    if target is None:
        return recent_runs()
    path = Path(target).expanduser().resolve()
    if (path / SWEEP_FILE).exists():
        return sweep_run_dirs(path)
    if (path / CONFIG_FILE).exists():
        return [path]
    raise UserError(f"{target} is neither a run directory (no {CONFIG_FILE}) nor a sweep directory (no {SWEEP_FILE})")


COLUMNS = ("RUN", "STATE", "RESTARTS", "STEP", "CKPT AGE", "ELAPSED", "LEFT", "GOODPUT", "JOB")
COLOURS = {"COMPLETED": "32", "RUNNING": "36", "FAILED": "31", "CANCELLED": "33", "STOPPED": "33",
           "REQUEUED": "35", "PENDING": "2"}


def table(rows: List[RunStatus], colour: Optional[bool] = None) -> str:
    colour = sys.stdout.isatty() and os.environ.get("NO_COLOR") is None if colour is None else colour
    cells = []
    for r in rows:
        cells.append([
            f"{r.name}/{r.id}", r.state, str(r.restarts), f"{r.step}/{r.max_steps}",
            format_human(r.last_checkpoint_age_s) if r.last_checkpoint_age_s is not None else "-",
            format_human(r.elapsed_s), format_human(r.time_left_s) if r.time_left_s is not None else "-",
            f"{r.goodput:.0%}" if r.goodput is not None else "-", r.job_id or "-",
        ])
    widths = [max([len(c)] + [len(row[i]) for row in cells]) for i, c in enumerate(COLUMNS)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(COLUMNS, widths)).rstrip()]
    for r, row in zip(rows, cells):
        text = "  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip()
        if colour and r.state in COLOURS:
            padded = row[1].ljust(widths[1])
            text = text.replace(padded, f"\033[{COLOURS[r.state]}m{padded}\033[0m", 1)
        lines.append(text)
    return "\n".join(lines)


def as_json(rows: List[RunStatus]) -> str:
    return json.dumps([asdict(r) for r in rows], indent=1)
