"""The two examples of the time triggers outside hpcrun's own task run, save on time, and stop on a signal."""

import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.slurm import job_id_from, timeout_signal_at_step, wait_for_end
from tests.training import assert_same_weights, logged_steps, state

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def test_the_trainer_callback_example_saves_by_wall_clock_with_a_plain_trainer(tmp_path):
    out = subprocess.run([sys.executable, str(EXAMPLES / "trainer_callback.py"), "--save-every", "1s",
                          "--log-every", "1s", "--max-steps", "600", "--out", str(tmp_path / "out")],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    saved = sorted(tmp_path.glob("out/checkpoint-*"))
    assert len(saved) >= 2  # save_strategy="no": every checkpoint came from the wall-clock trigger
    assert "'loss'" in out.stdout + out.stderr  # and the time-based logging logged


def test_the_custom_loop_example_saves_periodically_and_stops_cleanly_on_sigusr2(tmp_path):
    proc = subprocess.Popen([sys.executable, str(EXAMPLES / "custom_loop.py"), "--save-every", "1s",
                             "--step-seconds", "0.05", "--max-steps", "100000", "--out", str(tmp_path / "out")],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not list(tmp_path.glob("out/step-*")) and time.monotonic() < deadline:
        time.sleep(0.2)
    proc.send_signal(signal.SIGUSR2)
    stdout, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 0, stderr
    assert "(SIGUSR2)" in stdout and "stopped at step" in stdout
    last = int(stdout.strip().splitlines()[-1].rsplit(" ", 1)[1])
    assert (tmp_path / "out" / f"step-{last}" / "model.safetensors").exists()


# The example reuses the built-in task's settings (model, data, train), so it declares them.
ACCELERATE_RUN = ["+experiment=tiny_llama", "task._target_=my_loop.train",
                  "task.settings=hpcrun.tasks.settings.CausalLMSettings", "train.max_steps=20", "train.log_every=1",
                  "model.attention_dropout=0.1", "checkpoint.save_every=0"]


@pytest.mark.training
def test_the_accelerate_loop_task_is_interrupted_on_slurm_requeued_and_resumes_to_the_straight_weights(
        hpcrun, tmp_path, slurm_cluster):
    shutil.copy(EXAMPLES / "accelerate_task.py", tmp_path / "my_loop.py")  # a user's own module, beside them
    straight = hpcrun(*ACCELERATE_RUN, "cluster=local", "run.dir=straight")
    assert straight.returncode == 0, straight.stderr[-3000:]

    out = hpcrun(*ACCELERATE_RUN, "cluster=slurm", "run.dir=run")
    assert out.returncode == 0, out.stderr[-3000:]
    job = job_id_from(out.stdout)
    run_dir = tmp_path / "run"
    timeout_signal_at_step(job, run_dir, 6)
    assert wait_for_end(job) == "COMPLETED"

    st = state(run_dir)
    assert st["status"] == "completed" and st["requeues"] == 1, st
    stopped_at = st["starts"][0]["step"]
    assert 6 <= stopped_at < 20 and st["starts"][1]["resumed_from"] == stopped_at
    assert (run_dir / "checkpoints" / f"step-{stopped_at}" / "hpcrun-complete.json").exists()
    assert logged_steps(run_dir) == list(range(1, 21))  # no step trained twice, none skipped
    assert_same_weights(run_dir / "final", tmp_path / "straight" / "final")


def test_a_task_target_that_does_not_exist_is_refused_before_anything_runs(hpcrun, tmp_path):
    out = hpcrun("task._target_=no_such_module.train", "cluster=local", "run.dir=run")
    assert out.returncode == 2
    assert "task._target_" in out.stderr and "no_such_module.train" in out.stderr
    assert "Traceback" not in out.stderr
    assert not (tmp_path / "run").exists()
