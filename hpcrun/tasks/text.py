"""Training text and tokenizers, all offline: the built-in corpus or the user's files, and a BPE trained on them."""

from __future__ import annotations

import gzip
import hashlib
import logging
import os
import shutil
from pathlib import Path
from typing import Any, List, Optional

from hpcrun.errors import ConfigError
from hpcrun.resources import builtin_corpora, cache_dir, corpus_path
from hpcrun.rundir import RunDir
from hpcrun.rundir.atomic import publish_folder

TOKENIZER_DIR = "tokenizer"  # <run.dir>/tokenizer: the run's trained BPE tokenizer, reused by every restart

log = logging.getLogger("hpcrun")
EOS = "<|endoftext|>"


def _read(path: Path) -> str:
    if path.suffix == ".gz":
        with gzip.open(path, "rt", encoding="utf-8") as f:
            return f.read()
    return path.read_text(encoding="utf-8")


def corpus_files(corpus: str) -> List[Path]:
    """The files of a corpus: a built-in name, a text file, or a folder of .txt/.txt.gz files (sorted)."""
    if corpus in builtin_corpora():
        return [corpus_path(corpus)]
    path = Path(corpus).expanduser()
    if path.is_file():
        return [path]
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.name.endswith((".txt", ".txt.gz")))
        if files:
            return files
        raise ConfigError("data.corpus", corpus, "a folder holding .txt or .txt.gz files")
    raise ConfigError("data.corpus", corpus, "an existing file or folder", choices=builtin_corpora())


def load_corpus(corpus: str) -> List[str]:
    """The corpus as a list of documents (one per file)."""
    return [_read(p) for p in corpus_files(corpus)]


def train_bpe(documents: List[str], vocab_size: int) -> Any:
    """Trains a byte-level BPE tokenizer on the documents (deterministic; about a second for 1 MB).

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
    tok.train_from_iterator((line for doc in documents for line in doc.splitlines(keepends=True)), trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=EOS, eos_token=EOS, pad_token=EOS)


def load_pretrained(load: Any, key: str, source: str, **kwargs: Any) -> Any:
    """``load(source)`` (a from_pretrained), with a one-line error naming the key when the files are not there."""
    try:
        return load(source, **kwargs)
    except OSError as exc:  # not a local folder, and the hub unreachable, gated or without that repository
        first = next((ln.strip() for ln in str(exc).splitlines() if ln.strip()), type(exc).__name__)
        raise ConfigError(key, source, "a local folder, or a hub id this node can download (set HF_TOKEN for "
                          f"gated models; HF_HOME for the cache); loading said: {first}") from None


def bpe_key(corpus: str, vocab_size: int) -> str:
    """What a trained BPE depends on: the corpus files (path, size, mtime), the vocabulary size, the recipe and the
    tokenizers library's version."""
    import tokenizers

    h = hashlib.sha256(f"bpe-v1|{vocab_size}|{tokenizers.__version__}\n".encode())
    _hash_corpus(h, corpus)
    return h.hexdigest()[:32]


def _hash_corpus(h: Any, corpus: str) -> None:
    """Adds the corpus files' identity (resolved path, size, mtime) to the hash ``h``."""
    for path in corpus_files(corpus):
        st = path.stat()
        h.update(f"{path.resolve()}|{st.st_size}|{st.st_mtime_ns}\n".encode())


def _save_atomically(tok: Any, folder: Path) -> None:
    """Written aside, then renamed: another rank, run or start never reads half of it. A folder already there (put
    by another process meanwhile) is kept; a cache that cannot be written is only a slower next run."""
    staging = folder.with_name(f".{folder.name}.{os.getpid()}.tmp")
    try:
        folder.parent.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(staging, ignore_errors=True)
        tok.save_pretrained(staging)
        publish_folder(staging, folder)
    except OSError as exc:
        shutil.rmtree(staging, ignore_errors=True)
        if not (folder / "tokenizer.json").exists():
            log.warning("could not save the tokenizer in %s (%s)", folder, exc)


