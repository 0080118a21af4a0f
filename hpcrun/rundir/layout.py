"""Where everything of a run lives on disk: the one place that spells the run directory's file names.

    <run.dir>/.hpcrun-run        marks the folder as an hpcrun run (written when hpcrun creates it)
    <run.dir>/.hpcrun-lock       held by the start (or submission) that owns the run right now
    <run.dir>/config.yaml        the composed config (what the job reads at every start)
    <run.dir>/state.json         status, reason, and every start with how it ended (state.py)
    <run.dir>/ledger.jsonl       where the allocated time went, event by event (ledger.py)
    <run.dir>/logs/              start-N.log per start (start-N.rank-R.log for other ranks), latest.log
    <run.dir>/checkpoints/       step-N/ (complete ones only count), .staging/ while a save runs (checkpoints.py)
    <run.dir>/slurm/             the sbatch script, submitit's pickles, Slurm's output
    <run.dir>/final/             the task's final output (the built-in task: weights in save_pretrained format)
    <run.dir>/metrics.jsonl      one JSON record per logged step (optional: tasks that log write it)
    <run.dir>/cancel-request.json  who cancelled a local run's start with ``hpcrun cancel`` (until the next start)

A task keeps its own files under the run directory too (the built-in one: tokenizer/, tokens/, trainer/); it
asks :meth:`RunDir.task_file` for their paths.

Both sides use this module (standard library only).
"""

from __future__ import annotations

from pathlib import Path
from typing import Union

PathLike = Union[str, Path]


class RunDir:
    """The paths of one run directory. Creates nothing: see :mod:`hpcrun.rundir.create` for that."""

    MARKER = ".hpcrun-run"
    LOCK = ".hpcrun-lock"
    CONFIG = "config.yaml"
    STATE = "state.json"
    LEDGER = "ledger.jsonl"
    METRICS = "metrics.jsonl"
    LOGS = "logs"
    CHECKPOINTS = "checkpoints"
    SLURM = "slurm"
    FINAL = "final"
    LATEST_LOG = "latest.log"
    STOP_REQUEST = "stop-request.json"
    SIGNAL_AFTER_TRAINING = "signal-after-training.json"
    CANCEL_REQUEST = "cancel-request.json"
    REQUEUE_REQUEST = "requeue-request"
    OUTPUTS = "outputs.json"
    TRAININGS = "trainings.json"

    def __init__(self, path: PathLike) -> None:
        self.path = Path(path)

    def __repr__(self) -> str:
        return f"RunDir({str(self.path)!r})"

    def __fspath__(self) -> str:
        return str(self.path)

    @property
    def marker(self) -> Path:
        return self.path / self.MARKER

    @property
    def lock(self) -> Path:
        return self.path / self.LOCK

    @property
    def config(self) -> Path:
        return self.path / self.CONFIG

    @property
    def state(self) -> Path:
        return self.path / self.STATE

    @property
    def ledger(self) -> Path:
        return self.path / self.LEDGER

    @property
    def metrics(self) -> Path:
        return self.path / self.METRICS

    @property
    def logs(self) -> Path:
        return self.path / self.LOGS

    @property
    def checkpoints(self) -> Path:
        return self.path / self.CHECKPOINTS

    @property
    def slurm(self) -> Path:
        return self.path / self.SLURM

    @property
    def final(self) -> Path:
        return self.path / self.FINAL

    @property
    def latest_log(self) -> Path:
        return self.logs / self.LATEST_LOG

    @property
    def stop_request(self) -> Path:
        """Written by a command's process (``hpcrun.script``) that saved and stopped to be requeued."""
        return self.path / self.STOP_REQUEST

    @property
    def signal_after_training(self) -> Path:
        """Written by a command's process (``hpcrun.script``) that got a stop signal when it had no training left to
        stop (its Trainer's train() or its loop had ended), and so saved nothing and asked for no requeue."""
        return self.path / self.SIGNAL_AFTER_TRAINING

    @property
    def cancel_request(self) -> Path:
        """Written by ``hpcrun cancel`` before it signals a local run's process: the stop that follows is a cancel
        (hpcrun.observe.manage)."""
        return self.path / self.CANCEL_REQUEST

    @property
    def requeue_request(self) -> Path:
        """The Slurm job id the job asks the batch script (on the host) to requeue (hpcrun.job.requeue)."""
        return self.path / self.REQUEUE_REQUEST

    @property
    def outputs(self) -> Path:
        """The output folders a command's Trainers save their atomic ``checkpoint-N`` folders into."""
        return self.path / self.OUTPUTS

    @property
    def trainings(self) -> Path:
        """Per start, the output folder of each Trainer that started training, in the order they started."""
        return self.path / self.TRAININGS

    def start_log(self, start: int, rank: int = 0) -> Path:
        """The log of start ``start`` (1-based) of rank ``rank``."""
        return self.logs / (f"start-{start}.log" if rank == 0 else f"start-{start}.rank-{rank}.log")

    def task_file(self, name: str) -> Path:
        """A file or folder the task keeps for itself (a cache, its framework's own output)."""
        return self.path / name

    def is_run(self) -> bool:
        """Whether this folder holds an hpcrun run (its config; runs made before the marker existed count)."""
        return self.config.is_file()
