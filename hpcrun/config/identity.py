"""Run identity: the same experiment with the same overrides is the same run, wherever and however long it runs.

``run.id`` is made from the overrides that change what is trained; launcher keys (where and how long it runs,
how often it saves) are left out, so ``hpcrun +experiment=x train.lr=3e-4 cluster.time=2:00:00`` and the same
command with ``cluster.time=48:00:00`` or on another cluster find the same run directory and resume it. Nothing
depends on a clock: a requeued job, or the same command a week later, lands in the same place.
"""

from __future__ import annotations

import functools
import hashlib
import re
from typing import Any, Dict, Iterable, List, Sequence

# Keys (and key prefixes, ending in ".") that do not change what is trained.
LAUNCH_KEYS = ("cluster", "cluster.", "checkpoint.", "run.")
IDENTITY_MAX = 120
_UNSAFE = re.compile(r"[^A-Za-z0-9._=,+\-]")


def is_launch_key(key: str) -> bool:
    return any(key == k or (k.endswith(".") and key.startswith(k)) for k in LAUNCH_KEYS)


def canonical(overrides: Iterable[str]) -> List[tuple]:
    """(key, value) of each override with the value written the way Hydra's sweeper writes it (``1e-4`` becomes
    ``0.0001``), so a sweep point and the same single command have the same identity."""
    return [_canonical(o) for o in overrides]


@functools.lru_cache(maxsize=8192)
def _canonical(override: str) -> tuple:
    """(key, value) of one override (a sweep's points share most of theirs: each is parsed once)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    key, _, value = override.partition("=")
    try:
        (parsed,) = OverridesParser.create().parse_overrides([override])
        value = parsed.get_value_element_as_str()
    except (HydraException, ValueError):
        pass  # compose reports unparseable overrides; here the raw text will do
    return (key.lstrip("+~"), value)


def command_hash(command: Sequence[str]) -> str:
    """``cmd-<8 hex>``: hpcrun run's command, as typed, in a run's (and a sweep's) name."""
    return "cmd-" + hashlib.sha1("\0".join(command).encode()).hexdigest()[:8]


def run_id(overrides: Iterable[str], command: Sequence[str] = ()) -> str:
    """``default`` without training overrides; else the sorted ``key=value`` list, made safe as a folder name.

    ``+experiment=NAME`` is part of the run's name, not its id. Long ids keep a readable head and a hash. The
    command of ``hpcrun run`` (as typed, before ``${...}`` is resolved) is part of it, as a short hash: another
    command, or the same one with other arguments, is another run.
    """
    parts = []
    # One entry per key, its last value (the one Hydra applies). compose refuses a key given twice
    # (hpcrun.config.overrides); a caller that did not check must still not name a run after a value it does not train.
    for key, value in dict(canonical(overrides)).items():
        if key == "experiment" or is_launch_key(key):
            continue
        parts.append(f"{key}={value}")
    if command:
        parts.append(command_hash(command))
    if not parts:
        return "default"
    text = _UNSAFE.sub("_", ",".join(sorted(parts)))
    if len(text) > IDENTITY_MAX:
        digest = hashlib.sha1(text.encode()).hexdigest()[:10]
        text = f"{text[: IDENTITY_MAX - 11]}-{digest}"
    return text


def _flatten(d: Any, prefix: str = "") -> Dict[str, Any]:
    if not isinstance(d, dict):
        return {prefix[:-1]: d}
    out: Dict[str, Any] = {}
    for k, v in d.items():
        out.update(_flatten(v, f"{prefix}{k}."))
    return out


def training_differences(saved: Dict[str, Any], new: Dict[str, Any]) -> List[str]:
    """The keys (outside the launcher keys) whose values differ, as ``key: old -> new``."""
    a, b = _flatten(saved), _flatten(new)
    diffs = []
    for key in sorted(set(a) | set(b)):
        if is_launch_key(key):
            continue
        if a.get(key) != b.get(key):
            diffs.append(f"{key}: {a.get(key)!r} -> {b.get(key)!r}")
    return diffs
