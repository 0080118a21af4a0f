"""Status lines from state files and sacct output (sacct faked here; the real one in tests/integration)."""

import json
import os

import pytest

from hpcrun.rundir.ledger import Ledger
from hpcrun.rundir.state import RunState
from hpcrun.slurm.jobs import job_states
from hpcrun.observe.status import run_status, table


def _fake(tmp_path, name, output, exit_code=0):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    (bin_dir / name).write_text(f"#!/bin/sh\necho \"$*\" >> {tmp_path}/{name}.calls\nprintf '%s' '{output}'\n"
                                f"exit {exit_code}\n")
    (bin_dir / name).chmod(0o755)
    return str(bin_dir)


def test_job_states_come_from_one_sacct_call_with_the_current_run_of_requeued_jobs(tmp_path, monkeypatch):
    path = _fake(tmp_path, "sacct", "12|REQUEUED\n12|RUNNING\n13_0|COMPLETED\n13_1|CANCELLED by 0\n")
    _fake(tmp_path, "squeue", "14|PENDING\n")
    monkeypatch.setenv("PATH", f"{path}:{os.environ['PATH']}")
    states = job_states(["12", "13_0", "13_1", "14"])
    assert states == {"12": "RUNNING", "13_0": "COMPLETED", "13_1": "CANCELLED", "14": "PENDING"}
    assert len((tmp_path / "sacct.calls").read_text().splitlines()) == 1
    assert "-j 12,13,13_0,13_1,14" in (tmp_path / "sacct.calls").read_text()


def _run(tmp_path, status, job="5"):
    run_dir = tmp_path / "exp" / "default"
    run_dir.mkdir(parents=True)
    (run_dir / "config.yaml").write_text("run:\n  name: exp\n")  # no train section: progress is the ledger's
    s = RunState(run_dir)
    s.ledger = Ledger(run_dir, 1)
    s.begin(job, 0, 0)
    s.ledger.event("start", job_id=job, restart=0, resumed_from=0)
    s.ledger.planned(100)
    s.ledger.step(1)
    if status != "running":
        s.end(status, "why", 40)
    return run_dir


def test_the_runs_own_state_wins_once_it_has_ended(tmp_path):
    row = run_status(_run(tmp_path, "completed"), {"5": "COMPLETED"})
    assert (row.state, row.step, row.max_steps, row.restarts) == ("COMPLETED", 40, 100, 0)


def test_progress_comes_from_the_tasks_ledger_for_any_task(tmp_path):
    row = run_status(_run(tmp_path, "running"), {"5": "RUNNING"})
    assert (row.state, row.step, row.max_steps) == ("RUNNING", 1, 100)


def test_a_job_that_died_without_telling_its_run_shows_slurms_state(tmp_path):
    row = run_status(_run(tmp_path, "running"), {"5": "NODE_FAIL"})
    assert row.state == "NODE_FAIL"


def test_a_requeued_run_waiting_in_the_queue_shows_requeued(tmp_path):
    assert run_status(_run(tmp_path, "requeued"), {"5": "PENDING"}).state == "REQUEUED"


def test_the_table_has_a_header_and_colour_only_when_asked(tmp_path):
    row = run_status(_run(tmp_path, "failed"), {})
    plain, coloured = table([row], colour=False), table([row], colour=True)
    assert plain.splitlines()[0].split()[:3] == ["RUN", "STATE", "RESTARTS"]
    assert "\033[" not in plain and "\033[31m" in coloured
    assert json.dumps(row.__dict__)  # JSON-serialisable as --json prints it


def test_collapsed_array_rows_count_for_each_of_their_tasks(tmp_path, monkeypatch):
    path = _fake(tmp_path, "sacct", "55_[0-2,5%2]|CANCELLED by 0\n56_1|RUNNING\n57|CANCELLED by 0\n")
    monkeypatch.setenv("PATH", f"{path}:{os.environ['PATH']}")
    assert job_states(["55_0", "55_2", "55_5", "56_1", "57_0"]) == {
        "55_0": "CANCELLED", "55_2": "CANCELLED", "55_5": "CANCELLED", "56_1": "RUNNING", "57_0": "CANCELLED"}


