"""Interrupt a local run in every way a laptop or an interactive allocation does, and resume it exactly."""

import os
import signal
import subprocess
import sys

import pytest

from tests.conftest import run_hpcrun
from tests.training import TINY, Terminal, assert_same_weights, logged_steps, state, wait_for_step, wait_until

pytestmark = pytest.mark.training


def _start(args, cwd, env=None):
    return subprocess.Popen([sys.executable, "-m", "hpcrun", *args], cwd=cwd, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env={**os.environ, **(env or {})})


def test_ctrl_c_twice_then_resume_gives_the_straight_runs_weights_and_computes_no_step_twice(tmp_path, reference_run):
    args = [*TINY, "cluster=local", "run.dir=run"]
    run_dir = tmp_path / "run"
    for stop_at in (8, 18):
        proc = _start(args, tmp_path)
        wait_for_step(run_dir, stop_at)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=120)
        assert proc.returncode == 130, err[-2000:]
        assert "the same command resumes it" in err
        assert "resume with: hpcrun" in err
        assert state(run_dir)["status"] == "stopped"
    out = run_hpcrun(*args, cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]

    assert_same_weights(run_dir / "final", reference_run / "final")
    assert logged_steps(run_dir) == list(range(1, 31))  # each step trained (and logged) exactly once
    starts = state(run_dir)["starts"]
    assert [s["resumed_from"] for s in starts][0] == 0 and len(starts) == 3
    assert starts[1]["resumed_from"] >= 8 and starts[2]["resumed_from"] >= 18

    again = run_hpcrun(*args, cwd=tmp_path)  # a finished run never trains again
    assert again.returncode == 0 and "already complete" in again.stderr
    assert len(state(run_dir)["starts"]) == 3


def test_a_local_run_stops_cleanly_at_its_time_limit_and_resumes_with_a_longer_one(tmp_path, reference_run):
    run_dir = tmp_path / "run"
    short = run_hpcrun(*TINY, "cluster=local", "run.dir=run", "cluster.time=25s", "checkpoint.deadline_margin=3s",
                       cwd=tmp_path)
    assert short.returncode == 75, short.stderr[-3000:]
    st = state(run_dir)
    assert st["status"] == "stopped" and st["reason"].startswith("deadline")
    stopped_at = st["starts"][-1]["step"]
    assert 0 < stopped_at < 30
    assert (run_dir / "checkpoints" / f"step-{stopped_at}" / "hpcrun-complete.json").exists()
    # cluster.time is a launcher key: the same run resumes with another limit.
    longer = run_hpcrun(*TINY, "cluster=local", "run.dir=run", "cluster.time=1h", cwd=tmp_path)
    assert longer.returncode == 0, longer.stderr[-3000:]
    assert f"resuming run tiny_llama from step-{stopped_at}" in longer.stderr
    assert_same_weights(run_dir / "final", reference_run / "final")


