"""The `hpcrun` command as a user types it (a real subprocess), without training anything."""

import subprocess
import sys

import pytest

HEAVY = ("torch", "transformers", "accelerate")


def test_help_lists_the_commands_experiments_clusters_and_main_keys(hpcrun):
    out = hpcrun("--help")
    assert out.returncode == 0
    for expected in ["render", "tiny_llama", "llama7b", "greene", "local", "slurm", "train.max_steps",
                     "cluster.time", "run.dir", "--config-dir"]:
        assert expected in out.stdout
    assert hpcrun("render", "--help").returncode == 0


def test_help_lists_the_user_experiments_of_the_working_directory(hpcrun, tmp_path):
    (tmp_path / "conf" / "experiment").mkdir(parents=True)
    (tmp_path / "conf" / "experiment" / "mine.yaml").write_text("# @package _global_\nrun:\n  name: mine\n")
    assert "mine" in hpcrun("--help").stdout


@pytest.mark.parametrize(
    "args, fragment",
    [
        (["cluster=nope"], "cluster='nope' is invalid; valid choices: greene, local, slurm"),
        (["+experiment=tiny_llama", "cluster=slurm", "train.lrr=1"], "did you mean train.lr?"),
        (["+experiment=tiny_llama", "cluster=slurm", "cluster.time=30 mins"], "cluster.time='30 mins'"),
        (["render", "+experiment=llama7b", "cluster=greene", "cluster.gpus_per_node=99"], "cluster.gpus_per_node=99"),
        (["render", "cluster=local"], "runs locally"),
        (["--config-dir", "/no/such/dir", "cluster=local"], "--config-dir='/no/such/dir'"),
    ],
)
def test_bad_input_prints_one_line_exits_non_zero_and_creates_nothing(hpcrun, tmp_path, args, fragment):
    out = hpcrun(*args)
    assert out.returncode == 2
    lines = out.stderr.strip().splitlines()
    assert lines[-1].startswith("hpcrun: error: ") and fragment in lines[-1]
    assert "Traceback" not in out.stderr
    assert out.stdout == ""
    assert not (tmp_path / "runs").exists()


def test_render_prints_the_script_and_writes_nothing(hpcrun, tmp_path):
    out = hpcrun("render", "+experiment=llama7b", "cluster=greene", env={"USER": "alice"})
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("#!/bin/bash")
    assert "#SBATCH --requeue" in out.stdout
    assert list(tmp_path.iterdir()) == []


def test_options_may_stand_between_overrides(hpcrun, tmp_path):
    out = hpcrun("render", "+experiment=tiny_llama", "-o", "job.sbatch", "cluster=slurm", "run.name=between")
    assert out.returncode == 0, out.stderr
    assert "#SBATCH --job-name=between" in (tmp_path / "job.sbatch").read_text()


def test_render_finds_a_user_experiment_in_the_working_directory(hpcrun, tmp_path):
    (tmp_path / "conf" / "experiment").mkdir(parents=True)
    (tmp_path / "conf" / "experiment" / "mine.yaml").write_text(
        "# @package _global_\nrun:\n  name: mine\ncluster:\n  time: '3:00:00'\n"
    )
    out = hpcrun("render", "+experiment=mine", "cluster=slurm")
    assert out.returncode == 0, out.stderr
    assert "#SBATCH --job-name=mine" in out.stdout
    assert "#SBATCH --time=03:00:00" in out.stdout


@pytest.mark.parametrize("args", [["render", "+experiment=llama7b", "cluster=greene"], ["--help"]])
def test_the_submitting_side_never_imports_torch_transformers_or_accelerate(args, tmp_path):
    code = (
        "import contextlib, io, sys\n"
        "from hpcrun.cli import main\n"
        "with contextlib.redirect_stdout(io.StringIO()):\n"
        "    try:\n"
        f"        main({args!r})\n"
        "    except SystemExit:\n"
        "        pass\n"
        f"print(' '.join(m for m in {HEAVY!r} if m in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True,
                         env={"USER": "alice", "PATH": "/usr/bin:/bin"})
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == ""


def test_cfg_job_and_hpcrun_config_print_the_composed_config_and_start_nothing(hpcrun, tmp_path):
    """Hydra users reach for --cfg job: it prints what config.yaml would hold (as `hpcrun config` does) and exits;
    `hpcrun config RUN_DIR` prints a run's own."""
    import yaml

    from hpcrun.config.compose import compose
    from hpcrun.rundir.create import config_yaml

    args = ["+experiment=tiny_llama", "cluster=local", "train.lr=1e-3"]
    out = hpcrun(*args, "--cfg", "job")
    assert out.returncode == 0, out.stderr
    assert out.stdout == config_yaml(compose(args, cwd=tmp_path))
    assert yaml.safe_load(out.stdout)["train"]["lr"] == 0.001
    assert hpcrun("config", *args).stdout == out.stdout
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # no run directory: nothing was started
    run = tmp_path / "somerun"
    run.mkdir()
    (run / "config.yaml").write_text(out.stdout)
    assert hpcrun("config", str(run)).stdout == out.stdout
    bad = hpcrun(*args, "--cfg", "hydra")
    assert bad.returncode == 2 and "hpcrun has no hydra.* settings" in bad.stderr
