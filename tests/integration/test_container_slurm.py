"""Where the job cannot requeue itself, on the real dev cluster: inside an image without a Slurm client, and at a
site that refuses users' `scontrol requeue`.

The stand-in runtime below runs the command on the host (as the real one runs it in the image) with "command not
found" stand-ins for every Slurm command first on its PATH; the batch script itself runs on the host, with the real
Slurm client, as it does on a cluster."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

from tests import step_gate
from tests.slurm import (job_id_from, node_cpus, preempt_at_step, release_when_requeued, sacct_runs, squeue_state,
                         stand_in_runtime, timeout_signal_at_step, wait_for_end)
from tests.training import TINY, assert_same_weights, logged_steps, state, wait_for_step, wait_until

SLURM_COMMANDS = ("scontrol", "sacct", "squeue", "sbatch", "scancel", "sinfo", "srun")


def _container(tmp_path) -> list:
    hidden = tmp_path / "no-slurm"
    hidden.mkdir()
    for name in SLURM_COMMANDS:
        stand_in = hidden / name
        stand_in.write_text(f'#!/bin/sh\necho "bash: {name}: command not found" >&2\nexit 127\n')
        stand_in.chmod(0o755)
    # an image without a Slurm client: its PATH finds "command not found" stand-ins first
    stand_in_runtime(tmp_path / "bin" / "singularity", tmp_path / "calls.log", f"export PATH={hidden}:$PATH")
    return ["cluster.container.enabled=true", f"cluster.container.image={tmp_path / 'image.sif'}",
            "cluster.container.env_script=", f"cluster.container.python={sys.executable}"]


def test_without_a_slurm_client_in_the_container_the_batch_script_requeues_and_the_run_completes(
        hpcrun, tmp_path, slurm_cluster, reference_run):
    env = {"PATH": f"{tmp_path / 'bin'}:{os.environ['PATH']}"}
    out = hpcrun(*TINY, "cluster=slurm", "run.dir=run", *_container(tmp_path), env=env)
    assert out.returncode == 0, out.stderr
    job = job_id_from(out.stdout)
    run_dir = tmp_path / "run"
    timeout_signal_at_step(job, run_dir, 8)
    assert wait_for_end(job) == "COMPLETED"

    assert sacct_runs(job) == ["REQUEUED", "COMPLETED"]
    st = state(run_dir)
    assert st["status"] == "completed" and st["requeues"] == 1
    assert st["starts"][0]["end"].startswith("requeued: signal SIGUSR2")
    first = (run_dir / "logs" / "start-1.log").read_text()
    assert "no Slurm client in this process" in first and "squeue %e (batch script)" in first
    assert len((tmp_path / "calls.log").read_text().splitlines()) == 2  # both starts ran inside the "container"
    assert not (run_dir / "requeue-request").exists()
    assert_same_weights(run_dir / "final", reference_run / "final")


def test_without_a_slurm_client_a_real_preemption_requeues_within_the_grace_time_and_the_run_completes(
        hpcrun, tmp_path, slurm_cluster, reference_run):
    env = {"PATH": f"{tmp_path / 'bin'}:{os.environ['PATH']}"}
    out = hpcrun(*TINY, "cluster=slurm", "run.dir=run", "cluster.partition=preemptible",
                 f"cluster.cpus_per_task={node_cpus()}", *_container(tmp_path), env=env)
    assert out.returncode == 0, out.stderr
    job = job_id_from(out.stdout)
    run_dir = tmp_path / "run"
    preempt_at_step(job, run_dir, 8)
    assert wait_for_end(job) == "COMPLETED"

    st = state(run_dir)
    assert st["status"] == "completed" and st["requeues"] == 1
    assert st["starts"][0]["end"].startswith("requeued: signal SIGTERM")  # saved within GraceTime=15
    assert sacct_runs(job)[0] in ("REQUEUED", "PREEMPTED")
    assert len((tmp_path / "calls.log").read_text().splitlines()) == 2
    assert_same_weights(run_dir / "final", reference_run / "final")
    assert logged_steps(run_dir) == list(range(1, 31))


def test_without_a_slurm_client_the_deadline_save_requeues_from_the_host_and_the_run_completes(
        hpcrun, tmp_path, slurm_cluster, reference_run):
    # The end time comes from the batch script (squeue on the host, HPCRUN_JOB_TIMES); a margin of 170 s of a
    # 3-minute job makes the deadline come within the first steps. The requeued job gets a longer limit (as a user
    # would), and the second start, with the end time read again, finishes.
    env = {"PATH": f"{tmp_path / 'bin'}:{os.environ['PATH']}"}
    out = hpcrun(*TINY, "cluster=slurm", "run.dir=run", "cluster.time=3", "checkpoint.deadline_margin=170s",
                 *_container(tmp_path), env=env)
    assert out.returncode == 0, out.stderr
    job = job_id_from(out.stdout)
    run_dir = tmp_path / "run"
    wait_until(lambda: state(run_dir).get("status") == "requeued", timeout=180, what="the deadline requeue")
    st = state(run_dir)
    assert st["starts"][0]["end"].startswith("requeued: deadline:")
    step = st["starts"][0]["step"]
    log = (run_dir / "logs" / "start-1.log").read_text()
    assert "squeue %e (batch script)" in log and f"stopping after step {step}: deadline" in log
    wait_until(lambda: squeue_state(job) == "PENDING", timeout=120, what="the requeued job pending")
    subprocess.run(["scontrol", "update", f"JobId={job}", "TimeLimit=15"], check=True)  # before it can start
    release_when_requeued(job)
    assert wait_for_end(job) == "COMPLETED"

    assert sacct_runs(job) == ["REQUEUED", "COMPLETED"]  # requeued by the batch script, on the host
    st = state(run_dir)
    assert st["status"] == "completed" and st["requeues"] == 1 and st["starts"][1]["resumed_from"] == step
    assert_same_weights(run_dir / "final", reference_run / "final")
    assert logged_steps(run_dir) == list(range(1, 31))


def test_without_a_slurm_client_the_hard_time_limit_requeues_from_the_host_and_the_run_completes(
        hpcrun, tmp_path, slurm_cluster, reference_run):
    # The job's end moved to now: Slurm's time limit sends SIGTERM (with the warning signal) to the job's steps and
    # to the batch shell. The run saves and asks for its requeue; bash, without a trap, died of that SIGTERM before
    # srun returned, so the lines that requeue from the host never ran and the job ended TIMEOUT with the run
    # waiting for a requeue that never came. During KillWait the controller says COMPLETING, Reason TimeLimit.
    gate = step_gate.install(tmp_path)  # the first start waits at step 3 until its signal
    env = {"PATH": f"{tmp_path / 'bin'}:{os.environ['PATH']}", "HPCRUN_TEST_HOLD_AT_STEP": "3"}
    out = hpcrun(*TINY, *gate, "cluster=slurm", "run.dir=run", *_container(tmp_path), env=env)
    assert out.returncode == 0, out.stderr
    job = job_id_from(out.stdout)
    run_dir = tmp_path / "run"
    try:
        wait_for_step(run_dir, 3)
        subprocess.run(["scontrol", "update", f"JobId={job}", "EndTime=now"], check=True)
        wait_until(lambda: squeue_state(job) == "PENDING", timeout=120, what="the job requeued by its batch script")
        subprocess.run(["scontrol", "update", f"JobId={job}", "TimeLimit=10"], check=True)  # its 10 minutes back
        release_when_requeued(job)
        assert wait_for_end(job) == "COMPLETED"
    finally:
        subprocess.run(["scancel", job])

    st = state(run_dir)
    assert st["status"] == "completed" and st["requeues"] == 1 and not st.get("cancelled")
    assert st["starts"][0]["end"].startswith("requeued: signal") and st["starts"][0]["step"] == 4
    assert "no Slurm client in this process" in (run_dir / "logs" / "start-1.log").read_text()
    assert len((tmp_path / "calls.log").read_text().splitlines()) == 2  # both starts ran inside the "container"
    assert not (run_dir / "requeue-request").exists()
    assert_same_weights(run_dir / "final", reference_run / "final")


def test_where_scontrol_requeue_is_refused_a_follow_up_job_continues_the_run(hpcrun, tmp_path, slurm_cluster,
                                                                             reference_run):
    policy = tmp_path / "policy"
    policy.mkdir()
    scontrol = policy / "scontrol"  # as a site that forbids users' requeue answers
    scontrol.write_text(f'#!/bin/sh\nif [ "$1" = requeue ]; then echo "scontrol: error: Access/permission denied '
                        f'for job $2" >&2; exit 1; fi\nexec {shutil.which("scontrol")} "$@"\n')
    scontrol.chmod(0o755)
    env = {"PATH": f"{policy}:{os.environ['PATH']}", "HPCRUN_SLURM_ATTEMPTS": "1"}
    out = hpcrun(*TINY, "cluster=slurm", "run.dir=run", env=env)
    assert out.returncode == 0, out.stderr
    job = job_id_from(out.stdout)
    run_dir = tmp_path / "run"
    wait_for_step(run_dir, 8)
    subprocess.run(["scancel", "--signal=USR2", job], check=True)
    assert wait_for_end(job) == "COMPLETED"  # it saved, submitted its follow-up and ended
    wait_until(lambda: state(run_dir).get("job_id") != job, 60, "the follow-up job in the run's state")
    follow = state(run_dir)["job_id"]
    assert wait_for_end(follow) == "COMPLETED"
    st = state(run_dir)
    assert st["status"] == "completed" and st["requeues"] == 1
    assert [s["job_id"] for s in st["starts"]] == [job, follow]
    assert f"continued by job {follow}" in st["starts"][0]["end"]
    assert_same_weights(run_dir / "final", reference_run / "final")


def test_a_standalone_script_without_a_slurm_client_requeues_from_the_host_at_the_hard_time_limit(
        hpcrun, tmp_path, slurm_cluster, reference_run):
    # The standalone script runs under `set -euo pipefail`. At the hard time limit Slurm kills the step and srun
    # exits non-zero: the script must still reach its last lines, which requeue the job from the host.
    gate = step_gate.install(tmp_path)
    env = {"PATH": f"{tmp_path / 'bin'}:{os.environ['PATH']}", "HPCRUN_TEST_HOLD_AT_STEP": "3"}
    out = hpcrun("render", "--standalone", *TINY, *gate, "cluster=slurm", "run.dir=run", *_container(tmp_path),
                 "-o", "job.sbatch")
    assert out.returncode == 0, out.stderr
    job = subprocess.run(["sbatch", "--parsable", "job.sbatch"], cwd=tmp_path, env={**os.environ, **env},
                         capture_output=True, text=True, check=True).stdout.strip()
    run_dir = tmp_path / "run"
    try:
        wait_for_step(run_dir, 3)
        subprocess.run(["scontrol", "update", f"JobId={job}", "EndTime=now"], check=True)
        wait_until(lambda: squeue_state(job) == "PENDING", timeout=120, what="the job requeued by its batch script")
        subprocess.run(["scontrol", "update", f"JobId={job}", "TimeLimit=10"], check=True)
        release_when_requeued(job)
        assert wait_for_end(job) == "COMPLETED"
    finally:
        subprocess.run(["scancel", job])

    st = state(run_dir)
    assert st["status"] == "completed" and st["requeues"] == 1
    assert st["starts"][0]["end"].startswith("requeued: signal") and st["starts"][0]["step"] == 4
    assert not (run_dir / "requeue-request").exists()
    assert_same_weights(run_dir / "final", reference_run / "final")
