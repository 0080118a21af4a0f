"""Composition of every experiment with every cluster, user config folders, value checks, and tasks that own
their settings (declared in a dataclass, or free-form)."""

import copy
import os
import pickle
import sys
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from hpcrun.config.compose import available, compose, from_container, load_saved, search_dirs, to_container
from hpcrun.config.describe import key_docs
from hpcrun.config.identity import training_differences
from hpcrun.errors import ConfigError, UserError
from hpcrun.resources import conf_dir
from hpcrun.tasks.settings import CausalLMSettings

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


def _save(cfg, path: Path) -> Path:
    path.write_text(OmegaConf.to_yaml(OmegaConf.create(to_container(cfg))))
    return path


def test_the_saved_config_reloads_to_the_same_values(tmp_path):
    cfg = compose(["+experiment=tiny_llama", "cluster=slurm", "train.max_steps=12"], cwd=tmp_path)
    assert load_saved(_save(cfg, tmp_path / "config.yaml")) == cfg
    assert from_container(to_container(cfg)) == cfg
    assert isinstance(cfg.settings, CausalLMSettings) and cfg.train is cfg.settings.train


def test_a_bad_value_merged_into_a_saved_config_names_its_whole_key(tmp_path):
    # `hpcrun resume RUN checkpoint.keep_last=x` merges the value into the saved config: OmegaConf named the key
    # within its section ("key: keep_last"), a raw message; a fresh submit names checkpoint.keep_last.
    saved = to_container(compose(["+experiment=tiny_llama", f"run.dir={tmp_path / 'run'}"], cwd=tmp_path))
    merged = OmegaConf.merge(OmegaConf.create(saved), OmegaConf.from_dotlist(["checkpoint.keep_last=x"]))
    with pytest.raises(ConfigError) as err:
        from_container(merged)
    assert str(err.value) == "checkpoint.keep_last='x' is invalid: expected an integer"


def test_a_config_survives_deepcopy_and_pickle(tmp_path):
    cfg = compose(["+experiment=tiny_llama", "cluster=local", "+notes.text=hello"], cwd=tmp_path)
    for copied in (copy.deepcopy(cfg), pickle.loads(pickle.dumps(cfg))):
        assert copied == cfg
        assert (copied.train.max_steps, copied.notes.text) == (300, "hello")


def test_a_config_saved_before_tasks_declared_settings_reads_as_the_built_in_task(tmp_path):
    saved = to_container(compose(["+experiment=tiny_llama", "cluster=local"], cwd=tmp_path))
    del saved["task"]["settings"]  # config.yaml written before task.settings existed
    cfg = from_container(saved)
    assert isinstance(cfg.settings, CausalLMSettings) and cfg.model.hidden_size == 192
    assert training_differences(saved, to_container(cfg)) == []  # the same command still resumes that run


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


def test_the_reference_lists_hpcrun_s_own_keys_first_then_the_built_in_task_s():
    heads = list(dict.fromkeys(d.key.split(".")[0] for d in key_docs()))
    assert heads == ["run", "cluster", "checkpoint", "task", "model", "data", "train"]


# A task of one's own, as a user writes it beside their project: its function, and a settings dataclass.
MYTASK = '''\
"""A task of one's own (imported on the submitting side for its settings: no torch here)."""
from dataclasses import dataclass, field
from typing import Optional


def train(cfg, ctx):
    return None


@dataclass
class Layers:
    # How wide each layer is.
    width: int = 3
    # A label.
    name: Optional[str] = None


@dataclass
class MySettings:
    # The layers.
    layers: Layers = field(default_factory=Layers)
'''
DECLARED = ["task._target_=mytask.train", "task.settings=mytask.MySettings", "cluster=local"]


@pytest.fixture
def project(tmp_path):
    """A project folder holding mytask.py (the working directory of the compositions)."""
    (tmp_path / "mytask.py").write_text(MYTASK)
    yield tmp_path
    sys.modules.pop("mytask", None)  # the next test's mytask.py is another file


