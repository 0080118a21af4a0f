"""The built-in task: train any causal LM with the transformers Trainer (TRL's SFTTrainer for chat and
prompt/completion data), optionally with LoRA, reporting to W&B or TensorBoard.

Reads top to bottom: training arguments, tokenizer and data (rank 0 first), model, trainer, train, save
``<run.dir>/final``. The model is :mod:`hpcrun.tasks.models`; the data :mod:`hpcrun.tasks.tokens` (language
modelling) or :mod:`hpcrun.tasks.sft` (SFT).
"""

from __future__ import annotations

import json
import logging
import sys
import time
from pathlib import Path
from typing import Any, Union

from hpcrun.job.context import JobContext, Stopped
from hpcrun.rundir import RunDir
from hpcrun.rundir.shape import Shape, continue_on, read_shape
from hpcrun.tasks.epochs import EpochWindow, whole_global_batches, window_callback
from hpcrun.tasks.models import architecture, build_model, save_final, wrap_classes
from hpcrun.tasks.text import tokenizer_for
from hpcrun.tasks.tokens import TOKENS_DIR, corpus_blocks

log = logging.getLogger("hpcrun")
Config = Any  # the composed config: run/cluster/checkpoint plus this task's model/data/train (hpcrun.tasks.settings)
SFT_DATA_DIR = ".sft-data"  # <run.dir>/.sft-data/rank-R: datasets' Arrow files of the SFT records, per rank
TRAINER_DIR = "trainer"  # the Trainer's own output_dir (hpcrun, not the Trainer, owns the checkpoints)


def fsdp_arguments(cfg: Config, ctx: JobContext) -> dict:
    """FSDP2 full shard through accelerate: one unit per block of the model (its ``_no_split_modules``), sharded
    checkpoints (each rank writes its shard, in parallel; no rank gathers 7B parameters), FSDP's activation
    checkpointing. Off with one process."""
    if not cfg.train.fsdp or ctx.world_size < 2:
        return {}
    import torch

    if not torch.cuda.is_available():
        _allow_cpu_fsdp()
    return {
        "fsdp": "full_shard auto_wrap",
        "fsdp_config": {
            "version": 2,
            "transformer_layer_cls_to_wrap": wrap_classes(architecture(cfg.model)),
            "state_dict_type": "SHARDED_STATE_DICT",
            "activation_checkpointing": cfg.model.gradient_checkpointing,
        },
    }


def _allow_cpu_fsdp() -> None:
    """CPU processes (gloo) only, i.e. the tests and the dev cluster: accelerate turns FSDP on for GPU device types
    only and silently falls back to DDP on CPU. This makes it keep the FSDP plugin, so the same sharded code path
    (FSDP2, sharded save and resume) runs on a laptop. GPUs never go through here."""
    import accelerate.state as state
    from accelerate.utils import DistributedType

    if getattr(state.AcceleratorState.__init__, "_hpcrun_cpu_fsdp", False):
        return
    original = state.AcceleratorState.__init__

    def init(self: Any, *args: Any, fsdp_plugin: Any = None, **kwargs: Any) -> None:
        original(self, *args, fsdp_plugin=fsdp_plugin, **kwargs)
        if fsdp_plugin is not None and self.distributed_type == DistributedType.MULTI_CPU:
            self.distributed_type = DistributedType.FSDP
            self.fsdp_plugin = fsdp_plugin

    init._hpcrun_cpu_fsdp = True  # type: ignore[attr-defined]
    state.AcceleratorState.__init__ = init


def training_arguments(cfg: Config, ctx: JobContext, report_to: Any = (), shape: Any = None) -> Any:
    """transformers TrainingArguments (TRL's SFTConfig for SFT) from the config, with the per-process batch and the
    accumulation of ``shape`` (:func:`start_shape`). hpcrun, not the Trainer, owns checkpointing."""
    import torch
    from transformers import TrainingArguments

    t = cfg.train
    shape = shape or start_shape(cfg, ctx)
    on_cpu = not torch.cuda.is_available()
    kind, extra = TrainingArguments, {}
    if cfg.data.format != "text":
        from hpcrun.tasks.sft import sft_arguments

        kind, extra = sft_arguments(cfg)
    return one_gpu_per_process(kind(
        **extra,
        **fsdp_arguments(cfg, ctx),
        output_dir=str(RunDir(ctx.run_dir).task_file(TRAINER_DIR)),
        max_steps=t.max_steps,
        per_device_train_batch_size=shape.batch_size,
        per_device_eval_batch_size=t.batch_size,
        gradient_accumulation_steps=shape.grad_accum,
        learning_rate=t.lr,
        weight_decay=t.weight_decay,
        warmup_steps=t.warmup_steps,
        lr_scheduler_type=t.lr_scheduler,
        max_grad_norm=t.max_grad_norm if t.max_grad_norm > 0 else 0.0,
        bf16=t.precision == "bf16",
        fp16=t.precision == "fp16",
        seed=t.seed,
        data_seed=t.seed,
        logging_steps=t.log_every,
        logging_first_step=True,
        eval_strategy="steps" if t.eval_every else "no",
        eval_steps=t.eval_every or None,
        save_strategy="no",
        report_to=list(report_to) or "none",
        use_cpu=on_cpu,
        ddp_backend="gloo" if on_cpu and ctx.world_size > 1 else None,
        dataloader_num_workers=t.num_workers,
        # A progress bar on a terminal only: in a log file its redraws are carriage returns (log lines say it there)
        disable_tqdm=not (ctx.is_main and sys.stderr.isatty()),
    ))


