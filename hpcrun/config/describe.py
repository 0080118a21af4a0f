"""Every config key with its type, default and one-line description, read from the dataclasses' source comments.

The comment above each field is the single source: ``hpcrun --help`` and docs/configuration.md are made from it, so
the reference cannot drift from the code. hpcrun's own sections come from :mod:`hpcrun.config.schema`, the built-in
task's from :mod:`hpcrun.tasks.settings`; a task's own settings class documents itself the same way.
"""

from __future__ import annotations

import ast
import functools
import inspect
import sys
from dataclasses import MISSING, dataclass, fields
from typing import Any, Dict, List, Mapping, Optional

from hpcrun.config.schema import BUILTIN_SETTINGS, SECTIONS
from hpcrun.config.typed import dataclass_of, field_types, section_types, settings_class


@dataclass(frozen=True)
class KeyDoc:
    key: str
    type: str
    default: Any
    doc: str


@functools.lru_cache(maxsize=None)
def _field_comments(module: str) -> Dict[str, Dict[str, str]]:
    """{class name: {field name: the comment lines right above it}} of a module's source."""
    source = inspect.getsource(sys.modules[module])
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


def _type_name(tp: Any) -> str:
    return tp.__name__ if isinstance(tp, type) else str(tp).replace("typing.", "")


def _section_docs(cls: type, prefix: str) -> List[KeyDoc]:
    comments = _field_comments(cls.__module__).get(cls.__name__, {})
    hints = field_types(cls)
    result: List[KeyDoc] = []
    for f in fields(cls):
        key = prefix + f.name
        sub = dataclass_of(hints[f.name])
        if sub is not None:
            result.extend(_section_docs(sub, key + "."))
            continue
        factory = f.default_factory
        default = f.default if f.default is not MISSING else (factory() if factory is not MISSING else None)
        result.append(KeyDoc(key, _type_name(hints[f.name]), default, comments.get(f.name, "")))
    return result


def builtin_sections() -> Dict[str, type]:
    """The built-in task's sections (model, data, train), from its settings class (found by name, as any task's
    settings are: hpcrun.config does not import the tasks package)."""
    return section_types(settings_class(BUILTIN_SETTINGS))


def key_docs(sections: Optional[Mapping[str, type]] = None) -> List[KeyDoc]:
    """Every leaf key, in declaration order: hpcrun's own sections, then ``sections`` (by default the built-in
    task's)."""
    chosen = {**SECTIONS, **(builtin_sections() if sections is None else sections)}
    return [d for name, cls in chosen.items() for d in _section_docs(cls, name + ".")]


def markdown() -> str:
    """docs/configuration.md: every key, its type, default and description (tests keep the file in sync)."""
    out = [
        "# Configuration reference",
        "",
        "Every key hpcrun reads, generated from `hpcrun/config/schema.py` (hpcrun's own sections, which every run has)",
        "and `hpcrun/tasks/settings.py` (the built-in task's sections) by",
        "`python -m hpcrun.config.describe > docs/configuration.md` (a test fails when this file is stale).",
        "Set any key on the command line as `KEY=VALUE`; pick group files with `cluster=NAME`, `task=NAME`,",
        "`model=NAME`, `data=NAME` and `+experiment=NAME`. Defaults below are the schema's; the group files in `conf/`",
        "set their own. A task of your own brings its own sections instead of model, data and train",
        "([custom-tasks.md](custom-tasks.md)).",
        "",
        "A key given twice keeps its last value, as Hydra's rule is: `train.seed=1 train.seed=2` trains with seed 2,",
        "in the run `train.seed=2` names, and says `warning: train.seed is given twice (train.seed=1, train.seed=2):",
        "the last, train.seed=2, applies` (decision, 2026-12-02: a shell alias with defaults and a later override",
        "relies on it). A group, a top-level key, or a `+`/`++`/`~` form given twice is refused, naming both. The",
        "`run.*`, `cluster.*` and `checkpoint.*` keys are launcher keys: where, how long and how a run runs, not what",
        "it trains. They are no part of a run's identity (`run.id`), so the same command with another `cluster.time`",
        "resumes the same run, and a sweep's points that differ only in them are one run, refused as such",
        "([sweeps.md](sweeps.md); `run.name` names the run's folder, so `run.name=a,b` does make two runs).",
        "",
    ]
    builtin = builtin_sections()
    section = None
    for d in key_docs():
        head = d.key.split(".")[0]
        if head != section:
            if head in builtin and section not in builtin:
                out += ["", "# The built-in task's sections", "",
                        "`task=causal_lm` (the default): `hpcrun.tasks.causal_lm.train` and its settings",
                        "`hpcrun.tasks.settings.CausalLMSettings`. Composed, checked and saved only for a task that",
                        "declares these settings."]
            section = head
            out += ["", f"## {head}", "", "| key | type | default | description |", "|---|---|---|---|"]
        default = "" if d.default in (None, [], {}) else f"`{d.default}`"
        kind = d.type.replace("Optional[", "").replace("]", "").replace("[", " of ")
        out.append(f"| `{d.key}` | {kind} | {default} | {d.doc.replace('|', '/')} |")
    return "\n".join(out) + "\n"


if __name__ == "__main__":
    print(markdown(), end="")
