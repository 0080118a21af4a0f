"""Sweeps and run management without Slurm: local sweeps, logs, resume, status of local runs."""

import json

import pytest

from tests.training import state

pytestmark = pytest.mark.training

CHEAP = ["+experiment=tiny_llama", "cluster=local", "train.max_steps=2", "data.vocab_size=300"]


def test_a_local_sweep_runs_every_point_in_turn_and_status_lists_them(hpcrun, tmp_path):
    out = hpcrun("-m", *CHEAP, "train.seed=0,1", env={"HPCRUN_STATE_DIR": str(tmp_path / "state")})
    assert out.returncode == 0, out.stderr[-3000:]
    runs = sorted((tmp_path / "runs" / "tiny_llama").iterdir())
    assert [r.name for r in runs] == ["data.vocab_size=300,train.max_steps=2,train.seed=0",
                                      "data.vocab_size=300,train.max_steps=2,train.seed=1"]
    assert all(state(r)["status"] == "completed" for r in runs)
    listed = hpcrun("status", "--json", env={"HPCRUN_STATE_DIR": str(tmp_path / "state")})
    assert sorted(row["run_dir"] for row in json.loads(listed.stdout)) == [str(r) for r in runs]
    # and the sweep has its directory, as a submitted one: results, status, wait and report take it
    (sweep,) = (tmp_path / "runs" / "sweeps").iterdir()
    assert f"sweep dir: {sweep}" in out.stderr
    results = hpcrun("results", str(sweep), "--json")
    assert results.returncode == 0, results.stderr[-2000:]
    assert sorted(row["run_dir"] for row in json.loads(results.stdout)["points"]) == [str(r) for r in runs]
    assert hpcrun("wait", str(sweep)).returncode == 0


def test_logs_print_each_start_and_resume_refuses_training_keys(hpcrun, tmp_path):
    out = hpcrun(*CHEAP, "run.dir=run", "cluster.time=6s", "checkpoint.deadline_margin=1s",
                 "train.max_steps=500")
    assert out.returncode == 75, out.stderr[-3000:]
    log = hpcrun("logs", str(tmp_path / "run"))
    assert log.returncode == 0 and "===== start 1 of run tiny_llama" in log.stdout
    bad = hpcrun("resume", str(tmp_path / "run"), "train.lr=0.1")
    assert bad.returncode == 2 and "launcher keys only" in bad.stderr
    good = hpcrun("resume", str(tmp_path / "run"), "cluster.time=1h", "train.max_steps=500")
    assert good.returncode == 2  # train.max_steps is a training key, even unchanged
    resumed = hpcrun("resume", str(tmp_path / "run"), "cluster.time=12s")
    assert resumed.returncode == 75, resumed.stderr[-2000:]
    assert "resuming run tiny_llama from step-" in resumed.stderr
    assert len(state(tmp_path / "run")["starts"]) == 2
    second = hpcrun("logs", str(tmp_path / "run"), "--restart", "1")
    assert "===== start 2 of run tiny_llama" in second.stdout
    assert hpcrun("logs", str(tmp_path / "run"), "--restart", "7").returncode == 2


def test_management_commands_refuse_what_is_not_a_run(hpcrun, tmp_path):
    for args in (["status", str(tmp_path)], ["logs", str(tmp_path)], ["cancel", str(tmp_path)],
                 ["resume", str(tmp_path)], ["wait", str(tmp_path)]):
        out = hpcrun(*args)
        assert out.returncode == 2 and "Traceback" not in out.stderr
        assert "not a run directory" in out.stderr or "neither a run directory" in out.stderr


def test_ctrl_c_stops_a_local_sweep_and_wait_ends_with_the_points_it_did_not_reach(hpcrun, tmp_path):
    import os
    import signal
    import subprocess
    import sys

    from tests.training import wait_until

    env = {**os.environ, "HPCRUN_STATE_DIR": str(tmp_path / "state")}
    sweep = subprocess.Popen([sys.executable, "-m", "hpcrun", "-m", "+experiment=tiny_llama", "cluster=local",
                              "train.max_steps=400", "data.vocab_size=300", "train.log_every=1", "train.seed=0,1"],
                             cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                             start_new_session=True)
    first = tmp_path / "runs" / "tiny_llama" / "data.vocab_size=300,train.log_every=1,train.max_steps=400,train.seed=0"
    try:
        wait_until(lambda: (first / "metrics.jsonl").exists(), timeout=180, what="the first point's first step")
        os.killpg(sweep.pid, signal.SIGINT)  # one Ctrl-C: the point saves and stops, and so does the sweep
        _, err = sweep.communicate(timeout=180)
    finally:
        if sweep.poll() is None:
            os.killpg(sweep.pid, signal.SIGKILL)
    assert sweep.returncode == 130 and "sweep stopped at point" in err, err[-3000:]
    assert not (first.parent / first.name.replace("seed=0", "seed=1")).exists()  # never started
    (sweep_dir,) = (tmp_path / "runs" / "sweeps").iterdir()
    waited = hpcrun("wait", str(sweep_dir), "--poll", "1", timeout=60)
    assert waited.returncode == 1, waited.stderr[-2000:]
    assert "2/2 ended: 1 new, 1 stopped" in waited.stderr
    assert "not started: the local sweep ended before this point" in waited.stderr


def test_cancel_of_a_local_sweep_saves_its_running_point_and_ends_the_sweep(hpcrun, tmp_path):
    # `hpcrun cancel` from another shell, as for a Slurm run: the point saves and stops as cancelled (exit 143, not
    # 75: a batch script of the user's own must not requeue it), and the sweep starts no further point
    import os
    import subprocess
    import sys

    from tests.training import wait_until

    env = {**os.environ, "HPCRUN_STATE_DIR": str(tmp_path / "state")}
    sweep = subprocess.Popen([sys.executable, "-m", "hpcrun", "-m", "+experiment=tiny_llama", "cluster=local",
                              "train.max_steps=400", "data.vocab_size=300", "train.log_every=1", "train.seed=0,1"],
                             cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    first = tmp_path / "runs" / "tiny_llama" / "data.vocab_size=300,train.log_every=1,train.max_steps=400,train.seed=0"
    try:
        wait_until(lambda: (first / "metrics.jsonl").exists(), timeout=180, what="the first point's first step")
        (sweep_dir,) = (tmp_path / "runs" / "sweeps").iterdir()
        cancelled = hpcrun("cancel", str(sweep_dir), env=env, timeout=60)
        assert cancelled.returncode == 0 and f"cancelled the local run {first}" in cancelled.stderr, cancelled.stderr
        _, err = sweep.communicate(timeout=180)
    finally:
        if sweep.poll() is None:
            sweep.kill()
    assert sweep.returncode == 143 and "sweep stopped at point" in err, err[-3000:]
    assert "cancelled with hpcrun cancel (by " in err
    assert not (first.parent / first.name.replace("seed=0", "seed=1")).exists()  # never started
    (row,) = json.loads(hpcrun("status", str(first), "--json", env=env).stdout)
    assert row["state"] == "CANCELLED" and row["reason"].startswith("cancelled with hpcrun cancel"), row
    saved = state(first)["starts"][-1]["step"]
    assert saved >= 1 and (first / "checkpoints" / f"step-{saved}" / "hpcrun-complete.json").exists()
    assert not (first / "cancel-request.json").exists()  # read and removed by the start it cancelled
    again = hpcrun("cancel", str(first), env=env)
    assert again.returncode == 0 and "nothing to cancel" in again.stderr
