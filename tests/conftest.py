"""Shared fixtures: running the real `hpcrun` command, and the real dev Slurm cluster."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Callable, Optional

import pytest

REPO = Path(__file__).resolve().parents[1]


def run_hpcrun(*args: str, cwd: Path, env: Optional[dict] = None, timeout: int = 600) -> subprocess.CompletedProcess:
    """Runs `python -m hpcrun ARGS` as a user would, and returns its exit status and output."""
    full_env = {**os.environ, **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "hpcrun", *args],
        cwd=cwd, env=full_env, capture_output=True, text=True, timeout=timeout,
    )


@pytest.fixture
def hpcrun(tmp_path: Path) -> Callable[..., subprocess.CompletedProcess]:
    """`hpcrun(*args)` runs the command in a fresh working directory (tmp_path)."""

    def call(*args: str, cwd: Optional[Path] = None, env: Optional[dict] = None, timeout: int = 600):
        return run_hpcrun(*args, cwd=cwd or tmp_path, env=env, timeout=timeout)

    return call


def _slurm_up() -> Optional[str]:
    """None when the dev cluster answers, else why not."""
    if shutil.which("sbatch") is None:
        return "sbatch is not on the PATH (start the cluster: scripts/dev-cluster up)"
    try:
        out = subprocess.run(["sinfo", "-h", "-o", "%T"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"sinfo failed: {exc}"
    if out.returncode != 0:
        return f"sinfo failed: {out.stderr.strip()}"
    # "planned": backfill has set the node aside for a pending job (Slurm 22.05 and later); it is up all the same
    if not any(s.startswith(("idle", "mixed", "alloc", "planned")) for s in out.stdout.split()):
        return f"no usable node (sinfo says {out.stdout.split()})"
    acct = subprocess.run(["sacct", "-n", "-X", "-j", "1"], capture_output=True, text=True, timeout=30)
    if "accounting storage is disabled" in acct.stderr:
        return "sacct has no accounting storage (slurmdbd is not running)"
    return None


@pytest.fixture(scope="session")
def slurm_cluster() -> None:
    """The real dev Slurm cluster. Missing, it skips the test; with HPCRUN_REQUIRE_SLURM=1 (CI) it fails it."""
    problem = _slurm_up()
    if problem is None:
        return
    if os.environ.get("HPCRUN_REQUIRE_SLURM") == "1":
        pytest.fail(f"HPCRUN_REQUIRE_SLURM=1 but the dev Slurm cluster is not usable: {problem}")
    pytest.skip(f"no dev Slurm cluster: {problem}")


def pytest_collection_modifyitems(items):  # noqa: D103 - pytest hook
    for item in items:
        if "slurm_cluster" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.slurm)


@pytest.fixture(scope="session")
def reference_run(tmp_path_factory) -> Path:
    """The tiny run (tests/training.py TINY) trained straight through, locally: the weights every interrupted
    and resumed run must reproduce bit for bit."""
    from tests.training import TINY

    work = tmp_path_factory.mktemp("reference")
    out = run_hpcrun(*TINY, "cluster=local", "run.dir=straight", cwd=work)
    assert out.returncode == 0, out.stderr[-3000:]
    return work / "straight"


@pytest.fixture(scope="session")
def own_work(tmp_path_factory) -> Path:
    """A tiny model config, tokenizer and text files for the own-script tests (tests/own_scripts.py)."""
    from tests.own_scripts import make_work

    return make_work(tmp_path_factory.mktemp("own-script"))
