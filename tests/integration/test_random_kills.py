"""kill -9 at 22 random instants of one run, about half of them in the middle of a save: every start resumes from a
complete checkpoint, and the run ends with the weights of an uninterrupted run, bit for bit.

The instants are random (seeded, so a failure can be replayed with the printed seed) within two kinds of moment:
* "training": a random 0-2.5 s after the start logged its first step (a kill between saves, or in one);
* "save": a random 0-40 ms after the start's k-th save began writing (k = 1 or 2), i.e. while files are half
  written; whether the kill landed inside the save is read back from what the next start found, not assumed.
  Each save pauses 50 ms before its completion marker (HPCRUN_FAULTS): where the disk writes the files in less
  than 40 ms (a fast SSD, tmpfs), a kill is still inside the save, never just after it.
"""

import json
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
# Long enough that the kills never end it: each killed start keeps what it saved before its kill, about 1.3 steps a
# kill on average here (26 steps after 19 kills in one CI run, where 30 steps ran out before the 22nd kill). 90 steps
# leave room for a machine three times as fast.
STEPS = 90
SAVE_PAUSE = 0.05  # s, > the 40 ms a save's kill may wait
RUN = [*TINY, f"train.max_steps={STEPS}", "train.batch_size=16", "cluster=local"]


@pytest.fixture(scope="module")
def straight(tmp_path_factory) -> Path:
    """The same run trained straight through: the weights the killed run must end with, bit for bit."""
    work = tmp_path_factory.mktemp("straight")
    out = run_hpcrun(*RUN, "run.dir=straight", cwd=work)
    assert out.returncode == 0, out.stderr[-3000:]
    return work / "straight"


def _complete_steps(run_dir: Path) -> set:
    return {int(p.parent.name.split("-")[1]) for p in (run_dir / "checkpoints").glob("step-*/hpcrun-complete.json")}


def _starts(run_dir: Path) -> list:
    """The start records in state.json (written atomically by each start, before it trains); [] before the first."""
    try:
        return json.loads((run_dir / "state.json").read_text()).get("starts", [])
    except (OSError, ValueError):
        return []


def _wait_for_start(run_dir: Path, proc, n: int) -> bool:
    """Waits until the n-th start recorded itself in state.json; False if the process ended first.

    A start records itself after it printed where it resumes from and after it removed what an interrupted save
    left in checkpoints/.staging: from then on, the staging folder and the log are this start's own.
    """
    deadline = time.monotonic() + 120
    while len(_starts(run_dir)) < n:
        if proc.poll() is not None:
            return len(_starts(run_dir)) >= n
        assert time.monotonic() < deadline, f"start {n} did not record itself in state.json within 120 s"
        time.sleep(0.01)  # polled often: a start's first save may begin soon after it recorded itself
    return True


def _holds_files(folder: Path) -> bool:
    """Whether ``folder`` holds anything; a folder that is not there holds nothing. (Read in one call: a save removes
    the empty staging folder after its rename, so a folder found by is_dir() may be gone when iterdir() reads it, as
    it was once in CI.)"""
    try:
        return any(folder.iterdir())
    except FileNotFoundError:
        return False


def _wait_for_save(run_dir: Path, proc, count: int) -> bool:
    """Waits (polling every 2 ms) until this start began its count-th save; False if the process ended first.

    Call it only once the start recorded itself (_wait_for_start): before that, .staging may still hold what the
    previous start's killed save left, which is no save of this start.
    """
    staging = run_dir / "checkpoints" / ".staging"
    seen, was_saving = 0, False
    while proc.poll() is None:
        saving = _holds_files(staging)
        if saving and not was_saving:
            seen += 1
            if seen == count:
                return True
        was_saving = saving
        time.sleep(0.002)
    return False


def test_22_kill_9_at_random_instants_resume_from_complete_checkpoints_and_end_bitwise_equal(tmp_path, straight):
    rng = random.Random(SEED)
    run_dir = tmp_path / "run"
    # Saves every 2 s of wall clock; the kills are no crash loop, so the restart budget is not what is tested here.
    args = [*RUN, "run.dir=run", "checkpoint.save_every=2s", "run.max_restarts_without_progress=100"]
    kills = []  # (kind, complete checkpoints at the kill, logged step at the kill)
    proc = None
    try:
        for i in range(KILLS):
            kind = "save" if i % 2 else "training"
            before = len(logged_steps(run_dir))
            proc = subprocess.Popen([sys.executable, "-m", "hpcrun", *args], cwd=tmp_path, stdout=subprocess.DEVNULL,
                                    stderr=(tmp_path / f"start-{i}.err").open("w"),
                                    env={**os.environ, "HPCRUN_FAULTS": f"save_pause={SAVE_PAUSE}"})
            if not _wait_for_start(run_dir, proc, i + 1):
                break  # it finished on its own
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
    finally:  # a failure above must not leave its start training beside the tests that follow
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait()
    assert len(kills) == KILLS, f"the run finished after only {len(kills)} kills (seed {SEED})"

    out = run_hpcrun(*args, cwd=tmp_path, timeout=300)
    (tmp_path / f"start-{KILLS}.err").write_text(out.stderr)
    assert out.returncode == 0, out.stderr[-3000:]
    assert_same_weights(run_dir / "final", straight / "final")

    # Every start after a kill resumed from the newest checkpoint that was complete at the kill (or from scratch when
    # there was none), and no later than the last logged step; what a killed save left was found, removed and named.
    # Where it resumed from is the start's own record in state.json (each start was killed only after it wrote it),
    # and its launcher's line must say the same: a missing line fails, it is never read as "from scratch".
    starts = state(run_dir)["starts"]
    assert [s["n"] for s in starts] == list(range(1, KILLS + 2)), starts
    in_save = 0
    for i, (kind, complete, step) in enumerate(kills):
        log = (tmp_path / f"start-{i + 1}.err").read_text()
        resumed = starts[i + 1]["resumed_from"]
        assert resumed == max(complete, default=0) and resumed <= step, (i, kind, resumed, complete, step, log[-2000:])
        said = re.search(r"resuming run \S+ from (?:step-(\d+)|the start \(no complete checkpoint yet\))", log)
        assert said and int(said.group(1) or 0) == resumed, (i, kind, resumed, log[-2000:])
        if re.search(r"removed checkpoint-\d+: a save that was interrupted", log):
            in_save += 1
    assert in_save >= 5, f"only {in_save} of {KILLS} kills landed inside a save (seed {SEED})"
    assert set(logged_steps(run_dir)) == set(range(1, STEPS + 1))
