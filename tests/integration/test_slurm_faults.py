"""Slurm's own daemons failing under hpcrun, on the real dev cluster: slurmctld down during submit and status,
slurmdbd down during status, during a cancel and at the hard time limit, a sweep cut off half-way through its arrays.

Each test kills a daemon and starts it again (tests/slurm.py::daemon_stopped), whatever happens in between.
"""

import json
import os
import re
import subprocess
import sys
import time

import pytest

from tests import step_gate
from tests.slurm import (calls, counting_shims, daemon_stopped, job_id_from, release_when_requeued, restart_cluster,
                         sacct_runs, sacct_state, squeue_state, wait_for_run_end)
from tests.training import TINY, assert_same_weights, state, wait_for_step, wait_until

pytestmark = pytest.mark.usefixtures("slurm_cluster")

HELD = ["+experiment=tiny_llama", "cluster=slurm", "cluster.sbatch_extra.hold=true"]
FAST_RETRIES = {"HPCRUN_SLURM_ATTEMPTS": "2", "HPCRUN_SLURM_BACKOFF": "1"}


def _last_line(out) -> str:
    return out.stderr.strip().splitlines()[-1]


def _newest_complete_step(run_dir) -> int:
    """The step of the run's newest complete checkpoint (0: none yet), read from the run directory itself:
    ``checkpoints/step-N`` whose marker ``hpcrun-complete.json`` exists and lists files all present at their sizes."""
    steps = []
    for path in (run_dir / "checkpoints").glob("step-*"):
        m = re.fullmatch(r"step-(\d+)", path.name)
        if m:
            steps.append((int(m.group(1)), path))
    for step, path in sorted(steps, reverse=True):
        try:
            files = json.loads((path / "hpcrun-complete.json").read_text())["files"]
            if all((path / name).stat().st_size == size for name, size in files.items()):
                return step
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            continue  # no marker yet, or the folder went (pruned) while it was read
    return 0


def _status(hpcrun, target, env=None) -> list:
    out = hpcrun("status", str(target), "--json", env=env)
    assert out.returncode == 0 and "Traceback" not in out.stderr, out.stderr
    return json.loads(out.stdout)


def test_slurmctld_down_submit_retries_then_one_error_status_still_answers_and_a_restart_mid_retry_submits(
        hpcrun, tmp_path):
    shims = counting_shims(tmp_path, "sbatch")
    held = hpcrun(*HELD, "run.dir=held")
    assert held.returncode == 0, held.stderr
    held_job = job_id_from(held.stdout)
    wait_until(lambda: sacct_state(held_job) == "PENDING", 30, "accounting to know the job")
    try:
        with daemon_stopped("slurmctld"):
            # status: accounting (slurmdbd) still answers
            (row,) = _status(hpcrun, tmp_path / "held")
            assert (row["state"], row["job_id"]) == ("PENDING", held_job)

            # submit: bounded retries with back-off, then one line; nothing submitted, no run directory
            started = time.monotonic()
            out = hpcrun(*HELD, "run.dir=refused", env={**shims, **FAST_RETRIES})
            took = time.monotonic() - started
            assert out.returncode == 2 and "Traceback" not in out.stderr, out.stderr
            assert "trying again in 1 s (attempt 2 of 2)" in out.stderr
            last = _last_line(out)
            assert last.startswith("hpcrun: error: sbatch failed 2 times over ") and "and submitted nothing" in last
            assert "Unable to contact slurm controller" in last
            assert len(calls(tmp_path, "sbatch")) == 2
            assert not (tmp_path / "refused").exists()
            assert took < 60, took  # bounded: Slurm's own ~9 s connect timeout twice, plus 1 s

            # the controller comes back while hpcrun is backing off: the submission goes through
            log = tmp_path / "retry.err"
            with log.open("w") as err:
                proc = subprocess.Popen(
                    [sys.executable, "-m", "hpcrun", *HELD, "run.dir=retried"], cwd=tmp_path, stdout=subprocess.PIPE,
                    stderr=err, text=True,
                    env={**os.environ, "HPCRUN_SLURM_ATTEMPTS": "6", "HPCRUN_SLURM_BACKOFF": "3"})
                wait_until(lambda: "trying again" in log.read_text(), 60, "hpcrun to back off")
                restart_cluster()
                stdout, _ = proc.communicate(timeout=120)
            assert proc.returncode == 0, log.read_text()
            retried_job = job_id_from(stdout)
            subprocess.run(["scancel", retried_job], check=True)
    finally:
        subprocess.run(["scancel", held_job])


