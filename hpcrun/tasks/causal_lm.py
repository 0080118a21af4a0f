"""The built-in task: train a Llama-architecture causal LM with the transformers Trainer.

Reads top to bottom: text and tokenizer, model, training arguments, train, save ``<run.dir>/final``.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any, Union

from hpcrun.config.schema import Config
from hpcrun.job.context import JobContext, Stopped
from hpcrun.job.entry import FINAL_DIR
from hpcrun.tasks.text import load_corpus, token_blocks, tokenizer_for

log = logging.getLogger("hpcrun")
METRICS_FILE = "metrics.jsonl"


def build_model(cfg: Config, tokenizer: Any) -> Any:
    """A LlamaForCausalLM: pretrained weights from model.name_or_path, or random init from the config.

    Weights stay in fp32 (the optimizer's master copy); train.precision=bf16/fp16 runs the compute under autocast.
    """
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    m = cfg.model
    if m.pretrained:
        model = LlamaForCausalLM.from_pretrained(m.name_or_path, dtype=torch.float32)
    else:
        config = LlamaConfig(
            vocab_size=len(tokenizer),
            hidden_size=m.hidden_size,
            intermediate_size=m.intermediate_size,
            num_hidden_layers=m.num_hidden_layers,
            num_attention_heads=m.num_attention_heads,
            num_key_value_heads=m.num_key_value_heads,
            max_position_embeddings=m.max_position_embeddings,
            rms_norm_eps=m.rms_norm_eps,
            rope_theta=m.rope_theta,
            tie_word_embeddings=m.tie_word_embeddings,
            attention_dropout=m.attention_dropout,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        )
        model = LlamaForCausalLM(config)
    if m.gradient_checkpointing:
        model.gradient_checkpointing_enable()
    n_params = sum(p.numel() for p in model.parameters())
    log.info("model: Llama, %.2f M parameters (%s)", n_params / 1e6,
             f"pretrained {m.name_or_path}" if m.pretrained else "random init")
    return model


def training_arguments(cfg: Config, ctx: JobContext) -> Any:
    """transformers TrainingArguments from the config. hpcrun, not the Trainer, owns checkpointing."""
    import torch
    from transformers import TrainingArguments

    t = cfg.train
    return TrainingArguments(
        output_dir=str(ctx.run_dir / "trainer"),
        max_steps=t.max_steps,
        per_device_train_batch_size=t.batch_size,
        per_device_eval_batch_size=t.batch_size,
        gradient_accumulation_steps=t.grad_accum,
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
        report_to="none",
        use_cpu=not torch.cuda.is_available(),
        dataloader_num_workers=t.num_workers,
        disable_tqdm=not ctx.is_main,
    )


def metrics_callback(path: Path) -> Any:
    """A TrainerCallback that appends every log record (loss, lr, eval loss) to ``metrics.jsonl``."""
    from transformers import TrainerCallback

    class MetricsToJsonl(TrainerCallback):
        def on_log(self, args: Any, state: Any, control: Any, logs: Any = None, **kwargs: Any) -> None:
            if state.is_world_process_zero and logs:
                record = {"step": state.global_step, "time": time.time(), **logs}
                with path.open("a") as f:
                    f.write(json.dumps(record) + "\n")

    return MetricsToJsonl()


def time_triggers(cfg: Config, ctx: JobContext) -> Any:
    """The wall-clock save/log/eval triggers and the deadline (the run's own, restored by the job entry)."""
    from hpcrun.job.callback import TimeTriggerCallback
    from hpcrun.job.checkpoint import CheckpointDir
    from hpcrun.job.triggers import TimeTriggers

    triggers = ctx.triggers
    if triggers is None:  # called outside JobEntry
        triggers = TimeTriggers.from_config(cfg, ctx.end_time)
        if ctx.resume_from is not None:
            triggers.restore(CheckpointDir.read_state(ctx.resume_from))
    return TimeTriggerCallback(triggers=triggers, stop_flags=ctx.stop_flags)


def train(cfg: Config, ctx: JobContext) -> Union[Path, Stopped]:
    """Trains the configured model on the configured text, resuming from ``ctx.resume_from`` if set.

    Returns:
        The folder of the final weights (``save_pretrained`` format, safetensors), or :class:`Stopped` when a
        signal or the deadline stopped training after a save.
    """
    from transformers import set_seed

    from hpcrun.job.checkpoint import CheckpointDir
    from hpcrun.job.trainer import HpcrunTrainer

    set_seed(cfg.train.seed)  # before the model is built: the random init depends on it
    documents = load_corpus(cfg.data.corpus)
    tokenizer = tokenizer_for(cfg, documents, ctx.run_dir, ctx.is_main)
    train_set, eval_set = token_blocks(documents, tokenizer, cfg.data.seq_len, cfg.data.eval_fraction)
    model = build_model(cfg, tokenizer)

    triggers = time_triggers(cfg, ctx)
    resume = ctx.resume_from
    if resume is not None:
        log.info("resuming from %s", resume.path)
    trainer = HpcrunTrainer(
        model=model,
        args=training_arguments(cfg, ctx),
        train_dataset=train_set,
        eval_dataset=eval_set,
        callbacks=[metrics_callback(ctx.run_dir / METRICS_FILE), triggers],
        checkpoints=ctx.checkpoints or CheckpointDir(ctx.run_dir / "checkpoints", cfg.checkpoint.keep_last),
        triggers=triggers,
    )
    start = time.monotonic()
    result = trainer.train(resume_from_checkpoint=str(resume.path) if resume else None)
    log.info("trained to step %d in %.1f s this start", result.global_step, time.monotonic() - start)
    if triggers.stop_reason is not None and result.global_step < cfg.train.max_steps:
        signal = ctx.stop_flags.signal if ctx.stop_flags else None
        return Stopped(step=result.global_step, reason=triggers.stop_reason, signal=signal)

    metrics = trainer.evaluate()
    log.info("eval loss %.4f", metrics["eval_loss"])
    final = ctx.run_dir / FINAL_DIR
    trainer.save_model(str(final))  # safetensors; only the main process writes
    if ctx.is_main:
        tokenizer.save_pretrained(final)
        # The Trainer adds its arguments as a pickle; config.yaml holds them in the open, so keep final/ free of
        # anything that needs unpickling to read.
        (final / "training_args.bin").unlink(missing_ok=True)
        log.info("final weights in %s", final)
    return final
