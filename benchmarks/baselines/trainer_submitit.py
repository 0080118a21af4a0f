"""Baselines for the goodput benchmark: the same training run as hpcrun's built-in task, without hpcrun's job layer.

docs/benchmarks.md compares hpcrun (wall-clock saves, deadline-aware stop, resume) with what a user gets without it,
on a job cut short by its time limit and requeued many times:

* ``trainer_default``: a plain ``transformers.Trainer`` with its *default* checkpointing (``save_strategy="steps"``,
  ``save_steps=500``) under submitit's requeue. A restart resumes from the newest ``checkpoint-N`` (if any), so the
  steps since the last multiple of 500 are lost at every requeue.
* ``from_scratch``: no checkpoints at all (``save_strategy="no"``); every requeue starts over at step 0.

Model, tokenizer, data, seed and every other TrainingArguments field come from hpcrun's own helpers
(``hpcrun.tasks.causal_lm`` and ``hpcrun.tasks.text``), so the step times are those of ``hpcrun.tasks.causal_lm.train``.

Written to ``--run-dir``: ``metrics.jsonl`` (every logged step, with its Unix time), ``starts.jsonl`` (one line per
start: time, step resumed from, Slurm job id), ``DONE`` (training reached train.max_steps), ``trainer/`` (checkpoints).

Usage (prints only the Slurm job id, does not wait):

    python benchmarks/baselines/trainer_submitit.py --mode trainer_default --run-dir DIR [--slurm-folder DIR] \\
        [--partition normal] [--time-min 30] [--cpus 1] -- +experiment=tiny_llama cluster=local train.max_steps=1500

``--local`` runs the job in this process instead (a smoke test; no Slurm).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import List, Optional

import submitit

MODES = ("trainer_default", "from_scratch")


class TrainerJob(submitit.helpers.Checkpointable):
    """One training run; on a timeout or preemption signal submitit requeues this same object.

    Holds only its arguments (the model lives inside ``__call__``), so the object submitit pickles at requeue is tiny.
    """

    def __init__(self, overrides: List[str], run_dir: str, mode: str) -> None:
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, not {mode!r}")
        self.overrides = list(overrides)
        self.run_dir = str(run_dir)
        self.mode = mode

    def __call__(self) -> int:
        from transformers import Trainer, TrainingArguments, set_seed
        from transformers.trainer_utils import get_last_checkpoint

        from hpcrun.config.compose import compose
        from hpcrun.job.context import JobContext
        from hpcrun.tasks.causal_lm import metrics_callback, training_arguments
        from hpcrun.tasks.models import build_model
        from hpcrun.tasks.text import tokenizer_for
        from hpcrun.tasks.tokens import TOKENS_DIR, corpus_blocks

        run_dir = Path(self.run_dir)
        run_dir.mkdir(parents=True, exist_ok=True)
        cfg = compose(self.overrides)
        ctx = JobContext(run_dir=run_dir)

        # As hpcrun.tasks.causal_lm.train: the seed before the model is built (the random init depends on it).
        set_seed(cfg.train.seed)
        tokenizer = tokenizer_for(cfg, run_dir, is_main=True)
        train_set, eval_set = corpus_blocks(cfg, tokenizer, run_dir / TOKENS_DIR)
        model = build_model(cfg, tokenizer)

        # hpcrun's arguments (output_dir = run_dir/trainer, save_strategy="no"); only the saving differs.
        # set_save converts the string to SaveStrategy, as __post_init__ would; the default step count is read from
        # the dataclass so it stays "whatever the Trainer does by default".
        args = training_arguments(cfg, ctx)
        resume: Optional[str] = None
        if self.mode == "trainer_default":
            args.set_save(strategy="steps", steps=TrainingArguments.__dataclass_fields__["save_steps"].default)
            if os.path.isdir(args.output_dir):
                resume = get_last_checkpoint(args.output_dir)  # the highest checkpoint-N, complete or not
        else:
            args.set_save(strategy="no")

        resumed_from = int(resume.rsplit("-", 1)[1]) if resume else 0
        with (run_dir / "starts.jsonl").open("a") as f:
            f.write(json.dumps({"t": time.time(), "resumed_from": resumed_from,
                                "job_id": os.environ.get("SLURM_JOB_ID")}) + "\n")

        trainer = Trainer(
            model=model,
            args=args,
            train_dataset=train_set,
            eval_dataset=eval_set,
            callbacks=[metrics_callback(run_dir / "metrics.jsonl")],
        )
        result = trainer.train(resume_from_checkpoint=resume)
        (run_dir / "DONE").write_text(f"{result.global_step}\n")
        return result.global_step

    def checkpoint(self, *args: object, **kwargs: object) -> submitit.helpers.DelayedSubmission:
        """Called by submitit on the timeout/preemption signal: requeue this same job. The Trainer's own
        checkpoints (trainer_default) or nothing (from_scratch) are what the next start finds."""
        return submitit.helpers.DelayedSubmission(self)


def parse(argv: List[str]) -> argparse.Namespace:
    """The options before ``--``; everything after it is the hpcrun overrides."""
    split = argv.index("--") if "--" in argv else len(argv)
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mode", choices=MODES, required=True)
    parser.add_argument("--run-dir", required=True, help="where metrics.jsonl, starts.jsonl, DONE and trainer/ go")
    parser.add_argument("--slurm-folder", help="submitit's folder (logs, pickles); default RUN_DIR/submitit")
    parser.add_argument("--partition", default=None)
    parser.add_argument("--time-min", type=int, default=30, help="the job's time limit in minutes")
    parser.add_argument("--cpus", type=int, default=1, help="cpus_per_task")
    parser.add_argument("--local", action="store_true", help="run in this process (smoke test), no Slurm")
    args = parser.parse_args(argv[:split])
    args.overrides = argv[split + 1:]
    return args


def main(argv: Optional[List[str]] = None) -> int:
    args = parse(sys.argv[1:] if argv is None else argv)
    run_dir = os.path.abspath(args.run_dir)
    job = TrainerJob(args.overrides, run_dir, args.mode)
    if args.local:
        job()
        return 0
    executor = submitit.SlurmExecutor(folder=args.slurm_folder or os.path.join(run_dir, "submitit"),
                                      max_num_timeout=30)  # requeued up to 30 times on timeout
    executor.update_parameters(
        job_name=f"baseline-{args.mode}",
        time=args.time_min,
        cpus_per_task=args.cpus,
        partition=args.partition,
        signal_delay_s=60,
        additional_parameters={"requeue": True},
    )
    print(executor.submit(job).job_id, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
