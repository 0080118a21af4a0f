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
