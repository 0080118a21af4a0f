"""The corpus as one memory-mapped stream of token ids: tokenized once, in parallel, read by every rank and start.

At a run's first start one process (rank 0; the others wait at the Trainer's ``main_process_first``) reads the
corpus through the datasets library (:mod:`hpcrun.tasks.sources` says what a corpus can be), tokenizes its documents
with ``data.num_proc`` processes (``datasets.map``, whose Arrow files stay on disk instead of in memory), and writes
the ids, an EOS after each document, to ``<run.dir>/tokens/ids.u32`` (uint32), with ``meta.json`` holding the token
count and a key of everything the stream depends on (the files' paths, sizes and mtimes, the text column, the
tokenizer's definition). The folder is written aside and renamed into place whole, and the temporary Arrow files
are removed. Every later start, and every rank, opens the file with ``numpy.memmap``: a block is read from disk when
the data loader asks for it, so neither the corpus nor its ids are ever held in memory whole.

The stream depends only on its key, so it is also kept in hpcrun's cache (``<cache>/tokens/<key>``, as trained
tokenizers are), as hard links to the run's files: only where the run and the cache are on one file system, so
the cache costs no space while a run holds the file. Another run on the same corpus and tokenizer (a sweep's next
point, a fresh run) takes it at its first start instead of tokenizing again: hard links, or a copy from another
file system. Each run keeps its own names for the files, so deleting the cache never touches a run; an entry that
no run links to any more is removed after ``UNUSED_DAYS``. Hub datasets are not shared: their key holds no
revision. (On a node other than the first, the Trainer's ``main_process_first`` lets that node's first process go
at once: it reads the cache's stream, or tokenizes into a temporary folder while the run's own is not there yet.)

Text files are one document each, tokenized line by line (as the run's BPE tokenizer is trained); a json, csv,
parquet or saved dataset's rows are one document each, their text in ``data.text_field``.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Callable, Iterator, List, Optional

from hpcrun.errors import ConfigError
from hpcrun.resources import cache_dir
from hpcrun.rundir.atomic import publish_folder
from hpcrun.tasks.sources import Source

log = logging.getLogger("hpcrun")
TOKENS_DIR = "tokens"  # <run.dir>/tokens: ids.u32 and meta.json
FORMAT = "hpcrun-tokens-v2"
CHUNK_BYTES = 4 << 20  # text files are read in pieces of about this size (a document may be far larger)
SMALL_CORPUS = 32 << 20  # below this many bytes one process tokenizes (starting workers costs more)
STREAM_FILES = ("ids.u32", "meta.json")
UNUSED_DAYS = 7  # a cached stream no run links to any more is removed after this many days


def _text_chunks(files: List[str]) -> Iterator[dict]:
    """Each text file as pieces of whole lines; ``eos`` marks a file's last piece (the end of a document)."""
    import gzip

    for name in files:
        opener: Any = gzip.open if name.endswith(".gz") else open
        with opener(name, "rt", encoding="utf-8") as f:
            piece: List[str] = []
            size = 0
            for line in f:
                piece.append(line)
                size += len(line)
                if size >= CHUNK_BYTES:
                    yield {"text": "".join(piece), "eos": False}
                    piece, size = [], 0
            yield {"text": "".join(piece), "eos": True}


def _load_error(source: Source, exc: Exception) -> ConfigError:
    first = next((ln.strip() for ln in str(exc).splitlines() if ln.strip()), type(exc).__name__)
    return ConfigError("data.corpus", source.name or str(source.files[0]), f"data datasets can read; it said: {first}")


