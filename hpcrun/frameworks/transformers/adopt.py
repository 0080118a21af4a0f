"""Every transformers Trainer a command under ``hpcrun run`` creates gets hpcrun's behaviour, unmodified scripts too.

hpcrun's sitecustomize (hpcrun/frameworks/inject/) calls :func:`install` when ``transformers.trainer`` is imported. It wraps
the methods of the base ``Trainer`` class below, so subclasses (TRL's SFTTrainer, Seq2SeqTrainer, a user's own) are
covered wherever they call up to them:

- ``__init__``: adds :class:`TimeTriggerCallback` with the run's triggers (``checkpoint.save_every``, the deadline
  from the job's end, the stop signals) and records ``args.output_dir`` as one of the run's checkpoint folders;
- ``_save_checkpoint``: the Trainer's own save, written into ``<output_dir>/.hpcrun-staging/checkpoint-N`` and
  committed by hpcrun's save sequence (every rank done, completion marker, rename to ``<output_dir>/checkpoint-N``),
  so neither hpcrun nor transformers' ``get_last_checkpoint`` ever sees a half-written one; then the Trainer's
  own ``save_total_limit`` rotation;
- ``train``: on a restart of the run, resumes from the newest complete ``checkpoint-N`` in ``output_dir`` whatever
  the script passes (where the script names a new output_dir on every start, from the one the same Trainer saved in
  an earlier start's); after a save that a stop signal or the deadline asked for, tells the job to requeue and exits
  the process (status 0), before the script's post-training code (final save, evaluation) runs on a half-trained
  model;
- ``_run_epoch`` (transformers 5): ends the loop at once when the step count is already at max_steps (a resume
  from the final checkpoint), where transformers would train one step more.

Off: ``command.patch_trainer=false``, or ``HPCRUN_PATCH_TRAINER=0`` in the job's environment.
"""

from __future__ import annotations

import functools
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

log = logging.getLogger("hpcrun")


@dataclass
class Adopted:
    """What hpcrun keeps on an adopted Trainer (``trainer._hpcrun``)."""

    checkpoints: Any  # CheckpointDir.in_output_dir(args.output_dir)
    callback: Any  # TimeTriggerCallback
    staging: bool = False


def adopt(trainer: Any) -> None:
    """Gives one Trainer hpcrun's triggers and atomic checkpoints in its own output_dir."""
    from hpcrun import script
    from hpcrun.frameworks.transformers.callback import TimeTriggerCallback
    from hpcrun.rundir.checkpoints import CheckpointDir, record_output

    session = script.session()
    out = Path(trainer.args.output_dir).expanduser().resolve()
    checkpoints = CheckpointDir.in_output_dir(out)
    if trainer.is_world_process_zero():
        record_output(session.run_dir, out)
    callback = TimeTriggerCallback(stop_flags=session.flags, triggers=session.triggers(checkpoints),
                                   ledger=session.ledger)
    trainer.add_callback(callback)
    trainer._hpcrun = Adopted(checkpoints, callback)
    log.info("this Trainer saves every %s of wall clock, on a stop signal and before the job's end, "
             "atomically into %s", session.cfg.checkpoint.save_every, out)
    if "${" in str(trainer.args.output_dir) and trainer.is_world_process_zero():
        # An arguments file (run_clm.py args.json, a --config yaml) is the script's to read: hpcrun fills ${...}
        # in the command line only, and every run given this file would share the folder (the second is refused).
        log.warning("output_dir %s holds a literal '${': hpcrun fills ${...} in the command line only, not in a "
                    "file the script reads; name the folder itself there, or pass it on the command line",
                    trainer.args.output_dir)


def _unstage_best(trainer: Any, checkpoints: Any, folder: Path) -> None:
    """The best checkpoint as it is named once committed, in the Trainer's state and in the trainer_state.json
    being committed: the Trainer named the one it just saved by where it wrote it, the staging folder, which is
    gone after the commit. (A restart loads that file: with the staging name, ``load_best_model_at_end`` finds no
    best model and keeps the last one, and rotation no longer spares the best.)"""
    import json

    best = trainer.state.best_model_checkpoint
    if not best or Path(best).parent != checkpoints.staging_root:
        return
    trainer.state.best_model_checkpoint = str(checkpoints.root / Path(best).name)
    state_file = Path(folder) / "trainer_state.json"
    if trainer.args.should_save and state_file.is_file():
        data = json.loads(state_file.read_text())
        data["best_model_checkpoint"] = trainer.state.best_model_checkpoint
        state_file.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")


