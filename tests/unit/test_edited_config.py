"""The same command after its experiment's YAML was edited: a new run beside the first (<run.id>.v2), which the same
command then finds again; the first run is left as it is; run.dir given by hand is still refused (docs/checkpointing.md,
"Run identity")."""

import pytest

from hpcrun.config.compose import compose
from hpcrun.errors import UserError
from hpcrun.launch.prepare import claimed


def _experiment(tmp_path, lr):
    folder = tmp_path / "conf" / "experiment"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "mine.yaml").write_text(f"# @package _global_\nrun:\n  name: mine\ntrain:\n  lr: {lr}\n")


def _launch(tmp_path, *extra):
    cfg = compose(["+experiment=mine", "cluster=local", *extra], cwd=tmp_path)
    with claimed(cfg) as prepared:
        return prepared, cfg


def test_an_edited_experiment_is_a_new_run_beside_the_first_and_found_again(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HPCRUN_STATE_DIR", str(tmp_path / "state"))
    _experiment(tmp_path, 0.001)
    first, _ = _launch(tmp_path)
    assert first.kind == "new" and first.run_dir == tmp_path / "runs" / "mine" / "default"
    saved = (first.run_dir / "config.yaml").read_text()

    _experiment(tmp_path, 0.0005)  # the user edits the file and runs the same command
    edited, cfg = _launch(tmp_path)
    assert edited.kind == "new" and edited.run_dir == tmp_path / "runs" / "mine" / "default.v2"
    assert "train.lr: 0.001 -> 0.0005" in edited.message and "left as it is" in edited.message
    assert cfg.run.dir == str(edited.run_dir) and "lr: 0.0005" in (edited.run_dir / "config.yaml").read_text()
    assert (first.run_dir / "config.yaml").read_text() == saved

    again, _ = _launch(tmp_path)  # the same edit again: its own run, not a third
    assert again.kind == "resume" and again.run_dir == edited.run_dir
    _experiment(tmp_path, 0.001)  # edited back: the first run
    back, _ = _launch(tmp_path)
    assert back.kind == "resume" and back.run_dir == first.run_dir
    _experiment(tmp_path, 0.002)  # a third config: .v3
    third, _ = _launch(tmp_path)
    assert third.run_dir.name == "default.v3"


def test_a_run_dir_given_by_hand_that_holds_another_config_is_still_refused(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HPCRUN_STATE_DIR", str(tmp_path / "state"))
    _experiment(tmp_path, 0.001)
    _launch(tmp_path, "run.dir=r1")
    _experiment(tmp_path, 0.0005)
    with pytest.raises(UserError, match="r1 holds a run with another training config: train.lr: 0.001 -> 0.0005"):
        _launch(tmp_path, "run.dir=r1")
    assert not (tmp_path / "r1.v2").exists()
