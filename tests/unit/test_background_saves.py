"""Saves written in the background (hpcrun.job.background, hpcrun.job.snapshots, hpcrun.job.steps): what a save
copies out is what the checkpoint holds, whatever training does meanwhile; the commit comes after every rank's
part; a save waits for the one before; a save that stops the run is written before it returns; an error of the
background write reaches the training thread."""

import threading
import time

import pytest
import torch

from hpcrun.errors import DiskFullError
from hpcrun.job.background import BackgroundSaves
from hpcrun.job.snapshots import capture_writes
from hpcrun.job.steps import checkpoint_save, take_background
from hpcrun.job.triggers import TimeTriggers
from hpcrun.rundir.checkpoints import MARKER, CheckpointDir
from hpcrun.rundir.ledger import Ledger, read_ledger


def test_captured_writes_hold_the_state_of_the_moment_and_write_nothing_until_asked(tmp_path):
    from safetensors.torch import load_file
    from safetensors.torch import save_file as bound_save_file  # bound before the capture, as transformers does

    folder = tmp_path / "staging"
    folder.mkdir()
    weights = {"w": torch.arange(6, dtype=torch.float32).reshape(2, 3)}
    optimizer = {"state": {0: {"exp_avg": torch.ones(4), "step": torch.tensor(3.0)}}, "param_groups": [{"lr": 0.1}]}
    with capture_writes(folder) as writes:
        bound_save_file(weights, str(folder / "model.safetensors"), metadata={"format": "pt"})
        torch.save(optimizer, folder / "optimizer.pt")
        torch.save({"x": torch.zeros(1)}, tmp_path / "elsewhere.pt")  # outside the folder: written at once
    assert [w.path.name for w in writes] == ["model.safetensors", "optimizer.pt"]
    assert not (folder / "model.safetensors").exists() and not (folder / "optimizer.pt").exists()
    assert (tmp_path / "elsewhere.pt").exists()
    assert writes[0].nbytes == 24 and writes[1].nbytes == 4 * 4 + 4

    weights["w"].add_(100)  # training goes on: the next steps change the live tensors in place
    optimizer["state"][0]["exp_avg"].mul_(0)
    optimizer["param_groups"][0]["lr"] = 0.5
    for w in writes:
        w.write()
    assert torch.equal(load_file(folder / "model.safetensors")["w"], torch.arange(6.0).reshape(2, 3))
    saved = torch.load(folder / "optimizer.pt")
    assert torch.equal(saved["state"][0]["exp_avg"], torch.ones(4)) and saved["param_groups"][0]["lr"] == 0.1

    torch.save({"y": 1}, folder / "after.pt")  # no capture any more: torch.save writes as usual
    assert (folder / "after.pt").exists()


def _writer_pair(staging):
    """Two ranks' background writers in one process, meeting through the staging folder's files."""
    return BackgroundSaves(rank=0, world_size=2, poll_seconds=0.01), BackgroundSaves(rank=1, world_size=2,
                                                                                     poll_seconds=0.01)


class _Slow:
    def __init__(self, path, seconds, gate=None):
        self.path, self.nbytes, self.seconds, self.gate = path, 1, seconds, gate

    def write(self):
        if self.gate is not None:
            self.gate.wait(10)
        time.sleep(self.seconds)
        self.path.write_text("part")


def test_rank_0_commits_only_after_every_rank_wrote_its_part(tmp_path):
    staging = tmp_path / "stage"
    staging.mkdir()
    committed = []
    rank0, rank1 = _writer_pair(staging)
    gate = threading.Event()
    rank0.start(5, staging, [_Slow(staging / "a", 0)], lambda: committed.append(sorted(p.name for p in
                staging.iterdir())), time.time(), 0.1, "periodic", time.monotonic(), time.monotonic)
    rank1.start(5, staging, [_Slow(staging / "b", 0, gate)], lambda: None, time.time(), 0.1, "periodic",
                time.monotonic(), time.monotonic)
    time.sleep(0.2)
    assert rank0.poll() is None and committed == []  # rank 1's part is not written: no commit
    gate.set()
    done = rank0.wait()
    assert rank1.wait().step == 5
    assert committed == [["a", "b"]]  # both parts there; the ranks' .written files removed before the commit
    assert done.step == 5 and done.blocked == 0.1 and done.seconds >= 0.2


