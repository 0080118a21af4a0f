"""A local job's stop signals (Ctrl-C, a closed terminal, nohup), and a local run inside a Slurm allocation."""

import os
import signal

from hpcrun.job.signals import job_signals, leave_terminal, signal_reason


def test_on_slurm_the_timeout_signal_and_sigterm_stop_a_job():
    assert job_signals("USR2", local=False) == ["SIGUSR2", "SIGTERM"]
    assert job_signals("TERM", local=False) == ["SIGTERM"]


def test_locally_ctrl_c_and_a_closed_terminal_stop_it_too_unless_sighup_is_ignored_as_under_nohup():
    previous = signal.signal(signal.SIGHUP, signal.SIG_DFL)
    try:
        assert job_signals("USR2", local=True) == ["SIGUSR2", "SIGTERM", "SIGINT", "SIGHUP"]
        signal.signal(signal.SIGHUP, signal.SIG_IGN)
        assert job_signals("USR2", local=True) == ["SIGUSR2", "SIGTERM", "SIGINT"]
    finally:
        signal.signal(signal.SIGHUP, previous)


def test_the_reason_names_the_signal_and_says_what_sighup_means():
    assert signal_reason("SIGTERM") == "signal SIGTERM"
    assert signal_reason("SIGHUP") == "signal SIGHUP (the terminal closed)"


def _redirected(targets):
    """Runs leave_terminal() with fds 1 and 2 pointing at ``targets`` (fds), then puts them back."""
    saved = [os.dup(1), os.dup(2)]
    try:
        for fd, target in zip((1, 2), targets):
            os.dup2(target, fd)
        leave_terminal()
        return [os.fstat(1), os.fstat(2)]
    finally:
        for fd, old in zip((1, 2), saved):
            os.dup2(old, fd)
            os.close(old)


def test_leaving_the_terminal_keeps_output_to_a_file_and_drops_a_pipe_whose_reader_is_gone(tmp_path, monkeypatch):
    import hpcrun.job.signals as signals

    monkeypatch.setattr(signals, "_left_terminal", False)
    path = tmp_path / "out"
    read_end, write_end = os.pipe()
    os.close(read_end)  # `hpcrun ... | tee out`: tee died of the same SIGHUP
    with open(path, "w") as f:
        out, err = _redirected([f.fileno(), write_end])
    os.close(write_end)
    devnull = os.stat(os.devnull)
    assert (out.st_ino, out.st_dev) == (path.stat().st_ino, path.stat().st_dev)  # a file: kept
    assert (err.st_ino, err.st_rdev) == (devnull.st_ino, devnull.st_rdev)  # the pipe: /dev/null, no EPIPE


def test_once_the_terminal_has_closed_a_late_sighup_is_ignored_after_the_jobs_handlers_come_off(monkeypatch):
    import hpcrun.job.signals as signals
    from hpcrun.job.signals import StopFlags

    monkeypatch.setattr(signals, "_left_terminal", False)
    previous = signal.signal(signal.SIGHUP, signal.SIG_DFL)
    try:
        flags = StopFlags().install(["SIGHUP"])
        flags.uninstall()
        assert signal.getsignal(signal.SIGHUP) == signal.SIG_DFL  # no hangup: as it was
        flags = StopFlags().install(["SIGHUP"])
        monkeypatch.setattr(signals, "leave_terminal", lambda: setattr(signals, "_left_terminal", True))
        os.kill(os.getpid(), signal.SIGHUP)
        assert flags.pending()[0] == "SIGHUP"
        flags.uninstall()
        assert signal.getsignal(signal.SIGHUP) == signal.SIG_IGN  # the shell's or the kernel's next one
    finally:
        signal.signal(signal.SIGHUP, previous)


def test_the_local_launchers_process_is_alone_and_local_even_inside_an_allocation_of_four_tasks(tmp_path):
    from hpcrun.job.context import JobContext

    salloc = {"SLURM_JOB_ID": "77", "SLURM_NTASKS": "4", "SLURM_PROCID": "0", "SLURM_RESTART_COUNT": "1"}
    ctx = JobContext.from_env(tmp_path, salloc, local=True)
    got = (ctx.rank, ctx.world_size, ctx.job_id, ctx.on_slurm, ctx.restart, ctx.allocation)
    assert got == (0, 1, None, False, 0, "77")
    job = JobContext.from_env(tmp_path, salloc)  # the same variables in a job hpcrun submitted: its rank 0 of 4
    assert (job.world_size, job.job_id, job.on_slurm, job.allocation) == (4, "77", True, None)


