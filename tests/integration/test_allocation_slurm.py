"""hpcrun inside a Slurm allocation it did not submit (``srun --pty bash``, ``salloc``, a batch script of the user's
own), on the real dev cluster: the run is local, in the foreground. Ctrl-C saves and stops it, it saves before the
allocation ends, and nothing requeues the allocation (an interactive job cannot be requeued; a user's own script
decides for itself)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import pytest

from tests.training import TINY, state, wait_for_step

pytestmark = pytest.mark.training


def _srun(tmp_path, minutes: int, *args: str) -> subprocess.Popen:
    # A job step of its own allocation, as in an interactive session: srun starts hpcrun on the node, where the
    # terminal's Ctrl-C reaches it (srun --pty passes the keystroke on; here the test sends the SIGINT itself).
    return subprocess.Popen(["srun", "-n1", f"--time={minutes}", "--job-name=hpcrun-test-allocation", sys.executable,
                             "-m", "hpcrun", *TINY, "run.dir=run", *args], cwd=tmp_path, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, env={**os.environ, "HPCRUN_CLUSTER": ""})


def test_ctrl_c_in_an_allocation_saves_and_stops_the_run_and_leaves_the_job_alone(tmp_path, slurm_cluster):
    run_dir = tmp_path / "run"
    proc = _srun(tmp_path, 10, "train.max_steps=300")
    wait_for_step(run_dir, 3)
    holder = json.loads((run_dir / ".hpcrun-lock").read_text())  # hpcrun's process on the node
    os.kill(holder["pid"], signal.SIGINT)
    output, _ = proc.communicate(timeout=120)
    assert proc.returncode == 130, output[-3000:]
    assert "cluster=local (inside Slurm job" in output and "Ctrl-C saves and stops" in output
    st = state(run_dir)
    assert st["status"] == "stopped" and st["reason"] == "signal SIGINT", st
    assert st["requeues"] == 0 and st["starts"][0].get("job_id") is None
    stopped_at = st["starts"][0]["step"]
    assert (run_dir / "checkpoints" / f"step-{stopped_at}" / "hpcrun-complete.json").is_file()


def test_a_run_in_a_short_allocation_saves_before_the_allocation_ends_and_stops(tmp_path, slurm_cluster):
    # cluster=local's own limit is 12 hours; the allocation's 2 minutes are what the run must save before. With the
    # first save's estimate (60 s) and the margin (120 s) it saves after its first step.
    run_dir = tmp_path / "run"
    proc = _srun(tmp_path, 2)
    output, _ = proc.communicate(timeout=180)
    assert proc.returncode == 75, output[-3000:]
    log = (run_dir / "logs" / "start-1.log").read_text()
    assert "this allocation's end" in log
    st = state(run_dir)
    assert st["status"] == "stopped" and st["reason"].startswith("deadline:"), st
    assert (run_dir / "checkpoints" / f"step-{st['starts'][0]['step']}" / "hpcrun-complete.json").is_file()


def test_a_run_killed_with_its_allocation_shows_failed_with_the_allocations_end(tmp_path, slurm_cluster):
    from tests.conftest import run_hpcrun
    from tests.slurm import wait_for_end

    run_dir = tmp_path / "run"
    proc = _srun(tmp_path, 10, "train.max_steps=300")
    wait_for_step(run_dir, 2)
    holder = json.loads((run_dir / ".hpcrun-lock").read_text())
    os.kill(holder["pid"], signal.SIGKILL)  # out of memory, or killed with the allocation: no word from the run
    proc.communicate(timeout=60)
    allocation = state(run_dir)["starts"][0]["allocation"]
    assert state(run_dir)["status"] == "running"
    wait_for_end(allocation)
    out = run_hpcrun("status", str(run_dir), "--json", cwd=tmp_path)
    (row,) = json.loads(out.stdout)
    assert row["state"] == "FAILED" and row["ended"], row
    assert row["reason"].startswith(f"the Slurm allocation it ran in (job {allocation}) ended (")
