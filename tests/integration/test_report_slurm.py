"""`hpcrun report` on a real interrupted run: a timeout signal (announced), then a kill -9 with the node's job
requeued (unannounced): the report's lost work and recomputed steps must match what the run really recomputed."""

import json
import os
import signal
import subprocess
from collections import Counter

import pytest

from tests.slurm import job_id_from, release_when_requeued, sacct_runs, task_pids, timeout_signal_at_step, wait_for_end
from tests.training import TINY, state, wait_for_step, wait_until

pytestmark = pytest.mark.training


def test_the_report_accounts_an_announced_and_an_unannounced_interruption(hpcrun, tmp_path, slurm_cluster):
    out = hpcrun(*TINY, "cluster=slurm", "run.dir=run", "train.max_steps=40", "checkpoint.save_every=4s")
    assert out.returncode == 0, out.stderr
    job = job_id_from(out.stdout)
    run_dir = tmp_path / "run"
    timeout_signal_at_step(job, run_dir, 8)  # announced: saved, nothing lost
    wait_until(lambda: len(state(run_dir)["starts"]) == 2, timeout=120, what="the second start")
    ledger = run_dir / "ledger.jsonl"
    wait_until(lambda: sum('"event":"save"' in ln and '"start":2' in ln for ln in ledger.read_text().splitlines())
               >= 1, timeout=120, what="a periodic save in the second start")
    second_start_steps = [json.loads(ln)["step"] for ln in (run_dir / "metrics.jsonl").read_text().splitlines()]
    wait_for_step(run_dir, max(second_start_steps) + 3)  # some steps past that save: they will be lost
    for pid in task_pids(job, rank=0):
        os.kill(pid, signal.SIGKILL)  # unannounced: no save, no ledger end event
    subprocess.run(["scontrol", "requeue", job], capture_output=True)  # what Slurm does for a failed node
    release_when_requeued(job)
    assert wait_for_end(job) == "COMPLETED"

    out = hpcrun("report", "run", "--json", "--plot", "run.png")
    assert out.returncode == 0, out.stderr
    (run,) = json.loads(out.stdout)["runs"]
    starts = run["per_start"]
    assert [s["end"] for s in starts] == ["requeued", "killed", "completed"]
    assert len(sacct_runs(job)) == 3 and all(s["times_from"] == "sacct" for s in starts)
    # Every second of each allocation is in exactly one segment.
    for s in starts:
        parts = sum(s[f"{k}_s"] for k in ("startup", "training", "saving", "lost", "other"))
        assert parts == pytest.approx(s["alloc_end"] - s["alloc_start"], abs=0.05)
    assert starts[0]["lost_s"] == 0 and starts[1]["lost_s"] > 0 and starts[2]["lost_s"] == 0
    # Recomputed steps: exactly the steps whose loss was logged twice (log_every=1).
    logged = [json.loads(ln)["step"] for ln in (run_dir / "metrics.jsonl").read_text().splitlines()
              if "loss" in json.loads(ln)]
    twice = sum(n - 1 for n in Counter(logged).values())
    assert twice > 0 and run["recomputed_steps"] == twice
    assert 0 < run["goodput"] < 1
    assert run["queue_wait_s"] > 0 and len(run["queue_waits_s"]) == 2
    assert (tmp_path / "run.png").stat().st_size > 10_000

    table = hpcrun("report", "run").stdout
    assert "lost (recomputed)" in table and f"recomputed steps {twice:>9}" in table
    status = json.loads(hpcrun("status", "run", "--json").stdout)[0]
    assert 0 < status["goodput"] < 1
