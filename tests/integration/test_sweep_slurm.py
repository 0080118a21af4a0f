"""Sweeps as job arrays, and status/cancel/wait, on the real dev Slurm cluster."""

import json
import os
import re
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from tests.slurm import calls, counting_shims, release_when_requeued, sacct_runs, squeue_state, wait_for_end
from tests.training import state, wait_until

pytestmark = pytest.mark.training

# Cheap points: two steps, a small tokenizer.
CHEAP = ["+experiment=tiny_llama", "cluster=slurm", "train.max_steps=2", "data.vocab_size=300",
         "cluster.cpus_per_task=1"]


def _sweep_dir(stdout: str) -> Path:
    m = re.search(r"sweep dir: (\S+)", stdout)
    assert m, stdout
    return Path(m.group(1))


def _array_ids(stdout: str) -> list:
    return re.findall(r"(\d+) \(\d+ tasks\)", stdout)


def test_a_four_point_sweep_is_one_throttled_array_and_rerunning_it_submits_nothing(hpcrun, tmp_path, slurm_cluster):
    env = counting_shims(tmp_path, "sbatch", "sacct")
    # What the queue and the points' states are when hpcrun releases the array: it goes in held, so that no task
    # starts before its point's job is recorded (a record written over a started task's own would drop its start).
    scontrol = shutil.which("scontrol")
    (tmp_path / "shims" / "scontrol").write_text(f"""#!/bin/sh
if [ "$1" = release ]; then
  squeue -h -r -j "$2" -o %T,%r >> "{tmp_path}/queue-at-release"
  find "{tmp_path}" -name state.json -exec grep -ho '"status": *"[a-z]*"' {{}} + >> "{tmp_path}/states-at-release"
fi
exec "{scontrol}" "$@"
""")
    (tmp_path / "shims" / "scontrol").chmod(0o755)
    args = ["-m", *CHEAP, "train.lr=1e-4,1e-3", "train.seed=0,1", "cluster.array_throttle=1"]
    out = hpcrun(*args, env=env)
    assert out.returncode == 0, out.stderr[-3000:]
    assert len(_submissions(tmp_path)) == 1  # one sbatch call for the four points
    (array,) = _array_ids(out.stdout)
    sweep = _sweep_dir(out.stdout)
    assert (tmp_path / "queue-at-release").read_text().split() == ["PENDING,JobHeldUser"] * 4
    assert [ln.split(":")[-1].strip() for ln in (tmp_path / "states-at-release").read_text().splitlines()] \
        == ['"submitted"'] * 4

    show = subprocess.run(["scontrol", "show", "job", array], capture_output=True, text=True).stdout
    assert "ArrayTaskThrottle=1" in show
    running_max = 0
    while True:
        states = subprocess.run(["squeue", "-h", "-r", "-j", array, "-o", "%T"], capture_output=True,
                                text=True).stdout.split()
        if not states:
            break
        running_max = max(running_max, states.count("RUNNING"))
        time.sleep(1)
    assert running_max == 1  # two tasks would fit the node's CPUs; the throttle lets one run
    for i in range(4):  # accounting (sacct, what status reads) is written apart from the queue: wait for it too
        wait_for_end(f"{array}_{i}")

    # Each point has its own readable run directory named by its overrides.
    record = json.loads((sweep / "sweep.json").read_text())
    dirs = [Path(p["run_dir"]) for p in record["points"]]
    assert {d.name for d in dirs} == {f"data.vocab_size=300,train.lr={lr},train.max_steps=2,train.seed={s}"
                                      for lr in ("0.0001", "0.001") for s in (0, 1)}
    assert all(state(d)["status"] == "completed" for d in dirs)

    # status --json agrees with sacct, from ONE sacct call.
    before = len(calls(tmp_path, "sacct"))
    status = hpcrun("status", str(sweep), "--json", env=env)
    assert status.returncode == 0, status.stderr
    assert len(calls(tmp_path, "sacct")) == before + 1
    rows = json.loads(status.stdout)
    assert len(rows) == 4
    for row in rows:
        assert row["state"] == "COMPLETED" and row["step"] == 2 and row["max_steps"] == 2
        assert sacct_runs(row["job_id"])[-1] == row["slurm_state"] == "COMPLETED"
    table = hpcrun("status", str(sweep), env=env).stdout
    assert table.splitlines()[0].split()[:2] == ["RUN", "STATE"] and table.count("COMPLETED") == 4

    # hpcrun results: the four points, their swept values, and each one's last logged loss (its metrics.jsonl)
    results = hpcrun("results", str(sweep), "--json", "--sort", "loss")
    assert results.returncode == 0, results.stderr
    data = json.loads(results.stdout)
    assert data["swept"] == ["train.lr", "train.seed"] and len(data["points"]) == 4
    losses = []
    for point in data["points"]:
        last = [json.loads(line) for line in (Path(point["run_dir"]) / "metrics.jsonl").read_text().splitlines()
                if '"loss"' in line][-1]["loss"]
        assert point["state"] == "COMPLETED" and point["metrics"]["loss"] == pytest.approx(float(last))
        losses.append(point["metrics"]["loss"])
    assert losses == sorted(losses)

    again = hpcrun(*args, env=env)
    assert again.returncode == 0, again.stderr[-2000:]
    assert "submitted 0" in again.stdout and "skipped 4" in again.stdout
    assert len(_submissions(tmp_path)) == 1
    assert hpcrun("wait", str(sweep)).returncode == 0

    # The same complete sweep with a partition the cluster lacks: bad input all the same, and its record stays.
    record_before = (sweep / "sweep.json").read_bytes()
    bad = hpcrun(*args, "cluster.partition=gpu", env=env)
    assert bad.returncode == 2 and "cluster.partition='gpu' is invalid" in bad.stderr, bad.stderr[-2000:]
    assert (sweep / "sweep.json").read_bytes() == record_before and len(_submissions(tmp_path)) == 1


