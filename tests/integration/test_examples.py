"""The two examples of the time triggers outside hpcrun's own task run, save on time, and stop on a signal."""

import signal
import subprocess
import sys
import time
from pathlib import Path

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