def test_slurmdbd_down_status_answers_from_squeue_and_the_runs_own_files(hpcrun, tmp_path):
    held = hpcrun(*HELD, "run.dir=held")
    assert held.returncode == 0, held.stderr
    job = job_id_from(held.stdout)
    try:
        with daemon_stopped("slurmdbd"):
            out = hpcrun("status", "held", "--json")
            assert out.returncode == 0 and "Traceback" not in out.stderr, out.stderr
            assert "accounting did not answer" in out.stderr and "states from squeue" in out.stderr
            (row,) = json.loads(out.stdout)
            assert (row["state"], row["job_id"], row["recorded"]) == ("PENDING", job, "submitted")
            assert row["max_steps"] == 300  # planned by its settings (train.max_steps), before it started
            out = hpcrun("status", "held")  # the table too
            assert out.returncode == 0 and "PENDING" in out.stdout
    finally:
        subprocess.run(["scancel", job])


def test_scancel_while_slurmdbd_is_down_still_stays_cancelled(hpcrun, tmp_path):
    # Why a job is ending is accounting's word; the controller says COMPLETING for a cancelled job, and `scontrol
    # requeue` of it succeeds. Before, a SIGTERM that found accounting silent was taken for a preemption: the job
    # requeued itself and the cancel was undone.
    out = hpcrun(*TINY, "cluster=slurm", "run.dir=run")
    assert out.returncode == 0, out.stderr
    job = job_id_from(out.stdout)
    run_dir = tmp_path / "run"
    wait_for_step(run_dir, 3)
    with daemon_stopped("slurmdbd"):
        subprocess.run(["scancel", job], check=True)
        wait_until(lambda: state(run_dir)["status"] != "running", 90, "the run's end")
        st = state(run_dir)
        assert st["status"] == "stopped" and "cancelled" in st["reason"], st
        wait_until(lambda: squeue_state(job) == "", 60, "the job to leave the queue")  # requeued, it would pend
    assert wait_for_run_end(job, 1) == "CANCELLED" and len(sacct_runs(job)) == 1
    assert (run_dir / "checkpoints" / f"step-{st['starts'][0]['step']}" / "hpcrun-complete.json").exists()


def test_the_hard_time_limit_while_slurmdbd_is_down_requeues_and_the_run_finishes(hpcrun, tmp_path):
    # A batch script without --signal (a standalone script, its line taken out): no warning comes, the time limit's
    # SIGTERM is the job's first word. (With hpcrun's --signal, Slurm sends the warning with it even when the end is
    # moved to now, and the warning, first, requeues without asking why.) Accounting, which would say TIMEOUT, is
    # down; the controller says why it ends the job (Reason TimeLimit, a cancel's None). Before, a SIGTERM that found
    # accounting silent was taken for a cancel: the run stayed stopped instead of requeueing.
    gate = step_gate.install(tmp_path)  # the first start waits at step 3
    out = hpcrun("render", "--standalone", *TINY, *gate, "cluster=slurm", "run.dir=run", "-o", "job.sbatch")
    assert out.returncode == 0, out.stderr
    script = tmp_path / "job.sbatch"
    lines = script.read_text().splitlines(keepends=True)
    assert sum(line.startswith("#SBATCH --signal=") for line in lines) == 1
    script.write_text("".join(line for line in lines if not line.startswith("#SBATCH --signal=")))
    job = subprocess.run(["sbatch", "--parsable", str(script)], cwd=tmp_path, capture_output=True, text=True,
                         check=True, env={**os.environ, "HPCRUN_TEST_HOLD_AT_STEP": "3"}).stdout.strip()
    run_dir = tmp_path / "run"
    try:
        wait_for_step(run_dir, 3)
        with daemon_stopped("slurmdbd"):
            # The job's time limit, now (root may move a running job's end): Slurm times it out at its next check.
            subprocess.run(["scontrol", "update", f"JobId={job}", "EndTime=now"], check=True)
            wait_until(lambda: state(run_dir)["starts"][0].get("end"), 120, "the first start's end")
            first = state(run_dir)["starts"][0]
            assert first["end"].startswith("requeued: signal SIGTERM") and first["step"] == 4, first
            # (Moving the end made the time limit a minute: the next start gets its 10 minutes back.)
            subprocess.run(["scontrol", "update", f"JobId={job}", "TimeLimit=10"], check=True)
            release_when_requeued(job)
            wait_until(lambda: state(run_dir)["status"] == "completed", 180, "the requeued job to finish the run")
        st = state(run_dir)
        assert st["requeues"] == 1 and not st.get("cancelled") and len(st["starts"]) == 2
    finally:
        subprocess.run(["scancel", job])