def load_rows(source: Source, work: Path) -> Any:
    """The corpus as a ``datasets.Dataset`` (Arrow files under ``work``, memory-mapped)."""
    import datasets

    datasets.disable_progress_bars()
    try:
        if source.kind == "text":
            return datasets.Dataset.from_generator(_text_chunks, gen_kwargs={"files": [str(p) for p in source.files]},
                                                   cache_dir=str(work))
        if source.kind == "saved":
            loaded = datasets.load_from_disk(source.name)
            return loaded["train"] if isinstance(loaded, datasets.DatasetDict) else loaded
        if source.kind == "hub":
            return datasets.load_dataset(source.name, split="train")
        return datasets.load_dataset(source.kind, data_files=[str(p) for p in source.files], split="train",
                                     cache_dir=str(work))
    except (OSError, ValueError, datasets.exceptions.DatasetGenerationError) as exc:
        raise _load_error(source, exc) from None


def _encode(batch: dict, tokenizer: Any, column: str, eos: int) -> dict:
    ends = batch.get("eos") or [True] * len(batch[column])
    out = []
    for text, end in zip(batch[column], ends):
        lines = (text or "").splitlines(keepends=True)
        ids = list(itertools.chain.from_iterable(tokenizer(lines, add_special_tokens=False)["input_ids"])) \
            if lines else []
        if end:
            ids.append(eos)
        out.append(ids)
    return {"ids": out}


def stream_key(source: Source, column: str, tokenizer: Any) -> str:
    """What the token stream depends on: the corpus files, the text column and the tokenizer's full definition."""
    h = hashlib.sha256(f"{FORMAT}|{column}\n{source.identity()}\n".encode())
    backend = getattr(tokenizer, "backend_tokenizer", None)
    definition = backend.to_str() if backend is not None else f"{tokenizer.name_or_path}|{len(tokenizer)}"
    h.update(definition.encode())
    h.update(str(tokenizer.eos_token_id).encode())
    return h.hexdigest()


def _num_proc(source: Source, asked: Optional[int]) -> int:
    if asked:
        return asked
    size = sum(p.stat().st_size for p in source.files) if source.files else SMALL_CORPUS
    return 1 if size < SMALL_CORPUS else max(1, min(16, len(os.sched_getaffinity(0))))


def open_stream(folder: Path, key: str) -> Optional[Any]:
    """The memory-mapped ids in ``folder`` when they were made with ``key``, else None."""
    import numpy as np

    try:
        meta = json.loads((folder / "meta.json").read_text())
    except (OSError, ValueError):
        return None
    if meta.get("key") != key or meta.get("format") != FORMAT:
        return None
    try:  # a file cut short or deleted (a cache cleaned file by file) is no stream: it is made again
        if (folder / "ids.u32").stat().st_size != 4 * meta["tokens"]:
            return None
        if meta["tokens"] == 0:
            return np.zeros(0, dtype=np.uint32)
        return np.memmap(folder / "ids.u32", dtype=np.uint32, mode="r", shape=(meta["tokens"],))
    except (OSError, ValueError):
        return None


def build_stream(source: Source, column: str, tokenizer: Any, folder: Path, key: str,
                 num_proc: Optional[int] = None) -> Any:
    """Tokenizes the corpus into ``folder`` (replacing one made with another key) and returns it memory-mapped."""
    import numpy as np

    work = folder.with_name(f".{folder.name}.{os.getpid()}.work")
    staging = folder.with_name(f".{folder.name}.{os.getpid()}.tmp")
    shutil.rmtree(work, ignore_errors=True)
    shutil.rmtree(staging, ignore_errors=True)
    try:
        rows = load_rows(source, work)
        if column not in rows.column_names:
            raise ConfigError("data.text_field", column, f"a column of data.corpus={source.name or source.files[0]}"
                              f" (it has: {', '.join(rows.column_names)})")
        procs = _num_proc(source, num_proc)
        tokenized = rows.map(_encode, batched=True, batch_size=64, num_proc=procs if procs > 1 else None,
                             remove_columns=rows.column_names, cache_file_name=str(work / "ids.arrow"),
                             fn_kwargs={"tokenizer": tokenizer, "column": column, "eos": tokenizer.eos_token_id})
        staging.mkdir(parents=True)
        count = 0
        with open(staging / "ids.u32", "wb") as f:
            for batch in tokenized.iter(batch_size=1024):
                ids = np.fromiter(itertools.chain.from_iterable(batch["ids"]), dtype=np.uint32)
                f.write(ids.tobytes())
                count += len(ids)
        (staging / "meta.json").write_text(json.dumps({"format": FORMAT, "key": key, "tokens": count,
                                                       "documents": len(rows), "processes": procs}))
        shutil.rmtree(folder, ignore_errors=True)  # one made with another key (another corpus or tokenizer)
        publish_folder(staging, folder)
        log.info("tokenized %d documents into %d tokens with %d process(es): %s", len(rows), count, procs, folder)
    finally:
        shutil.rmtree(work, ignore_errors=True)
        shutil.rmtree(staging, ignore_errors=True)
    stream = open_stream(folder, key)
    assert stream is not None
    return stream


