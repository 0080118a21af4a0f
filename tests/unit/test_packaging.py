"""conf/, slurm_templates/ and the corpus must work from an installed wheel, not only from a checkout."""

import subprocess
import sys
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_the_wheel_carries_conf_templates_and_corpus_and_hpcrun_runs_from_it(tmp_path):
    build = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(tmp_path), str(REPO)],
                           capture_output=True, text=True)
    assert build.returncode == 0, build.stderr
    wheel = next(tmp_path.glob("hpcrun_slurm-*.whl"))
    names = set(zipfile.ZipFile(wheel).namelist())
    for expected in ["hpcrun/conf/hpcrun.yaml", "hpcrun/conf/experiment/tiny_llama.yaml",
                     "hpcrun/conf/cluster/greene.yaml", "hpcrun/slurm_templates/base.sbatch.j2",
                     "hpcrun/slurm_templates/singularity.sbatch.j2",
                     "hpcrun/data/shakespeare.txt.gz", "hpcrun/py.typed"]:
        assert expected in names

    site = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(site)
    work = tmp_path / "work"
    work.mkdir()
    code = "import hpcrun.resources as r, sys; print(r.conf_dir()); sys.exit(__import__('hpcrun.cli').cli.main())"
    out = subprocess.run([sys.executable, "-c", code, "render", "+experiment=llama7b", "cluster=greene"],
                         cwd=work, env={"PYTHONPATH": str(site), "USER": "alice", "PATH": "/usr/bin:/bin"},
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines()[0] == str(site / "hpcrun" / "conf")
    assert "#SBATCH --gpus-per-node=a100:4" in out.stdout
    standalone = subprocess.run([sys.executable, "-c", code, "render", "--standalone", "+experiment=llama7b",
                                 "cluster=greene"], cwd=work, capture_output=True, text=True,
                                env={"PYTHONPATH": str(site), "USER": "alice", "PATH": "/usr/bin:/bin"})
    assert standalone.returncode == 0, standalone.stderr
    assert "# hpcrun run llama7b: one node, 4 processes (one per GPU)." in standalone.stdout
