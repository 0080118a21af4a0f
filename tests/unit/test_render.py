"""The sbatch script hpcrun submits, rendered without Slurm."""

import os
import shlex
import subprocess
from pathlib import Path

import pytest

from hpcrun.config.compose import compose
from hpcrun.slurm.sbatch import python_command, render

GOLDEN = Path(__file__).resolve().parents[1] / "golden"
# Fixed so the golden file does not depend on the machine: the user and the python on the compute nodes.
STABLE = ["cluster.python=/home/alice/venv/bin/python"]


def _render(overrides, tmp_path, monkeypatch):
    monkeypatch.setenv("USER", "alice")
    return render(compose([*overrides, *STABLE], cwd=tmp_path))


def _sbatch_lines(script):
    return [ln for ln in script.splitlines() if ln.startswith("#SBATCH")]


def test_the_greene_llama7b_script_matches_the_golden_file(tmp_path, monkeypatch):
    script = _render(["+experiment=llama7b", "cluster=greene"], tmp_path, monkeypatch)
    golden = GOLDEN / "greene_llama7b.sbatch"
    if os.environ.get("HPCRUN_UPDATE_GOLDEN") == "1":
        golden.write_text(script)
    assert script == golden.read_text()


def test_every_script_asks_for_requeue_and_sends_the_signal_to_the_job_steps(tmp_path, monkeypatch):
    script = _render(["+experiment=tiny_llama", "cluster=slurm", "cluster.signal=USR1", "cluster.signal_delay=5m"],
                     tmp_path, monkeypatch)
    lines = _sbatch_lines(script)
    assert "#SBATCH --requeue" in lines
    assert "#SBATCH --signal=USR1@300" in lines  # no "B:": python under srun gets it, not only the batch shell
    assert "#SBATCH --time=01:00:00" in lines
    assert any(ln.startswith("srun ") and "-m submitit.core._submit" in ln for ln in script.splitlines())


def test_cluster_keys_map_onto_sbatch_options(tmp_path, monkeypatch):
    script = _render(
        ["cluster=slurm", "cluster.partition=gpu", "cluster.account=pr_1", "cluster.qos=high", "cluster.nodes=2",
         "cluster.tasks_per_node=4", "cluster.gpus_per_node=4", "cluster.gpu_type=v100", "cluster.cpus_per_task=6",
         "cluster.mem=120G", "cluster.constraint=ib", "cluster.time=2-00:00:00",
         "cluster.sbatch_extra.mail-type=END"],
        tmp_path, monkeypatch,
    )
    lines = set(_sbatch_lines(script))
    for expected in ["--partition=gpu", "--account=pr_1", "--qos=high", "--nodes=2", "--ntasks-per-node=4",
                     "--gpus-per-node=v100:4", "--cpus-per-task=6", "--mem=120G", "--constraint=ib",
                     "--time=2-00:00:00", "--mail-type=END"]:
        assert f"#SBATCH {expected}" in lines


def test_overcommit_on_one_node_asks_for_tasks_not_tasks_per_node(tmp_path, monkeypatch):
    """Slurm 22.05 finds no node for --ntasks-per-node above the node's CPUs even with --overcommit; --ntasks=N
    on one node is the same request, and it runs (tests/integration/test_elastic_slurm.py)."""
    lines = _sbatch_lines(_render(["cluster=slurm", "cluster.tasks_per_node=3", "cluster.cpus_per_task=1",
                                   "cluster.sbatch_extra.overcommit=true"], tmp_path, monkeypatch))
    assert {"#SBATCH --nodes=1", "#SBATCH --ntasks=3", "#SBATCH --overcommit"} <= set(lines)
    assert not any(ln.startswith("#SBATCH --ntasks-per-node") for ln in lines)
    two_nodes = _sbatch_lines(_render(["cluster=slurm", "cluster.nodes=2", "cluster.tasks_per_node=3",
                                       "cluster.sbatch_extra.overcommit=true"], tmp_path, monkeypatch))
    assert {"#SBATCH --nodes=2", "#SBATCH --ntasks-per-node=3"} <= set(two_nodes)