def tokenizer_for(cfg: Any, documents: List[str], run_dir: Path, is_main: bool) -> Any:
    """The run's tokenizer. A trained BPE is saved in ``<run.dir>/tokenizer`` and reused by every restart."""
    from transformers import AutoTokenizer

    kind = cfg.data.tokenizer
    if kind == "bpe":
        saved = RunDir(run_dir).task_file(TOKENIZER_DIR)
        if (saved / "tokenizer.json").exists():
            return AutoTokenizer.from_pretrained(saved)
        # Training is deterministic: the same corpus files and vocabulary give the same tokenizer, so one trained
        # before (by any run on this machine or home directory) is copied, not trained again.
        shared = cache_dir() / "tokenizers" / bpe_key(cfg.data.corpus, cfg.data.vocab_size)
        if (shared / "tokenizer.json").exists():
            tok = AutoTokenizer.from_pretrained(shared)
            log.info("byte-level BPE tokenizer (%d tokens) for this corpus from %s", len(tok), shared)
        else:
            tok = train_bpe(documents, cfg.data.vocab_size)  # every rank trains the same one (deterministic)
            log.info("trained a %d-token byte-level BPE tokenizer on the corpus", len(tok))
            if is_main:
                _save_atomically(tok, shared)
        if is_main:
            _save_atomically(tok, saved)
        return tok
    source = cfg.model.name_or_path if kind == "model" else kind
    if not source:
        raise ConfigError("data.tokenizer", kind, "a tokenizer path, or model.name_or_path set for data.tokenizer=model")
    key = "model.name_or_path" if kind == "model" else "data.tokenizer"
    tok = load_pretrained(AutoTokenizer.from_pretrained, key, source)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


class TokenBlocks:
    """Fixed-length blocks of token ids; each item is a causal-LM example (labels = inputs)."""

    def __init__(self, ids: Any, seq_len: int) -> None:
        n = len(ids) // seq_len
        self.blocks = ids[: n * seq_len].view(n, seq_len)

    def __len__(self) -> int:
        return self.blocks.shape[0]

    def __getitem__(self, i: int) -> dict:
        x = self.blocks[i]
        return {"input_ids": x, "labels": x.clone()}


TOKENS_FILE = "tokens.safetensors"  # <run.dir>/tokens.safetensors: the tokenized corpus, reused by every restart


def stream_key(corpus: str, tokenizer: Any) -> str:
    """What the token stream depends on: the corpus files (path, size, mtime) and the tokenizer's full definition."""
    h = hashlib.sha256()
    _hash_corpus(h, corpus)
    backend = getattr(tokenizer, "backend_tokenizer", None)
    h.update(backend.to_str().encode() if backend is not None else f"{tokenizer.name_or_path}|{len(tokenizer)}".encode())
    h.update(str(tokenizer.eos_token_id).encode())
    return h.hexdigest()


def _tokenize(documents: List[str], tokenizer: Any) -> Any:
    import torch

    eos = tokenizer.eos_token_id
    ids: List[int] = []
    for doc in documents:
        lines = doc.splitlines(keepends=True)
        for enc in tokenizer(lines, add_special_tokens=False)["input_ids"]:
            ids.extend(enc)
        ids.append(eos)
    return torch.tensor(ids, dtype=torch.long)


def token_stream(documents: List[str], tokenizer: Any, cache: Optional[Path] = None, key: str = "",
                 write: bool = False) -> Any:
    """The corpus as one stream of token ids (EOS between documents).

    With ``cache``, a stream saved there with the same ``key`` is loaded (safetensors: no pickle) instead of
    tokenizing again; ``write`` (one process) saves it there, atomically, for the next start.
    """
    import torch
    from safetensors import safe_open
    from safetensors.torch import save_file

    if cache is not None and cache.exists():
        try:
            with safe_open(str(cache), framework="pt") as f:
                if (f.metadata() or {}).get("key") == key:
                    return f.get_tensor("ids").to(torch.long)
        except Exception as exc:  # noqa: BLE001 - a damaged cache is only a slower start
            log.warning("ignoring the token cache %s (%s): tokenizing again", cache, exc)
    stream = _tokenize(documents, tokenizer)
    if cache is not None and write:
        tmp = cache.with_name(f".{cache.name}.tmp")
        save_file({"ids": stream.to(torch.int32)}, str(tmp), metadata={"key": key})
        os.replace(tmp, cache)
    return stream


def token_blocks(documents: List[str], tokenizer: Any, seq_len: int, eval_fraction: float,
                 cache: Optional[Path] = None, key: str = "", write: bool = False) -> tuple:
    """Tokenizes the documents (EOS between them; see :func:`token_stream` for ``cache``, ``key`` and ``write``)
    and splits the stream into train and eval blocks of ``seq_len``."""
    stream = token_stream(documents, tokenizer, cache, key, write)
    split = int(len(stream) * (1 - eval_fraction))
    train, evaluation = TokenBlocks(stream[:split], seq_len), TokenBlocks(stream[split:], seq_len)
    if len(train) == 0 or len(evaluation) == 0:
        raise ConfigError("data.seq_len", seq_len, f"shorter blocks: the corpus has only {len(stream)} tokens")
    log.info("corpus: %d tokens, %d train and %d eval blocks of %d", len(stream), len(train), len(evaluation), seq_len)
    return train, evaluation
