"""The command line's overrides taken as a whole: each key once, each swept value once, each sweep point a run.

Hydra lets a later override win silently: ``train.seed=1 train.seed=2`` trains with seed 2, and a sweep's
``train.seed=21,22 train.seed=23`` (Hydra's BasicSweeper keeps one list per key) is one point, seed 23. And the
run's identity was made from the overrides as typed: the first command trained seed 2 in a directory named
``train.seed=1,train.seed=2``, another than ``train.seed=2``'s, the same training twice. So a dotted key given
twice keeps its last value, as Hydra's rule is (a shell alias with defaults and a later override is a common use),
says so in one warning line, and the run is named after that value alone; a config group, a top-level key or a
``+``/``++``/``~`` form given twice is refused, naming both (:func:`check_once`, on every composition); so is a
comma list naming
one value twice (:func:`check_sweep`, on a sweep's overrides before they are expanded, when the sweeper has not yet
dropped a key's first list).

The key of ``KEY=VALUE``, ``+KEY=VALUE``, ``++KEY=VALUE``, ``~KEY`` and ``~KEY=VALUE`` is KEY: ``train.seed=1
++train.seed=2`` gives it twice. ``hpcrun run ... -- COMMAND``'s command is not an override: a script's own
``--lr 1 --lr 2`` is its business (the CLI hands it over separately, as ``command``).

:func:`same_run` says why two points of a sweep landed in one run directory: launcher keys (``cluster.*``,
``checkpoint.*``, ``run.*``; :mod:`hpcrun.config.identity`) are no part of a run's identity, so points that differ
only in them are one run; a value listed twice makes one point twice; a ``run.dir`` (or ``run.id``) given by hand
is every point's.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, Dict, List, Sequence

from hpcrun.config.identity import canonical, is_launch_key
from hpcrun.console import say
from hpcrun.errors import UserError

__all__ = ["check_once", "check_sweep", "same_run"]

_ESCAPE = re.compile(r"\\(.)")


def _key(text: str) -> str:
    """The key an override sets, whatever its prefix (``+``, ``++``, ``~``); ``GROUP@PACKAGE`` stays whole."""
    return text.split("=", 1)[0].strip().lstrip("+~")


def check_once(overrides: Sequence[str]) -> List[str]:
    """The overrides with each key once (see the module docstring): a dotted key set twice with plain
    ``KEY=VALUE`` keeps its last value, as Hydra would, said in one warning line; any other repeat (a config group,
    a top-level key, a ``+``/``++``/``~`` form) is refused.

    Returns:
        The overrides to compose, in their order, without the values a later one replaced.

    Raises:
        UserError: ``cluster is given twice (cluster=slurm, cluster=local): give it once``.
    """
    seen: Dict[str, str] = {}
    replaced = set()
    for i, text in enumerate(overrides):
        key = _key(text)
        if key in seen:
            first = seen[key]
            if "." not in key or "=" not in text or text[0] in "+~" or first[0] in "+~":
                raise UserError(f"{key} is given twice ({first}, {text}): give it once")
            say(f"warning: {key} is given twice ({first}, {text}): the last, {text}, applies")
            replaced.add(next(j for j, o in enumerate(overrides) if o == first and j not in replaced))
        seen[key] = text
    return [o for i, o in enumerate(overrides) if i not in replaced]


def check_sweep(overrides: Sequence[str]) -> List[str]:
    """A sweep's overrides, before they are expanded: :func:`check_once`, and each comma list names each value once
    (``train.seed=21,21``, ``train.lr=1e-4,0.0001``: the same point twice).

    Returns:
        The overrides with each key once (:func:`check_once`).

    Raises:
        UserError: ``train.seed lists 21 twice (train.seed=21,21): list each value once``.
    """
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.core.override_parser.types import QuotedString
    from hydra.errors import HydraException

    overrides = check_once(overrides)
    parser = OverridesParser.create()
    for text in overrides:
        try:
            (override,) = parser.parse_overrides([text])
        except HydraException:
            continue  # composing reports an override it cannot parse, in its own words
        if not (override.is_sweep_override() and override.is_discrete_sweep()) or \
                type(override.value()).__name__ == "Glob":  # (a glob lists nothing here: the sweep refuses it)
            continue
        seen: Dict[str, str] = {}
        # Compared as the values Hydra reads ('a' and a are one string, 1e-4 and 0.0001 one float), named as its
        # sweeper writes them.
        for value, written in zip(override.sweep_iterator(), override.sweep_string_iterator()):
            if isinstance(value, QuotedString):
                value = written = value.text
            same = f"{type(value).__name__}:{value!r}"
            if same in seen:
                raise UserError(f"{_key(text)} lists {seen[same]} twice ({text}): list each value once")
            seen[same] = written
    return list(overrides)


def _values(values: Dict[str, str], keys: Sequence[str]) -> str:
    """``key=value ...`` for ``keys`` (Hydra's escapes, as in ``2\\:00\\:00``, taken out: as the user typed it)."""
    return " ".join(f"{k}={_ESCAPE.sub(_unescape, values[k])}" if k in values else f"no {k}" for k in keys)


def _unescape(match: "re.Match[str]") -> str:
    return match[1]


def _where(cfg: Any) -> str:
    """A run directory as the user would type it: relative to the working directory when inside it."""
    path = Path(cfg.run.dir)
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return os.fspath(path)


def same_run(first: Sequence[str], second: Sequence[str], cfg: Any) -> UserError:
    """The one-line error for two sweep points (their overrides) that have one run directory (``cfg``: the second
    point's config).

    Returns:
        The error to raise; it says which keys made them one run and what to do instead.
    """
    a, b = dict(canonical(first)), dict(canonical(second))
    differ = [k for k in dict.fromkeys([*a, *b]) if a.get(k) != b.get(k)]
    if not differ:
        return UserError(f"the sweep has the point {' '.join(second)} twice (a comma list names one value twice): "
                         "list each value once")
    where = _where(cfg)
    by_hand = [k for k in ("run.dir", "run.id") if k in a or k in b]
    if by_hand:
        key = by_hand[0]
        return UserError(f"{key}={b.get(key, a.get(key))!r} is every point's (the points {_values(a, differ)} and "
                         f"{_values(b, differ)} share the run directory {where}): leave {key} out of a sweep, each "
                         "point gets its own")
    if all(is_launch_key(k) for k in differ):
        kept = [k for k in b if not is_launch_key(k) and k != "experiment"]
        points = f"the points {_values(b, kept)} with" if kept else "the points with"
        families = ", ".join(dict.fromkeys(f"{k.split('.', 1)[0]}.*" if "." in k else k for k in differ))
        return UserError(f"{points} {_values(a, differ)} and with {_values(b, differ)} are one run ({where}): "
                         f"launcher keys ({families}) do not make a run of their own; give each value its own "
                         "command, with run.name=NAME for a run of its own (docs/sweeps.md)")
    return UserError(f"the points {_values(a, differ)} and {_values(b, differ)} share the run directory {where}: "
                     "run.dir, as the config sets it, does not tell them apart (keep ${run.id} in it)")
