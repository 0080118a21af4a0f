"""The built-in task's model: any transformers causal LM (``AutoModelForCausalLM``), optionally with LoRA adapters.

The architecture (:func:`architecture`) is

- pretrained (``model.pretrained=true``): the config of ``model.name_or_path`` (a local folder or a hub id), with
  ``model.config_overrides`` on top; the weights are the checkpoint's;
- a random init: the config of ``model.name_or_path`` when ``model.type`` is empty, else the defaults of
  ``model.type`` (``llama`` when neither is set); then every architecture key that is set (``model.hidden_size``,
  ...: transformers maps these common names onto each architecture's own, e.g. ``n_embd`` for gpt2) and
  ``model.config_overrides``; the vocabulary and special tokens are the tokenizer's.

``hpcrun plan`` builds the same architecture on the meta device, so its arithmetic follows the model actually
trained. FSDP wraps each of the model's own "no split" blocks (``_no_split_modules``: ``LlamaDecoderLayer``,
``GPT2Block``, ...).
"""

from __future__ import annotations

import logging
import os
import warnings
from typing import Any, Dict, List, Optional

from hpcrun.errors import ConfigError

log = logging.getLogger("hpcrun")
ARCHITECTURE_KEYS = ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                     "num_key_value_heads", "max_position_embeddings", "rms_norm_eps", "rope_theta",
                     "tie_word_embeddings", "attention_dropout")
DEFAULT_TYPE = "llama"


def torch_dtype(name: str) -> Any:
    import torch

    return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[name]


def _from_pretrained_config(m: Any, local_only: bool = False) -> Any:
    from transformers import AutoConfig

    from hpcrun.tasks.text import load_pretrained

    return load_pretrained(AutoConfig.from_pretrained, "model.name_or_path", m.name_or_path,
                           local_files_only=local_only)


def architecture(m: Any, tokenizer: Any = None, vocab_size: Optional[int] = None, local_only: bool = False) -> Any:
    """The model's transformers config (see the module docstring). ``local_only``: no download (``hpcrun plan``;
    a hub id not in the local cache falls back to ``model.type`` and the keys)."""
    from transformers import AutoConfig

    overrides: Dict[str, Any] = dict(m.config_overrides or {})
    if m.pretrained:
        try:
            config = _from_pretrained_config(m, local_only)
            for key, value in overrides.items():
                setattr(config, key, value)
            return config
        except ConfigError:
            if not local_only:
                raise
    keys = {key: getattr(m, key) for key in ARCHITECTURE_KEYS if getattr(m, key, None) is not None}
    keys.update(overrides)
    if m.name_or_path and not m.type and not m.pretrained:
        # Built again from its dict, so values derived from the changed keys (Llama's head_dim) are derived again.
        base = _from_pretrained_config(m, local_only)
        values = base.to_dict()
        if {"hidden_size", "num_attention_heads"} & set(keys) and "head_dim" not in overrides:
            values.pop("head_dim", None)
        values.update(keys)
        config = type(base).from_dict(values)
    else:
        kind = m.type or DEFAULT_TYPE
        try:
            config = AutoConfig.for_model(kind, **keys)
        except ValueError:
            raise ConfigError("model.type", kind, "a transformers model type such as llama, gpt2, mistral, qwen2 "
                              "(transformers lists them: transformers.models.auto.CONFIG_MAPPING)") from None
    if tokenizer is not None:
        config.vocab_size = len(tokenizer)
        for name in ("bos_token_id", "eos_token_id", "pad_token_id"):
            setattr(config, name, getattr(tokenizer, name))
    elif vocab_size:
        config.vocab_size = vocab_size
    return config


