"""Watching runs, on the login node: status, report, logs, wait, cancel. Reads run directories (hpcrun.rundir) and
asks Slurm (hpcrun.slurm); never launches anything, never imports torch."""