def test_a_run_still_in_the_queue_shows_the_steps_its_settings_plan(tmp_path, monkeypatch):
    from hpcrun.config.compose import compose
    from hpcrun.launch.prepare import claimed
    from hpcrun.rundir.create import record_submission

    monkeypatch.setenv("HPCRUN_STATE_DIR", str(tmp_path / "state"))
    cfg = compose(["+experiment=tiny_llama", "train.max_steps=70", f"run.dir={tmp_path / 'run'}"], cwd=tmp_path)
    with claimed(cfg) as prepared:  # as the Slurm launcher does: write, sbatch, record the job
        assert prepared.kind == "new"
        record_submission(prepared.run_dir, "77", cfg, take_lock=False)
    row = run_status(tmp_path / "run", {"77": "PENDING"})
    assert (row.state, row.step, row.max_steps) == ("PENDING", 0, 70)


def test_a_run_whose_requeue_never_came_shows_stopped_and_how_to_continue(tmp_path):
    # it saved and asked to be requeued, but the job ended COMPLETED: `scontrol requeue` refused on the host
    row = run_status(_run(tmp_path, "requeued"), {"5": "COMPLETED"})
    assert row.state == "STOPPED" and "without being requeued" in row.reason and "hpcrun resume" in row.reason
    assert run_status(tmp_path / "exp" / "default", {"5": "PENDING"}).state == "REQUEUED"


def test_the_table_shows_why_a_run_failed_or_stopped_under_its_row():
    from hpcrun.observe.status import RunStatus, table

    def row(name, state, reason):
        return RunStatus(run_dir=f"/r/{name}", name=name, id="default", state=state, recorded="", slurm_state=None,
                         reason=reason, restarts=0, step=3, max_steps=10, last_checkpoint_step=None,
                         last_checkpoint_age_s=None, elapsed_s=5.0, time_left_s=None, job_id="7", goodput=None,
                         ended=True)

    text = table([row("ok", "COMPLETED", "trained to step 10"), row("bad", "FAILED", "ValueError: boom (a Python "
                  "error is not requeued: it would repeat)")], colour=False)
    lines = text.splitlines()
    assert lines[1].startswith("ok/default") and lines[2].startswith("bad/default")
    assert lines[3] == "    why: ValueError: boom (a Python error is not requeued: it would repeat)"
    assert "trained to step" not in text  # a completed run's reason is not repeated


def test_logs_follow_ends_when_slurm_has_long_forgotten_a_job_whose_log_stands_still(tmp_path, monkeypatch, capsys):
    # accounting purged or off: neither squeue nor sacct knows the job (faked: job_states leaves it out)
    import hpcrun.slurm.jobs
    from hpcrun.observe.manage import _follow

    run_dir = _run(tmp_path, "running")
    (run_dir / "logs").mkdir()
    (run_dir / "logs" / "start-1.log").write_text("step 1\n")
    (run_dir / "logs" / "latest.log").symlink_to("start-1.log")
    monkeypatch.setattr(hpcrun.slurm.jobs, "job_states", lambda jobs: {})
    assert _follow(run_dir, poll=0.05, ask_slurm_every=0.1, unknown_for=0.5) == 0
    out, err = capsys.readouterr()
    assert out == "step 1\n" and "Slurm has not known job 5 for 0.5 s" in err

    # while Slurm knows it as running, it goes on
    monkeypatch.setattr(hpcrun.slurm.jobs, "job_states", lambda jobs: {"5": "RUNNING"})
    import threading

    threading.Timer(1.5, lambda: RunState(run_dir).end("completed", "done", 40)).start()
    assert _follow(run_dir, poll=0.05, ask_slurm_every=0.1, unknown_for=0.5) == 0
    assert "has not known" not in capsys.readouterr().err


def test_a_local_run_whose_allocation_ended_without_a_word_shows_failed_and_how_to_resume(tmp_path):
    run_dir = tmp_path / "exp" / "default"
    run_dir.mkdir(parents=True)
    (run_dir / "config.yaml").write_text("run:\n  name: exp\n")
    s = RunState(run_dir)
    s.begin(None, 0, 0, allocation="77")  # hpcrun in `srun --pty bash`, looked at from the login node
    running = run_status(run_dir, {"77": "RUNNING"})
    assert running.state == "RUNNING" and running.job_id is None and running.allocation == "77"
    assert table([running]).splitlines()[1].split()[-1] == "(77)"  # the JOB column: the allocation it runs in
    row = run_status(run_dir, {"77": "TIMEOUT"})
    assert row.state == "FAILED" and row.ended
    assert row.reason.startswith("the Slurm allocation it ran in (job 77) ended (TIMEOUT) without the run recording")
    s.end("stopped", "signal SIGINT", 3)  # it saved and stopped before the allocation ended: its own word
    assert run_status(run_dir, {"77": "TIMEOUT"}).state == "STOPPED"


