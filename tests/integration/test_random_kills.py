"""kill -9 at 22 random instants of one run, about half of them in the middle of a save: every start resumes from a
complete checkpoint, and the run ends with the weights of an uninterrupted run, bit for bit.

The instants are random (seeded, so a failure can be replayed with the printed seed) within two kinds of moment:
* "training": a random 0-2.5 s after the start logged its first step (a kill between saves, or in one);
* "save": a random 0-40 ms after the start's k-th save began writing (k = 1 or 2), i.e. while files are half
  written; whether the kill landed inside the save is read back from what the next start found, not assumed.
"""

import os
import random
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import run_hpcrun
from tests.training import TINY, assert_same_weights, logged_steps, state, wait_until

pytestmark = pytest.mark.training

KILLS = 22
SEED = int(os.environ.get("HPCRUN_KILL_SEED", "20261125"))


def _complete_steps(run_dir: Path) -> set:
    return {int(p.parent.name.split("-")[1]) for p in (run_dir / "checkpoints").glob("step-*/hpcrun-complete.json")}


def _wait_for_save(run_dir: Path, proc, count: int) -> bool:
    """Waits (polling every 2 ms) until this start began its count-th save; False if the process ended first."""
    staging = run_dir / "checkpoints" / ".staging"
    seen, was_saving = 0, False
    while proc.poll() is None:
        saving = staging.is_dir() and any(staging.iterdir())
        if saving and not was_saving:
            seen += 1
            if seen == count:
                return True
        was_saving = saving
        time.sleep(0.002)
    return False


def test_22_kill_9_at_random_instants_resume_from_complete_checkpoints_and_end_bitwise_equal(tmp_path, reference_run):
    rng = random.Random(SEED)
    run_dir = tmp_path / "run"
    # Saves every 2 s of wall clock; the kills are no crash loop, so the restart budget is not what is tested here.
    args = [*TINY, "cluster=local", "run.dir=run", "checkpoint.save_every=2s", "run.max_restarts_without_progress=100"]
    kills = []  # (kind, complete checkpoints at the kill, logged step at the kill)
    for i in range(KILLS):
        kind = "save" if i % 2 else "training"
        before = len(logged_steps(run_dir))
        proc = subprocess.Popen([sys.executable, "-m", "hpcrun", *args], cwd=tmp_path, stdout=subprocess.DEVNULL,
                                stderr=(tmp_path / f"start-{i}.err").open("w"), env=os.environ.copy())
        if kind == "save":
            if not _wait_for_save(run_dir, proc, rng.choice((1, 2))):
                break
            time.sleep(rng.uniform(0, 0.04))
        else:
            wait_until(lambda: len(logged_steps(run_dir)) > before or proc.poll() is not None, 120, "a step")
            time.sleep(rng.uniform(0, 2.5))
        if proc.poll() is not None:
            break  # it finished on its own
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        kills.append((kind, _complete_steps(run_dir), max(logged_steps(run_dir), default=0)))
    assert len(kills) == KILLS, f"the run finished after only {len(kills)} kills (seed {SEED})"

    out = run_hpcrun(*args, cwd=tmp_path, timeout=300)
    (tmp_path / f"start-{KILLS}.err").write_text(out.stderr)
    assert out.returncode == 0, out.stderr[-3000:]
    assert_same_weights(run_dir / "final", reference_run / "final")

    # Every start after a kill resumed from a checkpoint that was complete at the kill (or from scratch), and no
    # later than the last logged step; what a killed save left was found, removed and named.
    in_save = 0
    for i, (kind, complete, step) in enumerate(kills):
        log = (tmp_path / f"start-{i + 1}.err").read_text()
        m = re.search(r"resuming run \S+ from step-(\d+)", log)
        resumed = int(m.group(1)) if m else 0
        assert resumed == max(complete, default=0) and resumed <= step, (i, kind, resumed, complete, step, log[-2000:])
        if re.search(r"removed checkpoint-\d+: a save that was interrupted", log):
            in_save += 1
    assert in_save >= 5, f"only {in_save} of {KILLS} kills landed inside a save (seed {SEED})"
    assert len(state(run_dir)["starts"]) == KILLS + 1
    assert set(logged_steps(run_dir)) == set(range(1, 31))
