"""Composing a sweep's points: the first point of each shape in full, the others by their values alone.

The points of a sweep (``hpcrun -m ... train.lr=1e-4,3e-4 train.seed=range(0,100)``) share their group choices and
their keys; they differ in values. Composing each one as :func:`hpcrun.config.compose.compose` does (Hydra's
defaults list, OmegaConf's merges, resolution and typing) costs tens of milliseconds a point: a thousand-point sweep
spent most of its time there. Here the first point of each *shape* (the same group choices, the same keys in the
same order) is composed in full and kept, before its checks, as a template; every other point of that shape is a
copy of the template with its values set:

- each value is parsed as Hydra parses it and converted by the OmegaConf node of the key's type, exactly as
  composing it would (``train.lr=1`` is ``1.0``, ``train.max_steps=abc`` fails);
- ``run.id`` is the point's own (:func:`hpcrun.config.identity.run_id`), and every interpolation that depends on
  a value that changed (``run.dir: ${cluster.run_root}/${run.name}/${run.id}``, or one of the user's own) is
  evaluated again from the point's values;
- then every section's checks run on the point, as for any config.

Whatever this cannot do exactly as composing would (a key of a free-form section, a list or mapping value, an
added or removed key, an interpolation in a value or a dependent one that calls a resolver), and any value it
refuses, is composed in full instead: the configs, and the errors, are composing's own
(tests/unit/test_sweep_compose.py compares them).
"""

from __future__ import annotations

import copy
import enum
import functools
import os
import re
import typing
from dataclasses import dataclass, is_dataclass
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

from hpcrun.config.compose import _is_group, check_composed, compose_tree, search_dirs, type_tree
from hpcrun.config.identity import run_id
from hpcrun.config.schema import SECTIONS, Config
from hpcrun.config.typed import _unwrap_optional, typed_keys

_REFERENCE = re.compile(r"\$\{([^${}]*)\}")
_KEY = re.compile(r"^[A-Za-z_][\w-]*(\.[A-Za-z_][\w-]*)*$")
_SCALARS = (int, float, bool, str, typing.Any)


