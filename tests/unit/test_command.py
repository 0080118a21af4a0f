"""``hpcrun run -- COMMAND`` on the login side: the command line, the config it composes, its identity; and the
pieces the job side relies on (launcher detection, hidden staging, hpcrun's sitecustomize chaining to another)."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from hpcrun.cli import _split
from hpcrun.config.command import command_name, starts_workers
from hpcrun.config.compose import compose
from hpcrun.config.identity import run_id
from hpcrun.errors import ConfigError
from hpcrun.resources import inject_dir
from hpcrun.rundir.checkpoints import CheckpointDir


def test_the_command_after_double_dash_is_split_off_and_dash_m_run_is_run_dash_m():
    assert _split(["run", "a=1", "--", "python", "t.py", "--", "x"]) == (["run", "a=1"], ["python", "t.py", "--", "x"])
    assert _split(["-m", "run", "+lr=1,2", "--", "python", "t.py"]) == (["run", "-m", "+lr=1,2"], ["python", "t.py"])
    assert _split(["--config-dir", "c", "-m", "run", "--", "x"]) == (["run", "--config-dir", "c", "-m"], ["x"])
    assert _split(["+experiment=tiny_llama"]) == (["+experiment=tiny_llama"], None)


@pytest.mark.parametrize("argv, launcher", [
    (["torchrun", "--nproc_per_node=2", "train.py"], True),
    (["/opt/env/bin/torchrun", "train.py"], True),
    (["accelerate", "launch", "train.py"], True),
    (["accelerate", "config"], False),
    (["python", "-m", "torch.distributed.run", "--nproc_per_node=4", "t.py"], True),
    (["python3", "-u", "-m", "accelerate.commands.launch", "t.py"], True),
    (["python", "train.py"], False),
    (["deepspeed", "train.py"], True),
    (["bash", "run.sh"], False),
    (["python", "train.py", "-m", "torch.distributed.run"], False),  # the script's own -m (a Hydra multirun)
    (["trl", "sft", "--config", "sft.yaml"], True),  # accelerate launch, in trl's own process
    (["/opt/env/bin/trl", "dpo", "--model_name_or_path", "m"], True),
    (["trl", "env"], False),
    (["trl", "vllm-serve", "--model", "m"], False),
])
def test_launchers_are_recognised(argv, launcher):
    assert starts_workers(argv) is launcher


@pytest.mark.parametrize("argv, name", [
    (["python", "run_clm.py", "--x", "y.py"], "run_clm"),
    (["torchrun", "--nproc_per_node=2", "/a/b/train.py"], "train"),
    (["python", "-m", "pkg.sub.finetune"], "finetune"),
    (["bash", "go.sh"], "go"),
    (["./my_binary", "--flag"], "my_binary"),
    (["python", "train.py", "-m", "lr=0.001,0.0003"], "train"),  # a Hydra app's multirun: the script's -m
    (["python", "train.py", "-m", "hydra/launcher=joblib"], "train"),
    (["python", "-u", "-m", "pkg.train", "-m", "x=1,2"], "train"),
])
def test_a_run_is_named_after_its_script(argv, name):
    assert command_name(argv) == name


def test_the_command_is_part_of_the_runs_identity_and_launcher_keys_are_not():
    a = run_id(["+lr=0.1", "cluster.time=1:00:00"], ["python", "t.py", "--lr", "${lr}"])
    assert a == run_id(["+lr=0.1", "cluster.time=48:00:00"], ["python", "t.py", "--lr", "${lr}"])
    assert a != run_id(["+lr=0.2"], ["python", "t.py", "--lr", "${lr}"])
    assert a != run_id(["+lr=0.1"], ["python", "t.py", "--lr", "${lr}", "--more"])
    assert run_id([], ["python", "t.py"]).startswith("cmd-")


def test_compose_puts_the_resolved_command_in_the_config(tmp_path):
    (tmp_path / "t.py").write_text("")
    cfg = compose(["cluster=local", "+lr=3e-4"], cwd=tmp_path,
                  command=[sys.executable, "t.py", "--lr=${lr}", "--out", "${run.dir}/out", "$HOME"])
    assert cfg.task._target_ == "hpcrun.tasks.command.run" and cfg.run.name == "t"
    assert cfg.command.argv[2:] == ["--lr=0.0003", "--out", f"{cfg.run.dir}/out", "$HOME"]
    assert Path(cfg.run.dir).is_absolute() and cfg.run.dir.startswith(str(tmp_path / "runs" / "t"))
    assert cfg.cluster.tasks_per_node == 1


def test_an_escaped_interpolation_reaches_the_command_as_written_and_survives_the_saved_config(tmp_path):
    # A Hydra app's own interpolation, passed through: '\${...}' on hpcrun's command line. Before, OmegaConf read the
    # resolved '${...}' again as an interpolation of hpcrun's config and the command was refused.
    from hpcrun.config.compose import load_saved
    from hpcrun.rundir.create import config_yaml

    literal = ["lr=${optimizer.lr}", "a\\${b}", "${now:%H-%M}/${run.dir}"]
    escaped = ["lr=\\${optimizer.lr}", "a\\\\\\${b}", "\\${now:%H-%M}/\\${run.dir}"]
    cfg = compose(["cluster=local", "+x=1"], cwd=tmp_path, command=["echo", *escaped, "${x}"])
    assert cfg.command.argv[1:] == [*literal, "1"]
    saved = tmp_path / "config.yaml"
    saved.write_text(config_yaml(cfg))
    assert load_saved(saved).command.argv[1:] == [*literal, "1"]
    with pytest.raises(ConfigError, match=r"a Hydra app's\): \\\$\{\.\.\.\}"):
        compose(["cluster=local"], cwd=tmp_path, command=["echo", "lr=${optimizer.lr}"])


def test_a_launcher_runs_once_per_node_whatever_the_gpus(tmp_path):
    cfg = compose(["cluster=slurm", "cluster.gpus_per_node=4"], cwd=tmp_path, command=[str(Path(sys.executable).parent / "torchrun"), "x.py"])
    assert cfg.cluster.tasks_per_node == 1
    cfg = compose(["cluster=slurm", "cluster.gpus_per_node=4"], cwd=tmp_path, command=["true", "x"])
    assert cfg.cluster.tasks_per_node == 4  # a plain command runs once per GPU, under srun


def test_an_unknown_interpolation_names_the_argument(tmp_path):
    with pytest.raises(ConfigError, match=r"command='--lr=\$\{lr\}'"):
        compose(["cluster=local"], cwd=tmp_path, command=["true", "--lr=${lr}"])


def test_trainer_checkpoints_stage_where_get_last_checkpoint_never_looks(tmp_path):
    ckpts = CheckpointDir.in_output_dir(tmp_path)
    staging = ckpts.staging(7)
    staging.mkdir(parents=True)
    (staging / "model.safetensors").write_bytes(b"x" * 10)
    assert staging.parent.name.startswith(".") and staging.name == "checkpoint-7"
    assert ckpts.commit(7) == tmp_path / "checkpoint-7"
    latest, _ = ckpts.latest()
    assert latest.path == tmp_path / "checkpoint-7" and ckpts.prune() == []


def test_hpcrun_sitecustomize_runs_the_one_it_hides(tmp_path):
    other = tmp_path / "other"
    other.mkdir()
    (other / "sitecustomize.py").write_text("import os\nos.environ['OTHER_SITE'] = 'ran'\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(inject_dir()), str(other)]), "HPCRUN_RUN_DIR": "/x"}
    out = subprocess.run([sys.executable, "-c", "import os, sys; print(os.environ.get('OTHER_SITE'), "
                          "any(type(f).__name__ == '_TrainerHook' for f in sys.meta_path))"],
                         env=env, capture_output=True, text=True, timeout=60)
    assert out.stdout.split() == ["ran", "True"], out.stderr


def test_a_python_that_cannot_import_hpcrun_is_named_in_one_warning_and_the_command_still_composes(tmp_path,
                                                                                                   capsys):
    bare = tmp_path / "bin" / "python3"  # the system python, where the venv was not activated
    bare.parent.mkdir()
    bare.write_text("#!/bin/sh\nexit 1\n")  # find_spec('hpcrun') finds nothing there
    bare.chmod(0o755)
    (tmp_path / "t.py").write_text("print('hi')\n")
    compose(["cluster=local"], cwd=tmp_path, command=[str(bare), "t.py"])
    compose(["cluster=local"], cwd=tmp_path, command=[str(bare), "t.py", "--again"])
    (line,) = [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("hpcrun: warning:")]  # once
    assert f"{bare} cannot import hpcrun (not this environment's python, {sys.executable})" in line
    compose(["cluster=local"], cwd=tmp_path, command=[sys.executable, "t.py"])
    assert "warning" not in capsys.readouterr().err


def test_a_script_without_its_execute_bit_is_named_as_such(tmp_path):
    (tmp_path / "train.sh").write_text("#!/bin/sh\necho hi\n")  # there, but not chmod +x
    with pytest.raises(ConfigError, match=r"train.sh is not executable: chmod \+x it"):
        compose(["cluster=local"], cwd=tmp_path, command=["./train.sh"])
    with pytest.raises(ConfigError, match=r"there is none at .*/nope.sh"):
        compose(["cluster=local"], cwd=tmp_path, command=["./nope.sh"])
    with pytest.raises(ConfigError, match=r"command='missing.sh' is invalid: expected a shell script \(there is none"):
        compose(["cluster=local"], cwd=tmp_path, command=["bash", "missing.sh"])
    compose(["cluster=local"], cwd=tmp_path, command=["bash", "train.sh"])  # there: bash needs no execute bit


def test_options_before_any_subcommand_move_behind_it():
    assert _split(["--config-dir", "alt", "config", "+experiment=x"]) == (["config", "--config-dir", "alt",
                                                                          "+experiment=x"], None)
    assert _split(["--config-dir", "status", "+experiment=x"]) == (["--config-dir", "status", "+experiment=x"], None)
