"""A run's shape: how many processes trained it, and how its global batch is made of them.

Every checkpoint of the built-in task holds ``hpcrun-shape.json`` (processes, per-process batch, gradient
accumulation, global batch). A start on another number of processes (``hpcrun resume RUN cluster.tasks_per_node=1``)
continues the run with the *same global batch*: :func:`continue_on` keeps the per-process batch and changes the
gradient accumulation, or, where that cannot divide, takes the largest smaller per-process batch that does. The data
position is counted in global batches (a step is one), and the training set is cut to whole global batches, so the
samples of step N are the same on any number of processes (docs/elastic.md).

No torch: ``hpcrun resume`` checks a new shape on the login node before anything is submitted.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import List, Optional

from hpcrun.errors import ConfigError

SHAPE_FILE = "hpcrun-shape.json"  # in each checkpoint of the built-in task


@dataclass(frozen=True)
class Shape:
    """One start's shape.

    Args:
        processes: the world size (``cluster.nodes`` x ``cluster.tasks_per_node``).
        batch_size: samples per process per micro-batch.
        grad_accum: micro-batches per optimizer step.
    """

    processes: int
    batch_size: int
    grad_accum: int

    @property
    def global_batch(self) -> int:
        """Samples per optimizer step, across every process."""
        return self.processes * self.batch_size * self.grad_accum

    def describe(self) -> str:
        return (f"{self.processes} process(es) x batch {self.batch_size} x accumulation {self.grad_accum} = "
                f"{self.global_batch} samples a step")

    def write(self, folder: Path, rotating_epochs: bool = False) -> None:
        """Into a checkpoint's folder; ``rotating_epochs``: its run cuts each epoch at another place
        (:mod:`hpcrun.tasks.epochs`), where older runs cut every epoch at the same one."""
        data = {**asdict(self), "global_batch": self.global_batch}
        if rotating_epochs:
            data["epochs"] = "rotating"
        (Path(folder) / SHAPE_FILE).write_text(json.dumps(data))


def read_shape(folder: Optional[Path]) -> Optional[Shape]:
    """The shape a checkpoint was saved by; None for none (a first start) or a checkpoint from before shapes."""
    if folder is None:
        return None
    path = Path(folder) / SHAPE_FILE
    try:
        data = json.loads(path.read_text())
        return Shape(int(data["processes"]), int(data["batch_size"]), int(data["grad_accum"]))
    except (OSError, ValueError, KeyError, TypeError):
        return None


def rotating_epochs(folder: Path) -> bool:
    """Whether the run that saved this checkpoint cuts each epoch at another place (written since 2026-11-30)."""
    try:
        return json.loads((Path(folder) / SHAPE_FILE).read_text()).get("epochs") == "rotating"
    except (OSError, ValueError, AttributeError):
        return False


def counts_that_divide(global_batch: int, most: int = 64) -> List[int]:
    """The process counts up to ``most`` over which ``global_batch`` samples can be split evenly."""
    return [n for n in range(1, min(most, global_batch) + 1) if global_batch % n == 0]


def _fsdp_counts(saved: int) -> str:
    """Which process counts an FSDP run saved by ``saved`` processes can continue on (the words of the error):
    FSDP shards over 2 or more, and one process trains unsharded, so neither reads the other's checkpoint."""
    if saved < 2:
        return ("1 process: it was saved by 1, unsharded (train.fsdp=true shards over 2 or more only), and a "
                "sharded start cannot read that checkpoint")
    return f"2 or more processes: its checkpoint is sharded over {saved} (train.fsdp=true)"


def continue_on(saved: Shape, processes: int, batch_size: int, key: str = "cluster.tasks_per_node",
                fsdp: bool = False) -> Shape:
    """The shape on which ``processes`` processes continue a run saved by ``saved``, keeping its global batch.

    Args:
        saved: the checkpoint's shape.
        processes: the new world size.
        batch_size: the configured per-process batch (``train.batch_size``): the most one process may take.
        key: the key the user changed, named in the error.
        fsdp: the run trains with ``train.fsdp=true`` (sharded over 2 or more processes, unsharded on one).

    Raises:
        ConfigError: the global batch cannot be split evenly over ``processes`` (it names the counts that can), or
            an FSDP run would move between one process and several.
    """
    if processes == saved.processes:
        return saved
    if fsdp and (processes < 2) != (saved.processes < 2):
        raise ConfigError(key, processes, problem="cannot continue this run", expected=_fsdp_counts(saved.processes))
    g = saved.global_batch
    if g % processes:
        fits = ", ".join(map(str, counts_that_divide(g)))
        raise ConfigError(key, processes, problem="cannot continue this run",
                          expected=f"a process count that divides its global batch of {g} samples "
                                   f"({saved.describe()}): {fits}")
    per_process = g // processes
    # the largest per-process micro-batch within the configured one that divides this process's share
    b = next(b for b in range(min(batch_size, per_process), 0, -1) if per_process % b == 0)
    return Shape(processes, b, per_process // b)
