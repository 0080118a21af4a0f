"""One owner per run: folders that are not runs are never touched, a run is trained by one process at a time,
two submissions of one run make one job, and an sbatch answer hpcrun cannot read leaves nothing behind."""

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from hpcrun.rundir.state import read_state
from tests.training import state, wait_until

CHEAP = ["+experiment=tiny_llama", "train.max_steps=400", "data.vocab_size=300", "train.log_every=1"]


def _start(args, cwd: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "hpcrun", *args], cwd=cwd, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)


def test_a_project_folder_is_never_made_a_run_nor_moved_aside(hpcrun, tmp_path):
    project = tmp_path / "project"
    project.mkdir()
    (project / "train.py").write_text("print('mine')\n")
    (project / "config.yaml").write_text("learning_rate: 0.1\n")
    before = sorted(p.name for p in project.iterdir())
    for extra in ([], ["run.fresh=true"]):
        out = hpcrun(*CHEAP, "cluster=local", "run.dir=.", *extra, cwd=project)
        assert out.returncode == 2, out.stderr[-2000:]
        assert "is a folder that is not an hpcrun run and is not empty" in out.stderr
        assert len(out.stderr.strip().splitlines()) <= 2  # the cluster line and the error
        assert sorted(p.name for p in project.iterdir()) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["project"]  # nothing renamed beside it


@pytest.mark.training
def test_a_second_local_start_of_a_running_run_is_refused_and_a_killed_one_blocks_nothing(hpcrun, tmp_path):
    first = _start([*CHEAP, "cluster=local", "run.dir=run"], tmp_path)
    run = tmp_path / "run"
    try:
        wait_until(lambda: read_state(run).get("status") == "running", timeout=180, what="the first start")
        second = hpcrun(*CHEAP, "cluster=local", "run.dir=run")
        assert second.returncode == 2, second.stderr[-2000:]
        assert f"is in use by the job's start on {os.uname().nodename} (pid {first.pid})" in second.stderr
        assert len(state(run)["starts"]) == 1  # the refused one touched nothing
    finally:
        os.killpg(first.pid, signal.SIGKILL)  # as a node failure or the OOM killer would
        first.wait()
    # Killed without a word: status says so (it was RUNNING for ever), and wait and logs -f end.
    shown = json.loads(hpcrun("status", "--json", "run").stdout)[0]
    assert (shown["state"], shown["ended"]) == ("FAILED", True), shown
    assert f"its process (pid {first.pid} on {os.uname().nodename}) ended without recording why" in shown["reason"]
    waited = hpcrun("wait", "run", timeout=60)
    assert waited.returncode == 1 and "1/1 ended: 1 failed" in waited.stderr, waited.stderr[-2000:]
    followed = hpcrun("logs", "-f", "run", timeout=60)
    assert followed.returncode == 0, followed.stderr[-2000:]
    assert followed.stdout == (run / "logs" / "start-1.log").read_text()  # all of it, and then it ended
    resumed = hpcrun(*CHEAP, "cluster=local", "run.dir=run", "cluster.time=15s", "checkpoint.deadline_margin=1s")
    assert resumed.returncode == 75, resumed.stderr[-3000:]
    assert "ended without a clean stop" in (run / "logs" / "start-2.log").read_text()


def test_two_submissions_of_one_run_started_together_make_one_job(tmp_path, slurm_cluster):
    args = [*CHEAP, "cluster=slurm", "run.dir=run", "run.name=two-at-once", "cluster.time=10:00"]
    procs = [_start(args, tmp_path) for _ in range(2)]
    outs = [p.communicate(timeout=300) for p in procs]
    submitted = [o for o, _ in outs if "submitted Slurm job" in o]
    try:
        assert len(submitted) == 1, outs
        other = next(e for (o, e) in outs if "submitted Slurm job" not in o)
        assert "in use by hpcrun launching it" in other or "already queued or running" in other, other
        jobs = subprocess.run(["squeue", "-h", "-n", "two-at-once", "-o", "%i"], capture_output=True, text=True)
        assert len(jobs.stdout.split()) == 1, jobs.stdout
    finally:
        subprocess.run(["scancel", "-n", "two-at-once"])


def test_an_sbatch_answer_hpcrun_cannot_read_is_quoted_and_leaves_no_run_or_sweep_behind(hpcrun, tmp_path,
                                                                                         slurm_cluster):
    shim = tmp_path / "bin"
    shim.mkdir()
    (shim / "sbatch").write_text("#!/bin/sh\necho 4242\n")  # a site wrapper, or --parsable: only a number
    (shim / "sbatch").chmod(0o755)
    env = {"PATH": f"{shim}:{os.environ['PATH']}", "HPCRUN_STATE_DIR": str(tmp_path / "state")}
    work = tmp_path / "work"
    work.mkdir()
    for args in ([*CHEAP, "cluster=slurm"], ["-m", *CHEAP, "cluster=slurm", "train.seed=0,1,2"]):
        out = hpcrun(*args, cwd=work, env=env)
        assert out.returncode == 2, out.stderr[-2000:]
        lines = [ln for ln in out.stderr.splitlines() if "error" in ln]
        assert len(lines) == 1 and "sbatch answered '4242'" in lines[0], out.stderr
        assert "Traceback" not in out.stderr
        assert not (work / "runs").exists(), sorted(str(p) for p in (work / "runs").rglob("*"))
    status = hpcrun("status", "--json", cwd=work, env=env)
    assert status.returncode == 0 and status.stdout.strip() in ("", "[]"), status.stdout


def test_a_second_ctrl_c_stops_at_once_and_the_run_says_so(hpcrun, tmp_path):
    # The second Ctrl-C raises KeyboardInterrupt wherever the task is (hpcrun.job.signals): a task raising it is
    # that moment, without the race of two signals the kernel may merge into one.
    (tmp_path / "ctrl_c_task.py").write_text("def train(cfg, ctx):\n    raise KeyboardInterrupt\n")
    out = hpcrun("task._target_=ctrl_c_task.train", "cluster=local", "run.dir=run")
    assert out.returncode == 130 and out.stderr.rstrip().endswith("hpcrun: interrupted"), out.stderr[-2000:]
    shown = json.loads(hpcrun("status", "--json", "run").stdout)[0]
    assert (shown["state"], shown["ended"]) == ("STOPPED", True), shown  # not RUNNING for ever
    assert shown["reason"].startswith("interrupted by a second Ctrl-C, without a save"), shown
