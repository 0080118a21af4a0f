"""Where the built-in task's data comes from (``data.corpus``), and what can be checked about it before submitting.

A corpus is one of:

- a built-in name (``shakespeare``);
- a file: ``.txt``/``.txt.gz`` (each file one document), ``.json``/``.jsonl`` (JSON Lines or a JSON list),
  ``.csv``, ``.parquet``, ``.arrow`` (each row one document, its text in ``data.text_field``);
- a folder of such files, all of one kind (searched recursively, sorted by path);
- a folder written by datasets' ``save_to_disk`` (it holds ``dataset_info.json`` or ``dataset_dict.json``);
- a hub dataset name (``user/name``), loaded with ``datasets.load_dataset`` where the node can download.

This module runs on the submitting side too: the standard library and hpcrun only (pyarrow, which datasets brings,
only to read a parquet file's column names).
"""

from __future__ import annotations

import csv
import gzip
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, List, Optional

from hpcrun.errors import ConfigError
from hpcrun.resources import builtin_corpora, corpus_path

# file name ending -> the datasets builder that reads it
KINDS = {".txt": "text", ".txt.gz": "text", ".json": "json", ".jsonl": "json", ".json.gz": "json",
         ".jsonl.gz": "json", ".csv": "csv", ".parquet": "parquet", ".arrow": "arrow"}


@dataclass
class Source:
    """A resolved corpus: ``kind`` is text/json/csv/parquet/arrow (files), saved (save_to_disk) or hub."""

    kind: str
    files: List[Path] = field(default_factory=list)
    name: str = ""  # the saved folder or the hub name

    def identity(self) -> str:
        """What the tokenized data depends on, besides the tokenizer: each file's path, size and mtime."""
        paths = self.files or ([p for p in sorted(Path(self.name).rglob("*")) if p.is_file()]
                               if self.kind == "saved" else [])
        lines = [f"{self.kind}|{self.name}"]
        for path in paths:
            st = path.stat()
            lines.append(f"{path.resolve()}|{st.st_size}|{st.st_mtime_ns}")
        return "\n".join(lines)


def kind_of(path: Path) -> Optional[str]:
    name = path.name.lower()
    return next((kind for end, kind in sorted(KINDS.items(), key=lambda e: -len(e[0])) if name.endswith(end)), None)


def resolve(corpus: str) -> Source:
    """The corpus's kind and files; a ConfigError naming ``data.corpus`` when it is none of the above."""
    if corpus in builtin_corpora():
        return Source("text", [corpus_path(corpus)])
    path = Path(corpus).expanduser()
    if path.is_file():
        kind = kind_of(path)
        if kind is None:
            raise ConfigError("data.corpus", corpus, f"a file ending in one of {', '.join(KINDS)}")
        return Source(kind, [path])
    if path.is_dir():
        if (path / "dataset_info.json").exists() or (path / "dataset_dict.json").exists():
            return Source("saved", name=str(path))
        files = sorted(p for p in path.rglob("*") if p.is_file() and kind_of(p) and not p.name.startswith("."))
        kinds = sorted({kind_of(p) for p in files})
        if not files:
            raise ConfigError("data.corpus", corpus, f"a folder holding data files ({', '.join(KINDS)}) or a "
                              "dataset saved with save_to_disk")
        if len(kinds) > 1:
            raise ConfigError("data.corpus", corpus, f"a folder of one kind of file (it holds {', '.join(kinds)})")
        return Source(kinds[0], files)
    if _looks_like_hub_name(corpus):
        return Source("hub", name=corpus)
    raise ConfigError("data.corpus", corpus, "an existing file or folder, or a hub dataset name",
                      choices=builtin_corpora())


def missing_here(corpus: str) -> None:
    """A ConfigError when ``corpus`` is a typo of a file the login node sees: the folder is here, the path is not,
    and a near name is (``d.jsonll`` beside ``d.jsonl``). Anything else that is not here is left to the job's start:
    a path on the compute node's own disk, or one that ``cluster.setup`` or an earlier job writes; and a bare hub
    name (``imdb``)."""
    if _looks_like_hub_name(corpus) and not Path(corpus).suffix:
        return
    path = Path(corpus).expanduser()
    folder = path.parent
    if not folder.is_dir():
        return
    import difflib

    try:
        names = sorted(p.name for p in folder.iterdir())
    except OSError:
        return
    near = difflib.get_close_matches(path.name, names, n=3, cutoff=0.8)
    if near:
        raise ConfigError("data.corpus", corpus, f"an existing file or folder: {folder} has no {path.name}; did you "
                          f"mean {' or '.join(str(folder / n) for n in near)}?")


def _looks_like_hub_name(corpus: str) -> bool:
    parts = corpus.split("/")
    return not corpus.startswith((".", "/", "~")) and len(parts) <= 2 and all(
        p and all(c.isalnum() or c in "-_." for c in p) for p in parts)


def columns(path: Path, kind: str) -> Optional[List[str]]:
    """The column names of a data file, read from its first record (None: not cheaply known)."""
    try:
        if kind == "json":
            opener: Any = gzip.open if path.name.endswith(".gz") else open
            with opener(path, "rt", encoding="utf-8") as f:
                head = f.read(1 << 16).lstrip()
            if head.startswith("["):
                return None  # a JSON list: only known by reading it whole
            first = json.loads(head.splitlines()[0]) if head else {}
            return list(first) if isinstance(first, dict) else None
        if kind == "csv":
            with open(path, newline="", encoding="utf-8") as f:
                return next(csv.reader(f), [])
        if kind == "parquet":
            import pyarrow.parquet as pq

            return list(pq.read_schema(path).names)
    except (OSError, ValueError, ImportError):
        return None
    return None


def check_corpus(data: Any) -> None:
    """On the submitting side: the corpus exists, and a data file's first record has the columns the format reads.
    A path whose folder is not on this machine either (a compute node's own disk) is left to the job start; one
    whose folder is here but not the file itself is a typo, refused now (a queue wait saved)."""
    corpus = str(data.corpus)
    if not (corpus in builtin_corpora() or Path(corpus).expanduser().exists()):
        missing_here(corpus)
        return
    source = resolve(corpus)
    if source.kind == "text":
        if data.format != "text":
            raise ConfigError("data.corpus", corpus, f"json, jsonl, csv or parquet records for data.format="
                              f"{data.format} (text files hold plain text)")
        return
    if not source.files:
        return
    needed = {"text": [("data.text_field", data.text_field)],
              "chat": [("data.messages_field", data.messages_field)],
              "prompt_completion": [("data.format", "prompt"), ("data.format", "completion")]}[data.format]
    have = columns(source.files[0], source.kind)
    if have is None:
        return
    for key, column in needed:
        if column not in have:
            what = f"a column of {source.files[0].name}" if key != "data.format" else \
                f"data with prompt and completion columns ({source.files[0].name} has none named {column!r})"
            raise ConfigError(key, column if key != "data.format" else data.format,
                              f"{what} (it has: {', '.join(have) or 'no columns'})")
