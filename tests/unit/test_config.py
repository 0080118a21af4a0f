"""Composition of every experiment with every cluster, user config folders, and value checks."""

from pathlib import Path

import pytest

from hpcrun.config.compose import available, compose, load_saved, search_dirs
from hpcrun.config.describe import key_docs
from hpcrun.errors import ConfigError, UserError
from hpcrun.launch.rundir import config_yaml
from hpcrun.resources import conf_dir

EXPERIMENTS = available("experiment", [conf_dir()])
CLUSTERS = available("cluster", [conf_dir()])


def test_the_packaged_groups_have_what_the_public_interface_promises():
    assert {"local", "slurm", "greene"} <= set(CLUSTERS)
    assert {"tiny_llama", "llama7b"} <= set(EXPERIMENTS)


@pytest.mark.parametrize("cluster", CLUSTERS)
@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_every_experiment_composes_on_every_cluster(experiment, cluster, tmp_path, monkeypatch):
    monkeypatch.setenv("USER", "alice")
    cfg = compose([f"+experiment={experiment}", f"cluster={cluster}"], cwd=tmp_path)
    assert cfg.run.name == experiment
    assert Path(cfg.run.dir).is_absolute()
    assert cfg.cluster.name == cluster
    assert cfg.cluster.time_seconds() > 0


def test_run_dir_defaults_to_the_run_root_the_experiment_name_and_default(tmp_path):
    cfg = compose(["+experiment=tiny_llama", "cluster=local"], cwd=tmp_path)
    assert cfg.run.dir == str(tmp_path / "runs" / "tiny_llama" / "default")


def test_greene_puts_runs_on_scratch_and_llama7b_asks_for_four_a100s_for_48_hours(tmp_path, monkeypatch):
    monkeypatch.setenv("USER", "alice")
    cfg = compose(["+experiment=llama7b", "cluster=greene"], cwd=tmp_path)
    assert cfg.run.dir == "/scratch/alice/hpcrun/runs/llama7b/default"
    assert (cfg.cluster.gpus_per_node, cfg.cluster.gpu_type, cfg.cluster.time) == (4, "a100", "48:00:00")
    assert cfg.model.name_or_path == "meta-llama/Llama-2-7b-hf"
    assert (cfg.model.hidden_size, cfg.model.num_hidden_layers, cfg.model.intermediate_size) == (4096, 32, 11008)
    assert cfg.train.precision == "bf16"


def test_command_line_overrides_win_over_the_experiment(tmp_path):
    cfg = compose(["+experiment=llama7b", "cluster=slurm", "cluster.time=2-00:00:00", "train.lr=1e-4"], cwd=tmp_path)
    assert cfg.cluster.time_seconds() == 2 * 86400
    assert cfg.train.lr == 1e-4


