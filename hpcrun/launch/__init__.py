"""Launching runs, on the login node: compose the config, prepare the run directory, hand it to a launcher
(the foreground here, or sbatch), render scripts. Never imports torch or a training framework."""