@functools.lru_cache(maxsize=8192)
def _parsed_value(text: str) -> Any:
    """The value of ``KEY=VALUE`` as Hydra's override grammar reads it (``1e-4`` is the float 0.0001)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    (override,) = OverridesParser.create().parse_overrides([text])
    return override.value()


def _converter(tp: Any, key: str) -> Optional[Callable[[Any], Any]]:
    """How OmegaConf converts a value for a field of type ``tp`` (its node's validation), or None when the type
    is not a scalar (a list, a mapping, a section: composed in full)."""
    from omegaconf.omegaconf import _node_wrap

    inner = _unwrap_optional(tp)
    optional = inner is not tp
    if not (inner in _SCALARS or (isinstance(inner, type) and issubclass(inner, enum.Enum))):
        return None
    leaf = key.rpartition(".")[2]

    def convert(value: Any) -> Any:
        return _node_wrap(parent=None, is_optional=optional, value=value, key=leaf, ref_type=inner)._value()

    return convert


def _holder(cfg: Config, key: str) -> Tuple[Any, str]:
    """The dataclass holding ``key`` in a typed config, and the field's name."""
    head, *middle, leaf = key.split(".")
    node = getattr(cfg, head) if head in SECTIONS else getattr(cfg.settings, head)
    for name in middle:
        node = getattr(node, name)
    return node, leaf


@dataclass
class _Template:
    """A point composed in full, before its checks, and what a point of the same shape changes in it."""

    cfg: Config
    overrides: List[str]  # the template's own overrides
    convert: List[Optional[Callable[[Any], Any]]]  # for each override: how its value is converted, None: kept
    dependent: List[Tuple[str, str, Callable[[Any], Any]]]  # (key, interpolation, convert), in evaluation order
    fixed: Dict[str, Any]  # the template's values of the keys the dependent interpolations read

    def point(self, overrides: Sequence[str], command: Sequence[str], cwd: Path) -> Config:
        values: Dict[str, Any] = {}
        for text, own, convert in zip(overrides, self.overrides, self.convert):
            if text == own:
                continue
            if convert is None:
                raise _NotHere(text)
            raw = _parsed_value(text)
            if isinstance(raw, str) and ("${" in raw or raw == "???"):
                raise _NotHere(text)
            values[text.split("=", 1)[0]] = convert(raw)
        values["run.id"] = run_id(overrides, command)
        for key, text, convert in self.dependent:
            values[key] = convert(_evaluate(text, {**self.fixed, **values}))
        cfg = _copy(self.cfg)
        for key, value in values.items():
            holder, leaf = _holder(cfg, key)
            setattr(holder, leaf, value)
        run_dir = Path(os.path.expanduser(str(cfg.run.dir)))
        cfg.run.dir = str(run_dir if run_dir.is_absolute() else (cwd / run_dir).resolve())
        return cfg


def _copy(value: Any) -> Any:
    """A copy of a typed config that shares nothing mutable with it: dataclasses, lists and dicts copied, scalars
    kept (copy.deepcopy does the same, several times slower); an OmegaConf node (a free-form section) deep-copied."""
    if is_dataclass(value) and not isinstance(value, type):
        new = copy.copy(value)
        for name, item in vars(value).items():
            object.__setattr__(new, name, _copy(item))
        return new
    if isinstance(value, list):
        return [_copy(v) for v in value]
    if isinstance(value, dict):
        return {k: _copy(v) for k, v in value.items()}
    if isinstance(value, (str, int, float, bool, type(None), enum.Enum)):
        return value
    return copy.deepcopy(value)


class _NotHere(Exception):
    """A point this module does not compose exactly: it is composed in full."""


def _evaluate(text: str, values: Dict[str, Any]) -> Any:
    """An interpolation made of ``${key}`` references only, as OmegaConf resolves it: the value itself when the
    text is one reference, else the text with each reference replaced by str(value)."""
    whole = _REFERENCE.fullmatch(text)
    if whole:
        return values[whole[1]]
    return _REFERENCE.sub(lambda m: str(values[m[1]]), text)


class PointComposer:
    """Composes the points of one sweep (see the module docstring); :meth:`compose` is
    :func:`hpcrun.config.compose.compose` for each of them, faster."""

    def __init__(self, config_dirs: Sequence[str | os.PathLike] = (), command: Sequence[str] = (),
                 cwd: Optional[Path] = None) -> None:
        self.cwd = cwd or Path.cwd()
        self.dirs = search_dirs(config_dirs, self.cwd)
        self.command = list(command)
        self.bases: dict = {}  # Hydra's composition of each distinct set of group choices
        self.templates: Dict[tuple, Optional[_Template]] = {}
        self._groups: Dict[str, bool] = {}

    def _is_group(self, key: str) -> bool:
        if key not in self._groups:
            self._groups[key] = _is_group(key, self.dirs)
        return self._groups[key]

    def compose(self, overrides: Sequence[str]) -> Config:
        overrides = list(overrides)
        keys = [o.split("=", 1)[0] for o in overrides]
        groups = [o for o, k in zip(overrides, keys) if self._is_group(k.lstrip("+~"))]
        shape = (tuple(groups), tuple(keys))
        if shape in self.templates:
            template = self.templates[shape]
            if template is not None:
                try:
                    cfg = template.point(overrides, self.command, self.cwd)
                except Exception:  # noqa: BLE001 - composing in full gives the exact answer, or its own error
                    return self._in_full(overrides)
                return check_composed(cfg, self.cwd, values_only=True)
            return self._in_full(overrides)
        tree, settings = compose_tree(overrides, self.dirs, self.cwd, self.command, self.bases)
        interpolations: Dict[str, str] = {}
        cfg = type_tree(tree, settings, self.cwd, interpolations)
        template = self._template(cfg, tree, settings, overrides, interpolations)
        self.templates[shape] = template
        if template is not None:
            template.cfg = copy.deepcopy(cfg)  # before its checks, which may fill in defaults from values
        return check_composed(cfg, self.cwd, self.command)

    def _in_full(self, overrides: List[str]) -> Config:
        tree, settings = compose_tree(overrides, self.dirs, self.cwd, self.command, self.bases)
        return check_composed(type_tree(tree, settings, self.cwd), self.cwd, self.command)

    def _template(self, cfg: Config, tree: Any, settings: Optional[type], overrides: List[str],
                  interpolations: Dict[str, str]) -> Optional[_Template]:
        """What a point of this shape may change and how, or None when composing each in full is the only exact
        way. A value key may change when it is a scalar field of a typed section; the others must be the
        template's own."""
        from omegaconf import OmegaConf

        keys = [o.split("=", 1)[0] for o in overrides]
        if len(set(keys)) != len(keys) or any("${" in a for a in self.command):
            return None
        if any(k.lstrip("+~") in ("run.id", "run.dir") for k in keys):
            return None  # set by hand: compose keeps it, for every point (the sweep then refuses a shared one)
        if any(re.search(r"\$\{\.", text) for text in interpolations.values()):
            return None  # a relative reference (${.lr}): what it reads is not worked out here
        known = typed_keys(settings)
        convert: List[Optional[Callable[[Any], Any]]] = []
        for key in keys:
            # (a key whose template value is an interpolation: another point's literal for it is composed in full)
            may_change = (not self._is_group(key.lstrip("+~")) and not key.startswith(("+", "~"))
                          and key.split(".", 1)[0] != "task" and key not in interpolations
                          and key in known and _is_field(cfg, key))
            convert.append(_converter(known[key], key) if may_change else None)
        changing = {k for k, c in zip(keys, convert) if c is not None} | {"run.id"}
        dependent: List[Tuple[str, str, Callable[[Any], Any]]] = []
        pending = dict(interpolations)
        while True:  # the interpolations that read a changing key, and those that read them
            # (a changing key anywhere in the text counts: a resolver's argument, ${oc.select:train.lr,1.0}, reads
            # it too, and such a text is then not evaluated here: the shape is composed in full)
            ready = [k for k, text in pending.items()
                     if set(_REFERENCE.findall(text)) & changing or any(c in text for c in changing)]
            if not ready:
                break
            for key in ready:
                text = pending.pop(key)
                refs = _REFERENCE.findall(text)
                if (not all(_KEY.match(r) for r in refs) or any(c in _REFERENCE.sub("", text) for c in "\\${}")
                        or key not in known or not _is_field(cfg, key)):
                    return None  # a resolver, a nested or escaped one, or a key outside the typed sections
                found = _converter(known[key], key)
                if found is None or (not _REFERENCE.fullmatch(text) and _unwrap_optional(known[key]) is not str):
                    return None
                dependent.append((key, text, found))
                changing.add(key)
        # What they read, as the template has it (a point's own values replace those it changes); the tree is
        # resolved by now.
        needs = {r for _, text, _ in dependent for r in _REFERENCE.findall(text)} - {k for k, _, _ in dependent}
        fixed = {r: OmegaConf.select(tree, r) for r in needs}
        if any(not isinstance(v, (str, int, float, bool, type(None))) for v in fixed.values()):
            return None
        order = _evaluation_order(dependent)
        return None if order is None else _Template(cfg, list(overrides), convert, order, fixed)


def _is_field(cfg: Config, key: str) -> bool:
    """Whether ``key`` is a field of a dataclass in the typed config (not a section, not under a free-form one)."""
    try:
        holder, leaf = _holder(cfg, key)
    except AttributeError:
        return False
    return is_dataclass(holder) and leaf in holder.__dataclass_fields__ and not is_dataclass(getattr(holder, leaf))


def _evaluation_order(dependent: List[Tuple[str, str, Any]]) -> Optional[List[Tuple[str, str, Any]]]:
    """The dependent interpolations ordered so that each is evaluated after those it reads (None: a cycle)."""
    todo = list(dependent)
    done: List[Tuple[str, str, Any]] = []
    names = {k for k, _, _ in todo}
    while todo:
        ready = [d for d in todo if not (set(_REFERENCE.findall(d[1])) & (names - {k for k, _, _ in done}))]
        if not ready:
            return None
        done.extend(ready)
        todo = [d for d in todo if d not in ready]
    return done
