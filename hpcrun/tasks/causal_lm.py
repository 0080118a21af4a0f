"""The built-in task: train a Llama-architecture causal LM with the transformers Trainer.

Reads top to bottom: text and tokenizer, model, training arguments, train, save ``<run.dir>/final``.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any, Union

from hpcrun.job.context import JobContext, Stopped
from hpcrun.rundir import RunDir
from hpcrun.tasks.text import TOKENS_FILE, load_corpus, load_pretrained, stream_key, token_blocks, tokenizer_for

log = logging.getLogger("hpcrun")
Config = Any  # the composed config: run/cluster/checkpoint plus this task's model/data/train (hpcrun.tasks.settings)
TRAINER_DIR = "trainer"  # the Trainer's own output_dir (hpcrun, not the Trainer, owns the checkpoints)


def build_model(cfg: Config, tokenizer: Any) -> Any:
    """A LlamaForCausalLM: pretrained weights from model.name_or_path, or random init from the config.

    Weights stay in fp32 (the optimizer's master copy); train.precision=bf16/fp16 runs the compute under autocast.
    """
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    m = cfg.model
    if m.pretrained:
        model = load_pretrained(LlamaForCausalLM.from_pretrained, "model.name_or_path", m.name_or_path,
                                dtype=torch.float32)
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
    if m.gradient_checkpointing and not cfg.train.fsdp:  # under FSDP, FSDP's own activation checkpointing
        model.gradient_checkpointing_enable()
    n_params = sum(p.numel() for p in model.parameters())
    log.info("model: Llama, %.2f M parameters (%s)", n_params / 1e6,
             f"pretrained {m.name_or_path}" if m.pretrained else "random init")
    return model


def fsdp_arguments(cfg: Config, ctx: JobContext) -> dict:
    """FSDP2 full shard through accelerate: one unit per decoder layer, sharded checkpoints (each rank writes its
    shard, in parallel; no rank gathers 7B parameters), FSDP's activation checkpointing. Off with one process."""
    if not cfg.train.fsdp or ctx.world_size < 2:
        return {}
    import torch

    if not torch.cuda.is_available():
        _allow_cpu_fsdp()
    return {
        "fsdp": "full_shard auto_wrap",
        "fsdp_config": {
            "version": 2,
            "transformer_layer_cls_to_wrap": ["LlamaDecoderLayer"],
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


def training_arguments(cfg: Config, ctx: JobContext) -> Any:
    """transformers TrainingArguments from the config. hpcrun, not the Trainer, owns checkpointing."""
    import torch
    from transformers import TrainingArguments

    t = cfg.train
    on_cpu = not torch.cuda.is_available()
    return TrainingArguments(
        **fsdp_arguments(cfg, ctx),
        output_dir=str(RunDir(ctx.run_dir).task_file(TRAINER_DIR)),
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
        use_cpu=on_cpu,
        ddp_backend="gloo" if on_cpu and ctx.world_size > 1 else None,
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


def save_final(trainer: Any, final: Path, ctx: JobContext) -> None:
    """The final weights as one save_pretrained folder (safetensors). Under FSDP with sharded state dicts the
    Trainer's save_model writes nothing, so every rank takes part in gathering the full state dict (to CPU) and
    rank 0 writes it."""
    if not trainer.is_fsdp_enabled:
        trainer.save_model(str(final))  # only the main process writes
        return
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    state = get_model_state_dict(trainer.model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    if ctx.is_main:
        trainer.model.save_pretrained(str(final), state_dict=state)
    trainer.accelerator.wait_for_everyone()


def train(cfg: Config, ctx: JobContext) -> Union[Path, Stopped]:
    """Trains the configured model on the configured text, resuming from ``ctx.resume_from`` if set.

    Returns:
        The folder of the final weights (``save_pretrained`` format, safetensors), or :class:`Stopped` when a
        signal or the deadline stopped training after a save.
    """
    from transformers import set_seed

    from hpcrun.frameworks.transformers import HpcrunTrainer
    from hpcrun.rundir.checkpoints import CheckpointDir

    set_seed(cfg.train.seed)  # before the model is built: the random init depends on it
    documents = load_corpus(cfg.data.corpus)
    tokenizer = tokenizer_for(cfg, documents, ctx.run_dir, ctx.is_main)
    rd = RunDir(ctx.run_dir)
    train_set, eval_set = token_blocks(documents, tokenizer, cfg.data.seq_len, cfg.data.eval_fraction,
                                       cache=rd.task_file(TOKENS_FILE), key=stream_key(cfg.data.corpus, tokenizer),
                                       write=ctx.is_main)
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
        callbacks=[metrics_callback(rd.metrics), triggers],
        checkpoints=ctx.checkpoints or CheckpointDir(rd.checkpoints, cfg.checkpoint.keep_last),
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
    final = rd.final
    save_final(trainer, final, ctx)
    if ctx.is_main:
        tokenizer.save_pretrained(final)
        # The Trainer adds its arguments as a pickle; config.yaml holds them in the open, so keep final/ free of
        # anything that needs unpickling to read.
        (final / "training_args.bin").unlink(missing_ok=True)
        log.info("final weights in %s", final)
    return final
