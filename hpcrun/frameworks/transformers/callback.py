"""Time-based saving, logging and evaluation, and the deadline, for any transformers Trainer.

Works on its own with a stock ``Trainer`` (saves then go through the Trainer's usual checkpointing):

    from hpcrun.frameworks.transformers import TimeTriggerCallback

    trainer = Trainer(model, args, train_dataset=ds,
                      callbacks=[TimeTriggerCallback(save_every="30m", log_every="1m", end_time="slurm")])

hpcrun's own task pairs it with :class:`hpcrun.frameworks.transformers.HpcrunTrainer`, which makes each save atomic.

The decision at each step's end is :func:`hpcrun.job.steps.decide`, the same one a custom loop gets: taken on
rank 0, a stop signal seen by any rank counts, shared by all ranks so they save at the same step and stop together.
"""

from __future__ import annotations

import logging
import os
import time
from typing import Any, Optional, Union

from transformers import TrainerCallback

from hpcrun.durations import seconds_or_none
from hpcrun.job.signals import StopFlags
from hpcrun.job.steps import decide
from hpcrun.job.triggers import Clock, TimeTriggers

log = logging.getLogger("hpcrun")
Seconds = Union[None, int, float, str]


def nothing_left_to_train(trainer: Any) -> bool:
    """Called as an epoch starts (transformers 5's ``Trainer._run_epoch``): whether the step count is already at
    max_steps, as after a resume from a checkpoint saved at the last step (a stop signal during it, a kill during
    what comes after training). transformers starts the epoch anyway and trains one step past max_steps before it
    checks: other weights than an uninterrupted run's. Then the loop is ended here instead, and ``train()`` returns
    with the checkpoint's weights loaded."""
    state = trainer.state
    if 0 < state.max_steps <= state.global_step:
        log.info("the checkpoint is at max_steps (%s): nothing left to train", state.max_steps)
        trainer.control.should_training_stop = True
        return True
    return False


class TimeTriggerCallback(TrainerCallback):
    """Sets the Trainer's save/log/evaluate/stop controls from the wall clock and from stop signals.

    Args:
        save_every: periodic save interval (``"30m"``, ``90``, ...; None: off).
        log_every: logging interval (None: only the Trainer's step-based logging).
        eval_every: evaluation interval (None: only the Trainer's own strategy).
        end_time: the job's end as a Unix time, ``"slurm"`` to ask Slurm, or None for no deadline.
        margin: seconds the final save must finish before ``end_time``.
        save_guess: seconds a save is assumed to take until one has been measured.
        stop_flags: a :class:`StopFlags` whose signals stop training after a save (None: signals are not handled).
        triggers: ready-made :class:`TimeTriggers` (hpcrun's job passes the run's own); the interval and deadline
            arguments are then ignored.
        ledger: where steps, saves, signals and the deadline are recorded (``hpcrun.rundir.ledger.Ledger``).
        clock, wall: monotonic and Unix clocks (tests pass fakes).
    """

    def __init__(
        self,
        save_every: Seconds = None,
        log_every: Seconds = None,
        eval_every: Seconds = None,
        end_time: Union[None, float, str] = None,
        margin: Seconds = 120,
        save_guess: Seconds = 30,
        stop_flags: Optional[StopFlags] = None,
        clock: Clock = time.monotonic,
        wall: Clock = time.time,
        triggers: Optional[TimeTriggers] = None,
        ledger: Any = None,
    ) -> None:
        self.stop_flags = stop_flags
        self.ledger = ledger  # a hpcrun.rundir.ledger.Ledger (hpcrun's job passes the run's), or None
        self._save_why = ""
        self._save_wall = 0.0
        self._recorded = False
        self.stop_reason: Optional[str] = None
        self.stop_step: Optional[int] = None
        self._save_started: Optional[float] = None
        self._position_pending = False
        if triggers is not None:
            self.triggers = triggers
            return
        if end_time == "slurm":
            from hpcrun.job.deadline import slurm_end_time

            end_time, _ = slurm_end_time(os.environ)
        self.triggers = TimeTriggers(
            save_every=seconds_or_none(save_every), log_every=seconds_or_none(log_every),
            eval_every=seconds_or_none(eval_every),
            end_time=end_time if end_time is None else float(end_time), margin=seconds_or_none(margin) or 0.0,
            save_guess=seconds_or_none(save_guess) or 0.0, clock=clock, wall=wall,
        )

    def on_step_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self.triggers.step_started()
        if self._position_pending and self.ledger is not None:
            self._position_pending = False
            self.ledger.phase("data position")  # the data loader, and the batches a resume skips

    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if getattr(args, "n_gpu", 1) > 1 and state.is_world_process_zero:  # (the built-in task turns it off)
            log.warning("%d GPUs in this one process: the Trainer splits each batch over them with DataParallel, "
                        "slower than a process per GPU: hpcrun run -- torchrun --nproc_per_node %d ...",
                        args.n_gpu, args.n_gpu)
        if self.ledger is not None and state.is_world_process_zero and state.max_steps:
            self.ledger.planned(int(state.max_steps))
        if self.ledger is not None and self.ledger.phase_mark is not None:
            # train() up to here: the optimizer and scheduler made, and on a resume the checkpoint loaded
            self.ledger.phase("checkpoint load" if state.global_step else "train setup")
            self._position_pending = True

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        d = decide(self.triggers, self.stop_flags, state.is_world_process_zero, self.ledger, state.global_step)
        if d.log:
            control.should_log = True
        if d.evaluate:
            control.should_evaluate = True
        if d.stop:
            self.stop_reason = d.reason
            self.stop_step = state.global_step
            control.should_training_stop = True
        if d.save:
            self._save_why = d.why
            control.should_save = True
            self._save_started = self.triggers.clock()
            self._save_wall = time.time()

    def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if self.ledger is not None:  # where training stopped, for the report (progress events are a minute apart)
            self.ledger.step(state.global_step, force=True)

    def take_save(self) -> str:
        """For a Trainer that records its saves itself (:class:`HpcrunTrainer`, through the save sequence): why
        this save happens (periodic, deadline, signal; ``trainer`` for one the Trainer decided itself), and
        on_save then has nothing left to time."""
        why = self._save_why if self._save_started is not None else "trainer"
        self._save_started = None
        self._recorded = True
        return why

    def on_save(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if self._recorded:  # recorded by the save sequence (HpcrunTrainer)
            self._recorded = False
        elif self._save_started is not None:  # a stock Trainer saved what on_step_end asked for: time it
            seconds = self.triggers.clock() - self._save_started
            self.triggers.saved(seconds)
            self._save_started = None
            if self.ledger is not None:
                self.ledger.save(state.global_step, self._save_wall, seconds, self._save_why)
        else:  # a save the Trainer decided itself (its own step strategy): the interval restarts all the same
            self.triggers.save_interval.reset()
