"""The run directory's owner: its lock, its marker, and the folders it refuses to touch."""

import os
import signal
import subprocess
import sys
import time

import pytest

from hpcrun.errors import UserError
from hpcrun.rundir import RunDir
from hpcrun.rundir.atomic import atomic_write, atomic_write_json, read_json
from hpcrun.rundir.create import is_hpcrun_run, move_aside, refuse_foreign
from hpcrun.rundir.lock import RunBusy, RunLock, holder_gone, holder_here

HOLD = """
import sys, time
from hpcrun.rundir.lock import RunLock
RunLock(sys.argv[1], "a test holder", job_id="77").acquire()
print("held", flush=True)
time.sleep(600)
"""


def _holder(run_dir):
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(run_dir)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "held"
    return proc


def test_a_second_owner_is_refused_with_who_holds_the_run(tmp_path):
    proc = _holder(tmp_path / "run")
    try:
        with pytest.raises(RunBusy) as err:
            RunLock(tmp_path / "run", "another start").acquire()
        text = str(err.value)
        assert f"pid {proc.pid}" in text and "Slurm job 77" in text and "a test holder" in text
        assert "\n" not in text
    finally:
        proc.kill()
        proc.wait()


def test_a_process_that_finds_the_lock_just_taken_waits_for_the_holder_to_say_who_it_is(tmp_path):
    import fcntl
    import json
    import threading

    lock_file = RunLock(tmp_path / "run", "x").path
    lock_file.parent.mkdir(parents=True)
    fd = os.open(lock_file, os.O_RDWR | os.O_CREAT, 0o600)
    fcntl.flock(fd, fcntl.LOCK_EX)  # taken, its holder not written yet (the window between the two)
    later = threading.Timer(0.3, lambda: os.pwrite(fd, json.dumps({"what": "hpcrun launching it", "pid": 1}).encode(),
                                                   0))
    later.start()
    try:
        with pytest.raises(RunBusy, match=r"in use by hpcrun launching it on \? \(pid 1\)"):
            RunLock(tmp_path / "run", "another launch").acquire()
    finally:
        later.join()
        os.close(fd)


def test_a_lock_left_by_a_process_killed_with_sigkill_does_not_block_the_next_start(tmp_path):
    proc = _holder(tmp_path / "run")
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    lock = RunLock(tmp_path / "run", "the next start").acquire()
    assert lock.holder_now()["pid"] == os.getpid()
    lock.release()


def test_a_holder_is_known_gone_only_when_it_is_a_dead_process_of_this_boot_and_pid_namespace(tmp_path):
    import json

    run = tmp_path / "run"
    proc = _holder(run)
    try:
        assert holder_gone(run) is None  # alive
        written = json.loads(RunLock(run, "").path.read_text())
    finally:
        proc.kill()
        proc.wait()
    assert holder_gone(run)["pid"] == proc.pid  # killed: nothing ended its run, and nothing will

    lock_file = RunLock(run, "").path
    mine = RunLock(run, "").holder  # this very process, as a holder
    for changed, gone in ((dict(boot_id="another-boot"), False),  # another host (a Slurm job's node), or a reboot
                          (dict(pid_namespace="pid:[1]"), False),  # a container's own pids
                          (dict(start_ticks=None), False),  # written by an older hpcrun
                          (dict(pid=os.getpid(), start_ticks=mine["start_ticks"]), False),  # alive (this process)
                          (dict(pid=os.getpid(), start_ticks=mine["start_ticks"] - 1), True)):  # its pid reused
        lock_file.write_text(json.dumps({**written, **changed}))
        assert (holder_gone(run) is not None) is gone, changed


def test_hpcrun_cancel_signals_a_holder_only_when_it_is_this_very_process_of_this_host(tmp_path):
    # holder_here: the process hpcrun cancel may send SIGTERM to; a pid of another host, another PID namespace or
    # another process (its pid reused) must never be signalled
    import json

    run = tmp_path / "run"
    lock_file = RunLock(run, "").path
    lock_file.parent.mkdir(parents=True)
    mine = RunLock(run, "the job's start").holder
    for changed, here in ((dict(), True),
                          (dict(boot_id="another-boot"), False),  # another host, or before a reboot
                          (dict(pid_namespace="pid:[1]"), False),
                          (dict(start_ticks=mine["start_ticks"] - 1), False),  # the pid now names a newer process
                          (dict(start_ticks=None), False)):  # written by an older hpcrun
        lock_file.write_text(json.dumps({**mine, **changed}))
        assert (holder_here(run) is not None) is here, changed
    proc = _holder(run)
    proc.kill()
    proc.wait()
    assert holder_here(run) is None  # gone


