"""The overrides as a whole: a key given twice, a value listed twice, sweep points that are one run. Each is one
line naming the key and the values, raised while composing, before anything is written."""

import sys

import pytest

from hpcrun.config.compose import compose
from hpcrun.config.identity import run_id
from hpcrun.config.overrides import check_sweep, same_run
from hpcrun.config.points import PointComposer
from hpcrun.errors import ConfigError, UserError
from hpcrun.launch.sweep import expand

BASE = ["+experiment=tiny_llama", "cluster=slurm"]


def test_a_key_given_twice_keeps_its_last_value_says_so_and_names_the_run_after_it(capsys):
    # Hydra's rule, and a shell alias with defaults and a later override relies on it; the run is the one the
    # value it trains with names, and the user is told which value applies.
    cfg = compose(BASE + ["train.seed=1", "train.max_steps=5", "train.seed=2"])
    assert cfg.train.seed == 2 and cfg.run.id == compose(BASE + ["train.max_steps=5", "train.seed=2"]).run.id
    assert capsys.readouterr().err.count(
        "hpcrun: warning: train.seed is given twice (train.seed=1, train.seed=2): the last, train.seed=2, applies") == 1
    assert compose(BASE + ["cluster.partition=normal", "cluster.partition=preemptible"]).cluster.partition == \
        "preemptible"


@pytest.mark.parametrize("overrides, message", [
    (["train.seed=1", "++train.seed=2"], "train.seed is given twice (train.seed=1, ++train.seed=2): give it once"),
    (["+train.seed=1", "~train.seed=1"], "train.seed is given twice (+train.seed=1, ~train.seed=1): give it once"),
])
def test_a_key_given_twice_in_another_form_is_refused_naming_both(overrides, message):
    with pytest.raises(UserError) as err:
        compose(BASE + overrides)
    assert str(err.value) == message


def test_a_group_given_twice_is_refused_naming_both():
    with pytest.raises(UserError, match=r"^cluster is given twice \(cluster=slurm, cluster=local\): give it once$"):
        compose(["+experiment=tiny_llama", "cluster=slurm", "cluster=local"])
    with pytest.raises(UserError, match=r"^experiment is given twice \(\+experiment=tiny_llama, "
                                        r"\+experiment=full_ft_1b\): give it once$"):
        compose(["+experiment=tiny_llama", "+experiment=full_ft_1b", "cluster=slurm"])


def test_the_commands_own_arguments_may_repeat(tmp_path):
    (tmp_path / "x.py").write_text("")
    cfg = compose(["cluster=local", "+lr=1"], cwd=tmp_path, command=[sys.executable, "x.py", "--lr", "1", "--lr", "2"])
    assert cfg.command.argv[-4:] == ["--lr", "1", "--lr", "2"]


def test_a_run_id_counts_a_key_given_twice_once_with_the_value_hydra_applies():
    assert run_id(["train.seed=1", "train.seed=2"]) == run_id(["train.seed=2"]) == "train.seed=2"
    assert run_id(["train.seed=1", "++train.seed=2", "train.lr=1e-4"]) == "train.lr=0.0001,train.seed=2"


@pytest.mark.parametrize("overrides, message", [
    (["cluster=slurm,local", "cluster=slurm"], "cluster is given twice (cluster=slurm,local, cluster=slurm)"),
    (["train.seed=21,21"], "train.seed lists 21 twice (train.seed=21,21): list each value once"),
    (["train.lr=1e-4,3e-4,0.0001"], "train.lr lists 0.0001 twice (train.lr=1e-4,3e-4,0.0001)"),
    (["+experiment=tiny_llama,tiny_llama"], "experiment lists tiny_llama twice"),
    (["run.name='a',a"], "run.name lists a twice"),
])
def test_a_sweep_refuses_a_key_given_twice_or_a_value_listed_twice(overrides, message):
    with pytest.raises(UserError) as err:
        check_sweep(overrides)
    assert str(err.value).startswith(message), str(err.value)


def test_a_sweep_of_distinct_values_and_ranges_passes():
    check_sweep(["+experiment=tiny_llama", "train.seed=range(0,4)", "train.lr=1e-4,3e-4", "run.name='a,a'",
                 "cluster.srun_args=[1,2]"])


def _one_run(overrides):
    """The error for the first point of the sweep whose run directory an earlier point has (what
    hpcrun.launch.sweep.distinct_runs raises, once every point's values and the site's limits are checked)."""
    composer, first = PointComposer(), {}
    for point in expand(overrides):
        cfg = composer.compose(point)
        if cfg.run.dir in first:
            return str(same_run(first[cfg.run.dir], point, cfg))
        first[cfg.run.dir] = point
    return None


def test_points_that_differ_only_in_launcher_keys_are_named_one_run():
    assert _one_run(BASE + ["train.seed=21,22", "cluster.partition=normal,preemptible"]) == (
        "the points train.seed=21 with cluster.partition=normal and with cluster.partition=preemptible are one run "
        "(runs/tiny_llama/train.seed=21): launcher keys (cluster.*) do not make a run of their own; give each value "
        "its own command, with run.name=NAME for a run of its own (docs/sweeps.md)")
    assert _one_run(BASE + ["checkpoint.keep_last=2,3", "cluster.time=1:00:00,2:00:00"]).startswith(
        "the points with cluster.time=1:00:00 and with cluster.time=2:00:00 are one run (runs/tiny_llama/default): "
        "launcher keys (cluster.*) do not make")  # the time written as typed, not as Hydra escapes it (2\\:00\\:00)
    assert "launcher keys (checkpoint.*)" in _one_run(BASE + ["checkpoint.keep_last=2,3"])


def test_a_point_listed_twice_is_named_not_blamed_on_run_dir():
    message = _one_run(BASE + ["train.seed=21,21"])
    assert "run.dir" not in message
    assert message.startswith("the sweep has the point +experiment=tiny_llama cluster=slurm train.seed=21 twice (a "
                              "comma list names one value twice)")


def test_a_run_dir_or_id_given_by_hand_is_named_with_its_value():
    assert _one_run(BASE + ["train.lr=1e-3,3e-4", "run.dir=same"]) == (
        "run.dir='same' is every point's (the points train.lr=0.001 and train.lr=0.0003 share the run directory "
        "same): leave run.dir out of a sweep, each point gets its own")
    assert _one_run(BASE + ["run.id=mine", "train.lr=0.1,0.2"]).startswith(
        "run.id='mine' is every point's (the points train.lr=0.1 and train.lr=0.2 share")


def test_points_that_differ_in_their_run_name_are_runs_of_their_own():
    assert _one_run(BASE + ["train.seed=21", "run.name=normal,preemptible", "cluster.partition=normal"]) is None


def test_a_group_picked_always_is_chosen_without_a_plus():
    with pytest.raises(ConfigError, match=r"^\+cluster='slurm' is invalid: expected cluster=slurm \(hpcrun's config "
                                          r"always picks a cluster: choose another without \+\)$"):
        compose(["cluster=local", "+cluster=slurm"])
