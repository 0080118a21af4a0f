"""``hpcrun run -- COMMAND`` on the real dev Slurm cluster: a Trainer script that knows nothing of hpcrun through the
timeout signal and a preemption; a script that saves its own progress; torchrun and accelerate launch with two
processes; a sweep over a script's argument as one job array. Interruptions are injected as Slurm delivers them
(scancel --signal, scontrol requeue)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.own_scripts import SCRIPTS, clm_args, straight_run
from tests.slurm import job_id_from, release_when_requeued, wait_for_end
from tests.training import assert_same_weights, state, wait_until

STEPS = 1000


@pytest.fixture(scope="module")
def straight(own_work: Path) -> Path:
    return straight_run(own_work, STEPS)


def _submit(hpcrun, *args: str) -> tuple:
    out = hpcrun("run", "cluster=slurm", "cluster.time=10:00", *args)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    run_dir = Path(next(line.split(":", 1)[1].strip() for line in out.stdout.splitlines()
                        if line.strip().startswith("run dir:")))
    return job_id_from(out.stdout), run_dir


def _newest_checkpoint(out: Path) -> int:
    steps = [int(p.name.split("-")[1]) for p in out.glob("checkpoint-*")] if out.is_dir() else []
    return max(steps, default=0)


def _finished(run_dir: Path, job: str) -> dict:
    assert wait_for_end(job) == "COMPLETED", (run_dir / "logs" / "latest.log").read_text()[-3000:]
    return state(run_dir)


def test_a_trainer_script_survives_the_timeout_signal_and_a_preemption_and_ends_with_the_straight_weights(
        hpcrun, tmp_path, slurm_cluster, own_work, straight):
    job, run_dir = _submit(hpcrun, "checkpoint.save_every=1s", "--", *clm_args(own_work, "${run.dir}/out", STEPS))
    out = run_dir / "out"
    wait_until(lambda: _newest_checkpoint(out) > 0, 180, "a periodic checkpoint")
    subprocess.run(["scancel", "--signal=USR2", job], check=True)  # the time limit's warning
    release_when_requeued(job)
    first = state(run_dir)["starts"][0]
    wait_until(lambda: len(state(run_dir)["starts"]) == 2 and _newest_checkpoint(out) > first["step"], 180,
               "a checkpoint of the second start")
    subprocess.run(["scontrol", "requeue", job], check=True)  # killed and requeued, as an admin's preemption
    release_when_requeued(job)
    st = _finished(run_dir, job)
    assert first["end"].startswith("requeued: signal SIGUSR2") and 0 < first["step"] < STEPS
    assert st["status"] == "completed" and len(st["starts"]) == 3
    third = (run_dir / "logs" / "start-3.log").read_text()
    assert f"resuming from {out}/checkpoint-" in third
    assert_same_weights(out, straight)
    (row,) = json.loads(hpcrun("status", str(run_dir), "--json").stdout)
    assert row["state"] == "COMPLETED" and row["step"] == STEPS


def test_a_script_that_saves_its_own_progress_is_requeued_and_does_every_unit_exactly_once(
        hpcrun, tmp_path, slurm_cluster):
    units = 120
    job, run_dir = _submit(hpcrun, "--", sys.executable, str(SCRIPTS / "units.py"), "${run.dir}/work", str(units),
                           "0.1")
    log = run_dir / "work" / "units.log"
    for signal_name, n in (("USR2", 20), ("TERM", 50)):  # the time limit's warning, then a preemption's SIGTERM
        wait_until(lambda: log.exists() and len(log.read_text().split()) >= n, 180, f"{n} units")
        subprocess.run(["scancel", f"--signal={signal_name}", job], check=True)
        release_when_requeued(job)
    st = _finished(run_dir, job)
    assert [int(u) for u in log.read_text().split()] == list(range(units))
    assert st["status"] == "completed" and st["requeues"] == 2
    assert [s["end"].split(";")[0] for s in st["starts"][:2]] == ["requeued: signal SIGUSR2",
                                                                  "requeued: signal SIGTERM"]
    (row,) = json.loads(hpcrun("status", str(run_dir), "--json").stdout)
    assert row["state"] == "COMPLETED"


@pytest.mark.parametrize("launcher", [
    ["torchrun", "--nproc_per_node=2"],
    ["accelerate", "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1", "--mixed_precision", "no",
     "--dynamo_backend", "no"],
], ids=["torchrun", "accelerate"])
def test_a_launcher_with_two_processes_gets_the_signal_on_every_rank_requeues_and_resumes(
        hpcrun, tmp_path, slurm_cluster, launcher):
    steps = 200
    script = SCRIPTS / ("ddp_loop.py" if launcher[0] == "torchrun" else "accelerate_loop.py")
    program = str(Path(sys.executable).parent / launcher[0])
    job, run_dir = _submit(hpcrun, "cluster.cpus_per_task=2", "checkpoint.save_every=1s", "--", program,
                           *launcher[1:], str(script), "${run.dir}/work", str(steps))
    work = run_dir / "work"
    assert "--ntasks-per-node=1" in (run_dir / "slurm" / f"{job}_submission.sh").read_text()  # once per node
    wait_until(lambda: any((run_dir / "checkpoints").glob("step-*")), 180, "a periodic checkpoint")
    subprocess.run(["scancel", "--signal=USR2", job], check=True)
    release_when_requeued(job)
    st = _finished(run_dir, job)
    assert [(work / f"signal-rank-{r}.txt").read_text() for r in (0, 1)] == ["SIGUSR2", "SIGUSR2"]
    assert st["status"] == "completed" and st["requeues"] == 1
    for r in (0, 1):  # every step trained once on each rank, none repeated or skipped across the requeue
        seen = [json.loads(line)["step"] for line in (work / "seen" / f"rank-{r}.jsonl").read_text().splitlines()]
        assert seen == list(range(1, steps + 1))
    assert (work / "final.pt").is_file()
    (row,) = json.loads(hpcrun("status", str(run_dir), "--json").stdout)
    assert row["state"] == "COMPLETED" and (row["step"], row["max_steps"]) == (steps, steps)


def test_a_sweep_over_a_script_argument_is_one_job_array_each_task_with_its_own_value(hpcrun, tmp_path, slurm_cluster):
    out = hpcrun("-m", "run", "cluster=slurm", "+lr=1e-4,3e-4,1e-3", "--", sys.executable,
                 str(SCRIPTS / "echo_arg.py"), "--learning_rate=${lr}")
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    sweep_dir = Path(next(line.split(":", 1)[1].strip() for line in out.stdout.splitlines()
                          if line.strip().startswith("sweep dir:")))
    record = json.loads((sweep_dir / "sweep.json").read_text())
    (array,) = record["arrays"]
    assert len(array["tasks"]) == 3
    waited = hpcrun("wait", str(sweep_dir), "--poll", "2", timeout=420)
    assert waited.returncode == 0, waited.stdout + waited.stderr
    values = {}
    for point in record["points"]:
        run_dir = Path(point["run_dir"])
        assert state(run_dir)["status"] == "completed"
        values[point["overrides"][-1]] = (run_dir / "value.txt").read_text()
    assert values == {"+lr=0.0001": "--learning_rate=0.0001", "+lr=0.0003": "--learning_rate=0.0003",
                      "+lr=0.001": "--learning_rate=0.001"}


def test_a_command_rendered_as_a_standalone_script_and_sbatched_by_hand_requeues_and_completes(
        hpcrun, tmp_path, slurm_cluster):
    units = 80
    out = hpcrun("render", "--standalone", "cluster=slurm", "run.dir=run", "-o", "job.sbatch", "--", sys.executable,
                 str(SCRIPTS / "units.py"), "${run.dir}/work", str(units), "0.1")
    assert out.returncode == 0, out.stderr
    assert not (tmp_path / "run").exists()
    job = subprocess.run(["sbatch", "--parsable", "job.sbatch"], cwd=tmp_path, capture_output=True, text=True,
                         check=True).stdout.strip()
    log = tmp_path / "run" / "work" / "units.log"
    wait_until(lambda: log.exists() and len(log.read_text().split()) >= 20, 180, "20 units")
    subprocess.run(["scancel", "--signal=USR2", job], check=True)
    release_when_requeued(job)
    st = _finished(tmp_path / "run", job)
    assert [int(u) for u in log.read_text().split()] == list(range(units))
    assert st["status"] == "completed" and st["requeues"] == 1
