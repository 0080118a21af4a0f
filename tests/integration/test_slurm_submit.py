"""Submission to the real dev Slurm cluster (scripts/dev-cluster up)."""

import subprocess
import time

import pytest

from tests.slurm import job_id_from, wait_for_end
from tests.training import state

pytestmark = pytest.mark.training


def test_tiny_llama_submits_returns_at_once_and_completes_under_srun(hpcrun, tmp_path, slurm_cluster):
    start = time.monotonic()
    out = hpcrun("+experiment=tiny_llama", "cluster=slurm", "train.max_steps=10", "train.log_every=5")
    returned_after = time.monotonic() - start
    assert out.returncode == 0, out.stderr
    job_id = job_id_from(out.stdout)
    run_dir = tmp_path / "runs" / "tiny_llama" / "train.log_every=5,train.max_steps=10"
    assert f"run dir: {run_dir}" in out.stdout
    assert f"hpcrun cancel {run_dir}" in out.stdout and f"hpcrun logs -f {run_dir}" in out.stdout
    assert returned_after < 30  # submission does not wait for the job (which trains for longer than this)

    assert wait_for_end(job_id) == "COMPLETED"
    assert (run_dir / "final" / "model.safetensors").exists()
    assert (run_dir / "config.yaml").exists()
    log = (run_dir / "slurm" / f"{job_id}_0_log.err").read_text()
    assert f"Slurm job {job_id}" in log and "final weights in" in log
    assert "===== start 1 of run tiny_llama" in (run_dir / "logs" / "latest.log").read_text()

    # The job ran as a step under srun: sacct lists the step that ran python.
    steps = subprocess.run(["sacct", "-n", "-P", "-j", job_id, "-o", "JobID,JobName,State"],
                           capture_output=True, text=True, check=True).stdout
    assert f"{job_id}.0|python" in steps.replace("python3", "python")


def test_the_rendered_script_is_exactly_what_was_submitted(hpcrun, tmp_path, slurm_cluster):
    args = ["+experiment=tiny_llama", "cluster=slurm", "train.max_steps=1", "cluster.time=10", "run.name=rendered"]
    rendered = hpcrun("render", *args)
    assert rendered.returncode == 0, rendered.stderr
    out = hpcrun(*args)
    assert out.returncode == 0, out.stderr
    job_id = job_id_from(out.stdout)
    submitted = (tmp_path / "runs" / "rendered" / "train.max_steps=1" / "slurm" / f"{job_id}_submission.sh").read_text()
    assert rendered.stdout.rstrip("\n") == submitted.rstrip("\n")
    wait_for_end(job_id)


def test_sbatch_refusing_a_job_is_one_clear_line_and_leaves_no_run_directory(hpcrun, tmp_path, slurm_cluster):
    # A GPU type no node has: hpcrun's own site checks do not look at GPU types, sbatch does.
    out = hpcrun("+experiment=tiny_llama", "cluster=slurm", "cluster.gpus_per_node=1", "cluster.gpu_type=v100")
    assert out.returncode == 2
    # ONE line: no "new run" line before it, and not sbatch's raw error as well as hpcrun's
    assert out.stderr.strip().splitlines() == [
        "hpcrun: error: sbatch refused the job: sbatch: error: Batch job submission failed: Requested node "
        "configuration is not available"], out.stderr
    assert "Traceback" not in out.stderr
    assert not (tmp_path / "runs" / "tiny_llama").exists()


def test_a_submission_whose_output_pipe_is_closed_keeps_the_run_its_job_needs(tmp_path, slurm_cluster):
    # `hpcrun run ... 2>&1 | head -1`: the reader is gone before hpcrun has said what it submitted. The job was
    # queued, but the closed pipe's error undid the new run's directory, and the job then failed without it.
    import os
    import sys

    proc = subprocess.Popen([sys.executable, "-m", "hpcrun", "run", "run.name=piped", "--", sys.executable, "-c",
                             "print('done')"], cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            env={**os.environ})
    assert proc.stdout.readline().startswith(b"hpcrun: cluster=slurm")  # what `head -1` lets through
    proc.stdout.close()  # the reader has gone: the next line hpcrun writes meets a closed pipe
    assert proc.wait(timeout=120) == 141
    (run_dir,) = list((tmp_path / "runs" / "piped").iterdir())
    job_id = state(run_dir)["job_id"]
    assert wait_for_end(job_id) == "COMPLETED"
    assert state(run_dir)["status"] == "completed"
