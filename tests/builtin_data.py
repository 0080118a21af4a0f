"""Tiny models, tokenizers and datasets for the built-in task's model and data tests, made on the spot (no hub)."""

from __future__ import annotations

import json
import random
from pathlib import Path

WORDS = ("the quick brown fox jumps over a lazy dog while seven wizards quietly judge boxing matches near "
         "an old river bank where children play and sing about summer rain").split()
# A chat template as small models ship them: each turn tagged with its role and closed by the EOS token.
CHAT_TEMPLATE = ("{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}</s>{% endfor %}"
                 "{% if add_generation_prompt %}<|assistant|>{% endif %}")


def _sentence(rng: random.Random) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(rng.randint(6, 14)))


def write_tokenizer(folder: Path, chat: bool = True) -> Path:
    """A byte-level BPE tokenizer (save_pretrained folder), with a chat template unless ``chat`` is false."""
    from tokenizers import ByteLevelBPETokenizer
    from transformers import PreTrainedTokenizerFast

    rng = random.Random(0)
    bpe = ByteLevelBPETokenizer()
    lines = [_sentence(rng) for _ in range(300)] + ["<|user|><|assistant|><|system|>"] * 5
    bpe.train_from_iterator(lines, vocab_size=320, min_frequency=1, special_tokens=["<s>", "</s>", "<pad>"])
    tok = PreTrainedTokenizerFast(tokenizer_object=bpe._tokenizer, bos_token="<s>", eos_token="</s>",
                                  pad_token="<pad>")
    if chat:
        tok.chat_template = CHAT_TEMPLATE
    tok.save_pretrained(folder)
    return folder


def write_gpt2(folder: Path, tokenizer: Path) -> Path:
    """A tiny GPT-2 with random weights, saved as a pretrained folder (weights, config, tokenizer)."""
    import torch
    from transformers import AutoTokenizer, GPT2Config, GPT2LMHeadModel

    tok = AutoTokenizer.from_pretrained(tokenizer)
    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(vocab_size=len(tok), n_embd=32, n_layer=2, n_head=2, n_positions=128,
                                       bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                                       pad_token_id=tok.pad_token_id, resid_pdrop=0.1))
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


def write_llama(folder: Path, tokenizer: Path) -> Path:
    """A tiny Llama with random weights, saved as a pretrained folder: linear layers bitsandbytes can quantize (GPT-2's
    are Conv1D)."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tok = AutoTokenizer.from_pretrained(tokenizer)
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=len(tok), hidden_size=64, intermediate_size=128,
                                         num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=4,
                                         max_position_embeddings=128, bos_token_id=tok.bos_token_id,
                                         eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id))
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


def write_text_jsonl(path: Path, rows: int = 400, field: str = "body") -> Path:
    """JSON Lines of documents, their text in ``field``, with another column beside it."""
    rng = random.Random(1)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps({"id": i, field: " ".join(_sentence(rng) for _ in range(3))}) + "\n"
                            for i in range(rows)))
    return path


def write_chat_jsonl(path: Path, rows: int = 200) -> Path:
    """JSON Lines of conversations: a system and a user turn, then the assistant's answer (the reversed words)."""
    rng = random.Random(2)
    path.parent.mkdir(parents=True, exist_ok=True)
    out = []
    for _ in range(rows):
        question = _sentence(rng)
        out.append(json.dumps({"messages": [
            {"role": "system", "content": "answer backwards"},
            {"role": "user", "content": question},
            {"role": "assistant", "content": " ".join(reversed(question.split()))}]}))
    path.write_text("\n".join(out) + "\n")
    return path


def make_builtin_work(work: Path) -> Path:
    """tokenizer/ (with a chat template), gpt2/ and llama/ (pretrained folders), text.jsonl and chat.jsonl under
    ``work``."""
    tok = write_tokenizer(work / "tokenizer")
    write_gpt2(work / "gpt2", tok)
    write_llama(work / "llama", tok)
    write_text_jsonl(work / "text.jsonl")
    write_chat_jsonl(work / "chat.jsonl")
    return work