def test_a_cancel_request_names_one_process(tmp_path):
    from hpcrun.rundir.cancel import cancel_request, cancel_request_of, request_cancel

    run = tmp_path / "run"
    run.mkdir()
    mine = RunLock(run, "").holder
    request_cancel(run, mine, by="alice")
    assert cancel_request(run).startswith("by alice on ")  # this process's start is cancelled
    assert cancel_request_of(run, {**mine, "start_ticks": mine["start_ticks"] + 1}) is None  # not a later process
    assert cancel_request_of(run, {**mine, "pid": mine["pid"] + 1}) is None


def test_a_dead_holder_whose_command_still_runs_is_not_gone(tmp_path):
    # torchrun's workers, in their own session, outlive hpcrun killed by a closed terminal: they still train
    import json

    run = tmp_path / "run"
    proc = _holder(run)
    proc.kill()
    proc.wait()
    assert holder_gone(run) is not None
    orphan = subprocess.Popen(["sleep", "60"], env={**os.environ, "HPCRUN_RUN_DIR": str(run)},
                              start_new_session=True)
    try:
        # Popen returns once exec has begun; the new program's environment is readable a moment later
        deadline = time.monotonic() + 10
        while b"HPCRUN_RUN_DIR=" not in open(f"/proc/{orphan.pid}/environ", "rb").read():
            assert time.monotonic() < deadline, "the orphan's environment never showed"
            time.sleep(0.01)
        assert holder_gone(run) is None
    finally:
        orphan.kill()
        orphan.wait()
    assert holder_gone(run)["pid"] == json.loads(RunLock(run, "").path.read_text())["pid"]


def test_the_lock_waits_for_its_holder_when_asked(tmp_path):
    proc = _holder(tmp_path / "run")
    started = time.monotonic()
    subprocess.Popen(["sh", "-c", f"sleep 1; kill {proc.pid}"])
    RunLock(tmp_path / "run", "a requeued start").acquire(wait=30).release()
    assert time.monotonic() - started < 20
    proc.wait()


def test_a_folder_that_is_not_a_run_is_never_written_into_or_moved(tmp_path):
    project = tmp_path / "project"
    project.mkdir()
    (project / "train.py").write_text("print('mine')\n")
    (project / "config.yaml").write_text("learning_rate: 0.1\n")  # a user's own config, not a run's
    before = sorted(p.name for p in project.iterdir())
    with pytest.raises(UserError, match="is a folder that is not an hpcrun run and is not empty"):
        refuse_foreign(project)
    with pytest.raises(UserError, match="moves only runs aside"):
        move_aside(project)
    assert sorted(p.name for p in project.iterdir()) == before and not is_hpcrun_run(project)


def test_an_empty_folder_a_missing_one_and_a_run_are_fine(tmp_path):
    (tmp_path / "empty").mkdir()
    refuse_foreign(tmp_path / "empty")
    refuse_foreign(tmp_path / "missing")
    run = RunDir(tmp_path / "run")
    run.path.mkdir()
    run.marker.write_text("")
    (run.path / "anything").write_text("")
    refuse_foreign(run.path)
    old = tmp_path / "old"  # a run made before the marker existed: its config has hpcrun's sections
    old.mkdir()
    (old / "config.yaml").write_text("run:\n  name: x\ncluster:\n  name: local\n")
    assert is_hpcrun_run(old)


def test_atomic_writes_leave_the_old_content_or_the_new_and_no_temporary_files(tmp_path):
    target = tmp_path / "state.json"
    atomic_write_json(target, {"a": 1})
    atomic_write(target, '{"a": 2}')
    assert read_json(target) == {"a": 2} and read_json(tmp_path / "missing", {}) == {}
    assert [p.name for p in tmp_path.iterdir()] == ["state.json"]


def test_recording_a_submission_never_overwrites_what_the_started_job_wrote(tmp_path):
    # An array's first tasks can start while the submitting side still records the others: a read-modify-write of
    # state.json then would drop the job's start record (the job's other ranks wait for it).
    from hpcrun.rundir.create import record_submission
    from hpcrun.rundir.lock import START
    from hpcrun.rundir.state import read_state, write_state

    run = tmp_path / "run"
    run.mkdir()
    started = {"status": "running", "job_id": "5_0", "starts": [{"n": 1, "job_id": "5_0", "restart": 0}]}
    write_state(run, started)
    with RunLock(run, START, job_id="5_0"):  # the job's start holds the run
        record_submission(run, "5_0")
    assert read_state(run) == started
    write_state(run, {**started, "status": "completed"})  # it started and ended before the record came
    record_submission(run, "5_0")
    assert read_state(run)["status"] == "completed"

    fresh = tmp_path / "fresh"  # the usual order: recorded before the job starts
    fresh.mkdir()
    record_submission(fresh, "5_1")
    assert (read_state(fresh)["status"], read_state(fresh)["job_id"]) == ("submitted", "5_1")
    with RunLock(fresh, START, job_id="5_1"):  # and the lock was released: the job can take it
        pass
