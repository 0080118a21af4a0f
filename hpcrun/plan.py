"""``hpcrun plan``: will this run fit, and how long will its saves take? Answered on a laptop, before queueing.

The model is built on PyTorch's meta device (shapes, no memory, no download), so the parameter count is the real
one for the configured architecture. Memory per GPU follows what hpcrun actually runs (docs/plan.md has the
formulas and their sources):

- the Trainer keeps fp32 master weights and runs the compute in bf16/fp16 under autocast; AdamW keeps two fp32
  moments. So per parameter: 4 bytes weights, 4 bytes gradients, 8 bytes optimizer state, divided by the number
  of ranks with ``train.fsdp=true`` (full sharding), not divided without it (every rank holds a replica);
- FSDP gathers one decoder layer at a time in the compute precision, with the next one prefetched (2 layers);
- activations per micro-batch: a Llama layer keeps about ``8 h + 5 i`` values per token (h: hidden size, i: MLP
  width; attention through SDPA keeps no seq x seq matrix); with gradient checkpointing only each layer's input
  (``h`` per token) is kept, plus one layer's full set while it is recomputed; the logits and their gradient in fp32;
- a fixed allowance for the CUDA context and allocator fragmentation.

A checkpoint holds the trained weights and their optimizer state (12 bytes per parameter in fp32, 6 with
``model.dtype=bfloat16``; with LoRA only the adapters'); its save time is the size over the stated aggregate write
bandwidth of the job's filesystem. The model is any architecture ``hpcrun.tasks.models.architecture`` builds; its
hidden size, depth and MLP width drive the activation estimate.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any, Dict, List, Optional

from hpcrun.durations import format_human, parse_duration
from hpcrun.errors import ConfigError, UserError

GB = 1e9
# Memory of one GPU by cluster.gpu_type (GB). Greene's A100s are the 80 GB model; "a100_40" for the 40 GB one.
GPU_MEMORY_GB = {"a100": 80, "a100_40": 40, "a100_80": 80, "h100": 80, "h200": 141, "v100": 32, "v100_16": 16,
                 "rtx8000": 48, "l40s": 48, "a40": 48, "rtx6000": 24}
OVERHEAD_BYTES = 2.0 * GB  # CUDA context (~0.5 GB) plus allocator fragmentation; an allowance, not a measurement
_UNITS = {"B": 1, "K": 1e3, "KB": 1e3, "M": 1e6, "MB": 1e6, "G": 1e9, "GB": 1e9, "T": 1e12, "TB": 1e12}


def parse_bandwidth(text: str) -> float:
    """``2GB/s``, ``500MB/s``, ``1.5G`` -> bytes per second."""
    s = str(text).strip().upper().replace(" ", "")
    if s.endswith("/S"):
        s = s[:-2]
    number = s.rstrip("KMGTB")
    unit = s[len(number):]
    try:
        value = float(number) * _UNITS[unit]
    except (ValueError, KeyError):
        raise ConfigError("--bandwidth", text, "a write bandwidth such as 2GB/s or 500MB/s") from None
    if value <= 0:
        raise ConfigError("--bandwidth", text, "a positive bandwidth")
    return value


def vocab_size(cfg: Any, known: Optional[int] = None) -> int:
    """The vocabulary: model.vocab_size, the trained BPE's, or ``known`` (a model folder's config.json says)."""
    if cfg.model.vocab_size:
        return cfg.model.vocab_size
    if cfg.data.tokenizer == "bpe":
        return cfg.data.vocab_size
    if known:
        return known
    raise ConfigError("model.vocab_size", cfg.model.vocab_size,
                      f"the vocabulary size when data.tokenizer={cfg.data.tokenizer} (hpcrun plan downloads nothing)")


def count_parameters(cfg: Any) -> Dict[str, int]:
    """Parameters of the configured model, built on the meta device: total, one of its blocks (the unit FSDP
    gathers), trained (the LoRA adapters' with model.lora.r above 0), and the architecture's sizes."""
    import torch
    from transformers import AutoModelForCausalLM

    from hpcrun.tasks.models import architecture, torch_dtype, wrap_classes

    config = architecture(cfg.model, local_only=True)
    config.vocab_size = vocab_size(cfg, getattr(config, "vocab_size", None))
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config, dtype=torch_dtype(cfg.model.dtype))
        blocks = set(wrap_classes(config))
        block = next((mod for mod in model.modules() if type(mod).__name__ in blocks), None)
        total = sum(p.numel() for p in model.parameters())
        output = model.get_output_embeddings()
        linear = sum(mod.weight.numel() for mod in model.modules()  # what model.quantize quantizes
                     if isinstance(mod, torch.nn.Linear) and mod is not output)
        trained, name = total, type(model).__name__
        if cfg.model.lora.r:
            from hpcrun.tasks.models import with_lora

            model = with_lora(model, cfg.model.lora)
            trained = sum(p.numel() for p in model.parameters() if p.requires_grad)
    hidden = getattr(config, "hidden_size", 0)
    return {"total": total, "layer": sum(p.numel() for p in block.parameters()) if block is not None else 0,
            "trained": trained, "hidden": hidden, "vocab": config.vocab_size, "model": name, "linear": linear,
            "layers": getattr(config, "num_hidden_layers", 0),
            "intermediate": getattr(config, "intermediate_size", None) or 4 * hidden}


# Bytes per parameter of a bitsandbytes-quantized linear layer: NF4 with double quantization (4 bits, plus an 8-bit
# scale per 64 values and an fp32 one per 256 scales), or LLM.int8 (one byte, plus a scale per row).
QUANTIZED_BYTES = {"4bit": 0.5 + 1 / 64 + 4 / (64 * 256), "8bit": 1.0}


@dataclass
class Plan:
    parameters: int
    layer_parameters: int
    ranks: int
    sharded: bool
    gpu_type: Optional[str]
    gpu_memory: Optional[float]
    per_gpu: Dict[str, float]
    checkpoint_bytes: float
    bandwidth: float
    save_seconds: float
    warnings: List[str] = field(default_factory=list)
    model: str = "LlamaForCausalLM"
    trained_parameters: Optional[int] = None  # with LoRA: the adapters' (None: every parameter trains)

    @property
    def per_gpu_total(self) -> float:
        return sum(self.per_gpu.values())

    @property
    def fits(self) -> bool:
        return self.gpu_memory is None or self.per_gpu_total <= self.gpu_memory

    def as_dict(self) -> Dict[str, Any]:
        d = asdict(self)
        d.update(per_gpu_total=self.per_gpu_total, fits=self.fits)
        return d


def activation_bytes(cfg: Any, vocab: int, counts: Dict[str, int]) -> float:
    t = cfg.train
    m = cfg.model
    h = counts.get("hidden") or m.hidden_size or 0
    i = counts.get("intermediate") or m.intermediate_size or 4 * h
    n_layers = counts.get("layers") or m.num_hidden_layers or 0
    tokens = t.batch_size * cfg.data.seq_len
    act = 4 if t.precision == "fp32" and cfg.model.dtype == "float32" else 2
    per_layer = (8 * h + 5 * i) * tokens * act
    if cfg.model.gradient_checkpointing:
        layers = n_layers * h * tokens * act + per_layer
    else:
        layers = n_layers * per_layer
    logits = 2 * tokens * vocab * 4  # fp32 logits and their gradient
    return float(layers + logits)


def make_plan(cfg: Any, bandwidth: float, gpu_memory_gb: Optional[float] = None,
              counts: Optional[Dict[str, int]] = None) -> Plan:
    """The plan for a composed config (``counts`` skips building the model, for tests of the arithmetic).

    Raises:
        UserError: the config's task has no model (the built-in task's settings, or a task that declares them).
    """
    if not {"model", "data", "train"} <= set(cfg.sections()):
        raise UserError(f"hpcrun plan forecasts the built-in causal-LM task (model, data, train settings); "
                        f"task._target_={cfg.task._target_} declares none: nothing to forecast")
    c = cfg.cluster
    counts = counts or count_parameters(cfg)
    n, layer = counts["total"], counts["layer"]
    ranks = c.nodes * c.tasks_per_node
    sharded = bool(cfg.train.fsdp) and ranks > 1
    shard = ranks if sharded else 1
    compute = 4 if cfg.train.precision == "fp32" and cfg.model.dtype == "float32" else 2
    trained = counts.get("trained", n)
    w, kind = (4, "fp32") if cfg.model.dtype == "float32" else (2, cfg.model.dtype)
    lora = trained != n
    wt, kind_t = (4, "fp32") if lora else (w, kind)  # peft keeps the adapters in fp32 whatever the base's dtype
    what = "LoRA " if lora else ""
    if cfg.model.quantize:  # bitsandbytes: the linear layers in 4 (NF4 + its scales) or 8 bits; the rest in fp32
        q = QUANTIZED_BYTES[cfg.model.quantize]
        linear = counts.get("linear", n)
        weights = {f"base weights ({cfg.model.quantize} linear layers, fp32 rest)": q * linear + 4 * (n - linear)}
    else:
        weights = {"weights (fp32 master)" if w == 4 else f"weights ({kind})": w * n / shard}
    per_gpu = {
        **weights,
        f"{what}gradients ({kind_t})": wt * trained / shard,
        f"{what}optimizer (AdamW, 2 x {kind_t})": 2.0 * wt * trained / shard,
    }
    if sharded:
        per_gpu["gathered layers (FSDP, 2 in flight)"] = 2.0 * layer * compute
    per_gpu["activations (one micro-batch)"] = activation_bytes(cfg, vocab_size(cfg, counts.get("vocab")), counts)
    per_gpu["CUDA context and fragmentation (allowance)"] = OVERHEAD_BYTES
    if gpu_memory_gb is None and c.gpu_type:
        gpu_memory_gb = GPU_MEMORY_GB.get(c.gpu_type)
    checkpoint = 3.0 * wt * trained  # the trained weights and their two AdamW moments (LoRA: the adapters')
    plan = Plan(parameters=n, layer_parameters=layer, ranks=ranks, sharded=sharded, gpu_type=c.gpu_type,
                gpu_memory=gpu_memory_gb * GB if gpu_memory_gb else None, per_gpu=per_gpu,
                checkpoint_bytes=checkpoint, bandwidth=bandwidth, save_seconds=checkpoint / bandwidth,
                model=str(counts.get("model", "LlamaForCausalLM")),
                trained_parameters=trained if trained != n else None)
    plan.warnings = _warnings(cfg, plan)
    return plan


def _warnings(cfg: Any, plan: Plan) -> List[str]:
    c = cfg.cluster
    out = []
    if c.gpus_per_node == 0:
        out.append("cluster.gpus_per_node=0: no GPU requested; the figures are per process")
    elif c.tasks_per_node != c.gpus_per_node:
        out.append(f"cluster.tasks_per_node={c.tasks_per_node} with cluster.gpus_per_node={c.gpus_per_node}: "
                   "hpcrun runs one process per GPU; make them equal")
    if plan.gpu_memory is None and c.gpus_per_node:
        out.append(f"unknown memory for cluster.gpu_type={c.gpu_type}: pass --gpu-memory GB to check the fit")
    if not plan.fits:
        hints = []
        if not plan.sharded and plan.ranks > 1:
            hints.append("train.fsdp=true shards weights, gradients and optimizer state over the GPUs")
        if plan.ranks == 1:
            hints.append("more GPUs with train.fsdp=true")
        if not cfg.model.gradient_checkpointing:
            hints.append("model.gradient_checkpointing=true")
        if cfg.train.batch_size > 1:
            hints.append("a smaller train.batch_size with a larger train.grad_accum")
        out.append(f"does not fit: {plan.per_gpu_total / GB:.1f} GB needed per GPU, one {c.gpu_type} has "
                   f"{plan.gpu_memory / GB:.0f} GB" + (f"; try {'; or '.join(hints)}" if hints else ""))
    grace = parse_duration(c.signal_delay)
    if c.launcher == "slurm" and plan.save_seconds > grace:
        out.append(f"a save takes about {format_human(plan.save_seconds)} at {plan.bandwidth / GB:g} GB/s, longer "
                   f"than cluster.signal_delay={c.signal_delay}: a save started on Slurm's signal may not finish "
                   "(the deadline save, which starts from the measured save time, still does)")
    every = cfg.checkpoint.save_every_seconds()
    if every and plan.save_seconds > 0.1 * every:
        out.append(f"saves (about {format_human(plan.save_seconds)}) would take over 10% of "
                   f"checkpoint.save_every={cfg.checkpoint.save_every}")
    return out


def _gb(x: float) -> str:
    return f"{x / GB:7.1f} GB"


def render_text(cfg: Any, plan: Plan) -> str:
    c = cfg.cluster
    layout = (f"{c.nodes} node(s) x {c.tasks_per_node} process(es) = {plan.ranks} rank(s)"
              f"{', ' + str(c.gpus_per_node) + ' x ' + (c.gpu_type or 'GPU') + ' per node' if c.gpus_per_node else ''}")
    strategy = (f"FSDP full shard over {plan.ranks} ranks" if plan.sharded
                else "replicated on every rank (DDP)" if plan.ranks > 1 else "one process")
    weights = "fp32 master" if cfg.model.dtype == "float32" else cfg.model.dtype
    final_bytes = 4 if weights == "fp32 master" or plan.trained_parameters else 2  # peft's adapters are fp32
    lines = [
        f"run {cfg.run.name}: {layout}",
        f"model: {plan.model}, {plan.parameters:,} parameters ({plan.parameters / 1e9:.2f} B); one block "
        f"{plan.layer_parameters:,}" + (f"; LoRA r={cfg.model.lora.r}: {plan.trained_parameters:,} trained"
                                        if plan.trained_parameters is not None else ""),
        f"training: {cfg.train.precision} compute, {weights} weights, AdamW; {strategy}; gradient checkpointing "
        f"{'on' if cfg.model.gradient_checkpointing else 'off'}; micro-batch {cfg.train.batch_size} x "
        f"{cfg.data.seq_len} tokens",
        "",
        "memory per GPU:",
        *(f"  {name:<45}{_gb(v)}" for name, v in plan.per_gpu.items()),
        f"  {'total':<45}{_gb(plan.per_gpu_total)}"
        + (f"  of {plan.gpu_memory / GB:.0f} GB ({c.gpu_type}): {'fits' if plan.fits else 'DOES NOT FIT'}"
           if plan.gpu_memory else ""),
        "",
        f"checkpoint: {plan.checkpoint_bytes / GB:.1f} GB ({'adapters' if plan.trained_parameters else 'weights'} "
        f"+ AdamW state{', sharded: each rank writes 1/' + str(plan.ranks) if plan.sharded else ''}); final "
        f"{'adapters' if plan.trained_parameters else 'weights'} "
        f"{(plan.trained_parameters or plan.parameters) * final_bytes / GB:.1f} GB",
        f"save time: about {format_human(plan.save_seconds)} at {plan.bandwidth / GB:g} GB/s (--bandwidth)",
    ]
    lines += [f"warning: {w}" for w in plan.warnings]
    return "\n".join(lines)


def render_json(plan: Plan) -> str:
    return json.dumps(plan.as_dict(), indent=1)