def shared_folder(key: str) -> Path:
    """Where hpcrun's cache keeps the stream of ``key`` for other runs."""
    return cache_dir() / TOKENS_DIR / key[:32]


def _place(src: Path, folder: Path, copy: bool, keep: Callable[[], bool] = lambda: False) -> None:
    """Puts the stream in ``src`` at ``folder`` whole: hard links (with ``copy``, a copy where a link fails: another
    file system) in a folder made beside it, then one rename. What ``folder`` already holds is replaced, unless
    ``keep()`` says it is good (another process put a whole stream there meanwhile). Raises OSError (EXDEV: another
    file system, without ``copy``)."""
    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", suffix=".tmp", dir=folder.parent))
    try:
        for name in STREAM_FILES:
            try:
                os.link(src / name, staging / name)
            except OSError:
                if not copy:
                    raise
                shutil.copyfile(src / name, staging / name)
        try:
            publish_folder(staging, folder)
        except OSError:
            if folder.exists() and keep():
                return
            shutil.rmtree(folder, ignore_errors=True)
            publish_folder(staging, folder)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _prune(parent: Path, now: float) -> None:
    """Removes from the cache what a killed copy left (a day old) and the streams no run has linked to for
    UNUSED_DAYS (a link or an unlink sets the file's ctime)."""
    try:
        entries = list(parent.iterdir())
    except OSError:
        return
    for entry in entries:
        try:
            if entry.name.startswith(".") and entry.name.endswith(".tmp"):
                if now - entry.stat().st_mtime > 86400:
                    shutil.rmtree(entry, ignore_errors=True)
                continue
            st = (entry / "ids.u32").stat()
            if st.st_nlink == 1 and now - st.st_ctime > UNUSED_DAYS * 86400:
                shutil.rmtree(entry, ignore_errors=True)
        except OSError:
            continue


def stream_from_cache(folder: Path, key: str) -> Optional[Any]:
    """The stream of ``key`` from hpcrun's cache, placed in ``folder``; None when the cache does not have it."""
    import time

    shared = shared_folder(key)
    _prune(shared.parent, time.time())
    if open_stream(shared, key) is None:
        return None
    try:
        _place(shared, folder, copy=True)
    except OSError as exc:
        log.warning("could not take the token stream from %s (%s); tokenizing instead", shared, exc)
        return None
    stream = open_stream(folder, key)
    if stream is not None:
        log.info("token stream for this corpus and tokenizer (%d tokens) from %s", len(stream), shared)
    return stream


def share_stream(folder: Path, key: str) -> None:
    """Links the stream in ``folder`` into hpcrun's cache for other runs, where both are on one file system (no
    copy: the cache would cost space, in a home directory that may not hold it). A cache that cannot be written
    is only a slower next run; a stream put there meanwhile by another run is kept, a broken one replaced."""
    import errno

    shared = shared_folder(key)
    if open_stream(shared, key) is not None:
        return
    try:
        _place(folder, shared, copy=False, keep=lambda: open_stream(shared, key) is not None)
    except OSError as exc:
        if exc.errno == errno.EXDEV:
            log.info("token stream not shared: hpcrun's cache (%s) is on another file system than the run "
                     "(HPCRUN_CACHE_DIR moves it)", shared.parent)
        elif open_stream(shared, key) is None:
            log.warning("could not keep the token stream in %s for other runs (%s)", shared, exc)