def _rotate(trainer: Any, output_dir: Path) -> None:
    """The Trainer's own save_total_limit, applied to the real output_dir once the save is in place."""
    import transformers.trainer as tmod

    args = trainer.args
    if not args.should_save or not args.save_total_limit:
        return
    rotate = getattr(tmod, "rotate_checkpoints", None)
    if rotate is not None:  # transformers 5
        rotate(output_dir=str(output_dir), save_total_limit=args.save_total_limit,
               best_model_checkpoint=trainer.state.best_model_checkpoint, use_mtime=False)
    else:
        trainer._rotate_checkpoints(use_mtime=False, output_dir=str(output_dir))


def _refuse_lone_trainers(trainer: Any) -> None:
    """One line on every rank (exit status 1) when the command started several processes (torchrun, srun) but the
    Trainer trains alone in each: torchrun on a machine without GPUs, without ``--use_cpu``, gives each process a
    Trainer of world size 1. Each would train the whole model on all the data and write the same checkpoints into
    the same folder; under hpcrun both took the save for theirs and one failed in the other's staging folder."""
    processes = int(os.environ.get("WORLD_SIZE", "1") or 1)
    if processes > 1 and int(trainer.args.world_size) == 1:
        raise SystemExit(
            f"hpcrun: error: the command started {processes} processes (WORLD_SIZE={processes}) but this Trainer "
            "trains alone in each (its world size is 1): each would train the whole model and write the same "
            "checkpoints. Without GPUs, pass --use_cpu (the processes then train as one, over gloo); or start one "
            "process")


# The key of each Trainer of this process that started training, in order: the n-th Trainer with a key on a restart
# resumes from where the n-th one with that key saved on an earlier start, when its own output_dir holds nothing.
_started: list = []


def trainer_key(trainer: Any) -> str:
    """What tells one training of the command from another, the same on every start (not the output folder, which
    may be named by the time: run_name, logging_dir follow it): the process's command line (a shell script that
    runs two pythons), the model's class and size, and the training arguments a stage or a sweep job sets."""
    import hashlib
    import json
    import sys

    args = trainer.args
    model = trainer.model
    parts = {
        "argv": [str(a) for a in sys.argv],
        "model": type(model).__name__,
        "parameters": sum(int(p.numel()) for p in model.parameters()) if hasattr(model, "parameters") else 0,
        **{name: str(getattr(args, name, None)) for name in (
            "max_steps", "num_train_epochs", "learning_rate", "per_device_train_batch_size",
            "gradient_accumulation_steps", "seed", "lr_scheduler_type", "weight_decay", "warmup_steps")},
    }
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:16]


def _resume_point(adopted: Adopted, session: Any, key: str, asked: Any) -> Any:
    """Where a Trainer of a restart resumes from, whatever the script passes (``asked``): the newest complete
    ``checkpoint-N`` in its output_dir; else, when the script names a new output folder on every start (a
    timestamp, Hydra's run directory), the newest one the same training (the n-th Trainer with its ``key``) saved in
    an earlier start's folder (it goes on saving into its new one); else ``asked`` (nothing saved yet: the script
    decides, as on the first start)."""
    from hpcrun.rundir.checkpoints import earlier_training

    latest, skipped = adopted.checkpoints.latest()
    for ckpt, why in skipped:
        log.warning("skipping %s: %s", ckpt.path, why)
    if latest is None:
        found = earlier_training(session.run_dir, session.start, key, _started.count(key))
        if found is None:
            return asked
        earlier, latest = found
        log.warning("this Trainer's output_dir %s is new on this start and holds no checkpoint: the script names "
                    "another folder each time it starts (a timestamp? Hydra's run directory?). Resuming from %s, "
                    "where the same training saved on start %s; it saves into %s from now on, and the folders of "
                    "earlier starts are left as they are", adopted.checkpoints.root, latest.path, earlier,
                    adopted.checkpoints.root)
    elif asked not in (None, False, True, str(latest.path)):
        log.info("resuming from %s (the newest complete checkpoint), not %s", latest.path, asked)
    log.info("resuming from %s", latest.path)
    return str(latest.path)