def one_gpu_per_process(args: Any) -> Any:
    """The Trainer's DataParallel off: a single process that sees several GPUs (a local run in an allocation of
    several) trains on its first one, and says how to use them all. DataParallel splits each batch over the GPUs from
    one process, slower than a process per GPU, and makes the global batch per-device batch x GPUs where the run's
    shape (hpcrun.rundir.shape) counts processes: a resume on another number of GPUs would change the batch it
    means to keep. In a distributed run ``n_gpu`` is 1 already."""
    if args.n_gpu > 1:
        log.warning("%d GPUs visible to this one process: it trains on the first only (not DataParallel, which splits "
                    "each batch from one process); for a process per GPU, submit it with cluster.gpus_per_node=%d "
                    "(cluster=slurm)", args.n_gpu, args.n_gpu)
        args._n_gpu = 1  # what the Trainer itself does for a model split over GPUs (is_model_parallel)
    return args


def start_shape(cfg: Config, ctx: JobContext) -> Shape:
    """This start's processes, batch and accumulation: the config's on a first start or on the checkpoint's number
    of processes; on another number, the checkpoint's global batch kept (:func:`hpcrun.rundir.shape.continue_on`)."""
    configured = Shape(ctx.world_size, cfg.train.batch_size, cfg.train.grad_accum)
    saved = read_shape(ctx.resume_from.path) if ctx.resume_from is not None else None
    if saved is None:
        return configured
    shape = continue_on(saved, ctx.world_size, cfg.train.batch_size, fsdp=cfg.train.fsdp)
    if shape != saved and ctx.is_main:
        log.info("continuing on %d process(es) a run saved by %d: %s (the global batch kept)", shape.processes,
                 saved.processes, shape.describe())
    return shape


def metrics_callback(path: Path) -> Any:
    """A TrainerCallback that appends every log record (loss, lr, eval loss) to ``metrics.jsonl`` and logs it as one
    readable line (``step 10/300: loss 8.116, grad_norm 1.886, learning_rate 0.0003, epoch 0.05405``)."""
    from transformers import TrainerCallback

    class MetricsToJsonl(TrainerCallback):
        def on_log(self, args: Any, state: Any, control: Any, logs: Any = None, **kwargs: Any) -> None:
            if state.is_world_process_zero and logs:
                record = {"step": state.global_step, "time": time.time(), **logs}
                with path.open("a") as f:
                    f.write(json.dumps(record) + "\n")
                log.info("step %d/%d: %s", state.global_step, state.max_steps, log_line(logs))

    return MetricsToJsonl()


def log_line(logs: dict) -> str:
    """A log record's numbers as ``key value`` pairs, 4 significant digits (the Trainer's own printers write a dict
    of strings)."""
    parts = []
    for key, value in logs.items():
        if key == "total_flos":
            continue
        parts.append(f"{key} {value:.4g}" if isinstance(value, (int, float)) and not isinstance(value, bool)
                     else f"{key} {value}")
    return ", ".join(parts)


def quiet_printers(trainer: Any) -> None:
    """The Trainer's own printing of each log record (PrinterCallback's dict of strings, or the progress bar's)
    gives way to :func:`metrics_callback`'s log line; on a terminal the bar itself stays; model saves draw no
    progress bar into log files."""
    from transformers import PrinterCallback, ProgressCallback
    from transformers.utils import logging as hf_logging

    trainer.remove_callback(PrinterCallback)
    if trainer.pop_callback(ProgressCallback) is not None:
        class BarOnly(ProgressCallback):
            def on_log(self, args: Any, state: Any, control: Any, logs: Any = None, **kwargs: Any) -> None:
                pass

        trainer.add_callback(BarOnly())
    if not sys.stderr.isatty():
        hf_logging.disable_progress_bar()