def test_a_sweep_cut_off_by_a_controller_crash_says_which_points_went_in_and_the_same_command_finishes_it(
        hpcrun, tmp_path):
    # One point per array (as if MaxArraySize were 1), so the sweep takes two sbatch calls.
    cache = tmp_path / "cache"
    cache.mkdir()
    (cache / f"slurm-config-{os.uname().nodename}.json").write_text(
        json.dumps({"time": time.time(), "max_array_size": 1}))
    shims = counting_shims(tmp_path, "sbatch")
    # The second sbatch call finds the controller dead (killed just before it).
    real = (tmp_path / "shims" / "sbatch").read_text()
    (tmp_path / "shims" / "sbatch").write_text(real.replace(
        "exec ", f'[ "$(wc -l < "{tmp_path}/sbatch.calls")" -eq 2 ] && pkill -x slurmctld && sleep 1\nexec ', 1))
    env = {**shims, **FAST_RETRIES, "HPCRUN_CACHE_DIR": str(cache)}
    sweep = ["-m", *HELD, "train.lr=1e-3,3e-3", "cluster.run_root=runs"]
    jobs = []
    try:
        out = hpcrun(*sweep, env=env)
        assert out.returncode == 2 and "Traceback" not in out.stderr, out.stderr
        last = _last_line(out)
        record = json.loads(next((tmp_path / "runs" / "sweeps").iterdir()).joinpath("sweep.json").read_text())
        (array,) = record["arrays"]
        jobs.append(array["job_id"])
        (went_in,) = array["tasks"]
        assert "sbatch of an array of 1 point failed 2 times" in last
        assert f"1 point went in before it, as job arrays {array['job_id']} (1 point): " in last
        assert os.path.basename(went_in) in last and "the same command submits the rest" in last
        other = [p["run_dir"] for p in record["points"] if p["run_dir"] != went_in]
        assert len(other) == 1 and not os.path.exists(other[0])  # the refused point left no run directory
    finally:
        restart_cluster()
    try:
        out = hpcrun(*sweep, env={"HPCRUN_CACHE_DIR": str(cache)})
        assert out.returncode == 0, out.stderr
        assert "submitted 1 (0 resuming)" in out.stdout and "skipped 1" in out.stdout, out.stdout
        record = json.loads(next((tmp_path / "runs" / "sweeps").iterdir()).joinpath("sweep.json").read_text())
        jobs += [a["job_id"] for a in record["arrays"][1:]]
        assert sorted(t for a in record["arrays"] for t in a["tasks"]) == sorted(p["run_dir"] for p in record["points"])
    finally:
        subprocess.run(["scancel", *jobs])



def test_a_node_failure_mid_job_requeues_the_job_and_it_resumes_from_its_last_checkpoint(hpcrun, tmp_path,
                                                                                         reference_run):
    """Power loss, as Slurm sees it: slurmd, the job's step daemons and its processes die at once (kill -9); the
    controller declares the node DOWN after SlurmdTimeout, the job ends NODE_FAIL and is requeued; the node comes
    back (slurmd restarted, ReturnToService=2) and the run resumes from its last complete checkpoint."""
    out = hpcrun(*TINY, "cluster=slurm", "run.dir=run", "checkpoint.save_every=2s")
    assert out.returncode == 0, out.stderr
    job = job_id_from(out.stdout)
    run_dir = tmp_path / "run"
    try:
        wait_until(lambda: _newest_complete_step(run_dir) > 0, 300, "a checkpoint")
        for pattern in (["-x", "slurmd"], ["-x", "slurmstepd"], ["-f", f"submitit.core._submit {run_dir}"],
                        ["-f", f"job{job}/slurm_script"]):
            subprocess.run(["pkill", "-9", *pattern])
        saved = _newest_complete_step(run_dir)
        wait_until(lambda: "NODE_FAIL" in sacct_runs(job), 120, "the controller to declare the node failed")
        restart_cluster()
        release_when_requeued(job)
        # Not the job's latest sacct line: until the requeued run starts, that is still the first run's NODE_FAIL
        # (terminal) while the job is pending again. The end is the second run's own record.
        assert wait_for_run_end(job, 2) == "COMPLETED"
    finally:
        subprocess.run(["scancel", job])
    assert sacct_runs(job) == ["NODE_FAIL", "COMPLETED"]
    starts = state(run_dir)["starts"]
    assert len(starts) == 2 and "ended_at" not in starts[0] and starts[1]["resumed_from"] >= saved > 0
    log = (run_dir / "logs" / "start-2.log").read_text()
    assert f"ended without a clean stop (killed, node failure, or out of time before its save): falling back to " \
           f"the last complete checkpoint, step-{starts[1]['resumed_from']}" in log
    assert_same_weights(run_dir / "final", reference_run / "final")