def test_cancel_of_a_local_run_on_another_host_says_where_it_runs_and_signals_nothing(tmp_path, capsys):
    import subprocess

    from hpcrun.observe.manage import cancel
    from hpcrun.rundir.lock import RunLock

    run_dir = _run(tmp_path, "running", job=None)  # a local run (no Slurm job of its own)
    bystander = subprocess.Popen(["sleep", "60"])  # the pid the record names: it must not get the SIGTERM
    try:
        holder = {**RunLock(run_dir, "the job's start").holder, "pid": bystander.pid, "host": "gpu-17",
                  "boot_id": "another-host"}
        RunLock(run_dir, "").path.write_text(json.dumps(holder))
        assert cancel(str(run_dir)) == 1
        err = capsys.readouterr().err
        assert f"runs on gpu-17 (pid {bystander.pid})" in err and f"run `hpcrun cancel {run_dir}` on gpu-17" in err, err
        assert bystander.poll() is None
        assert not (run_dir / "cancel-request.json").exists()
    finally:
        bystander.kill()
        bystander.wait()


def test_cancel_of_a_run_that_ended_has_nothing_to_do(tmp_path, capsys):
    from hpcrun.observe.manage import cancel

    run_dir = _run(tmp_path, "stopped", job=None)
    assert cancel(str(run_dir)) == 0
    assert "nothing to cancel" in capsys.readouterr().err