def build_model(cfg: Any, tokenizer: Any, resume: Any = None) -> Any:
    """The model: pretrained weights or a random init (seeded by the caller), in ``model.dtype``; LoRA adapters on
    top when ``model.lora.r`` is above 0. ``resume``: the checkpoint whose weights the Trainer loads next (the log
    says so)."""
    from transformers import AutoModelForCausalLM

    m = cfg.model
    config = architecture(m, tokenizer)
    dtype = torch_dtype(m.dtype)
    if m.pretrained:
        from hpcrun.tasks.text import load_pretrained

        model = load_pretrained(AutoModelForCausalLM.from_pretrained, "model.name_or_path", m.name_or_path,
                                config=config, dtype=dtype, **quantized(m))
        if model.get_input_embeddings().num_embeddings < len(tokenizer):
            model.resize_token_embeddings(len(tokenizer))
    else:
        try:
            model = random_init(config, dtype, skip=resume is not None and not m.lora.r)
        except ValueError as exc:  # a model type without a causal-LM head (bert, t5, ...)
            raise ConfigError("model.type", m.type or config.model_type, f"a causal LM architecture ({exc})") \
                from None
    quantized_layers = sum(type(mod).__name__ in ("Linear4bit", "Linear8bitLt") for mod in model.modules())
    if m.quantize:  # norms and embeddings in fp32, the input's gradient on, checkpointing as configured
        from peft import prepare_model_for_kbit_training

        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=m.gradient_checkpointing,
                                                gradient_checkpointing_kwargs={"use_reentrant": False})
    elif m.gradient_checkpointing and not cfg.train.fsdp:  # under FSDP, FSDP's own activation checkpointing
        model.gradient_checkpointing_enable()
    kind = type(model).__name__
    n_params = sum(p.numel() for p in model.parameters())
    if m.lora.r:
        if m.gradient_checkpointing and not cfg.train.fsdp:  # the frozen embeddings' output must carry a gradient
            model.enable_input_require_grads()
        model = with_lora(model, m.lora)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    log.info("model: %s, %.2f M parameters, %.2f M trained, %s%s (%s)", kind, n_params / 1e6, trainable / 1e6,
             m.dtype, f", base quantized {m.quantize} ({quantized_layers} linear layers)" if m.quantize else "",
             (f"pretrained {m.name_or_path}" if m.pretrained else "random init")
             + (f"; the trained weights of {resume.path.name} are loaded next" if resume is not None else ""))
    return model


def random_init(config: Any, dtype: Any, skip: bool = False) -> Any:
    """The model of ``config``, randomly initialised; ``skip``: its weights left as allocated.

    On a resume of a model trained whole, the random init is work thrown away: the Trainer loads every weight from
    the checkpoint next (for a 7B model, about a minute of CPU). Not with LoRA: the checkpoint holds the adapters
    only, and the base keeps its init. The random state this skips is the checkpoint's to restore.
    """
    from transformers import AutoModelForCausalLM

    if not skip:
        return AutoModelForCausalLM.from_config(config, dtype=dtype)
    from transformers.initialization import no_init_weights

    with no_init_weights():
        model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    model.tie_weights()  # no_init_weights skips init_weights, and with it the tying (transformers ties after, too)
    return model


def quantized(m: Any) -> Dict[str, Any]:
    """from_pretrained's arguments for ``model.quantize`` (QLoRA's: NF4 with double quantization, computing in
    ``model.dtype``; or 8-bit), on this process's device; {} when off. A one-line error when bitsandbytes is not
    installed where the job runs."""
    if not m.quantize:
        return {}
    import importlib.util

    import torch
    from transformers import BitsAndBytesConfig

    logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(logging.ERROR)  # (see with_lora)

    if importlib.util.find_spec("bitsandbytes") is None:
        raise ConfigError("model.quantize", m.quantize, "bitsandbytes installed where the job runs "
                          "(pip install 'hpcrun-slurm[qlora]')")
    if m.quantize == "4bit":
        config = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                                    bnb_4bit_compute_dtype=torch_dtype(m.dtype))
    else:
        config = BitsAndBytesConfig(load_in_8bit=True)
    device: Any = int(os.environ.get("LOCAL_RANK", 0)) if torch.cuda.is_available() else "cpu"
    return {"quantization_config": config, "device_map": {"": device}}


def linear_module_names(model: Any) -> List[str]:
    import torch

    output = model.get_output_embeddings()
    return sorted({name.rsplit(".", 1)[-1] for name, module in model.named_modules()
                   if isinstance(module, torch.nn.Linear) and module is not output})


