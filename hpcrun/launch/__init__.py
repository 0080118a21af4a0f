"""Launching a composed run: in the foreground here (local) or through sbatch (Slurm). Submitting side: no torch."""

from hpcrun.launch.choose import default_cluster
from hpcrun.launch.rundir import prepare_run_dir

__all__ = ["default_cluster", "prepare_run_dir"]