def test_a_task_of_ones_own_has_free_form_sections_and_none_of_the_built_in_tasks(project):
    cfg = compose(["task._target_=mytask.train", "+mytask.width=7", "+mytask.name=abc", "cluster=local"], cwd=project)
    assert (cfg.mytask.width, cfg.mytask.name) == (7, "abc")
    assert cfg.settings is None and not hasattr(cfg, "train")
    saved = to_container(cfg)
    assert set(saved) == {"run", "cluster", "checkpoint", "task", "mytask"}
    assert saved["mytask"] == {"width": 7, "name": "abc"}
    assert cfg.run.id == "mytask.name=abc,mytask.width=7,task._target_=mytask.train"
    assert load_saved(_save(cfg, project / "config.yaml")) == cfg


def test_the_built_in_tasks_keys_are_not_checked_for_a_task_of_ones_own(project):
    # Refused for the built-in task (seq_len over max_position_embeddings, fp8): here they are the task's own.
    cfg = compose(["task._target_=mytask.train", "+data.seq_len=100000", "+train.precision=fp8"], cwd=project)
    assert (cfg.data.seq_len, cfg.train.precision) == (100000, "fp8")
    assert "model" not in to_container(cfg)


def test_a_key_of_the_built_in_task_is_not_one_of_a_task_of_ones_own(project):
    with pytest.raises(ConfigError, match=r"^train.lr='1e-4' is an unknown key; task._target_=mytask.train has no "
                                          r"train section .*\+train.lr=1e-4$"):
        compose(["task._target_=mytask.train", "train.lr=1e-4"], cwd=project)
    with pytest.raises(ConfigError, match=r"^model='llama2_7b' is a choice this task does not use; .*task=causal_lm"):
        compose(["task._target_=mytask.train", "model=llama2_7b"], cwd=project)
    assert not (project / "runs").exists()


def test_declared_settings_are_typed_and_a_wrong_type_is_refused_naming_the_key(project):
    cfg = compose([*DECLARED, "layers.width=8"], cwd=project)
    assert (cfg.layers.width, cfg.layers.name, type(cfg.settings).__name__) == (8, None, "MySettings")
    assert cfg.run.id == "layers.width=8,task._target_=mytask.train,task.settings=mytask.MySettings"
    assert load_saved(_save(cfg, project / "config.yaml")) == cfg
    with pytest.raises(ConfigError) as info:
        compose([*DECLARED, "layers.width=wide"], cwd=project)
    assert str(info.value) == "layers.width='wide' is invalid: expected an integer"
    assert not (project / "runs").exists()


def test_an_unknown_key_in_a_declared_section_gets_did_you_mean_from_the_command_line_and_from_a_file(project):
    with pytest.raises(ConfigError, match=r"^layers.widht='4' is an unknown key; did you mean layers.width\?$"):
        compose([*DECLARED, "layers.widht=4"], cwd=project)
    (project / "conf" / "experiment").mkdir(parents=True)
    (project / "conf" / "experiment" / "mine.yaml").write_text(
        "# @package _global_\ndefaults:\n  - override /task: custom\nrun:\n  name: mine\n"
        "task:\n  _target_: mytask.train\n  settings: mytask.MySettings\nlayers:\n  widht: 9\n")
    with pytest.raises(ConfigError, match=r"^layers.widht=9 is an unknown key; did you mean layers.width\?$"):
        compose(["+experiment=mine"], cwd=project)
    assert not (project / "runs").exists()


def test_an_experiment_for_a_task_of_ones_own_overrides_the_task_group(project):
    (project / "conf" / "experiment").mkdir(parents=True)
    (project / "conf" / "experiment" / "mine.yaml").write_text(
        "# @package _global_\ndefaults:\n  - override /task: custom\nrun:\n  name: mine\n"
        "task:\n  _target_: mytask.train\n  settings: mytask.MySettings\nlayers:\n  width: 9\n"
        "notes:\n  width_again: ${layers.width}\n")
    cfg = compose(["+experiment=mine", "cluster=local"], cwd=project)
    assert (cfg.run.name, cfg.run.id, cfg.layers.width, cfg.notes.width_again) == ("mine", "default", 9, 9)
    assert set(to_container(cfg)) == {"run", "cluster", "checkpoint", "task", "layers", "notes"}


