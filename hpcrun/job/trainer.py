"""A transformers Trainer whose checkpoints are atomic ``step-N`` folders (see :mod:`hpcrun.job.checkpoint`).

Everything a checkpoint holds is the Trainer's own (model in safetensors, optimizer, scheduler, grad scaler, one
RNG file per rank, trainer state with the global step, from which the Trainer restores the data position), plus
hpcrun's time-trigger state. Only where it goes changes: into a staging folder, then renamed into place once every
rank has written its part and the completion marker is on disk.
"""

from __future__ import annotations

import errno
import logging
import shutil
import time
from typing import Any, Optional

from transformers import Trainer

from hpcrun.job.callback import TimeTriggerCallback
from hpcrun.job.checkpoint import CheckpointDir
from hpcrun.errors import DiskFullError
from hpcrun.job.faults import save_pause

log = logging.getLogger("hpcrun")


# How a full disk or quota shows through the writers: OSError's own words; torch's zip writer says "file write
# failed" or "unexpected pos N vs M" (a short write); safetensors passes the OS error's text on.
_FULL = ("No space left on device", "Disk quota exceeded", "file write failed")
LOW_SPACE = 64 * 2**20  # less than this free where a save failed: the disk is full, whatever the writer said


def disk_full(exc: BaseException, where: Any = None) -> bool:
    """Whether ``exc`` (or what caused it) says the disk or the quota is full, or ``where`` has (almost) no space."""
    seen: Optional[BaseException] = exc
    while seen is not None:
        if isinstance(seen, OSError) and seen.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        if any(m in str(seen) for m in _FULL):
            return True
        seen = seen.__cause__ or seen.__context__
    if where is not None:
        try:
            return shutil.disk_usage(where).free < LOW_SPACE
        except OSError:
            return False
    return False


class HpcrunTrainer(Trainer):
    """``Trainer`` with atomic checkpoints in ``checkpoints`` and the time triggers of ``triggers``."""

    def __init__(self, *args: Any, checkpoints: CheckpointDir, triggers: Optional[TimeTriggerCallback] = None,
                 **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.checkpoints = checkpoints
        self.triggers = triggers
        self._staging = False

    def _get_output_dir(self, trial: Any) -> str:
        if self._staging:
            return str(self.checkpoints.staging_root)
        return super()._get_output_dir(trial)

    def _save_checkpoint(self, model: Any, trial: Any) -> None:
        try:
            self._atomic_save(model, trial)
        except Exception as exc:  # noqa: BLE001 - only a full disk is turned into a DiskFullError
            if not disk_full(exc, self.checkpoints.root):
                raise
            removed = self.checkpoints.clear_staging() if self.is_world_process_zero() else []
            raise DiskFullError(
                f"disk full while saving step {self.state.global_step} in {self.checkpoints.root} ({exc}); "
                f"{'the half-written save was removed; ' if removed else ''}the earlier checkpoints are intact"
            ) from exc

    def _atomic_save(self, model: Any, trial: Any) -> None:
        step = self.state.global_step
        main = self.is_world_process_zero()
        if main:
            self.checkpoints.clear_staging()
            self.checkpoints.staging(step).mkdir(parents=True)
        self.accelerator.wait_for_everyone()
        self._staging = True
        try:
            super()._save_checkpoint(model, trial)
        finally:
            self._staging = False
        self.accelerator.wait_for_everyone()  # every rank's shard and RNG file is written
        pause = save_pause()
        if pause:
            log.warning("%s: pausing %.0f s before completing step-%d", "HPCRUN_FAULTS", pause, step)
            time.sleep(pause)
        if main:
            extra = self.triggers.triggers.state() if self.triggers else {}
            path = self.checkpoints.commit(step, extra_state=extra)
            deleted = self.checkpoints.prune()
            log.info("checkpoint %s complete%s", path.name,
                     f"; deleted step {', '.join(map(str, deleted))}" if deleted else "")
        self.accelerator.wait_for_everyone()  # nobody exits before the checkpoint is in place
