"""Adapters between training frameworks and hpcrun's one step-and-save protocol (:mod:`hpcrun.job.steps`).

Each framework has its own subpackage here (``transformers/`` today); a new one (Lightning, a plain torch loop
helper, ...) goes beside it, calls :func:`hpcrun.job.steps.decide` at each step's end and saves inside
:func:`hpcrun.job.steps.checkpoint_save`. The job package (:mod:`hpcrun.job`) imports no framework; the login
node never imports this package.
"""
