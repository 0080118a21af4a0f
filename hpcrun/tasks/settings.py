"""The built-in task's settings: the model, data and train sections of ``hpcrun.tasks.causal_lm.train``.

A task owns its settings: ``task.settings`` names a dataclass whose fields are the task's top-level sections
(``model``, ``data``, ``train`` here). hpcrun composes them from ``conf/`` and the command line, refuses unknown keys
and wrong types naming the key, calls each section's ``check()`` and then the settings' ``check(cfg)`` (for checks
across sections, or against hpcrun's own keys such as ``cluster.*``). The comment above each field is its
description (``hpcrun --help``, docs/configuration.md). The built-in task's settings are also the default for
``task._target_=hpcrun.tasks.causal_lm.train``; a task of one's own may reuse them with
``task.settings=hpcrun.tasks.settings.CausalLMSettings`` (examples/accelerate_task.py does).

This module is imported on the submitting side: the standard library, hpcrun.errors and hpcrun.config.checks
only, never torch or transformers.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

from hpcrun.config.checks import duration as _duration
from hpcrun.config.checks import positive_int as _positive_int
from hpcrun.config.checks import trackers as _trackers
from hpcrun.errors import ConfigError

PRECISIONS = ("fp32", "bf16", "fp16")
LR_SCHEDULERS = ("constant", "constant_with_warmup", "cosine", "linear")


DTYPES = ("float32", "bfloat16", "float16")
QUANTIZE = ("", "4bit", "8bit")
DATA_FORMATS = ("text", "chat", "prompt_completion")


@dataclass
class LoraConfig:
    """LoRA adapters through peft: only the adapters train; checkpoints hold them and their optimizer state."""

    # Rank of the adapters (0: off, the whole model trains).
    r: int = 0
    # Scaling numerator (the update is scaled by alpha / r).
    alpha: int = 16
    # Dropout on the adapters' input.
    dropout: float = 0.05
    # Module names to adapt (e.g. [q_proj, v_proj]; all-linear: every linear layer but the output; empty: peft's
    # default for the model type).
    target_modules: Optional[Any] = None
    # Also write the base model with the adapters merged in, to final/merged.
    merge: bool = False

    def check(self) -> None:
        if not isinstance(self.r, int) or self.r < 0:
            raise ConfigError("model.lora.r", self.r, "0 (off) or a positive rank")
        if self.r:
            _positive_int("model.lora.alpha", self.alpha)
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError("model.lora.dropout", self.dropout, "a probability in [0, 1)")
        t = self.target_modules
        if t is not None and not isinstance(t, str) and not (
                isinstance(t, (list, tuple)) and t and all(isinstance(x, str) and x for x in t)):
            raise ConfigError("model.lora.target_modules", t, "a list of module names, or all-linear")


@dataclass
class ModelConfig:
    """Any causal LM of transformers (AutoModelForCausalLM): pretrained weights from a folder or hub id, or a random
    init of any architecture (a model type, or a config folder) with the keys below on top."""

    # Hub id or local folder: the pretrained weights (model.pretrained=true), the architecture of a random init when
    # model.type is empty, and the tokenizer with data.tokenizer=model.
    name_or_path: Optional[str] = None
    # Load pretrained weights from model.name_or_path (false: random init).
    pretrained: bool = False
    # Model type of a random init (llama, gpt2, mistral, qwen2, ...; empty: model.name_or_path's config, else llama).
    type: Optional[str] = None
    # Width of the hidden states (empty: the architecture's own; likewise for the keys below).
    hidden_size: Optional[int] = None
    # Width of the MLP.
    intermediate_size: Optional[int] = None
    # Number of transformer layers.
    num_hidden_layers: Optional[int] = None
    # Number of attention heads.
    num_attention_heads: Optional[int] = None
    # Number of key/value heads (grouped-query attention; equal to the heads for plain multi-head).
    num_key_value_heads: Optional[int] = None
    # Longest sequence the position embedding covers.
    max_position_embeddings: Optional[int] = None
    # RMSNorm epsilon (Llama-like architectures).
    rms_norm_eps: Optional[float] = None
    # RoPE base frequency (Llama-like architectures).
    rope_theta: Optional[float] = None
    # Share the input embedding with the output projection.
    tie_word_embeddings: Optional[bool] = None
    # Dropout on attention probabilities (Llama-like architectures).
    attention_dropout: Optional[float] = None
    # Any other key of the architecture's config, by its own name (e.g. {n_inner: 512} for gpt2).
    config_overrides: Dict[str, Any] = field(default_factory=dict)
    # The weights' dtype: float32 (fp32 master weights; train.precision picks the compute), bfloat16 or float16
    # (the whole training state in 16 bits: half the memory, for a full fine-tune that would not fit otherwise).
    dtype: str = "float32"
    # Recompute activations in the backward pass to save memory.
    gradient_checkpointing: bool = False
    # Vocabulary size, for `hpcrun plan` of a model whose tokenizer is not at hand (empty: data.vocab_size).
    vocab_size: Optional[int] = None
    # LoRA adapters (model.lora.r above 0 turns them on).
    lora: LoraConfig = field(default_factory=LoraConfig)
    # QLoRA: load the pretrained base quantized with bitsandbytes, 4bit (NF4, double quantization, computing in
    # model.dtype) or 8bit, frozen, and train LoRA adapters on it (needs model.lora.r above 0, model.pretrained=true
    # and bitsandbytes where the job runs: pip install 'hpcrun-slurm[qlora]'). Empty: not quantized.
    quantize: str = ""

    def check(self) -> None:
        for key in ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                    "num_key_value_heads", "max_position_embeddings", "vocab_size"):
            if getattr(self, key) is not None:
                _positive_int(f"model.{key}", getattr(self, key))
        if self.hidden_size and self.num_attention_heads and self.hidden_size % self.num_attention_heads:
            raise ConfigError(
                "model.hidden_size", self.hidden_size,
                f"a multiple of model.num_attention_heads={self.num_attention_heads}",
            )
        if self.num_attention_heads and self.num_key_value_heads and \
                self.num_attention_heads % self.num_key_value_heads:
            raise ConfigError(
                "model.num_key_value_heads", self.num_key_value_heads,
                f"a divisor of model.num_attention_heads={self.num_attention_heads}",
            )
        if self.pretrained and not self.name_or_path:
            raise ConfigError("model.name_or_path", self.name_or_path, "a hub id or path when model.pretrained=true")
        if self.attention_dropout is not None and not 0.0 <= self.attention_dropout < 1.0:
            raise ConfigError("model.attention_dropout", self.attention_dropout, "a probability in [0, 1)")
        if self.dtype not in DTYPES:
            raise ConfigError("model.dtype", self.dtype, choices=DTYPES)
        self.lora.check()
        if self.quantize not in QUANTIZE:
            raise ConfigError("model.quantize", self.quantize, choices=[q for q in QUANTIZE if q] + ["'' (off)"])
        if self.quantize and not self.pretrained:
            raise ConfigError("model.quantize", self.quantize, problem="quantizes pretrained weights",
                              hint="set model.pretrained=true and model.name_or_path")
        if self.quantize and not self.lora.r:
            raise ConfigError("model.quantize", self.quantize, problem="freezes the base model (QLoRA trains LoRA "
                              "adapters on it)", hint="set model.lora.r, e.g. model.lora.r=16")


@dataclass
class DataConfig:
    """The training data and its tokenizer."""

    # A built-in corpus name (shakespeare); a .txt/.txt.gz/.json/.jsonl/.csv/.parquet file or a folder of them;
    # a folder written by datasets' save_to_disk; or a hub dataset name (where the node can download).
    corpus: str = "shakespeare"
    # The column holding each document's text (json, csv, parquet and saved datasets; text files are read whole).
    text_field: str = "text"
    # text: language modelling on the documents; chat: a column of conversations ([{role, content}, ...], named by
    # data.messages_field) formatted with the tokenizer's chat template; prompt_completion: prompt and completion
    # columns. chat and prompt_completion train on the completion (the last assistant turn) only, through TRL.
    format: str = "text"
    # The conversations' column (data.format=chat).
    messages_field: str = "messages"
    # Processes that tokenize the corpus at the first start (empty: one per CPU of the job, one for small corpora).
    num_proc: Optional[int] = None
    # bpe: train a byte-level BPE tokenizer on the corpus (offline); model: the tokenizer of model.name_or_path;
    # anything else: a tokenizer hub id or path.
    tokenizer: str = "bpe"
    # Vocabulary size of the trained BPE tokenizer.
    vocab_size: int = 4096
    # Tokens per training sequence.
    seq_len: int = 128
    # Share of the corpus held out for evaluation.
    eval_fraction: float = 0.05

    def check(self) -> None:
        _positive_int("data.vocab_size", self.vocab_size)
        if self.vocab_size < 300:
            raise ConfigError("data.vocab_size", self.vocab_size, "at least 300 (256 bytes plus merges)")
        _positive_int("data.seq_len", self.seq_len)
        if not 0.0 < self.eval_fraction < 0.5:
            raise ConfigError("data.eval_fraction", self.eval_fraction, "a fraction between 0 and 0.5")
        if self.format not in DATA_FORMATS:
            raise ConfigError("data.format", self.format, choices=DATA_FORMATS)
        if self.num_proc is not None:
            _positive_int("data.num_proc", self.num_proc)
        if not self.text_field:
            raise ConfigError("data.text_field", self.text_field, "a column name")
        from hpcrun.tasks.sources import check_corpus

        check_corpus(self)


@dataclass
class TrainConfig:
    """The optimisation: steps, batch, learning rate, precision."""

    # Optimizer steps to train for.
    max_steps: int = 300
    # Sequences per device per micro-batch.
    batch_size: int = 16
    # Micro-batches accumulated into one optimizer step.
    grad_accum: int = 1
    # Peak learning rate (AdamW).
    lr: float = 1e-3
    # AdamW weight decay.
    weight_decay: float = 0.1
    # Linear warm-up steps.
    warmup_steps: int = 30
    # Learning-rate schedule after warm-up.
    lr_scheduler: str = "cosine"
    # Gradient clipping norm (0: off).
    max_grad_norm: float = 1.0
    # Numeric precision: fp32, bf16 (GPUs from A100 on) or fp16.
    precision: str = "fp32"
    # Seed for the model init, data order and dropout.
    seed: int = 0
    # Log loss and learning rate every this many steps.
    log_every: int = 10
    # Also log every this much wall clock (e.g. 1m; empty: by steps only).
    log_every_time: Optional[str] = None
    # Evaluate on the held-out text every this many steps (0: only at the end).
    eval_every: int = 0
    # Also evaluate every this much wall clock (e.g. 30m; empty: by steps only).
    eval_every_time: Optional[str] = None
    # Data-loading worker processes per rank.
    num_workers: int = 0
    # Shard weights, gradients and optimizer state over the ranks (FSDP full shard through accelerate, sharded
    # checkpoints); false: every rank holds a full replica (DDP). For models whose training state does not fit one GPU.
    fsdp: bool = False
    # Trackers: [wandb], [tensorboard], both, or [] (the default). One tracker run per hpcrun run, across every
    # requeue (docs/trackers.md).
    report_to: List[str] = field(default_factory=list)

    def check(self) -> None:
        _positive_int("train.max_steps", self.max_steps)
        _positive_int("train.batch_size", self.batch_size)
        _positive_int("train.grad_accum", self.grad_accum)
        _positive_int("train.log_every", self.log_every)
        if not self.lr > 0:
            raise ConfigError("train.lr", self.lr, "a positive learning rate")
        if self.warmup_steps < 0:
            raise ConfigError("train.warmup_steps", self.warmup_steps, "zero or more steps")
        if self.eval_every < 0:
            raise ConfigError("train.eval_every", self.eval_every, "zero (off) or a number of steps")
        if self.num_workers < 0:
            raise ConfigError("train.num_workers", self.num_workers, "zero or more workers")
        if self.precision not in PRECISIONS:
            raise ConfigError("train.precision", self.precision, choices=PRECISIONS)
        if self.lr_scheduler not in LR_SCHEDULERS:
            raise ConfigError("train.lr_scheduler", self.lr_scheduler, choices=LR_SCHEDULERS)
        _trackers("train.report_to", self.report_to)
        for key in ("log_every_time", "eval_every_time"):
            if getattr(self, key) is not None:
                _duration(f"train.{key}", getattr(self, key))


@dataclass
class CausalLMSettings:
    """The sections of the built-in causal-LM task (and of tasks that reuse them)."""

    # The model: its architecture, or the pretrained weights to start from.
    model: ModelConfig = field(default_factory=ModelConfig)
    # The training text and its tokenizer.
    data: DataConfig = field(default_factory=DataConfig)
    # The optimisation: steps, batch, learning rate, precision.
    train: TrainConfig = field(default_factory=TrainConfig)

    def planned_steps(self) -> int:
        """How many steps the run trains in all, for ``hpcrun status`` before the task has started and said so."""
        return self.train.max_steps

    def check(self, cfg: Any) -> None:
        """Checks across sections, after each section's own ``check()``; ``cfg`` is the whole config."""
        if self.model.max_position_embeddings and self.data.seq_len > self.model.max_position_embeddings:
            raise ConfigError(
                "data.seq_len", self.data.seq_len,
                f"at most model.max_position_embeddings={self.model.max_position_embeddings}",
            )
        if self.data.format != "text" and self.data.tokenizer == "bpe":
            raise ConfigError("data.tokenizer", self.data.tokenizer, f"a tokenizer with a chat template (model, or a "
                              f"path) for data.format={self.data.format}")
        if self.model.quantize and self.train.fsdp:
            raise ConfigError("train.fsdp", True, f"false with model.quantize={self.model.quantize} (a quantized base "
                              "is not sharded here: train it with DDP, one full copy per GPU)")
        cluster = cfg.cluster
        if self.train.precision == "bf16" and cluster.launcher == "slurm" and cluster.gpus_per_node == 0:
            raise ConfigError("train.precision", self.train.precision,
                              "fp32 on a CPU-only job (cluster.gpus_per_node=0)")