@pytest.mark.parametrize(
    "overrides, fragment",
    [
        (["cluster=nope"], "cluster='nope' is invalid; valid choices: greene, local, slurm"),
        (["+experiment=nope"], "experiment='nope' is invalid; valid choices:"),
        (["experiment=tiny_llama"], "+experiment=tiny_llama"),
        (["train.lrr=0.1"], "train.lrr='0.1' is an unknown key; did you mean train.lr?"),
        (["nosuch.key=1"], "nosuch.key='1' is an unknown key"),
        (["cluster.time=30 mins"], "cluster.time='30 mins' is invalid: expected a Slurm time"),
        (["cluster.time=0"], "cluster.time='0' is invalid: expected a positive duration"),
        (["cluster=greene", "cluster.time=8-00:00:00"], "cluster.time='8-00:00:00' is invalid: expected at most"),
        (["cluster.gpus_per_node=-1"], "cluster.gpus_per_node=-1 is invalid"),
        (["cluster=greene", "cluster.gpus_per_node=64"], "cluster.gpus_per_node=64 is invalid"),
        (["cluster=greene", "cluster.gpus_per_node=1", "cluster.gpu_type=h100"], "valid choices: a100, rtx8000, v100"),
        (["cluster.gpu_type=a100"], "cluster.gpu_type='a100' is invalid: expected no GPU type"),
        (["cluster.mem=lots"], "cluster.mem='lots' is invalid"),
        (["cluster.signal=USR3"], "cluster.signal='USR3' is invalid"),
        (["cluster=slurm", "cluster.signal_delay=2h", "cluster.time=1:00:00"], "cluster.signal_delay='2h' is invalid"),
        (["cluster.launcher=kubernetes"], "valid choices: local, slurm"),
        (["cluster.sbatch_extra.time=5"], "cluster.sbatch_extra.time=5 is invalid"),
        (["cluster.container.enabled=true"], "cluster.container.image=None is invalid"),
        (["train.max_steps=abc"], "train.max_steps"),
        (["train.max_steps=0"], "train.max_steps=0 is invalid"),
        (["train.precision=fp8"], "valid choices: bf16, fp16, fp32"),
        (["train.lr=-1"], "train.lr=-1"),
        (["model.hidden_size=100"], "model.hidden_size=100 is invalid: expected a multiple of"),
        (["data.seq_len=4096"], "data.seq_len=4096 is invalid: expected at most model.max_position_embeddings"),
        (["run.name=a/b"], "run.name='a/b' is invalid"),
        (["hydra.run.dir=x"], "hydra.run.dir"),
        (["oops"], "KEY=VALUE"),
        (["run.name=my run's"], "quote a value that has spaces"),
    ],
)
def test_bad_input_is_one_line_naming_the_key_and_the_value(overrides, fragment, tmp_path):
    with pytest.raises(UserError) as info:
        compose(overrides, cwd=tmp_path)
    message = str(info.value)
    assert fragment in message
    assert "\n" not in message
    assert not (tmp_path / "runs").exists()


def test_a_user_experiment_in_the_working_directory_conf_is_found(tmp_path):
    (tmp_path / "conf" / "experiment").mkdir(parents=True)
    (tmp_path / "conf" / "experiment" / "mine.yaml").write_text(
        "# @package _global_\nrun:\n  name: mine\ntrain:\n  max_steps: 7\n"
    )
    cfg = compose(["+experiment=mine", "cluster=local"], cwd=tmp_path)
    assert (cfg.run.name, cfg.train.max_steps) == ("mine", 7)
    assert "mine" in available("experiment", search_dirs((), tmp_path))


def test_a_user_cluster_file_replaces_the_packaged_one_and_config_dir_comes_first(tmp_path):
    project = tmp_path / "project"
    (project / "conf" / "cluster").mkdir(parents=True)
    (project / "conf" / "cluster" / "greene.yaml").write_text("name: greene\nlauncher: slurm\naccount: pr_1_general\n")
    extra = tmp_path / "extra"
    (extra / "cluster").mkdir(parents=True)
    (extra / "cluster" / "greene.yaml").write_text("name: greene\nlauncher: slurm\naccount: pr_2_general\n")
    assert compose(["cluster=greene"], cwd=project).cluster.account == "pr_1_general"
    assert compose(["cluster=greene"], config_dirs=[extra], cwd=project).cluster.account == "pr_2_general"


def test_a_missing_config_dir_is_a_clear_error(tmp_path):
    with pytest.raises(ConfigError, match="--config-dir='.*nope' is invalid: expected an existing folder"):
        compose([], config_dirs=[tmp_path / "nope"], cwd=tmp_path)


def test_the_saved_config_reloads_to_the_same_values(tmp_path):
    cfg = compose(["+experiment=tiny_llama", "cluster=slurm", "train.max_steps=12"], cwd=tmp_path)
    path = tmp_path / "config.yaml"
    path.write_text(config_yaml(cfg))
    assert load_saved(path) == cfg


def test_a_corrupted_saved_config_is_a_clear_error(tmp_path):
    path = tmp_path / "config.yaml"
    path.write_text("train:\n  max_steps: [unclosed\n")
    with pytest.raises(UserError, match="not a readable hpcrun config"):
        load_saved(path)


def test_every_config_key_has_a_one_line_description():
    docs = key_docs()
    assert len(docs) > 50
    missing = [d.key for d in docs if not d.doc]
    assert missing == []


def test_the_configuration_reference_in_docs_is_generated_from_the_schema():
    from hpcrun.config.describe import markdown

    path = Path(__file__).resolve().parents[2] / "docs" / "configuration.md"
    assert path.read_text() == markdown(), "regenerate: python -m hpcrun.config.describe > docs/configuration.md"