def test_a_rank_that_fails_its_part_fails_the_commit_on_rank_0(tmp_path):
    staging = tmp_path / "stage"
    staging.mkdir()
    rank0, rank1 = _writer_pair(staging)

    class Full:
        path, nbytes = staging / "b", 1

        def write(self):
            raise OSError(28, "No space left on device")

    committed = []
    rank0.start(5, staging, [], lambda: committed.append(1), time.time(), 0.1, "periodic", time.monotonic(),
                time.monotonic)
    rank1.start(5, staging, [Full()], lambda: None, time.time(), 0.1, "periodic", time.monotonic(), time.monotonic)
    with pytest.raises(OSError, match="No space"):
        rank1.wait()
    with pytest.raises(OSError, match="rank 1 could not write its part"):
        rank0.wait()
    assert committed == []


def _last_write(replace):
    """Replaces the deferred write just captured (inside a background save) by ``replace(write)``."""
    from hpcrun.job import snapshots

    pending = snapshots._active.writes[-1]
    pending._write = replace(pending._write)


def _save(checkpoints, step, triggers, ledger, why, write_seconds=0.0):
    """A save as a framework does it: torch.save of a tensor into the staging folder (its write slowed down by
    ``write_seconds`` when it is deferred: a slow disk)."""
    with checkpoint_save(checkpoints, step, is_main=True, triggers=triggers, ledger=ledger, why=why) as folder:
        torch.save({"step": torch.tensor(step)}, folder / "state.pt")
        if write_seconds:
            _last_write(lambda write: lambda: (time.sleep(write_seconds), write()))


def test_a_periodic_save_returns_before_it_is_written_and_the_next_save_waits_for_it(tmp_path):
    checkpoints = CheckpointDir(tmp_path / "checkpoints", keep_last=2)
    triggers = TimeTriggers(save_every=60)
    triggers.writer = BackgroundSaves()
    ledger = Ledger(tmp_path, 1)
    began = time.monotonic()
    _save(checkpoints, 1, triggers, ledger, "periodic", write_seconds=0.5)
    assert time.monotonic() - began < 0.4  # training goes on while it is written
    assert checkpoints.latest()[0] is None and triggers.writer.busy
    _save(checkpoints, 2, triggers, ledger, "periodic")  # waits for step 1 first: never two at once
    assert triggers.writer.busy
    take_background(triggers, ledger)
    assert [c.step for c in checkpoints.folders()] == [2, 1]
    assert all((c.path / MARKER).exists() for c in checkpoints.folders())
    saves = [e for e in read_ledger(tmp_path) if e["event"] == "save"]
    assert [e["step"] for e in saves] == [1, 2] and all(e["background"] for e in saves)
    assert saves[0]["written"] >= 0.5 > saves[0]["seconds"]
    assert triggers.estimates.save >= 0.5  # the deadline counts the whole save


def test_a_save_that_stops_the_run_is_complete_when_it_returns(tmp_path):
    checkpoints = CheckpointDir(tmp_path / "checkpoints", keep_last=2)
    triggers = TimeTriggers(save_every=60)
    triggers.writer = BackgroundSaves()
    _save(checkpoints, 1, triggers, None, "periodic", write_seconds=0.3)
    _save(checkpoints, 2, triggers, None, "signal")
    assert not triggers.writer.busy  # step 1 was waited for, step 2 written before returning
    assert [c.step for c in checkpoints.folders()] == [2, 1] and checkpoints.latest()[0].step == 2


def test_the_deadline_counts_a_background_write_still_in_progress():
    now = [0.0]
    triggers = TimeTriggers(save_every=None, end_time=1000.0, margin=10, save_guess=100, clock=lambda: now[0],
                            wall=lambda: 1000.0 - 150)
    triggers.step_started()
    now[0] = 1.0
    assert not triggers.step_ended().stop  # 150 s left > 1 s step + 100 s save + 10 s margin
    triggers.handed_off()  # a background save began, 100 s to complete
    triggers.step_started()
    now[0] = 2.0
    d = triggers.step_ended()
    assert d.stop and "background save's remaining" in d.reason  # 150 < 1 + 100 + 10 + 99


def test_a_full_disk_in_the_background_is_a_disk_full_error_with_the_staging_folder_removed(tmp_path,
                                                                                             monkeypatch):
    checkpoints = CheckpointDir(tmp_path / "checkpoints", keep_last=2)
    triggers = TimeTriggers(save_every=60)
    triggers.writer = BackgroundSaves()
    def full():
        raise OSError(28, "No space left on device")

    with checkpoint_save(checkpoints, 1, is_main=True, triggers=triggers, why="periodic") as folder:
        torch.save({"x": torch.zeros(2)}, folder / "state.pt")
        _last_write(lambda write: full)
    with pytest.raises(DiskFullError, match="in the background"):
        take_background(triggers, None, checkpoints=checkpoints)
    assert not checkpoints.staging_root.exists() and checkpoints.latest()[0] is None
