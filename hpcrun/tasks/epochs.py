"""The built-in task's training set, cut to whole global batches, a different cut each epoch.

Every step trains on one full global batch, so a run can change its number of processes between starts and step N
still trains on the same samples (docs/elastic.md). With ``n`` samples and a global batch of ``g``, an epoch holds
``keep = n // g * g`` of them. A cut that always dropped the same ``n - keep`` samples would never train on them; so
epoch ``e`` takes the ``keep`` samples from position ``e * keep`` (mod ``n``) on, wrapping round: each epoch goes on
where the last one stopped, drops the ``n - keep`` samples next in line, and over the epochs every sample is trained
equally often. The sampler then shuffles within the epoch's samples, by the seed and the epoch, as before.

Which samples an epoch holds depends only on ``n``, ``g`` and the epoch, never on the number of processes. The
Trainer's epoch is set by a callback at each epoch's start (a resumed start too), before the epoch's data loader
iterator, and its workers, are made.

No torch here; the callback imports transformers when it is made.
"""

from __future__ import annotations

import logging
from typing import Any, Optional

from hpcrun.job.context import JobContext
from hpcrun.rundir.shape import Shape, read_shape, rotating_epochs

log = logging.getLogger("hpcrun")


class EpochWindow:
    """A map-style view of ``keep`` samples of ``dataset``: epoch ``e``'s window, from position ``e * keep`` on,
    wrapping round (:meth:`set_epoch`). ``keep`` is a whole number of global batches."""

    rotates_epochs = True  # (written into each checkpoint's shape: hpcrun.rundir.shape.rotating_epochs)

    def __init__(self, dataset: Any, keep: int) -> None:
        if not 0 < keep <= len(dataset):
            raise ValueError(f"keep={keep} for a dataset of {len(dataset)} samples")
        self.dataset = dataset
        self.keep = keep
        self.epoch = 0
        self.offset = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        self.offset = epoch * self.keep % len(self.dataset)

    def index(self, i: int) -> int:
        """The position in the whole dataset of this epoch's sample ``i``."""
        if not 0 <= i < self.keep:
            raise IndexError(f"sample {i} of an epoch of {self.keep}")
        return (self.offset + i) % len(self.dataset)

    def __len__(self) -> int:
        return self.keep

    def __getitem__(self, i: int) -> Any:
        return self.dataset[self.index(i)]


def whole_global_batches(dataset: Any, shape: Shape, ctx: JobContext, prepared: bool = True) -> Any:
    """The training set cut to whole global batches (an :class:`EpochWindow`); set each epoch's window with
    :func:`window_callback`. Called twice: on the raw rows (``prepared=False``) and on the Trainer's prepared set
    (TRL's SFTTrainer tokenizes, and may drop rows); the window is made on the prepared set.

    Two kinds of run keep what they had: a run whose checkpoint is older than shapes trains on the whole set (its
    data position counts the uncut set), and a run whose checkpoint is older than rotating epochs keeps the same cut
    every epoch (its first ``keep`` raw rows, cut before the Trainer as it was), so that it resumes exactly. Data
    smaller than one global batch is left whole: it trains as before, but cannot change shape exactly.
    """
    saved: Optional[Any] = ctx.resume_from.path if ctx.resume_from is not None else None
    if saved is not None and read_shape(saved) is None:
        return dataset
    static = saved is not None and not rotating_epochs(saved)
    if static == prepared:  # the one cut of an older run on the raw rows; the window on the prepared set
        return dataset
    g = shape.global_batch
    keep = len(dataset) // g * g
    if keep == 0:
        if ctx.is_main:
            log.warning("the training set (%d samples) is smaller than one global batch (%s): not cut to whole "
                        "global batches; the run keeps its number of processes exactly", len(dataset),
                        shape.describe())
        return dataset
    if keep == len(dataset):
        return dataset
    if static:
        if hasattr(dataset, "select"):  # a datasets.Dataset
            return dataset.select(range(keep))
        from torch.utils.data import Subset

        return Subset(dataset, range(keep))
    if ctx.is_main:
        log.info("training set: %d samples, %d a step: %d an epoch, the %d left over taken first by the next "
                 "epoch", len(dataset), g, keep, len(dataset) - keep)
    return EpochWindow(dataset, keep)


def window_callback(window: EpochWindow, global_batch: int) -> Any:
    """A TrainerCallback that sets ``window``'s epoch at the start of each epoch of the Trainer's loop. The epoch
    is the Trainer's: its global step at the epoch's start over the steps an epoch holds (a start resumed in the
    middle of epoch ``e`` is at ``e`` too)."""
    from transformers import TrainerCallback

    steps_per_epoch = window.keep // global_batch

    class EpochWindowCallback(TrainerCallback):
        def on_epoch_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            window.set_epoch(state.global_step // steps_per_epoch)

    return EpochWindowCallback()
