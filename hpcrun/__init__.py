"""hpcrun: train Hugging Face models on shared Slurm GPU clusters without losing wall-clock time.

The package is split by where code runs:

* the submitting side (login node): :mod:`hpcrun.config`, :mod:`hpcrun.launch`, :mod:`hpcrun.cli`. It never
  imports torch, transformers or accelerate, so it answers in well under a second on a slow shared machine;
* the job side (compute node, or the foreground locally): :mod:`hpcrun.job` and :mod:`hpcrun.tasks`.
"""

__version__ = "0.1.0"