def test_logs_land_in_the_run_directory(tmp_path, monkeypatch):
    script = _render(["+experiment=tiny_llama", "cluster=slurm"], tmp_path, monkeypatch)
    run_dir = tmp_path / "runs" / "tiny_llama" / "default"
    assert f"#SBATCH --output={run_dir}/slurm/%j_0_log.out" in script
    assert f"#SBATCH --error={run_dir}/slurm/%j_0_log.err" in script


def test_setup_lines_run_before_srun(tmp_path, monkeypatch):
    script = _render(["cluster=greene"], tmp_path, monkeypatch)
    assert script.index("module purge") < script.index("\nsrun ")


def test_the_singularity_wrapper_runs_python_inside_the_overlay_environment(tmp_path, monkeypatch):
    script = _render(["+experiment=llama7b", "cluster=greene", "cluster.container.enabled=true",
                      "cluster.container.binds=[/scratch]"], tmp_path, monkeypatch)
    srun = next(ln for ln in script.splitlines() if ln.startswith("srun "))
    words = shlex.split(srun)
    i = words.index("singularity")
    assert words[i:i + 3] == ["singularity", "exec", "--nv"]
    assert "/scratch/alice/overlay-50G-10M.ext3:ro" in words
    assert words[words.index("--bind") + 1] == "/scratch"
    assert "source /ext3/env.sh; exec python \"$@\"" in words
    assert words[-4:-1] == ["-u", "-m", "submitit.core._submit"]
    subprocess.run(["bash", "-n"], input=script, text=True, check=True)


def test_the_container_wrapper_passes_the_submitit_arguments_through_to_python(tmp_path):
    """Run the wrapper for real, with a fake `singularity` that just executes its command."""
    fake_bin = tmp_path / "bin"
    fake_bin.mkdir()
    (fake_bin / "singularity").write_text('#!/bin/bash\nshift; while [[ "$1" == --* ]]; do shift 2; done\nshift\nexec "$@"\n')
    (fake_bin / "singularity").chmod(0o755)
    env_script = tmp_path / "env.sh"
    env_script.write_text("export FROM_OVERLAY=yes\n")
    cfg = compose(["cluster=slurm", "cluster.container.enabled=true", "cluster.container.image=/img.sif",
                   f"cluster.container.env_script={env_script}", "cluster.container.python=python3",
                   "cluster.container.nv=false"], cwd=tmp_path)
    command = python_command(cfg.cluster) + ' -c "import os, sys; print(os.environ[\'FROM_OVERLAY\'], sys.argv[1:])" a "b c"'
    out = subprocess.run(["bash", "-c", command], capture_output=True, text=True,
                         env={**os.environ, "PATH": f"{fake_bin}:{os.environ['PATH']}"}, check=True)
    assert out.stdout.strip() == "yes ['a', 'b c']"


@pytest.mark.parametrize("cluster", ["slurm", "greene"])
def test_rendered_scripts_are_valid_bash(cluster, tmp_path, monkeypatch):
    script = _render(["+experiment=tiny_llama", f"cluster={cluster}", 'run.name="odd name\'s $(x); y"'],
                     tmp_path, monkeypatch)
    subprocess.run(["bash", "-n"], input=script, text=True, check=True)
    assert "#SBATCH --job-name='odd name'\"'\"'s $(x); y'" in script


def test_render_without_cluster_renders_the_one_hpcrun_cluster_names_as_a_submission_would(tmp_path):
    import sys

    def cli(value):
        env = {**os.environ, "USER": "alice", "HPCRUN_CLUSTER": value}
        out = subprocess.run([sys.executable, "-m", "hpcrun", "render", "+experiment=llama7b", *STABLE], cwd=tmp_path,
                             env=env, capture_output=True, text=True, timeout=120)
        assert out.returncode == 0, out.stderr
        return out.stdout

    assert cli("greene") == (GOLDEN / "greene_llama7b.sbatch").read_text() + "\n"  # the Greene user's own script
    generic = cli("local")  # a local default has no script: the generic Slurm one, as before
    assert "#SBATCH" in generic and "module purge" not in generic