def test_a_task_of_ones_own_may_reuse_the_built_in_settings_and_their_groups(project):
    cfg = compose(["task._target_=mytask.train", "task.settings=hpcrun.tasks.settings.CausalLMSettings",
                   "model=llama2_7b", "train.lr=1e-4", "cluster=local"], cwd=project)
    assert (cfg.task._target_, cfg.model.hidden_size, cfg.train.lr) == ("mytask.train", 4096, 1e-4)
    with pytest.raises(ConfigError, match="did you mean train.lr"):
        compose(["task._target_=mytask.train", "task.settings=hpcrun.tasks.settings.CausalLMSettings",
                 "train.lrr=1"], cwd=project)


@pytest.mark.parametrize(
    "settings, fragment",
    [
        ("mytask.Nope", "task.settings='mytask.Nope' is invalid: expected a dataclass (no dataclass Nope in mytask)"),
        ("nomodule.MySettings", "expected a dataclass in a module importable from"),
        ("mytask.Layers", "expected a dataclass whose fields are sections (dataclasses); its field width is"),
    ],
)
def test_a_settings_class_that_cannot_be_used_is_one_clear_line(project, settings, fragment):
    with pytest.raises(ConfigError) as info:
        compose(["task._target_=mytask.train", f"task.settings={settings}"], cwd=project)
    assert fragment in str(info.value) and "\n" not in str(info.value)
    assert not (project / "runs").exists()


def test_an_interpolation_that_does_not_resolve_is_one_line_naming_its_key():
    from hpcrun.errors import ConfigError

    with pytest.raises(ConfigError, match=r"^run\.name='\$\{nope\}' does not resolve \(Interpolation key 'nope' "
                                          r"not found\)"):
        compose(["+experiment=tiny_llama", "run.name=${nope}"])
    with pytest.raises(ConfigError, match=r"^run\.name='\$\{oc\.env:HPCRUN_NOT_SET_ANYWHERE\}' does not resolve"):
        compose(["+experiment=tiny_llama", "run.name=${oc.env:HPCRUN_NOT_SET_ANYWHERE}"])


def test_paths_under_the_users_name_take_the_login_name_even_where_user_is_unset(monkeypatch):
    """cluster=greene puts runs under /scratch/<you>: with USER unset (a container, cron) the password database's
    name for the uid, never a silent /scratch/unknown."""
    import pwd

    monkeypatch.setenv("USER", "alice")
    assert compose(["+experiment=tiny_llama", "cluster=greene"]).cluster.run_root == "/scratch/alice/hpcrun/runs"
    monkeypatch.delenv("USER")
    me = pwd.getpwuid(os.getuid()).pw_name
    assert compose(["+experiment=tiny_llama", "cluster=greene"]).cluster.run_root == f"/scratch/{me}/hpcrun/runs"


def test_a_package_line_hydra_would_ignore_is_refused_naming_the_file_and_line(tmp_path):
    """Hydra reads `# @package` only before any other line of the file: below a comment it is silently ignored."""
    from hpcrun.errors import UserError

    (tmp_path / "conf" / "experiment").mkdir(parents=True)
    mine = tmp_path / "conf" / "experiment" / "mine.yaml"
    mine.write_text("# conf/experiment/mine.yaml\n# @package _global_\nrun:\n  name: mine\n")
    with pytest.raises(UserError, match=r"mine\.yaml: line 2, '# @package _global_', comes after other lines, "
                                        r"where Hydra ignores it: make it the file's first line"):
        compose(["+experiment=mine"], cwd=tmp_path)
    mine.write_text("# @package _global_\n# conf/experiment/mine.yaml\nrun:\n  name: mine\n")
    assert compose(["+experiment=mine"], cwd=tmp_path).run.name == "mine"
