"""A transformers Trainer whose checkpoints are atomic ``step-N`` folders (see :mod:`hpcrun.rundir.checkpoints`).

Everything a checkpoint holds is the Trainer's own (model in safetensors, optimizer, scheduler, grad scaler, one
RNG file per rank, trainer state with the global step, from which the Trainer restores the data position), plus
hpcrun's time-trigger state and the shape that saved it (``hpcrun-shape.json``: processes, batch, accumulation). Only
where it goes changes: into a staging folder, then renamed into place once every
rank has written its part and the completion marker is on disk.
"""

from __future__ import annotations

import hashlib
import logging
from typing import Any, Optional

from transformers import Trainer

from hpcrun.frameworks.transformers.callback import TimeTriggerCallback, nothing_left_to_train
from hpcrun.job.steps import checkpoint_save
from hpcrun.job.triggers import TimeTriggers
from hpcrun.rundir.checkpoints import CheckpointDir
from hpcrun.rundir.shape import Shape, read_shape

log = logging.getLogger("hpcrun")


class HpcrunTrainerMixin:
    """Atomic checkpoints in ``checkpoints`` and the time triggers of ``triggers``, for ``Trainer`` or any subclass
    (:func:`hpcrun_trainer`)."""

    state: Any

    def __init__(self, *args: Any, checkpoints: CheckpointDir, triggers: Optional[TimeTriggerCallback] = None,
                 **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.checkpoints = checkpoints
        self.triggers = triggers
        self._staging = False

    def _get_output_dir(self, trial: Any) -> str:
        if self._staging:
            return str(self.checkpoints.staging_root)
        return super()._get_output_dir(trial)  # type: ignore[misc]

    def _run_epoch(self, *args: Any, **kwargs: Any) -> Any:
        """(transformers 5) No step past max_steps on a resume from the last step's checkpoint."""
        if nothing_left_to_train(self):
            return None
        return super()._run_epoch(*args, **kwargs)  # type: ignore[misc]

    def _save_checkpoint(self, model: Any, trial: Any) -> None:
        """The Trainer's own save, written into the staging folder of hpcrun's save sequence and committed there
        (:func:`hpcrun.job.steps.checkpoint_save`): marker last, then the rename to ``step-N``."""
        callback = self.triggers
        triggers = callback.triggers if callback else TimeTriggers()
        why = callback.take_save() if callback else "periodic"
        with checkpoint_save(self.checkpoints, self.state.global_step, is_main=self.is_world_process_zero(),
                             triggers=triggers, ledger=callback.ledger if callback else None, why=why) as staging:
            self._staging = True
            try:
                super()._save_checkpoint(model, trial)  # type: ignore[misc]
            finally:
                self._staging = False
            if self.is_world_process_zero():
                # (the built-in task's training set says whether each epoch is cut at another place)
                self.shape.write(staging, rotating_epochs=getattr(self.train_dataset, "rotates_epochs", False))

    @property
    def shape(self) -> Shape:
        """This start's shape, from the Trainer's arguments."""
        args: Any = self.args  # type: ignore[attr-defined]
        return Shape(args.world_size, args.per_device_train_batch_size, args.gradient_accumulation_steps)

    def _load_rng_state(self, checkpoint: Optional[str]) -> None:
        """The Trainer's own restore of each rank's random state, unless the checkpoint was saved by another number
        of processes: its per-rank states belong to ranks that no longer exist (the Trainer would keep the seed's
        state on every rank, or restore rank 0's where there was one). Each rank's stream is then derived again
        from the seed, the step and the rank, the same on any start of that shape."""
        saved = read_shape(checkpoint) if checkpoint else None
        args: Any = self.args  # type: ignore[attr-defined]
        if saved is None or saved.processes == args.world_size:
            return super()._load_rng_state(checkpoint)  # type: ignore[misc]
        from transformers import set_seed

        set_seed(derived_seed(args.seed, self.state.global_step, args.process_index))
        if self.is_world_process_zero():
            log.info("random state derived again for %d process(es) from the seed and step %d (the checkpoint's "
                     "per-rank states are from %d)", args.world_size, self.state.global_step, saved.processes)


def derived_seed(seed: int, step: int, rank: int) -> int:
    """A rank's seed at a step of a start whose shape differs from the checkpoint's."""
    digest = hashlib.sha256(f"hpcrun/{seed}/{step}/{rank}".encode()).digest()
    return int.from_bytes(digest[:4], "little")


class HpcrunTrainer(HpcrunTrainerMixin, Trainer):
    """``Trainer`` with atomic checkpoints in ``checkpoints`` and the time triggers of ``triggers``."""


def hpcrun_trainer(base: type) -> type:
    """``base`` (a Trainer subclass, e.g. TRL's SFTTrainer) with hpcrun's atomic checkpoints and time triggers."""
    if base is Trainer:
        return HpcrunTrainer
    return type(f"Hpcrun{base.__name__}", (HpcrunTrainerMixin, base), {})
