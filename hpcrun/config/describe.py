"""Every config key with its type, default and one-line description, read from the schema's source comments.

The comment above each field in :mod:`hpcrun.config.schema` is the single source: ``hpcrun --help`` and
docs/configuration.md are made from it, so the reference cannot drift from the code.
"""

from __future__ import annotations

import ast
import inspect
from dataclasses import MISSING, dataclass, fields, is_dataclass
from typing import Any, Dict, List

from hpcrun.config import schema


@dataclass(frozen=True)
class KeyDoc:
    key: str
    type: str
    default: Any
    doc: str


def _field_comments() -> Dict[str, Dict[str, str]]:
    """{class name: {field name: the comment lines right above it}}."""
    source = inspect.getsource(schema)
    lines = source.splitlines()
    out: Dict[str, Dict[str, str]] = {}
    for node in ast.parse(source).body:
        if not isinstance(node, ast.ClassDef):
            continue
        docs = out.setdefault(node.name, {})
        for stmt in node.body:
            if isinstance(stmt, ast.AnnAssign) and isinstance(stmt.target, ast.Name):
                comment: List[str] = []
                i = stmt.lineno - 2
                while i >= 0 and lines[i].strip().startswith("#"):
                    comment.insert(0, lines[i].strip().lstrip("#").strip())
                    i -= 1
                docs[stmt.target.id] = " ".join(comment)
    return out


def key_docs(cls: type = schema.Config, prefix: str = "") -> List[KeyDoc]:
    """Every leaf key of the schema, in declaration order."""
    comments = _field_comments()
    result: List[KeyDoc] = []
    for f in fields(cls):
        key = prefix + f.name
        factory = f.default_factory
        if factory is not MISSING and is_dataclass(factory):
            result.extend(key_docs(factory, key + "."))  # type: ignore[arg-type]
            continue
        default = f.default if f.default is not MISSING else (factory() if factory is not MISSING else None)
        doc = comments.get(cls.__name__, {}).get(f.name, "")
        result.append(KeyDoc(key, str(f.type), default, doc))
    return result


def markdown() -> str:
    """docs/configuration.md: every key, its type, default and description (tests keep the file in sync)."""
    out = [
        "# Configuration reference",
        "",
        "Every key hpcrun reads, generated from `hpcrun/config/schema.py` by",
        "`python -m hpcrun.config.describe > docs/configuration.md` (a test fails when this file is stale).",
        "Set any key on the command line as `KEY=VALUE`; pick group files with `cluster=NAME`, `model=NAME`,",
        "`data=NAME` and `+experiment=NAME`. Defaults below are the schema's; the group files in `conf/` set their own.",
        "",
    ]
    section = None
    for d in key_docs():
        head = d.key.split(".")[0]
        if head != section:
            section = head
            out += ["", f"## {head}", "", "| key | type | default | description |", "|---|---|---|---|"]
        default = "" if d.default in (None, [], {}) else f"`{d.default}`"
        kind = d.type.replace("Optional[", "").replace("]", "").replace("[", " of ")
        out.append(f"| `{d.key}` | {kind} | {default} | {d.doc.replace('|', '/')} |")
    return "\n".join(out) + "\n"


if __name__ == "__main__":
    print(markdown(), end="")
