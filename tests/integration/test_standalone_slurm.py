"""A standalone script (`hpcrun render --standalone`), submitted with plain sbatch: interrupted, requeued, resumed."""

import json
import subprocess

import pytest

from tests.slurm import release_when_requeued, sacct_runs, wait_for_end
from tests.training import TINY, assert_same_weights, logged_steps, state, wait_for_step

pytestmark = pytest.mark.training


def test_a_standalone_script_sbatched_by_hand_saves_on_the_signal_requeues_and_resumes(
        hpcrun, tmp_path, slurm_cluster, reference_run):
    out = hpcrun("render", "--standalone", *TINY, "cluster=slurm", "run.dir=run", "-o", "job.sbatch")
    assert out.returncode == 0, out.stderr
    assert not (tmp_path / "run").exists()  # rendering creates nothing: the script does, on the node
    submitted = subprocess.run(["sbatch", "--parsable", "job.sbatch"], cwd=tmp_path, capture_output=True,
                               text=True, check=True)
    job = submitted.stdout.strip()
    run_dir = tmp_path / "run"
    wait_for_step(run_dir, 8)
    subprocess.run(["scancel", "--signal=USR2", job], check=True)
    release_when_requeued(job)
    assert wait_for_end(job) == "COMPLETED"

    assert sacct_runs(job) == ["REQUEUED", "COMPLETED"]
    st = state(run_dir)
    assert st["status"] == "completed" and st["requeues"] == 1 and st["job_id"] == job
    assert st["starts"][0]["end"].startswith("requeued: signal SIGUSR2")
    assert st["starts"][1]["resumed_from"] == st["starts"][0]["step"]
    assert logged_steps(run_dir) == list(range(1, 31))
    assert_same_weights(run_dir / "final", reference_run / "final")
    # The run is an ordinary hpcrun run: status finds it, and submitting it again through hpcrun does nothing.
    status = hpcrun("status", "run", "--json")
    assert json.loads(status.stdout)[0]["status"] == "completed"
    again = hpcrun(*TINY, "cluster=slurm", "run.dir=run")
    assert again.returncode == 0 and "already complete" in again.stderr
