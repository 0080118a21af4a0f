"""The batch script's last lines, which requeue a job whose python could not (no Slurm client in its container):
run by bash here with stand-ins for squeue and scontrol that record what they were asked."""

import subprocess

import pytest

from hpcrun.slurm.sbatch import setup_lines, teardown_lines


def _run(tmp_path, lines, env, squeue_says="RUNNING", strict=True, status=0):
    """``squeue_says``: its answer, or answers in turn split by '|' (the last one again once they run out).
    ``strict``: under ``set -euo pipefail``; ``status``: the script's exit status expected."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    answers = squeue_says.split("|")
    (bin_dir / "squeue").write_text(
        f'#!/bin/bash\nanswers=({" ".join(repr(a) for a in answers)})\necho x >> {tmp_path}/squeue.calls\n'
        f'n=$(wc -l < {tmp_path}/squeue.calls)\n[ "$n" -gt {len(answers)} ] && n={len(answers)}\n'
        'echo "${answers[$((n - 1))]}"\n')
    (bin_dir / "scontrol").write_text(f'#!/bin/sh\necho "$*" >> {tmp_path}/scontrol.calls\n')
    for f in bin_dir.iterdir():
        f.chmod(0o755)
    script = ("set -euo pipefail\n" if strict else "") + "\n".join(lines) + "\n"
    out = subprocess.run(["bash", "-c", script], env={"PATH": f"{bin_dir}:/usr/bin:/bin", **env},
                         capture_output=True, text=True, timeout=30)
    assert out.returncode == status, out.stderr
    calls = tmp_path / "scontrol.calls"
    return calls.read_text().splitlines() if calls.exists() else []


def test_an_array_task_requeues_its_own_run_when_it_asked(tmp_path):
    runs = [tmp_path / "run a", tmp_path / "run 'b'", tmp_path / "run $c"]  # spaces and quotes survive
    for r in runs:
        r.mkdir()
    (runs[1] / "requeue-request").write_text("41_1")
    lines = teardown_lines(run_dirs=[str(r) for r in runs])
    assert _run(tmp_path, lines, {"SLURM_ARRAY_JOB_ID": "41", "SLURM_ARRAY_TASK_ID": "1", "SLURM_JOB_ID": "44"}) \
        == ["requeue 41_1"]
    assert not (runs[1] / "requeue-request").exists()


@pytest.mark.parametrize("request_text, squeue_says", [
    (None, "RUNNING"),  # the job did not ask (it finished, or requeued itself)
    ("7", "RUNNING"),  # an earlier job's request
    ("9", "COMPLETING None"),  # scancel: the controller says COMPLETING at once (never CANCELLED while it ends)
    ("9", ""),  # the controller does not answer (asked three times): no requeue on a guess
])
def test_no_requeue_unless_this_job_asked_and_was_not_cancelled(tmp_path, request_text, squeue_says):
    run = tmp_path / "run"
    run.mkdir()
    if request_text:
        (run / "requeue-request").write_text(request_text)
    assert _run(tmp_path, teardown_lines(str(run)), {"SLURM_JOB_ID": "9"}, squeue_says) == []
    if squeue_says == "":
        assert len((tmp_path / "squeue.calls").read_text().splitlines()) == 3


def test_a_controller_that_answers_nothing_once_is_asked_again_before_the_requeue(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "requeue-request").write_text("9")
    assert _run(tmp_path, teardown_lines(str(run)), {"SLURM_JOB_ID": "9"}, "|RUNNING") == ["requeue 9"]
    assert not (run / "requeue-request").exists()


def test_the_scripts_exit_status_stays_the_job_steps(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    lines = ["(exit 3)", *teardown_lines(str(run))]  # srun failed: Slurm must record the job FAILED
    out = subprocess.run(["bash", "-c", "\n".join(lines)], capture_output=True, text=True, timeout=30)
    assert out.returncode == 3


def test_a_single_job_requeues_from_the_host(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "requeue-request").write_text("9")
    assert _run(tmp_path, teardown_lines(str(run)), {"SLURM_JOB_ID": "9"}) == ["requeue 9"]


def test_the_hard_time_limit_requeues_from_the_host(tmp_path):
    # During KillWait the controller says COMPLETING with the reason TimeLimit (a cancel's reason is None).
    run = tmp_path / "run"
    run.mkdir()
    (run / "requeue-request").write_text("9")
    assert _run(tmp_path, teardown_lines(str(run)), {"SLURM_JOB_ID": "9"}, "COMPLETING TimeLimit") == ["requeue 9"]
    assert not (run / "requeue-request").exists()


def test_the_shell_outlives_a_sigterm_while_srun_runs_and_then_requeues_with_sruns_status(tmp_path):
    # Slurm's time limit sends SIGTERM to the batch shell too; without the setup's trap bash died there and the
    # requeue never ran. The stand-in for srun signals its shell, then exits 3 (as a step killed would, later).
    run = tmp_path / "run"
    run.mkdir()
    (run / "requeue-request").write_text("9")
    srun = "bash -c 'kill -TERM $PPID; sleep 0.2; exit 3'"
    lines = [*setup_lines(), srun, *teardown_lines(str(run))]
    # (not under set -e: the batch script is not) srun's status stays the job's
    assert _run(tmp_path, lines, {"SLURM_JOB_ID": "9"}, "COMPLETING TimeLimit", strict=False, status=3) \
        == ["requeue 9"]
