"""``hpcrun plan --soonest`` on the real dev Slurm cluster: a loaded partition against a free one.

The dev node is in two partitions: "normal", whose jobs preempt, and "preemptible". A job holding every CPU of the
node in "preemptible" makes "preemptible" busy until its time limit, while "normal" can start now (by preempting
it). Slurm's own answer (``sbatch --test-only``) knows both; the ranking must follow it, with the run's measured
step time.
"""

import json
import subprocess
import time

import pytest

from tests.slurm import job_id_from, node_cpus, wait_for_end
from tests.training import TINY, state, wait_until
from tests.integration.test_elastic_slurm import _stop_at, _submit

pytestmark = pytest.mark.training

RUN = [*TINY, "cluster=slurm", "cluster.cpus_per_task=1", "train.max_steps=40", "run.dir=run"]


def _end_time(job: str) -> float:
    out = subprocess.run(["scontrol", "show", "job", job], capture_output=True, text=True, check=True).stdout
    end = next(w.split("=", 1)[1] for w in out.split() if w.startswith("EndTime="))
    return time.mktime(time.strptime(end, "%Y-%m-%dT%H:%M:%S"))


def _partition(job: str) -> str:
    out = subprocess.run(["sacct", "-n", "-X", "-P", "-o", "Partition", "-j", job], capture_output=True, text=True)
    return out.stdout.split()[0] if out.stdout.split() else ""


def test_the_free_partition_ranks_first_at_slurms_start_time_and_submit_takes_it(hpcrun, tmp_path, slurm_cluster):
    run_dir = tmp_path / "run"
    job, _ = _submit(hpcrun, *RUN)
    done = _stop_at(hpcrun, run_dir, job, 6)  # a measured start: its seconds per step

    loader = subprocess.run(["sbatch", "--parsable", "-p", "preemptible", "-c", node_cpus(), "--time=20:00",
                             "-o", "/dev/null", "--wrap", "sleep 1200"], capture_output=True, text=True, check=True
                            ).stdout.strip()
    try:
        wait_until(lambda: subprocess.run(["squeue", "-h", "-j", loader, "-o", "%T"], capture_output=True,
                                          text=True).stdout.strip() == "RUNNING", timeout=60, what="the loader")
        candidates = ["cluster.partition=preemptible,normal,nosuch"]
        before = time.time()
        out = hpcrun("plan", "--soonest", "--json", *RUN, *candidates)
        assert out.returncode == 0, out.stderr[-2000:]
        plan = json.loads(out.stdout)
        assert plan["steps_done"] == done and plan["steps_left"] == 40 - done
        first, second, third = plan["candidates"]
        assert first["overrides"] == ["cluster.partition=normal"]
        assert second["overrides"] == ["cluster.partition=preemptible"]
        assert third["overrides"] == ["cluster.partition=nosuch"] and "cluster.partition" in third["refused"]
        # Slurm's own answers: normal now (it preempts the loader), preemptible when the loader's limit is up
        assert before - 2 <= first["start"] <= time.time() + 60
        assert abs(second["start"] - _end_time(loader)) <= 2
        # the estimate stands on the measured steps: start + steps left x seconds a step + one start-up
        measured = plan["measured_shapes"]["1xcpu"]
        for c in (first, second):
            assert c["step_from"] == "measured" and c["step_seconds"] == pytest.approx(measured, rel=1e-3)
            assert c["starts"] == 1
            assert c["finish"] - c["start"] == pytest.approx(plan["steps_left"] * measured + plan["startup_s"],
                                                             abs=1.0)
        assert first["finish"] < second["finish"]

        text = hpcrun("plan", "--soonest", *RUN, *candidates)
        assert text.returncode == 0
        rows = text.stdout.splitlines()[2:]  # under the basis line and the header
        assert rows[0].startswith("1  partition=normal") and rows[2].startswith("3  partition=nosuch"), text.stdout
        assert "never" in rows[2] and "cluster.partition='nosuch'" in rows[2]

        submitted = hpcrun("plan", "--soonest", "--submit", *RUN, *candidates)
        assert submitted.returncode == 0, submitted.stderr[-2000:]
        assert "submitting the first: partition=normal" in submitted.stderr
        job = job_id_from(submitted.stdout)
        assert wait_for_end(job) == "COMPLETED"
        assert _partition(job) == "normal"
        st = state(run_dir)
        assert st["status"] == "completed" and st["starts"][-1]["resumed_from"] == done
    finally:
        subprocess.run(["scancel", loader])


def test_a_short_limit_that_fits_before_a_pending_jobs_reservation_starts_now_through_backfill(
        hpcrun, tmp_path, slurm_cluster):
    """One CPU is busy for 20 minutes; a job pending for both CPUs holds the node's next 30 minutes. A 5-minute job
    fits into the free CPU before that reservation and Slurm's backfill scheduler starts it at once, although
    ``sbatch --test-only`` answers "after the pending job" for any limit. A 40-minute one really waits."""
    cpus = int(node_cpus())
    busy = subprocess.run(["sbatch", "--parsable", "-p", "normal", "-c", str(cpus - 1), "--time=20:00", "-o",
                           "/dev/null", "--wrap", "sleep 1200"], capture_output=True, text=True, check=True
                          ).stdout.strip()
    pending = subprocess.run(["sbatch", "--parsable", "-p", "normal", "-c", str(cpus), "--time=30:00", "-o",
                              "/dev/null", "--wrap", "sleep 1200"], capture_output=True, text=True, check=True
                             ).stdout.strip()
    try:
        wait_until(lambda: subprocess.run(["squeue", "-h", "-j", busy, "-o", "%T"], capture_output=True,
                                          text=True).stdout.strip() == "RUNNING", timeout=60, what="the busy job")
        # the backfill scheduler's pass plans the pending job's start (N/A until then; hpcrun claims no backfill)
        wait_until(lambda: subprocess.run(["squeue", "-h", "-j", pending, "--start", "-o", "%S"],
                                          capture_output=True, text=True).stdout.strip()[:2] == "20",
                   timeout=120, what="the pending job's planned start")
        short_long = [*TINY, "cluster=slurm", "cluster.partition=normal", "cluster.cpus_per_task=1", "run.dir=new",
                      "cluster.time=40:00,5:00"]
        before = time.time()
        out = hpcrun("plan", "--soonest", "--json", *short_long)
        assert out.returncode == 0, out.stderr[-2000:]
        first, second = json.loads(out.stdout)["candidates"]
        assert first["overrides"] == ["cluster.time=5\\:00"] and first["backfill"] is True
        assert before - 2 <= first["start"] <= time.time() + 2
        assert second["overrides"] == ["cluster.time=40\\:00"] and second["backfill"] is False
        assert second["start"] >= _end_time(busy) - 2  # after the pending job's reservation, as Slurm says

        submitted = hpcrun("plan", "--soonest", "--submit", *short_long)
        assert submitted.returncode == 0, submitted.stderr[-2000:]
        job = job_id_from(submitted.stdout)
        wait_until(lambda: subprocess.run(["squeue", "-h", "-j", job, "-o", "%T"], capture_output=True,
                                          text=True).stdout.strip() in ("RUNNING", "COMPLETING", ""),
                   timeout=120, what="the short job started by backfill")
        assert subprocess.run(["squeue", "-h", "-j", pending, "-o", "%T"], capture_output=True,
                              text=True).stdout.strip() == "PENDING"
        assert wait_for_end(job) == "COMPLETED"
    finally:
        subprocess.run(["scancel", busy, pending])