def time_triggers(cfg: Config, ctx: JobContext) -> Any:
    """The wall-clock save/log/eval triggers and the deadline (the run's own, restored by the job entry)."""
    from hpcrun.durations import seconds_or_none
    from hpcrun.frameworks.transformers import TimeTriggerCallback
    from hpcrun.job.triggers import TimeTriggers
    from hpcrun.rundir.checkpoints import CheckpointDir

    triggers = ctx.triggers
    if triggers is None:  # called outside JobEntry
        triggers = TimeTriggers.from_config(cfg, ctx.end_time)
        if ctx.resume_from is not None:
            triggers.restore(CheckpointDir.read_state(ctx.resume_from))

    triggers.set_intervals(log_every=seconds_or_none(cfg.train.log_every_time),
                           eval_every=seconds_or_none(cfg.train.eval_every_time))
    return TimeTriggerCallback(triggers=triggers, stop_flags=ctx.stop_flags, ledger=ctx.ledger)


def train(cfg: Config, ctx: JobContext) -> Union[Path, Stopped]:
    """Trains the configured model on the configured text, resuming from ``ctx.resume_from`` if set.

    Returns:
        The folder of the final weights (``save_pretrained`` format, safetensors), or :class:`Stopped` when a
        signal or the deadline stopped training after a save.
    """
    from transformers import Trainer, set_seed

    from hpcrun.frameworks.transformers import hpcrun_trainer
    from hpcrun.frameworks.transformers.trackers import finish_trackers, tracker_callbacks
    from hpcrun.rundir.checkpoints import CheckpointDir
    from hpcrun.rundir.state import read_state

    phase = ctx.ledger.phase if ctx.ledger is not None else (lambda name: None)
    phase("imports")  # torch, transformers (and what they pull in)
    set_seed(cfg.train.seed)  # before the model is built: the random init depends on it
    rd = RunDir(ctx.run_dir)
    start_n = len(read_state(ctx.run_dir).get("starts", [])) or 1
    report_to, tracking = tracker_callbacks(list(cfg.train.report_to), ctx.run_dir, cfg.run.name, start_n,
                                           is_main=ctx.is_main)
    shape = start_shape(cfg, ctx)
    args = training_arguments(cfg, ctx, report_to, shape)
    with args.main_process_first(desc="tokenizer and data"):  # rank 0 writes the caches the others then read
        tokenizer = tokenizer_for(cfg, ctx.run_dir, ctx.is_main)
        if cfg.data.format == "text":
            train_set, eval_set = corpus_blocks(cfg, tokenizer, rd.task_file(TOKENS_DIR), write=ctx.is_main)
            base, data_kwargs = Trainer, {}
        else:
            from trl import SFTTrainer

            from hpcrun.tasks.sft import sft_data

            train_set, eval_set = sft_data(cfg, tokenizer, rd.task_file(SFT_DATA_DIR) / f"rank-{ctx.rank}")
            base, data_kwargs = SFTTrainer, {"processing_class": tokenizer}
    train_set = whole_global_batches(train_set, shape, ctx, prepared=False)  # (an older run's one cut)
    phase("data")  # the tokenizer and the tokenized data (read from the cache after the first start)
    model = build_model(cfg, tokenizer, ctx.resume_from)
    phase("model")

    triggers = time_triggers(cfg, ctx)
    resume = ctx.resume_from
    if resume is not None:
        log.info("resuming from %s", resume.path)
    trainer = hpcrun_trainer(base)(
        model=model,
        args=args,
        train_dataset=train_set,
        eval_dataset=eval_set,
        callbacks=[metrics_callback(rd.metrics), triggers, *tracking],
        checkpoints=ctx.checkpoints or CheckpointDir(rd.checkpoints, cfg.checkpoint.keep_last),
        triggers=triggers,
        **data_kwargs,
    )
    trainer.train_dataset = whole_global_batches(trainer.train_dataset, shape, ctx)  # (after SFTTrainer's own prep)
    if isinstance(trainer.train_dataset, EpochWindow):
        trainer.add_callback(window_callback(trainer.train_dataset, shape.global_batch))
    quiet_printers(trainer)
    phase("trainer")
    start = time.monotonic()
    result = trainer.train(resume_from_checkpoint=str(resume.path) if resume else None)
    log.info("trained to step %d in %.1f s this start", result.global_step, time.monotonic() - start)
    if triggers.stop_reason is not None and result.global_step < cfg.train.max_steps:
        signal = ctx.stop_flags.signal if ctx.stop_flags else None
        finish_trackers()  # before the requeue kills this job's processes, W&B's writer among them
        return Stopped(step=result.global_step, reason=triggers.stop_reason, signal=signal)

    metrics = trainer.evaluate()
    log.info("eval loss %.4f", metrics["eval_loss"])
    finish_trackers()
    final = rd.final
    save_final(trainer, final, ctx, cfg.model)
    if ctx.is_main:
        tokenizer.save_pretrained(final)
        # The Trainer adds its arguments as a pickle; config.yaml holds them in the open, so keep final/ free of
        # anything that needs unpickling to read.
        (final / "training_args.bin").unlink(missing_ok=True)
        log.info("final weights in %s", final)
    return final