def test_a_closed_terminal_saves_and_stops_the_run_and_the_same_command_resumes_it_exactly(tmp_path, reference_run):
    args = [*TINY, "cluster=local", "run.dir=run"]
    run_dir = tmp_path / "run"
    terminal = Terminal(args, tmp_path)
    terminal.wait_for(lambda: max(logged_steps(run_dir), default=0) >= 5, 300, "step 5")
    assert b"Ctrl-C saves and stops" in terminal.read()
    assert terminal.close() == 75  # the ssh connection dropped: SIGHUP, and every write to the terminal fails
    st = state(run_dir)
    assert st["status"] == "stopped" and st["reason"] == "signal SIGHUP (the terminal closed)", st
    stopped_at = st["starts"][0]["step"]
    assert 5 <= stopped_at < 30
    assert (run_dir / "checkpoints" / f"step-{stopped_at}" / "hpcrun-complete.json").exists()
    # what the terminal no longer shows is in the start's log
    assert f"stopped after step {stopped_at} (signal SIGHUP (the terminal closed))" in \
        (run_dir / "logs" / "start-1.log").read_text()
    out = run_hpcrun(*args, cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    assert f"resuming run tiny_llama from step-{stopped_at}" in out.stderr
    assert_same_weights(run_dir / "final", reference_run / "final")


def test_a_run_started_under_nohup_goes_on_when_its_terminal_closes(tmp_path):
    run_dir = tmp_path / "run"
    terminal = Terminal([*TINY, "train.max_steps=10", "cluster=local", "run.dir=run"], tmp_path, prefix=["nohup"])
    terminal.wait_for(lambda: max(logged_steps(run_dir), default=0) >= 2, 300, "step 2")
    assert terminal.close() == 0
    assert state(run_dir)["status"] == "completed"
    assert max(logged_steps(run_dir)) == 10
    assert "stopped" not in (tmp_path / "nohup.out").read_text()


def test_a_run_directory_holding_another_training_config_is_refused_and_run_fresh_starts_over(tmp_path):
    base = ["+experiment=tiny_llama", "cluster=local", "run.dir=run", "train.max_steps=1", "data.vocab_size=300"]
    assert run_hpcrun(*base, cwd=tmp_path).returncode == 0
    saved = (tmp_path / "run" / "config.yaml").read_text()
    out = run_hpcrun(*base, "train.lr=0.5", cwd=tmp_path)
    assert out.returncode == 2
    assert "holds a run with another training config: train.lr: 0.001 -> 0.5" in out.stderr.splitlines()[-1]
    assert (tmp_path / "run" / "config.yaml").read_text() == saved
    fresh = run_hpcrun(*base, "train.lr=0.5", "run.fresh=true", cwd=tmp_path)
    assert fresh.returncode == 0, fresh.stderr[-2000:]
    assert "the previous one moved to" in fresh.stderr
    assert len(list(tmp_path.glob("run.replaced-*"))) == 1


def test_damaged_newest_checkpoints_are_skipped_with_the_reason_and_the_run_resumes_from_the_last_good_one(
        tmp_path, reference_run):
    # a save every second: the four come some 4 s in, well before the 30 steps end (about 10 s here)
    args = [*TINY, "cluster=local", "run.dir=run", "checkpoint.save_every=1s", "checkpoint.keep_last=4"]
    run_dir = tmp_path / "run"
    proc = _start(args, tmp_path)
    wait_until(lambda: len(list((run_dir / "checkpoints").glob("step-*/hpcrun-complete.json"))) >= 4,
               what="four complete checkpoints")
    proc.send_signal(signal.SIGINT)  # a clean stop: its save is a fifth checkpoint, the newest
    proc.communicate(timeout=120)
    steps = sorted(int(p.name.split("-")[1]) for p in (run_dir / "checkpoints").glob("step-*"))
    assert len(steps) == 4  # keep_last
    good, missing_file, no_marker, truncated = (run_dir / "checkpoints" / f"step-{s}" for s in steps)
    model = truncated / "model.safetensors"
    with model.open("r+b") as f:  # a file cut short, as a full disk or a copy that died would leave it
        cut = model.stat().st_size // 2
        f.truncate(cut)
    (no_marker / "hpcrun-complete.json").unlink()  # a save that never completed
    (missing_file / "optimizer.pt").unlink()  # a shard lost (every file is listed in the marker)

    out = run_hpcrun(*args, cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    assert f"skipping {truncated.name}: model.safetensors has {cut} bytes, the marker says" in out.stderr
    assert f"skipping {no_marker.name}: no completion marker (the save was interrupted)" in out.stderr
    assert f"skipping {missing_file.name}: missing file optimizer.pt" in out.stderr
    assert f"resuming run tiny_llama from {good.name}" in out.stderr
    assert state(run_dir)["starts"][-1]["resumed_from"] == steps[0]
    assert_same_weights(run_dir / "final", reference_run / "final")


class _Planted:
    """Unpickling this runs a shell command: what a tampered checkpoint file would do to a plain torch.load."""

    def __init__(self, canary):
        self.canary = str(canary)

    def __reduce__(self):
        return (os.system, (f"touch {self.canary}",))


def test_a_checkpoint_file_that_would_run_code_when_unpickled_is_refused_not_run(tmp_path):
    import json

    import torch

    args = [*TINY, "cluster=local", "run.dir=run"]
    run_dir = tmp_path / "run"
    proc = _start(args, tmp_path)
    wait_for_step(run_dir, 3)
    proc.send_signal(signal.SIGINT)
    proc.communicate(timeout=120)
    (ckpt,) = (run_dir / "checkpoints").glob("step-*")
    canary = tmp_path / "canary"
    for name in ("rng_state.pth", "optimizer.pt"):  # swapped for planted pickles, marker sizes updated to match
        torch.save({"planted": _Planted(canary)}, ckpt / name)
    marker = json.loads((ckpt / "hpcrun-complete.json").read_text())
    marker["files"].update({n: (ckpt / n).stat().st_size for n in ("rng_state.pth", "optimizer.pt")})
    (ckpt / "hpcrun-complete.json").write_text(json.dumps(marker))

    out = run_hpcrun(*args, cwd=tmp_path)
    assert out.returncode != 0
    assert not canary.exists()  # loaded with weights_only=True: the pickle's code never ran
    assert "Weights only load failed" in out.stderr