def install(trainer_cls: Any) -> None:
    """Wraps the base Trainer's methods (once)."""
    if getattr(trainer_cls, "_hpcrun_installed", False):
        return
    trainer_cls._hpcrun_installed = True
    init, train, save, output_dir = (trainer_cls.__init__, trainer_cls.train, trainer_cls._save_checkpoint,
                                     trainer_cls._get_output_dir)
    run_epoch = getattr(trainer_cls, "_run_epoch", None)  # transformers 5

    @functools.wraps(init)
    def __init__(self: Any, *args: Any, **kwargs: Any) -> None:
        init(self, *args, **kwargs)
        adopt(self)

    @functools.wraps(output_dir)
    def _get_output_dir(self: Any, trial: Any) -> str:
        adopted = getattr(self, "_hpcrun", None)
        if adopted is not None and adopted.staging:
            return str(adopted.checkpoints.staging_root)
        return output_dir(self, trial)

    @functools.wraps(save)
    def _save_checkpoint(self: Any, model: Any, trial: Any) -> None:
        adopted = getattr(self, "_hpcrun", None)
        if adopted is None:
            return save(self, model, trial)
        from hpcrun.job.steps import checkpoint_save

        cb = adopted.callback
        step = self.state.global_step
        with checkpoint_save(adopted.checkpoints, step, is_main=self.is_world_process_zero(), triggers=cb.triggers,
                             ledger=cb.ledger, why=cb.take_save()) as folder:
            adopted.staging = True
            try:
                save(self, model, trial)
            finally:
                adopted.staging = False
            _unstage_best(self, adopted.checkpoints, folder)
        root = adopted.checkpoints.root
        best = self.state.best_global_step if hasattr(self.state, "best_global_step") else None
        if best and (root / f"checkpoint-{best}").is_dir():
            self.state.best_model_checkpoint = str(root / f"checkpoint-{best}")
        _rotate(self, root)

    @functools.wraps(train)
    def _train(self: Any, resume_from_checkpoint: Any = None, *args: Any, **kwargs: Any) -> Any:
        from hpcrun import script

        adopted = getattr(self, "_hpcrun", None)
        if adopted is not None:  # (when training starts: a Trainer that only evaluates may share its folder)
            from hpcrun.rundir.checkpoints import SharedOutputError, claim_output, record_training

            session = script.session()
            _refuse_lone_trainers(self)
            key = trainer_key(self)
            _started.append(key)
            try:
                claim_output(session.run_dir, adopted.checkpoints.root, write=self.is_world_process_zero())
            except SharedOutputError as exc:
                raise SystemExit(f"hpcrun: error: {exc}") from None  # one line, on every rank; exit status 1
            if self.is_world_process_zero():  # (the folder is this run's: not another's save in progress)
                for name in adopted.checkpoints.clear_staging():
                    log.warning("removed %s: a save that was interrupted before it completed (in %s)", name,
                                adopted.checkpoints.root)
                record_training(session.run_dir, session.start, key, adopted.checkpoints.root)
            if session.restarted:  # (from earlier starts' records only: this one's is not read)
                resume_from_checkpoint = _resume_point(adopted, session, key, resume_from_checkpoint)
        result = train(self, resume_from_checkpoint, *args, **kwargs)
        if adopted is not None and adopted.callback.stop_reason:
            step = adopted.callback.stop_step or self.state.global_step
            # (On Slurm, scancel's SIGTERM reads as a preemption's here: hpcrun's job tells them apart after the exit.)
            log.info("saved step %s after %s; exiting %s", step, adopted.callback.stop_reason,
                     "(hpcrun requeues the job, unless it was cancelled)" if os.environ.get("HPCRUN_JOB_ID")
                     else "(the same hpcrun command resumes it)")
            script.stop_and_requeue(step, adopted.callback.stop_reason)
        return result

    if run_epoch is not None:
        @functools.wraps(run_epoch)
        def _run_epoch(self: Any, *args: Any, **kwargs: Any) -> Any:
            from hpcrun.frameworks.transformers.callback import nothing_left_to_train

            if getattr(self, "_hpcrun", None) is not None and nothing_left_to_train(self):
                return None
            return run_epoch(self, *args, **kwargs)

        trainer_cls._run_epoch = _run_epoch
    trainer_cls.__init__ = __init__
    trainer_cls._get_output_dir = _get_output_dir
    trainer_cls._save_checkpoint = _save_checkpoint
    trainer_cls.train = _train