def texts(source: Source, column: str) -> Iterator[str]:
    """The corpus's text, line by line (what a BPE tokenizer is trained on)."""
    if source.kind == "text":
        for chunk in _text_chunks([str(p) for p in source.files]):
            yield from chunk["text"].splitlines(keepends=True)
        return
    with tempfile.TemporaryDirectory() as work:
        rows = load_rows(source, Path(work))
        if column not in rows.column_names:
            raise ConfigError("data.text_field", column, f"a column of the corpus (it has: "
                              f"{', '.join(rows.column_names)})")
        for batch in rows.select_columns([column]).iter(batch_size=256):
            for text in batch[column]:
                yield from (text or "").splitlines(keepends=True)


class TokenBlocks:
    """Fixed-length blocks of a memory-mapped token stream, ``[start, end)``; each item a causal-LM example."""

    def __init__(self, ids: Any, seq_len: int, start: int = 0, end: Optional[int] = None) -> None:
        end = len(ids) if end is None else end
        self.ids, self.seq_len, self.start = ids, seq_len, start
        self.n = max(0, (end - start) // seq_len)

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> dict:
        import numpy as np
        import torch

        if not 0 <= i < self.n:
            raise IndexError(i)
        at = self.start + i * self.seq_len
        x = torch.from_numpy(np.asarray(self.ids[at: at + self.seq_len], dtype=np.int64))
        return {"input_ids": x, "labels": x.clone()}


def token_blocks(stream: Any, seq_len: int, eval_fraction: float) -> tuple:
    """Train and eval blocks of ``seq_len``: the eval set is the stream's last ``eval_fraction``."""
    split = int(len(stream) * (1 - eval_fraction))
    train, evaluation = TokenBlocks(stream, seq_len, 0, split), TokenBlocks(stream, seq_len, split)
    if len(train) == 0 or len(evaluation) == 0:
        raise ConfigError("data.seq_len", seq_len, f"shorter blocks: the corpus has only {len(stream)} tokens")
    log.info("corpus: %d tokens, %d train and %d eval blocks of %d", len(stream), len(train), len(evaluation), seq_len)
    return train, evaluation


def corpus_blocks(cfg: Any, tokenizer: Any, folder: Path, write: bool = True) -> tuple:
    """``data.corpus`` as train and eval blocks, from the stream in ``folder`` (made there when it is missing or
    was made from other files or another tokenizer, if ``write``: from hpcrun's cache, else tokenized; without
    ``write``, tokenized into a temporary folder)."""
    from hpcrun.tasks.sources import resolve

    d = cfg.data
    source = resolve(d.corpus)
    column = "text" if source.kind == "text" else d.text_field
    key = stream_key(source, column, tokenizer)
    shareable = source.kind != "hub"  # a hub dataset's key holds no revision: it would never be renewed
    stream = open_stream(folder, key)
    if stream is None and write:
        for left in folder.parent.glob(f".{folder.name}.*"):  # what a killed first start left (one start at a time)
            shutil.rmtree(left, ignore_errors=True)
        if shareable:
            stream = stream_from_cache(folder, key)
    elif stream is None and shareable:  # a later node's first process, while rank 0 tokenizes the run's own
        stream = open_stream(shared_folder(key), key)
    if stream is None:
        target = folder if write else Path(tempfile.mkdtemp()) / TOKENS_DIR
        stream = build_stream(source, column, tokenizer, target, key, d.num_proc)
        if write and shareable:
            share_stream(folder, key)
    return token_blocks(stream, d.seq_len, d.eval_fraction)
