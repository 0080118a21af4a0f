"""Tokenizers, all offline: the model's own, a named one, or a byte-level BPE trained on the corpus."""

from __future__ import annotations

import hashlib
import logging
import shutil
import tempfile
from pathlib import Path
from typing import Any, Iterable

from hpcrun.errors import ConfigError
from hpcrun.resources import cache_dir
from hpcrun.rundir import RunDir
from hpcrun.rundir.atomic import publish_folder
from hpcrun.tasks.sources import Source, resolve
from hpcrun.tasks.tokens import texts

TOKENIZER_DIR = "tokenizer"  # <run.dir>/tokenizer: the run's trained BPE tokenizer, reused by every restart

log = logging.getLogger("hpcrun")
EOS = "<|endoftext|>"


def train_bpe(lines: Iterable[str], vocab_size: int) -> Any:
    """Trains a byte-level BPE tokenizer on the text's lines (deterministic; about a second for 1 MB).

    Byte-level means any text encodes, with no unknown token. Returns a ``PreTrainedTokenizerFast``.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[EOS],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(lines, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=EOS, eos_token=EOS, pad_token=EOS)


def load_pretrained(load: Any, key: str, source: str, **kwargs: Any) -> Any:
    """``load(source)`` (a from_pretrained), with a one-line error naming the key when the files are not there."""
    try:
        return load(source, **kwargs)
    except OSError as exc:  # not a local folder, and the hub unreachable, gated or without that repository
        first = next((ln.strip() for ln in str(exc).splitlines() if ln.strip()), type(exc).__name__)
        raise ConfigError(key, source, "a local folder, or a hub id this node can download (set HF_TOKEN for "
                          f"gated models; HF_HOME for the cache); loading said: {first}") from None


def bpe_key(source: Source, vocab_size: int) -> str:
    """What a trained BPE depends on: the corpus files (path, size, mtime), the vocabulary size, the recipe and the
    tokenizers library's version."""
    import tokenizers

    h = hashlib.sha256(f"bpe-v1|{vocab_size}|{tokenizers.__version__}\n".encode())
    h.update(source.identity().encode())
    return h.hexdigest()[:32]


def _save_atomically(tok: Any, folder: Path) -> None:
    """Written aside, then renamed: another rank, run or start never reads half of it. A folder already there (put
    by another process meanwhile) is kept; a cache that cannot be written is only a slower next run."""
    staging = None
    try:
        folder.parent.mkdir(parents=True, exist_ok=True)
        # A name no other process has, on any host (the cache may be on a file system that nodes share).
        staging = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", suffix=".tmp", dir=folder.parent))
        tok.save_pretrained(staging)
        publish_folder(staging, folder)
    except OSError as exc:
        if staging is not None:
            shutil.rmtree(staging, ignore_errors=True)
        if not (folder / "tokenizer.json").exists():
            log.warning("could not save the tokenizer in %s (%s)", folder, exc)


def tokenizer_for(cfg: Any, run_dir: Path, is_main: bool) -> Any:
    """The run's tokenizer. A trained BPE is saved in ``<run.dir>/tokenizer`` and reused by every restart."""
    from transformers import AutoTokenizer

    kind = cfg.data.tokenizer
    if kind == "bpe":
        saved = RunDir(run_dir).task_file(TOKENIZER_DIR)
        if (saved / "tokenizer.json").exists():
            return AutoTokenizer.from_pretrained(saved)
        # Training is deterministic: the same corpus files and vocabulary give the same tokenizer, so one trained
        # before (by any run on this machine or home directory) is copied, not trained again.
        source = resolve(cfg.data.corpus)
        shared = cache_dir() / "tokenizers" / bpe_key(source, cfg.data.vocab_size)
        if (shared / "tokenizer.json").exists():
            tok = AutoTokenizer.from_pretrained(shared)
            log.info("byte-level BPE tokenizer (%d tokens) for this corpus from %s", len(tok), shared)
        else:
            tok = train_bpe(texts(source, cfg.data.text_field), cfg.data.vocab_size)  # deterministic
            log.info("trained a %d-token byte-level BPE tokenizer on the corpus", len(tok))
            if is_main:
                _save_atomically(tok, shared)
        if is_main:
            _save_atomically(tok, saved)
        return tok
    source = cfg.model.name_or_path if kind == "model" else kind
    if not source:
        raise ConfigError("data.tokenizer", kind,
                          "a tokenizer path, or model.name_or_path set for data.tokenizer=model")
    key = "model.name_or_path" if kind == "model" else "data.tokenizer"
    tok = load_pretrained(AutoTokenizer.from_pretrained, key, source)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok
