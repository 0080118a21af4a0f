"""Local launch: the job's own entry point, called in the foreground of this process."""

from __future__ import annotations

from pathlib import Path


def run_local(run_dir: Path) -> str:
    """Runs the run in ``run_dir`` here, exactly as the Slurm job would run it (same JobEntry)."""
    from hpcrun.job.entry import JobEntry

    return JobEntry(run_dir)()
