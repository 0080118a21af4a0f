"""Slurm, behind one client: every sbatch, sacct, squeue, scontrol and scancel call, with one retry policy.

* :mod:`~hpcrun.slurm.client`: running a Slurm command (retry policy), and sbatch through submitit;
* :mod:`~hpcrun.slurm.jobs`: job states, requeue, cancel, a job's times, MaxArraySize;
* :mod:`~hpcrun.slurm.site`: the site's limits (partitions, the job limit), checked before submitting;
* :mod:`~hpcrun.slurm.sbatch`: the batch script's options and the ``#SBATCH`` value check.

Both sides use it (the job requeues itself); standard library and submitit only, no torch.
"""
