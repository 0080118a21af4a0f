"""A standalone script (`hpcrun render --standalone`), submitted with plain sbatch: interrupted, requeued, resumed."""

import json
import os
import subprocess
import sys

import pytest

from tests.slurm import sacct_runs, stand_in_runtime, timeout_signal_at_step, wait_for_end
from tests.training import TINY, assert_same_weights, logged_steps, state

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
    timeout_signal_at_step(job, run_dir, 8)
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
    assert json.loads(status.stdout)[0]["recorded"] == "completed"
    again = hpcrun(*TINY, "cluster=slurm", "run.dir=run")
    assert again.returncode == 0 and "already complete" in again.stderr




def test_the_singularity_wrapper_passes_the_signal_to_python_and_the_run_requeues(
        hpcrun, tmp_path, slurm_cluster, reference_run):
    bin_dir = tmp_path / "bin"
    stand_in_runtime(bin_dir / "singularity", tmp_path / "calls.log")
    env_script = tmp_path / "env.sh"
    env_script.write_text(f"echo sourced >> {tmp_path / 'sourced.log'}\n")
    container = ["cluster.container.enabled=true", f"cluster.container.image={tmp_path / 'image.sif'}",
                 f"cluster.container.overlay={tmp_path / 'overlay.ext3'}", f"cluster.container.env_script={env_script}",
                 f"cluster.container.python={sys.executable}", "cluster.container.binds=[/tmp]"]
    out = hpcrun("render", "--standalone", *TINY, "cluster=slurm", "run.dir=run", *container, "-o", "job.sbatch")
    assert out.returncode == 0, out.stderr
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}"}
    job = subprocess.run(["sbatch", "--parsable", "job.sbatch"], cwd=tmp_path, env=env, capture_output=True,
                         text=True, check=True).stdout.strip()
    run_dir = tmp_path / "run"
    timeout_signal_at_step(job, run_dir, 8)
    assert wait_for_end(job) == "COMPLETED"

    st = state(run_dir)
    assert st["status"] == "completed" and st["starts"][0]["end"].startswith("requeued: signal SIGUSR2")
    calls = (tmp_path / "calls.log").read_text().splitlines()
    assert len(calls) == 4  # prepare and run, in each of the two starts, all inside the "container"
    assert all(f"--overlay {tmp_path / 'overlay.ext3'}:ro --bind /tmp" in c for c in calls)
    assert len((tmp_path / "sourced.log").read_text().splitlines()) == 4
    assert_same_weights(run_dir / "final", reference_run / "final")