def _submissions(tmp_path) -> list:
    """The sbatch calls that submitted (not a `--test-only` question)."""
    return [c for c in calls(tmp_path, "sbatch") if "--test-only" not in c]


def test_a_sweep_asking_for_what_no_node_has_is_refused_though_its_array_would_go_in_held(hpcrun, tmp_path,
                                                                                            slurm_cluster):
    # Slurm skips its node-configuration check for a held job: the array went in and pended for ever
    # (BadConstraints), where the single run with the same request is refused by sbatch.
    env = counting_shims(tmp_path, "sbatch")
    out = hpcrun("-m", *CHEAP, "train.seed=70,71", "cluster.gpus_per_node=1", "cluster.gpu_type=v100", env=env)
    assert out.returncode == 2, out.stdout[-2000:]
    assert out.stderr.strip().splitlines()[-1].startswith(
        "hpcrun: error: sbatch refused the job: Requested node configuration is not available"), out.stderr
    assert len(calls(tmp_path, "sbatch")) == 1 and _submissions(tmp_path) == []  # asked, nothing submitted
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").rglob("config.yaml"))


def test_the_same_sweep_submitted_twice_at_once_is_refused_while_the_first_holds_it(hpcrun, tmp_path,
                                                                                   slurm_cluster):
    # Both used to find every point new and submit an array each; the second's jobs were recorded over the
    # first's, whose tasks then trained runs that `hpcrun cancel` no longer knew of. The first command's hold on
    # the sweep is taken here as it would take it, so that the second comes while it holds it, every time.
    from hpcrun.launch.sweep import sweep_id
    from hpcrun.rundir.lock import LAUNCHING, RunLock

    points = ["train.seed=50,51"]
    sweep = tmp_path / "runs" / "sweeps" / sweep_id([*CHEAP, *points])
    sweep.mkdir(parents=True)
    with RunLock(sweep, LAUNCHING):
        second = hpcrun("-m", *CHEAP, *points)
    assert second.returncode == 2, second.stdout[-2000:]
    assert f"hpcrun: error: sweep {sweep.name} is being submitted by another hpcrun command (hpcrun launching it " \
        in second.stderr, second.stderr
    assert not any((tmp_path / "runs").rglob("config.yaml")) and not (sweep / "sweep.json").exists()


def test_a_sweep_larger_than_max_array_size_becomes_several_arrays(hpcrun, tmp_path, slurm_cluster):
    conf = Path("/etc/slurm/slurm.conf")
    original = conf.read_text()
    conf.write_text(re.sub(r"(?m)^MaxArraySize=\d+", "MaxArraySize=4", original))
    subprocess.run(["scontrol", "reconfigure"], check=True)
    try:
        wait_until(lambda: "MaxArraySize            = 4" in subprocess.run(
            ["scontrol", "show", "config"], capture_output=True, text=True).stdout, timeout=30, what="reconfigure")
        env = {**counting_shims(tmp_path, "sbatch"), "HPCRUN_CACHE_DIR": str(tmp_path / "cache")}
        out = hpcrun("-m", *CHEAP, "train.seed=0,1,2,3,4,5", env=env)
        assert out.returncode == 0, out.stderr[-3000:]
        arrays = _array_ids(out.stdout)
        assert len(arrays) == 2 and len(_submissions(tmp_path)) == 2
        assert "(4 tasks)" in out.stdout and "(2 tasks)" in out.stdout
        subprocess.run(["scancel", *arrays])
    finally:
        conf.write_text(original)
        subprocess.run(["scontrol", "reconfigure"], check=True)