def test_a_local_run_inside_an_allocation_ends_at_the_allocations_end_or_at_cluster_time_if_sooner():
    from hpcrun.job.deadline import job_times

    env = {"SLURM_JOB_ID": "77", "SLURM_JOB_START_TIME": "1000", "SLURM_JOB_END_TIME": "4600"}
    assert job_times(43200, False, 1100.0, env, inside_allocation=True) == \
        (1100.0, 4600.0, "SLURM_JOB_END_TIME: this allocation's end")
    assert job_times(600, False, 1100.0, env, inside_allocation=True) == (1100.0, 1700.0, "cluster.time (local)")
    assert job_times(600, False, 1100.0, env) == (1100.0, 1700.0, "cluster.time (local)")


def test_after_a_cancel_the_second_ctrl_c_still_stops_at_once_and_the_command_gets_one_stop_signal(tmp_path):
    # hpcrun cancel (SIGTERM) first, then Ctrl-C twice in the run's terminal: the first Ctrl-C changes nothing
    # (the save goes on), the second stops now. The command of `hpcrun run` got the SIGTERM only: a second kind of
    # signal would kill a Trainer that saves on the first.
    import subprocess
    import sys
    import time

    import pytest

    from hpcrun.job.processes import Child
    from hpcrun.job.signals import StopFlags

    flags = StopFlags()
    flags._handle(signal.SIGTERM, None)
    flags._handle(signal.SIGINT, None)
    assert flags.pending()[0] == "SIGTERM"
    with pytest.raises(KeyboardInterrupt):
        flags._handle(signal.SIGINT, None)

    got = tmp_path / "got"
    script = ("import signal, sys, time\n"
              "for s in (signal.SIGTERM, signal.SIGINT, signal.SIGUSR2):\n"
              f"    signal.signal(s, lambda n, f: open({str(got)!r}, 'a').write(signal.Signals(n).name + chr(10)))\n"
              "print('ready', flush=True)\n"
              "time.sleep(60)\n")
    child = Child([sys.executable, "-c", script], dict(os.environ), log_path=tmp_path / "log")
    try:
        deadline = time.monotonic() + 30
        while "ready" not in (tmp_path / "log").read_text():
            assert time.monotonic() < deadline, "the command never started"
            time.sleep(0.05)
        child._handle(signal.SIGTERM, None)
        child._handle(signal.SIGUSR2, None)  # (the local time signal, say; not SIGHUP: it would leave pytest's tty)
        child._handle(signal.SIGINT, None)
        time.sleep(1)
        assert got.read_text().split() == ["SIGTERM"]
        with pytest.raises(KeyboardInterrupt):
            child._handle(signal.SIGINT, None)  # the second Ctrl-C: the command is killed
        assert child.proc.wait(timeout=10) == -signal.SIGKILL
    finally:
        if child.proc.poll() is None:
            child.proc.kill()
            child.proc.wait()


_RANK = """
import json, os, signal, sys
import torch.distributed as dist
from hpcrun.job.signals import StopFlags
from hpcrun.job.steps import decide
from hpcrun.job.triggers import TimeTriggers

rank = int(sys.argv[1])
dist.init_process_group("gloo", init_method="file://" + sys.argv[2], rank=rank, world_size=2)
flags = StopFlags().install(["SIGINT", "SIGTERM"])
if rank == 1:
    os.kill(os.getpid(), signal.SIGINT)  # rank 0 gets nothing: it must learn the signal from rank 1
d = decide(TimeTriggers(), flags, rank == 0, step=7)
print(json.dumps({"stop": d.stop, "save": d.save, "reason": d.reason, "flag": flags.signal}))
dist.destroy_process_group()
"""


def test_a_signal_that_reached_one_rank_is_named_on_every_rank_so_a_ctrl_c_stays_a_ctrl_c(tmp_path):
    # Locally hpcrun passes a Ctrl-C to each worker in turn; at a step's end rank 0 may not have it yet. Before,
    # rank 0's reason was "a stop signal (on another rank)", and the run exited 75 (resumable) instead of 130.
    import json
    import subprocess
    import sys

    script = tmp_path / "rank.py"
    script.write_text(_RANK)
    procs = [subprocess.Popen([sys.executable, str(script), str(r), str(tmp_path / "store")], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for r in (0, 1)]
    out = [p.communicate(timeout=120) for p in procs]
    assert all(p.returncode == 0 for p in procs), [o[1][-2000:] for o in out]
    zero, one = (json.loads(o[0].strip().splitlines()[-1]) for o in out)
    assert zero == one == {"stop": True, "save": True, "reason": "signal SIGINT", "flag": "SIGINT"}
