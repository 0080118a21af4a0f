"""Timeouts, preemption, the real time limit, crash loops and two ranks, on the real dev Slurm cluster.

Each interruption is injected the way Slurm delivers it (scancel --signal, scontrol requeue, a higher-priority job,
a real --time), and the run must come back by itself and end with the straight run's weights, bit for bit.
"""

import os
import re
import signal
import subprocess
import sys

import pytest

from tests.slurm import (job_id_from, node_cpus, preempt_at_step, release_when_requeued, sacct_runs, squeue_state,
                         task_pids, timeout_signal_at_step, wait_for_end)
from tests.training import TINY, assert_same_weights, logged_steps, state, wait_for_step, wait_until

pytestmark = pytest.mark.training


def _submit(hpcrun, *args, env=None):
    out = hpcrun(*args, env=env)
    assert out.returncode == 0, out.stderr[-3000:]
    return job_id_from(out.stdout)


def test_the_timeout_signal_saves_requeues_and_resumes_to_the_straight_runs_weights(
        hpcrun, tmp_path, slurm_cluster, reference_run):
    job = _submit(hpcrun, *TINY, "cluster=slurm", "run.dir=run")
    run_dir = tmp_path / "run"
    # `hpcrun logs -f`, started while the job is queued: it follows both starts and returns by itself at the end
    follow = subprocess.Popen([sys.executable, "-m", "hpcrun", "logs", "-f", str(run_dir)], cwd=tmp_path,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    timeout_signal_at_step(job, run_dir, 8)
    assert wait_for_end(job) == "COMPLETED"
    try:
        followed, err = follow.communicate(timeout=60)
    finally:
        follow.kill()
    assert follow.returncode == 0, err
    assert followed.count("----- start-2.log (a new start) -----") == 1 and "has been replaced" not in followed
    assert "===== start 1 of run" in followed and "===== start 2 of run" in followed
    assert any(f"final weights in {run_dir / 'final'}" in line for line in followed.splitlines()[-3:])  # to the end

    assert sacct_runs(job) == ["REQUEUED", "COMPLETED"]  # the interrupted run never shows COMPLETED
    st = state(run_dir)
    assert st["status"] == "completed" and st["requeues"] == 1
    assert st["starts"][0]["end"].startswith("requeued: signal SIGUSR2")
    assert_same_weights(run_dir / "final", reference_run / "final")
    assert logged_steps(run_dir) == list(range(1, 31))  # an announced interruption recomputes no step


def test_scontrol_requeue_like_an_admin_preemption_resumes_and_finishes(hpcrun, tmp_path, slurm_cluster,
                                                                         reference_run):
    job = _submit(hpcrun, *TINY, "cluster=slurm", "run.dir=run")
    run_dir = tmp_path / "run"
    wait_for_step(run_dir, 8)
    subprocess.run(["scontrol", "requeue", job], check=True)
    release_when_requeued(job)
    assert wait_for_end(job) == "COMPLETED"
    runs = sacct_runs(job)
    assert runs[-1] == "COMPLETED" and "COMPLETED" not in runs[:-1]
    # Its SIGTERM was Slurm's requeue (the controller's restart count), not a cancel: the start says so.
    assert state(run_dir)["starts"][0]["end"].startswith("requeued: signal SIGTERM")
    assert_same_weights(run_dir / "final", reference_run / "final")


def test_a_higher_priority_job_preempts_and_the_run_requeues_itself_within_the_grace_time(
        hpcrun, tmp_path, slurm_cluster, reference_run):
    job = _submit(hpcrun, *TINY, "cluster=slurm", "run.dir=run", "cluster.partition=preemptible",
                  f"cluster.cpus_per_task={node_cpus()}")
    run_dir = tmp_path / "run"
    preempt_at_step(job, run_dir, 8)
    assert wait_for_end(job) == "COMPLETED"

    first_end = state(run_dir)["starts"][0]["end"]
    assert first_end.startswith("requeued: signal SIGTERM")  # saved and requeued itself within GraceTime=15
    assert sacct_runs(job)[0] in ("REQUEUED", "PREEMPTED")
    assert_same_weights(run_dir / "final", reference_run / "final")
    assert logged_steps(run_dir) == list(range(1, 31))


def test_the_real_time_limit_the_deadline_save_comes_before_slurms_signal_and_kill(hpcrun, tmp_path, slurm_cluster):
    # 3 minutes; the save must end 90 s before the end: the deadline stop comes ~90 s in, while Slurm's USR2
    # (asked for 5 s before the end, possibly up to 60 s early) cannot come before ~115 s.
    job = _submit(hpcrun, "+experiment=tiny_llama", "cluster=slurm", "run.dir=run", "train.max_steps=100000",
                  "cluster.time=3", "cluster.signal_delay=5s", "checkpoint.deadline_margin=90s",
                  "checkpoint.save_every=0")
    run_dir = tmp_path / "run"
    wait_until(lambda: state(run_dir).get("status") == "requeued", timeout=240, what="the deadline requeue")
    st = state(run_dir)
    try:
        assert st["starts"][0]["end"].startswith("requeued: deadline:")
        wait_until(lambda: sacct_runs(job)[:1] == ["REQUEUED"], timeout=60, what="sacct REQUEUED")
        step = st["starts"][0]["step"]
        assert (run_dir / "checkpoints" / f"step-{step}" / "hpcrun-complete.json").exists()
        log = (run_dir / "logs" / "start-1.log").read_text()
        assert f"stopping after step {step}: deadline" in log
        assert not re.search(r"stopping after step \d+: signal", log)  # neither Slurm signal came first
    finally:
        subprocess.run(["scancel", job])


def test_a_python_error_is_not_requeued_and_the_reason_is_recorded(hpcrun, tmp_path, slurm_cluster):
    job = _submit(hpcrun, "+experiment=tiny_llama", "cluster=slurm", "run.dir=run", "data.corpus=/no/such/corpus")
    assert wait_for_end(job) == "FAILED"
    assert sacct_runs(job) == ["FAILED"]
    st = state(tmp_path / "run")
    assert st["status"] == "failed" and "not requeued" in st["reason"] and "data.corpus" in st["reason"]


def test_a_crash_loop_stops_after_the_allowed_restarts_without_progress(hpcrun, tmp_path, slurm_cluster):
    job = _submit(hpcrun, "+experiment=tiny_llama", "cluster=slurm", "run.dir=run",
                  "run.max_restarts_without_progress=2", env={"HPCRUN_FAULTS": "transient_error"})
    run_dir = tmp_path / "run"
    for n in (1, 2, 3):  # three transient failures, each requeued
        wait_until(lambda: state(run_dir).get("status") == "requeued" and len(state(run_dir)["starts"]) == n,
                   timeout=180, what=f"requeue {n}")
        release_when_requeued(job)
    assert wait_for_end(job) == "FAILED"
    st = state(run_dir)
    assert len(st["starts"]) == 4 and st["status"] == "failed"
    assert "3 restarts in a row made no training progress" in st["reason"]
    assert sacct_runs(job)[-1] == "FAILED"


def test_a_job_cancelled_while_pending_ends_status_wait_and_logs_follow_at_once(hpcrun, tmp_path, slurm_cluster):
    job = _submit(hpcrun, *TINY, "cluster=slurm", "run.dir=run", "cluster.sbatch_extra.begin=now+1hour")
    assert squeue_state(job) == "PENDING"
    subprocess.run(["scancel", job], check=True)
    followed = hpcrun("logs", "-f", "run", timeout=60)
    assert followed.returncode == 0 and "run ended (CANCELLED) before it wrote a log" in followed.stderr, \
        followed.stderr[-2000:]
    assert hpcrun("wait", "run", "--poll", "1", timeout=60).returncode == 1  # it did not complete


def test_scancel_stops_the_run_for_good_after_saving(hpcrun, tmp_path, slurm_cluster):
    job = _submit(hpcrun, *TINY, "cluster=slurm", "run.dir=run")
    run_dir = tmp_path / "run"
    wait_for_step(run_dir, 5)
    subprocess.run(["scancel", job], check=True)
    assert wait_for_end(job) == "CANCELLED"
    wait_until(lambda: state(run_dir)["status"] == "stopped", timeout=60, what="the stopped state")
    st = state(run_dir)
    assert "cancelled" in st["reason"]
    assert squeue_state(job) in ("", "COMPLETING")  # on its way out, not requeued
    assert sacct_runs(job) == ["CANCELLED"]
    assert (run_dir / "checkpoints" / f"step-{st['starts'][0]['step']}" / "hpcrun-complete.json").exists()


def test_two_ranks_agree_on_the_stop_step_when_only_one_gets_the_signal(hpcrun, tmp_path, slurm_cluster):
    two = [*TINY, "cluster=slurm", "cluster.tasks_per_node=2", "cluster.cpus_per_task=1", "train.max_steps=24"]
    straight = _submit(hpcrun, *two, "run.dir=straight")
    assert wait_for_end(straight) == "COMPLETED"

    job = _submit(hpcrun, *two, "run.dir=run")
    run_dir = tmp_path / "run"
    wait_for_step(run_dir, 8)
    pids = task_pids(job, rank=1)
    assert pids, "rank 1's process not found"
    for pid in pids:
        os.kill(pid, signal.SIGUSR2)  # rank 0 never gets it: it must learn from rank 1
    release_when_requeued(job)
    assert wait_for_end(job) == "COMPLETED"

    st = state(run_dir)
    step = st["starts"][0]["step"]
    assert st["starts"][1]["resumed_from"] == step
    ckpt = run_dir / "checkpoints" / f"step-{step}"
    if ckpt.exists():  # (pruned only if two newer saves followed; none do here)
        assert {p.name for p in ckpt.glob("rng_state_*.pth")} == {"rng_state_0.pth", "rng_state_1.pth"}
    rank1_log = (run_dir / "logs" / "start-1.rank-1.log").read_text() + (run_dir / "logs" / "start-1.log").read_text()
    assert "Traceback" not in rank1_log
    assert sacct_runs(job) == ["REQUEUED", "COMPLETED"]
    assert_same_weights(run_dir / "final", tmp_path / "straight" / "final")


def test_fsdp_over_two_ranks_saves_sharded_checkpoints_requeues_and_resumes_exactly(hpcrun, tmp_path, slurm_cluster,
                                                                                    reference_run):
    from safetensors import safe_open

    fsdp = [*TINY, "cluster=slurm", "cluster.tasks_per_node=2", "cluster.cpus_per_task=1", "train.max_steps=16",
            "train.fsdp=true", "model.gradient_checkpointing=true"]
    straight = _submit(hpcrun, *fsdp, "run.dir=straight")
    assert wait_for_end(straight) == "COMPLETED"

    job = _submit(hpcrun, *fsdp, "run.dir=run")
    run_dir = tmp_path / "run"
    timeout_signal_at_step(job, run_dir, 6)
    assert wait_for_end(job) == "COMPLETED"

    st = state(run_dir)
    step = st["starts"][0]["step"]
    assert st["status"] == "completed" and st["starts"][1]["resumed_from"] == step
    # Sharded: each rank wrote its own part of the weights and of the optimizer state (torch.distributed.checkpoint).
    ckpt = run_dir / "checkpoints" / f"step-{step}"
    shards = {str(p.relative_to(ckpt)) for p in ckpt.rglob("*.distcp")}
    assert {"pytorch_model_fsdp_0/__0_0.distcp", "pytorch_model_fsdp_0/__1_0.distcp",
            "optimizer_0/__0_0.distcp", "optimizer_0/__1_0.distcp"} <= shards
    assert logged_steps(run_dir) == list(range(1, 17))
    assert_same_weights(run_dir / "final", tmp_path / "straight" / "final")
    # The final weights are one ordinary save_pretrained folder, the same tensor names as a single-process run.
    with safe_open(str(run_dir / "final" / "model.safetensors"), "pt") as a, \
            safe_open(str(reference_run / "final" / "model.safetensors"), "pt") as b:
        assert set(a.keys()) == set(b.keys())