def with_lora(model: Any, lora: Any) -> Any:
    """The model with LoRA adapters (peft) on ``lora.target_modules``; a ConfigError naming the key when the model
    has no such module."""
    # peft imports bitsandbytes when it is installed; on a CPU with AVX512-BF16 that warns it lacks an optional
    # kernel package and falls back to its own CPU code, on every import: nothing a user can act on.
    logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(logging.ERROR)
    from peft import LoraConfig, get_peft_model

    targets = lora.target_modules
    if isinstance(targets, (list, tuple)) or (hasattr(targets, "__iter__") and not isinstance(targets, str)):
        targets = list(targets)
        have = set(linear_module_names(model))
        missing = [t for t in targets if t not in have and not any(n.endswith(t) for n, _ in model.named_modules())]
        if missing:
            raise ConfigError("model.lora.target_modules", targets, f"module names of {type(model).__name__} "
                              f"(no {', '.join(missing)}; its linear layers: {', '.join(sorted(have))})")
    config = LoraConfig(r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout, target_modules=targets,
                        task_type="CAUSAL_LM")
    try:
        with warnings.catch_warnings():  # gpt2's Conv1D layers: peft sets fan_in_fan_out itself, and says so
            warnings.filterwarnings("ignore", message=".*fan_in_fan_out.*")
            warnings.filterwarnings("ignore", category=FutureWarning)
            return get_peft_model(model, config)
    except ValueError as exc:
        first = str(exc).splitlines()[0]
        raise ConfigError("model.lora.target_modules", lora.target_modules,
                          f"module names the model has (peft said: {first}; its linear layers: "
                          f"{', '.join(linear_module_names(model))})") from None


def wrap_classes(config: Any) -> List[str]:
    """The blocks FSDP wraps one by one: the causal-LM class's own ``_no_split_modules`` (from the architecture's
    config, before the model is built)."""
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING

    cls = MODEL_FOR_CAUSAL_LM_MAPPING[type(config)]
    names = list(getattr(cls, "_no_split_modules", None) or [])
    if not names:
        raise ConfigError("train.fsdp", True, f"a model that declares its blocks (_no_split_modules); {cls.__name__} "
                          "declares none")
    return names


def save_final(trainer: Any, final: Any, ctx: Any, m: Any) -> None:
    """The final weights as one save_pretrained folder (safetensors): the model, or with LoRA the adapter (and,
    with ``model.lora.merge``, the merged model in ``final/merged``: with a quantized base, the adapter merged into
    the base loaded again unquantized, in ``model.dtype``). Under FSDP with sharded state dicts the Trainer's
    save_model writes nothing, so every rank takes part in gathering the full state dict (to CPU) and rank 0
    writes it."""
    lora = m.lora
    if not trainer.is_fsdp_enabled:
        trainer.save_model(str(final))  # only the main process writes (a PeftModel writes its adapter)
    else:
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        state = get_model_state_dict(trainer.model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
        if ctx.is_main:
            trainer.model.save_pretrained(str(final), state_dict=state)
        trainer.accelerator.wait_for_everyone()
    if lora.r and lora.merge and ctx.is_main:
        model = trainer.accelerator.unwrap_model(trainer.model)
        if m.quantize:
            from peft import PeftModel
            from transformers import AutoModelForCausalLM

            from hpcrun.tasks.text import load_pretrained

            base = load_pretrained(AutoModelForCausalLM.from_pretrained, "model.name_or_path", m.name_or_path,
                                   config=architecture(m), dtype=torch_dtype(m.dtype))
            if base.get_input_embeddings().num_embeddings < model.get_input_embeddings().num_embeddings:
                base.resize_token_embeddings(model.get_input_embeddings().num_embeddings)
            model = PeftModel.from_pretrained(base, str(final))
        merged = model.merge_and_unload()
        merged.save_pretrained(str(final / "merged"))
        log.info("merged model (base + adapters) in %s", final / "merged")
