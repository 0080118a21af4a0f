import stat

from hpcrun.launch.choose import default_cluster


def _path_with_sbatch(tmp_path):
    fake = tmp_path / "sbatch"
    fake.write_text("#!/bin/sh\n")
    fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
    return str(tmp_path)


def test_without_sbatch_the_default_is_local(tmp_path):
    assert default_cluster({"PATH": str(tmp_path)})[0] == "local"


def test_with_sbatch_on_the_path_the_default_is_slurm(tmp_path):
    assert default_cluster({"PATH": _path_with_sbatch(tmp_path)})[0] == "slurm"


def test_inside_a_slurm_allocation_the_job_runs_right_there(tmp_path):
    choice, reason = default_cluster({"PATH": _path_with_sbatch(tmp_path), "SLURM_JOB_ID": "42"})
    assert choice == "local" and "42" in reason


def test_hpcrun_cluster_wins_over_everything(tmp_path):
    env = {"PATH": _path_with_sbatch(tmp_path), "SLURM_JOB_ID": "42", "HPCRUN_CLUSTER": "greene"}
    assert default_cluster(env) == ("greene", "from $HPCRUN_CLUSTER")


def _path_with_scontrol(tmp_path, hostnames):
    fake = tmp_path / "scontrol"
    fake.write_text("#!/bin/sh\n" + "".join(f"echo {h}\n" for h in hostnames))
    fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
    return f"{tmp_path}:/usr/bin:/bin"


def test_sallocs_shell_on_a_login_node_is_off_the_allocation_and_a_node_of_it_is_not(tmp_path):
    import socket

    from hpcrun.launch.choose import off_the_allocation

    salloc = {"SLURM_JOB_ID": "42", "SLURM_JOB_NODELIST": "gr[001-002]",
              "PATH": _path_with_scontrol(tmp_path, ["gr001", "gr002"])}
    problem = off_the_allocation(salloc)
    assert problem.startswith(f"this shell is salloc's, on {socket.gethostname()}, not on a node of Slurm job 42 "
                              "(gr[001-002]): a local run would train on")
    assert off_the_allocation({**salloc, "SLURMD_NODENAME": "gr001"}) is None  # srun --pty bash, a batch script
    here = {**salloc, "PATH": _path_with_scontrol(tmp_path, ["gr001", socket.gethostname()])}
    assert off_the_allocation(here) is None  # salloc's shell on a node of the job (a one-node cluster)
    assert off_the_allocation({k: v for k, v in salloc.items() if k != "SLURM_JOB_ID"}) is None


def test_a_local_run_in_sallocs_shell_off_the_allocation_is_refused_and_nothing_is_written(tmp_path):
    import os
    import subprocess
    import sys

    env = {**{k: v for k, v in os.environ.items() if not k.startswith(("SLURM", "HPCRUN_CLUSTER"))},
           "SLURM_JOB_ID": "42", "SLURM_JOB_NODELIST": "gr[001-002]"}
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    env["PATH"] = _path_with_scontrol(bin_dir, ["gr001", "gr002"]).replace(":/usr/bin:/bin", ":" + env["PATH"])
    out = subprocess.run([sys.executable, "-m", "hpcrun", "+experiment=tiny_llama", "run.dir=run"], cwd=tmp_path,
                         env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 2, out.stderr
    assert out.stderr.splitlines()[-1].startswith("hpcrun: error: this shell is salloc's")
    assert not (tmp_path / "run").exists()


def test_copies_of_hpcrun_that_srun_started_are_refused_but_one_task_or_a_batch_script_is_not():
    from hpcrun.launch.choose import copies_under_srun

    problem = copies_under_srun({"SLURM_STEP_NUM_TASKS": "4", "SLURM_PROCID": "2", "SLURM_JOB_ID": "9"})
    assert problem.startswith("srun started 4 copies of hpcrun (SLURM_STEP_NUM_TASKS=4); a local run is one process")
    assert "cluster=slurm cluster.tasks_per_node=4" in problem
    assert copies_under_srun({"SLURM_STEP_NUM_TASKS": "1", "SLURM_PROCID": "0"}) is None  # srun --pty bash
    assert copies_under_srun({"SLURM_NTASKS": "4", "SLURM_PROCID": "0"}) is None  # sbatch -n4's batch script
