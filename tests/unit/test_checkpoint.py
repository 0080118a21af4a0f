"""Atomic checkpoints: only complete step-N folders count, newest first, at least two kept."""

import json

import pytest

from hpcrun.rundir.checkpoints import MARKER, CheckpointDir


def _save(ckpts: CheckpointDir, step: int, payload: bytes = b"weights") -> None:
    staging = ckpts.staging(step)
    staging.mkdir(parents=True)
    (staging / "model.safetensors").write_bytes(payload)
    (staging / "rng_state.pth").write_bytes(b"rng")
    ckpts.commit(step, extra_state={"since_log": 1.0})


def test_a_committed_save_is_a_complete_step_folder_and_the_staging_is_gone(tmp_path):
    ckpts = CheckpointDir(tmp_path / "checkpoints")
    _save(ckpts, 10)
    latest, skipped = ckpts.latest()
    assert latest.step == 10 and skipped == []
    assert not ckpts.staging_root.exists()
    manifest = json.loads((latest.path / MARKER).read_text())
    assert manifest["files"]["model.safetensors"] == len(b"weights")
    assert CheckpointDir.read_state(latest) == {"since_log": 1.0}


def test_resume_skips_newer_incomplete_or_damaged_checkpoints_and_says_why(tmp_path):
    ckpts = CheckpointDir(tmp_path / "checkpoints", keep_last=5)
    for step in (10, 20, 30, 40):
        _save(ckpts, step)
    (ckpts.root / "step-40" / MARKER).unlink()  # interrupted before its marker
    (ckpts.root / "step-30" / "model.safetensors").write_bytes(b"wei")  # truncated
    (ckpts.root / "step-20" / "rng_state.pth").unlink()  # a missing shard
    (ckpts.root / "step-50").mkdir()  # a half-made folder
    latest, skipped = ckpts.latest()
    assert latest.step == 10
    reasons = {c.step: why for c, why in skipped}
    assert set(reasons) == {50, 40, 30, 20}
    assert "no completion marker" in reasons[40]
    assert "truncated" in reasons[30]
    assert "missing file rng_state.pth" in reasons[20]


def test_a_kill_during_a_save_leaves_only_staging_which_the_next_start_clears(tmp_path):
    ckpts = CheckpointDir(tmp_path / "checkpoints")
    _save(ckpts, 10)
    ckpts.staging(20).mkdir(parents=True)
    (ckpts.staging(20) / "model.safetensors").write_bytes(b"half")
    assert ckpts.latest()[0].step == 10
    assert ckpts.clear_staging() == ["checkpoint-20"]
    assert not ckpts.staging_root.exists()


def test_pruning_keeps_the_newest_complete_ones_and_never_fewer_than_two(tmp_path):
    ckpts = CheckpointDir(tmp_path / "checkpoints", keep_last=1)
    assert ckpts.keep_last == 2
    for step in (10, 20, 30, 40):
        _save(ckpts, step)
    (ckpts.root / "step-50").mkdir()  # newer but incomplete: kept for the next start's log, never counted
    assert sorted(ckpts.prune()) == [10, 20]
    assert [c.step for c in ckpts.folders()] == [50, 40, 30]


def test_saving_the_same_step_again_replaces_it(tmp_path):
    ckpts = CheckpointDir(tmp_path / "checkpoints")
    _save(ckpts, 10, b"old")
    _save(ckpts, 10, b"newer")
    latest, _ = ckpts.latest()
    assert (latest.path / "model.safetensors").read_bytes() == b"newer"


def test_an_output_dir_is_one_runs_and_another_existing_run_training_there_is_refused(tmp_path):
    from hpcrun.rundir.checkpoints import OUTPUT_OWNER, SharedOutputError, claim_output

    first, second, out = tmp_path / "first", tmp_path / "second", tmp_path / "out"
    for run in (first, second):
        run.mkdir()
        (run / "config.yaml").write_text("{}\n")  # (what makes a folder a run)
    claim_output(second, out, write=False)  # a rank that only checks claims nothing
    assert not (out / OUTPUT_OWNER).exists()
    claim_output(first, out, write=True)
    claim_output(first, out, write=True)  # its own restart
    claim_output(first, out, write=False)  # its other ranks
    for write in (True, False):  # every rank of the second run is refused
        with pytest.raises(SharedOutputError, match=f"is the checkpoint folder of another run, {first}"):
            claim_output(second, out, write=write)
    assert (out / OUTPUT_OWNER).read_text() == f"{first}\n"
    (first / "config.yaml").unlink()  # the first run is gone: its folder is taken over
    claim_output(second, out, write=True)
    assert (out / OUTPUT_OWNER).read_text() == f"{second}\n"


def test_a_restart_whose_trainer_has_a_new_output_folder_finds_where_the_same_training_saved_before(tmp_path):
    # A command that names a new output_dir on every start (Hydra's outputs/DATE/TIME), with two trainings in turn
    # ("a", "b") and a sweep-like pair of trainings with the same key ("c" twice).
    from hpcrun.rundir.checkpoints import earlier_training, record_training

    run = tmp_path / "run"
    run.mkdir()
    folders = {}
    for start in (1, 2):
        for n, key in enumerate(("a", "b", "c", "c")):
            folders[start, n] = tmp_path / f"start{start}-{n}"
            record_training(run, start, key, folders[start, n])
    _save(CheckpointDir.in_output_dir(folders[1, 0]), 7)
    _save(CheckpointDir.in_output_dir(folders[1, 1]), 3)
    _save(CheckpointDir.in_output_dir(folders[2, 1]), 5)
    _save(CheckpointDir.in_output_dir(folders[1, 3]), 9)
    # start 2's "a" saved nothing before it stopped: start 3's looks back to start 1's
    start, ckpt = earlier_training(run, 3, "a", 1)
    assert start == 1 and ckpt.path == folders[1, 0] / "checkpoint-7"
    start, ckpt = earlier_training(run, 3, "b", 1)  # its own folders, the newest start first
    assert start == 2 and ckpt.path == folders[2, 1] / "checkpoint-5"
    assert earlier_training(run, 3, "c", 1) is None  # the first "c" never saved
    start, ckpt = earlier_training(run, 3, "c", 2)
    assert start == 1 and ckpt.path == folders[1, 3] / "checkpoint-9"
    # a restart that skips "a" (its model already made): "b" still finds its own, never "a"'s
    assert earlier_training(run, 3, "d", 1) is None
    assert earlier_training(run, 1, "a", 1) is None  # the first start has no earlier one