def _answers(tmp_path, name, *outputs):
    """A stand-in for a Slurm command that prints its answers in turn (the last one again once they run out)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    for i, text in enumerate(outputs):
        (tmp_path / f"{name}.{i}").write_text(text)
    (bin_dir / name).write_text(
        f'#!/bin/sh\nn=$(cat {tmp_path}/{name}.calls 2>/dev/null | wc -l)\necho "$*" >> {tmp_path}/{name}.calls\n'
        f'[ "$n" -ge {len(outputs)} ] && n={len(outputs) - 1}\ncat {tmp_path}/{name}.$n\n')
    (bin_dir / name).chmod(0o755)
    return str(bin_dir)


@pytest.mark.parametrize("controller, accounting, expected, sacct_calls", [
    (["RUNNING\n"], ["RUNNING\n"], False, 0),  # a preemption's grace time, the time limit's warning: requeue
    (["COMPLETING\n"], ["CANCELLED by 0\n"], True, 1),  # scancel (what the dev cluster says during KillWait)
    (["COMPLETING\n"], ["RUNNING\n", "RUNNING\n", "CANCELLED by 0\n"], True, 3),  # accounting a little late
    (["COMPLETING\n"], ["RUNNING\n", "TIMEOUT\n"], False, 2),  # the hard time limit: requeue
    (["COMPLETING\n"], ["RUNNING\n"], True, None),  # accounting silent past the wait: no requeue on a guess
    (["REQUEUED\n", "REQUEUED\n"], ["REQUEUED\n\nREQUEUED\n", "NODE_FAIL\n"], False, 2),
])
def test_a_sigterm_is_a_cancel_only_when_slurm_is_ending_the_job_and_accounting_does_not_say_otherwise(
        tmp_path, monkeypatch, controller, accounting, expected, sacct_calls):
    from hpcrun.slurm.jobs import cancelled

    path = _answers(tmp_path, "squeue", *controller)
    _answers(tmp_path, "sacct", *accounting)
    monkeypatch.setenv("PATH", f"{path}:{os.environ['PATH']}")
    assert cancelled("9", wait=0.5, poll=0.05) is expected
    calls = (tmp_path / "sacct.calls").read_text().splitlines() if (tmp_path / "sacct.calls").exists() else []
    if sacct_calls is not None:
        assert len(calls) == sacct_calls
    else:
        assert len(calls) >= 2  # asked again until the wait ran out


@pytest.mark.parametrize("restart, expected, sacct_calls", [
    (0, False, 0),  # the controller counted a restart this start has not had: Slurm requeued it, no cancel
    (1, True, 1),  # this start is the first restart: the count is its own, so accounting decides
])
def test_a_job_that_slurm_requeued_itself_is_not_taken_for_a_cancel(tmp_path, monkeypatch, restart, expected,
                                                                     sacct_calls):
    from hpcrun.slurm.jobs import cancelled

    # What squeue -O State,RestartCnt says during KillWait after `scontrol requeue` (dev cluster, Slurm 22.05).
    path = _answers(tmp_path, "squeue", "COMPLETING          1                   \n")
    _answers(tmp_path, "sacct", "CANCELLED by 0\n")
    monkeypatch.setenv("PATH", f"{path}:{os.environ['PATH']}")
    assert cancelled("9", restart, wait=0.5, poll=0.05) is expected
    calls = (tmp_path / "sacct.calls").read_text().splitlines() if (tmp_path / "sacct.calls").exists() else []
    assert len(calls) == sacct_calls


@pytest.mark.parametrize("reason, expected", [("TimeLimit", False), ("None", True)])
def test_the_hard_time_limit_is_told_from_a_cancel_by_the_controller_alone(tmp_path, monkeypatch, reason, expected):
    from hpcrun.slurm.jobs import cancelled

    # What squeue -O State,RestartCnt,Reason says during KillWait (dev cluster, Slurm 22.05) at the time limit
    # (sacct TIMEOUT) and after scancel (sacct CANCELLED); here accounting is silent, as with slurmdbd down.
    path = _answers(tmp_path, "squeue", f"COMPLETING          0                   {reason:<20}\n")
    _answers(tmp_path, "sacct", "")
    monkeypatch.setenv("PATH", f"{path}:{os.environ['PATH']}")
    assert cancelled("9", wait=0.5, poll=0.05) is expected


def _recorded(tmp_path, status, reason="", job="29_0", starts=1):
    """A run whose state.json says ``status`` (as the job, or the submission for "submitted", left it)."""
    run_dir = tmp_path / "exp" / "default"
    run_dir.mkdir(parents=True)
    (run_dir / "config.yaml").write_text("run:\n  name: exp\n")
    (run_dir / "state.json").write_text(json.dumps({
        "status": status, "reason": reason, "job_id": job, "requeues": int(status == "requeued"),
        "starts": [{"n": n + 1, "job_id": job, "restart": n, "started_at": 1000.0 + n, "resumed_from": 0}
                   for n in range(starts)]}))
    return run_dir


@pytest.mark.parametrize("recorded, stale, slurm, shown, why", [
    # hpcrun cancel of an array task still pending: state.json says submitted, the reason is empty
    ("submitted", "", "CANCELLED", "CANCELLED", "cancelled in the queue before it started (CANCELLED in sacct)"),
    # cancelled while it waited to restart after a preemption: the preemption's reason is stale
    ("requeued", "signal SIGTERM", "CANCELLED", "CANCELLED",
     "cancelled in the queue while it waited to restart (CANCELLED in sacct)"),
    # its python killed (kill -9): the job ends FAILED, the run still says running
    ("running", "", "FAILED", "FAILED", "the job ended FAILED (sacct) without hpcrun recording why: killed"),
    ("running", "", "NODE_FAIL", "NODE_FAIL", "the job ended NODE_FAIL (sacct) without hpcrun recording why: its node"),
    ("submitted", "", "FAILED", "FAILED", "the job ended FAILED (sacct) before hpcrun started in it"),
])
def test_a_job_that_ended_without_its_run_recording_why_says_what_slurm_says_never_a_stale_reason(
        tmp_path, recorded, stale, slurm, shown, why):
    run_dir = _recorded(tmp_path, recorded, stale, starts=0 if recorded == "submitted" else 1)
    row = run_status(run_dir, {"29_0": slurm})
    assert (row.state, row.ended) == (shown, True)
    assert row.reason.startswith(why), row.reason
    assert stale not in row.reason or not stale
    assert f"    why: {why}" in table([row], colour=False)  # shown under the row, one line
    assert len(table([row], colour=False).splitlines()) == 3
