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
