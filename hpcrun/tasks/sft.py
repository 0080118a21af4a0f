"""Chat and instruction SFT for the built-in task, through TRL's SFTTrainer (with hpcrun's checkpoints and triggers).

``data.format=chat``: each record holds a conversation (``data.messages_field``, default ``messages``: a list of
``{role, content}``). It is split at its last assistant turn into a conversational prompt (everything before) and
completion (that turn), so TRL formats both with the tokenizer's chat template and computes the loss on the
completion only. Decision: earlier assistant turns are context, not targets; a conversation whose turns should all be
learned is written as several records (docs/sft.md).

``data.format=prompt_completion``: ``prompt`` and ``completion`` columns, plain strings or conversations; the loss
is on the completion only.

The records come from the same files as text data (:mod:`hpcrun.tasks.sources`: jsonl, json, csv, parquet, a saved
dataset or a hub name); the last ``data.eval_fraction`` of them are held out for evaluation, in file order. TRL
tokenizes them at each start (its own ``datasets.map``): SFT data is small next to pre-training text.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Tuple

from hpcrun.errors import ConfigError


def sft_arguments(cfg: Any) -> Tuple[type, dict]:
    """TRL's SFTConfig and its own fields: sequences of ``data.seq_len`` tokens, loss on completions only."""
    from trl import SFTConfig

    return SFTConfig, {"max_length": cfg.data.seq_len, "completion_only_loss": True, "packing": False,
                       "dataset_num_proc": cfg.data.num_proc}


def _split_conversation(messages: Any, field: str) -> dict:
    turns = list(messages or [])
    last = max((i for i, t in enumerate(turns) if isinstance(t, dict) and t.get("role") == "assistant"),
               default=None)
    if last is None or last == 0:
        raise ConfigError(f"data.{field}", str(turns)[:80], "conversations that end with an assistant turn after at "
                          "least one user turn")
    return {"prompt": turns[:last], "completion": [turns[last]]}


def sft_data(cfg: Any, tokenizer: Any, work: Path) -> Tuple[Any, Any]:
    """The train and eval records, as TRL's prompt/completion datasets; datasets' Arrow files of them in ``work``
    (emptied first: one copy per rank, replaced at each start, never piling up in /tmp)."""
    import shutil

    from hpcrun.tasks.sources import resolve
    from hpcrun.tasks.tokens import load_rows

    d = cfg.data
    if getattr(tokenizer, "chat_template", None) is None and d.format == "chat":
        raise ConfigError("data.tokenizer", d.tokenizer, "a tokenizer with a chat template for data.format=chat "
                          f"({tokenizer.name_or_path or 'this tokenizer'} has none; set data.tokenizer to one that "
                          "has)")
    source = resolve(d.corpus)
    if source.kind == "text":
        raise ConfigError("data.corpus", d.corpus, f"json, jsonl, csv or parquet records for data.format={d.format}")
    shutil.rmtree(work, ignore_errors=True)
    rows = load_rows(source, work)
    if d.format == "chat":
        if d.messages_field not in rows.column_names:
            raise ConfigError("data.messages_field", d.messages_field,
                              f"a column of the corpus (it has: {', '.join(rows.column_names)})")
        rows = rows.map(_split_conversation, input_columns=[d.messages_field], fn_kwargs={"field": "messages_field"},
                        remove_columns=rows.column_names)
    else:
        missing = [c for c in ("prompt", "completion") if c not in rows.column_names]
        if missing:
            raise ConfigError("data.format", d.format, f"records with prompt and completion columns (no "
                              f"{', '.join(missing)}; it has: {', '.join(rows.column_names)})")
        rows = rows.select_columns(["prompt", "completion"])
    split = int(len(rows) * (1 - d.eval_fraction))
    if split == 0 or split == len(rows):
        raise ConfigError("data.eval_fraction", d.eval_fraction, f"a share that leaves records for training and "
                          f"evaluation (the corpus has {len(rows)})")
    return rows.select(range(split)), rows.select(range(split, len(rows)))
