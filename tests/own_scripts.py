"""What the own-script tests (``hpcrun run -- COMMAND``) share: a tiny model, tokenizer and text made on the spot,
and the scripts in tests/scripts/ that know nothing of hpcrun."""

from __future__ import annotations

import json
import random
import sys
from pathlib import Path
from typing import List

SCRIPTS = Path(__file__).resolve().parent / "scripts"
WORDS = ("the quick brown fox jumps over a lazy dog while seven wizards quietly judge boxing matches near "
         "an old river bank where children play and sing about summer rain").split()


def write_corpus(folder: Path, lines: int = 400, seed: int = 0) -> tuple:
    """A train and a validation text file of random sentences."""
    rng = random.Random(seed)
    folder.mkdir(parents=True, exist_ok=True)
    text = [" ".join(rng.choice(WORDS) for _ in range(rng.randint(6, 14))) for _ in range(lines)]
    train, valid = folder / "train.txt", folder / "valid.txt"
    train.write_text("\n".join(text[: lines * 9 // 10]) + "\n")
    valid.write_text("\n".join(text[lines * 9 // 10:]) + "\n")
    return train, valid


def write_model(folder: Path, corpus: Path) -> tuple:
    """A tiny Llama config and a byte-level BPE tokenizer trained on ``corpus`` (save_pretrained folders)."""
    from tokenizers import ByteLevelBPETokenizer
    from transformers import LlamaConfig, PreTrainedTokenizerFast

    tok_dir, cfg_dir = folder / "tokenizer", folder / "config"
    bpe = ByteLevelBPETokenizer()
    bpe.train([str(corpus)], vocab_size=300, min_frequency=1, special_tokens=["<s>", "</s>", "<pad>"])
    tok = PreTrainedTokenizerFast(tokenizer_object=bpe._tokenizer, bos_token="<s>", eos_token="</s>",
                                  pad_token="<pad>", model_max_length=64)
    tok.save_pretrained(tok_dir)
    LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=64, attention_dropout=0.1,
                bos_token_id=0, eos_token_id=1, pad_token_id=2).save_pretrained(cfg_dir)
    return cfg_dir, tok_dir


def clm_args(work: Path, output_dir: str, max_steps: int = 30, extra: List[str] = ()) -> List[str]:
    """The clm_trainer.py command line a user would type (dropout on, shuffled data, every step logged)."""
    return [sys.executable, str(SCRIPTS / "clm_trainer.py"), "--config_name", str(work / "model" / "config"),
            "--tokenizer_name", str(work / "model" / "tokenizer"), "--train_file", str(work / "data" / "train.txt"),
            "--validation_file", str(work / "data" / "valid.txt"), "--block_size", "32", "--do_train",
            "--per_device_train_batch_size", "4", "--max_steps", str(max_steps), "--learning_rate", "1e-3",
            "--logging_steps", "1", "--save_strategy", "no", "--report_to", "none", "--seed", "7",
            "--output_dir", output_dir, "--use_cpu", "--dataloader_num_workers", "0", *extra]


def make_work(work: Path) -> Path:
    train, _ = write_corpus(work / "data")
    write_model(work / "model", train)
    return work


def trainer_steps(output_dir: Path) -> List[int]:
    """The steps whose loss the Trainer logged, from the newest trainer_state.json it wrote."""
    state = Path(output_dir) / "trainer_state.json"
    history = json.loads(state.read_text())["log_history"] if state.exists() else []
    return [h["step"] for h in history if "loss" in h]


def sft_args(work: Path, output_dir: str, max_steps: int) -> List[str]:
    """The sft_trl.py command line (TRL's SFTTrainer on a jsonl file of texts)."""
    data = work / "data" / "sft.jsonl"
    if not data.exists():
        lines = (work / "data" / "train.txt").read_text().splitlines()
        data.write_text("".join(json.dumps({"text": line}) + "\n" for line in lines))
    return [sys.executable, str(SCRIPTS / "sft_trl.py"), "--model_config", str(work / "model" / "config"),
            "--tokenizer", str(work / "model" / "tokenizer"), "--data", str(data), "--output_dir", output_dir,
            "--max_steps", str(max_steps)]


def straight_run(work: Path, steps: int) -> Path:
    """clm_trainer.py by itself, without hpcrun, straight through (cached per step count): the weights every
    interrupted run of the same length must end with."""
    import subprocess

    out = work / f"straight-{steps}"
    if not (out / "model.safetensors").exists():
        done = subprocess.run(clm_args(work, str(out), steps), capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return out