def test_an_array_that_went_in_while_sbatch_timed_out_waits_held_and_the_error_says_what_to_do(
        hpcrun, tmp_path, slurm_cluster):
    # sbatch submits, then the answer is lost: what a busy controller's "Socket timed out" looks like to hpcrun.
    shims = tmp_path / "shims"
    shims.mkdir()
    (shims / "sbatch").write_text(f"""#!/bin/sh
"{shutil.which('sbatch')}" "$@" >> "{tmp_path}/submitted"
echo "sbatch: error: Batch job submission failed: Socket timed out on send/recv operation" >&2
exit 1
""")
    (shims / "sbatch").chmod(0o755)
    args = ["-m", *CHEAP, "train.seed=20,21"]
    out = hpcrun(*args, env={"PATH": f"{shims}:{os.environ['PATH']}"})
    assert out.returncode != 0
    assert "may or may not have been submitted" in out.stderr and "waits held" in out.stderr, out.stderr
    (array,) = re.findall(r"Submitted batch job (\d+)", (tmp_path / "submitted").read_text())
    queue = subprocess.run(["squeue", "-h", "-r", "-j", array, "-o", "%T,%r"], capture_output=True, text=True)
    assert queue.stdout.split() == ["PENDING,JobHeldUser"] * 2  # no task starts without its point's record
    subprocess.run(["scancel", array], check=True)  # what the message says, then the same command
    again = hpcrun(*args)
    assert again.returncode == 0, again.stderr[-2000:]
    assert "submitted 2" in again.stdout
    subprocess.run(["scancel", *_array_ids(again.stdout)])


def test_cancel_stops_every_task_of_a_sweep(hpcrun, tmp_path, slurm_cluster):
    out = hpcrun("-m", *CHEAP, "train.max_steps=500", "train.seed=10,11", "cluster.array_throttle=2")
    assert out.returncode == 0, out.stderr[-3000:]
    sweep = _sweep_dir(out.stdout)
    (array,) = _array_ids(out.stdout)
    cancelled = hpcrun("cancel", str(sweep))
    assert cancelled.returncode == 0 and "cancelled 2 job(s)" in cancelled.stderr, cancelled.stderr
    wait_until(lambda: set(sacct_runs(array)) == {"CANCELLED"}, timeout=120, what="every task CANCELLED")
    waited = hpcrun("wait", str(sweep), "--poll", "2")
    assert waited.returncode == 1 and waited.stderr.count(": CANCELLED") == 2  # not every run completed
    assert hpcrun("cancel", str(sweep)).stderr.startswith("hpcrun: nothing to cancel")


def test_a_task_preempted_mid_sweep_resumes_while_the_others_are_untouched(hpcrun, tmp_path, slurm_cluster):
    # 40 steps of batch 8 (about 0.5 s a step on one CPU): 20 s of training left when the preemption comes.
    out = hpcrun("-m", *CHEAP, "train.max_steps=40", "train.batch_size=8", "train.seed=20,21",
                 "cluster.partition=preemptible", "cluster.array_throttle=2", "checkpoint.save_every=0")
    assert out.returncode == 0, out.stderr[-3000:]
    sweep = _sweep_dir(out.stdout)
    (array,) = _array_ids(out.stdout)
    dirs = [Path(p["run_dir"]) for p in json.loads((sweep / "sweep.json").read_text())["points"]]
    wait_until(lambda: all(squeue_state(f"{array}_{i}") == "RUNNING" for i in (0, 1))
               and all(Path(d, "metrics.jsonl").exists() for d in dirs), timeout=180, what="both tasks training")
    high = subprocess.run(["sbatch", "--parsable", "-p", "normal", "-c", "1", "-o", "/dev/null", "--wrap", "sleep 1"],
                          capture_output=True, text=True, check=True).stdout.strip()
    assert wait_for_end(high, timeout=120) == "COMPLETED"
    wait_until(lambda: any(state(d).get("status") == "requeued" for d in dirs), timeout=60, what="a requeue")
    (pre,) = [d for d in dirs if state(d)["status"] == "requeued"]
    (other,) = [d for d in dirs if d != pre]
    release_when_requeued(state(pre)["job_id"])
    assert hpcrun("wait", str(sweep), "--poll", "2").returncode == 0
    assert len(state(pre)["starts"]) == 2 and state(pre)["starts"][0]["end"].startswith("requeued: signal SIGTERM")
    assert len(state(other)["starts"]) == 1 and state(other)["status"] == "completed"

    # The report sums the sweep: each run's allocations from sacct, the preempted one's two starts, no lost work
    # (the preemption was announced and saved for), and a timeline picture of both runs.
    out = hpcrun("report", str(sweep), "--json", "--plot", "sweep.png")
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout)
    runs = {r["run_dir"]: r for r in report["runs"]}
    assert set(runs) == {str(d) for d in dirs}
    assert runs[str(pre)]["starts"] == 2 and runs[str(other)]["starts"] == 1
    assert all(s["times_from"] == "sacct" for r in report["runs"] for s in r["per_start"])
    assert runs[str(pre)]["lost_s"] == 0 and runs[str(pre)]["recomputed_steps"] == 0
    assert runs[str(pre)]["queue_wait_s"] > 0
    assert report["total"]["allocated_s"] == pytest.approx(sum(r["allocated_s"] for r in runs.values()), abs=0.05)
    assert 0 < report["total"]["goodput"] < 1
    assert (tmp_path / "sweep.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
