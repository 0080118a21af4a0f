"""From a config tree (composed, or read back from config.yaml) to the typed :class:`Config`, and back.

hpcrun's own sections (run, cluster, checkpoint, task) are typed by its schema. Every other top-level key belongs
to the task:

- declared: the sections of the dataclass ``task.settings`` names (the built-in task's model/data/train by default
  for the built-in task, hpcrun/tasks/settings.py), typed like hpcrun's own: an unknown key gets "did you mean", a
  wrong type is refused naming the key, each section's ``check()`` runs;
- free-form: any other section, kept as given (an OmegaConf DictConfig: ``cfg.mytask.width``), unchecked.

The settings module is imported here, on the submitting side: it must not import torch or transformers.
"""

from __future__ import annotations

import copy
import difflib
import functools
import importlib
import re
import sys
import types
import typing
from dataclasses import fields, is_dataclass
from pathlib import Path
from typing import Any, Dict, Mapping, Optional, Tuple

from hpcrun.config.schema import RESERVED, SECTIONS, Config, TaskConfig
from hpcrun.errors import ConfigError, UserError

# What a settings module must not pull into the submitting side.
HEAVY = ("torch", "transformers", "accelerate")


class Section:
    """The "type" of a key that is a section (a nested dataclass) in :func:`dataclass_keys`."""


@functools.lru_cache(maxsize=None)
def field_types(cls: type) -> Dict[str, Any]:
    """A dataclass's field types, with string annotations (``from __future__ import annotations``) evaluated."""
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in fields(cls)}


@functools.lru_cache(maxsize=None)
def _defaults(cls: type) -> Any:
    """The OmegaConf node of a dataclass's defaults, made once (merging copies it, never changes it)."""
    from omegaconf import OmegaConf

    return OmegaConf.structured(cls)


def _unwrap_optional(tp: Any) -> Any:
    args = [a for a in typing.get_args(tp) if a is not type(None)]
    if typing.get_origin(tp) is typing.Union and len(args) == 1:
        return args[0]
    return tp


def dataclass_of(tp: Any) -> Optional[type]:
    """The dataclass a field's type names (``Optional[X]`` included), or None."""
    tp = _unwrap_optional(tp)
    return tp if isinstance(tp, type) and is_dataclass(tp) else None


def dataclass_keys(cls: type, prefix: str = "") -> Dict[str, Any]:
    """Every dotted key under a dataclass, mapped to its field type (a nested dataclass maps to :class:`Section`)."""
    keys: Dict[str, Any] = {}
    for name, tp in field_types(cls).items():
        key = f"{prefix}{name}"
        sub = dataclass_of(tp)
        if sub is not None:
            keys[key] = Section
            keys.update(dataclass_keys(sub, key + "."))
        else:
            keys[key] = tp
    return keys


@functools.lru_cache(maxsize=None)
def typed_keys(settings: Optional[type]) -> Mapping[str, Any]:
    """The dotted keys of hpcrun's sections and of the task's declared ones (for checking overrides)."""
    keys: Dict[str, Any] = {}
    for name, cls in {**SECTIONS, **section_types(settings)}.items():
        keys[name] = Section
        keys.update(dataclass_keys(cls, name + "."))
    return types.MappingProxyType(keys)


def is_known(key: str, keys: Mapping[str, Any]) -> bool:
    """A key of the schema, or one beneath a free-form field of it (``Dict[...]``, ``Any``: any key goes)."""
    if key in keys:
        return True
    parts = key.split(".")
    for i in range(len(parts) - 1, 0, -1):
        parent = ".".join(parts[:i])
        if parent in keys:
            tp = _unwrap_optional(keys[parent])
            return tp is Any or tp is dict or typing.get_origin(tp) is dict
    return False


def unknown_key(key: str, value: Any, keys: Mapping[str, Any], hint: Optional[str] = None) -> ConfigError:
    """The error for an unknown key: "did you mean" among its siblings (or keys of the same depth)."""
    parent, _, leaf = key.rpartition(".")
    if parent and parent in keys:  # a known section: compare the last name with its siblings
        siblings = sorted(k.rpartition(".")[2] for k in keys if k.rpartition(".")[0] == parent)
    else:  # an unknown section: compare the whole key with every key of the same depth
        siblings = sorted(k for k in keys if k.count(".") == key.count("."))
        leaf, parent = key, ""
    close = difflib.get_close_matches(leaf, siblings, n=3, cutoff=0.6)
    prefix = f"{parent}." if parent else ""
    if close:
        hint = f"did you mean {' or '.join(prefix + c for c in close)}?"
    return ConfigError(key, value, problem="is an unknown key", hint=hint or "hpcrun --help lists the keys",
                       choices=siblings if parent and not close else None)


def describe_type(tp: Any) -> str:
    """A field type in words, for "expected ..."."""
    inner = _unwrap_optional(tp)
    if inner is not tp:
        return f"{describe_type(inner)} or null"
    origin = typing.get_origin(tp) or tp
    if tp is Section:
        return "a section (KEY: VALUE entries)"
    words = {int: "an integer", float: "a number", bool: "true or false", str: "a string", list: "a list",
             dict: "a mapping (KEY: VALUE entries)"}
    return words.get(origin, getattr(origin, "__name__", str(origin)))


def settings_class(path: str, cwd: Optional[Path] = None) -> type:
    """Imports the settings dataclass ``path`` names, with ``cwd`` importable (as in the job), and checks its shape.

    Raises:
        ConfigError: not importable, not a dataclass of sections, or its module pulls in torch/transformers.
    """
    module, _, attr = path.rpartition(".")
    if not module or not attr.isidentifier():
        raise ConfigError("task.settings", path, "a dotted path to a dataclass, e.g. my_module.MySettings")
    before = {m for m in HEAVY if m in sys.modules}
    where = str(cwd or Path.cwd())
    added = where not in sys.path
    if added:
        sys.path.insert(0, where)
    try:
        found = getattr(importlib.import_module(module), attr, None)
    except Exception as exc:  # noqa: BLE001 - any failure to import is the same one-line answer
        reason = (str(exc).strip().splitlines() or [""])[0]
        raise ConfigError("task.settings", path, f"a dataclass in a module importable from {where} "
                                                 f"({type(exc).__name__}: {reason})") from None
    finally:
        if added:
            sys.path.remove(where)
    pulled = sorted(m for m in HEAVY if m in sys.modules and m not in before)
    if pulled:
        raise ConfigError("task.settings", path, f"a dataclass in a module that does not import {', '.join(pulled)} "
                                                 "(it is imported where hpcrun submits): put it in a module of its own")
    if not (isinstance(found, type) and is_dataclass(found)):
        raise ConfigError("task.settings", path, f"a dataclass (no dataclass {attr} in {module})")
    section_types(found, path)
    return found


def section_types(settings: Optional[type], path: str = "") -> Dict[str, type]:
    """{section name: section dataclass} of a settings class (empty for None)."""
    if settings is None:
        return {}
    path = path or f"{settings.__module__}.{settings.__qualname__}"
    try:
        hints = field_types(settings)
    except Exception as exc:  # noqa: BLE001 - a forward reference that does not resolve, ...
        raise ConfigError("task.settings", path, f"a dataclass whose field types resolve ({exc})") from None
    out: Dict[str, type] = {}
    for f in fields(settings):
        section = dataclass_of(hints.get(f.name))
        if section is None:
            raise ConfigError("task.settings", path, f"a dataclass whose fields are sections (dataclasses); its field "
                                                     f"{f.name} is {hints.get(f.name)}")
        if f.name in RESERVED:
            raise ConfigError("task.settings", path, f"no section named {f.name} (hpcrun's own names: "
                                                     f"{', '.join(sorted(RESERVED))})")
        out[f.name] = section
    return out


def task_settings(tree: Any, cwd: Optional[Path] = None) -> Tuple[TaskConfig, Optional[type]]:
    """The task section of a tree, typed, and the settings class it declares (None: only free-form sections)."""
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    raw = tree.get("task") if "task" in tree else {}
    if OmegaConf.get_type(raw) is not TaskConfig:  # (what Hydra typed, it checked)
        _check_section(_plain(raw), TaskConfig, "task", typed_keys(None))
    try:
        task = OmegaConf.to_object(OmegaConf.merge(_defaults(TaskConfig), raw))
    except OmegaConfBaseException as exc:
        raise UserError(one_line(exc)) from None
    path = task.settings_path()
    return task, settings_class(path, cwd) if path else None


def _plain(node: Any) -> Any:
    """A DictConfig/ListConfig as plain containers, interpolations left as written."""
    from omegaconf import DictConfig, ListConfig, OmegaConf

    if isinstance(node, (DictConfig, ListConfig)):
        return OmegaConf.to_container(node, resolve=False)
    return node


def _check_section(node: Any, cls: type, prefix: str, keys: Mapping[str, Any]) -> None:
    """Refuses keys ``cls`` does not have (with "did you mean"), and a scalar where a section belongs."""
    if node is None or (isinstance(node, str) and node.startswith("${")):
        return
    if not isinstance(node, dict):
        raise ConfigError(prefix, node, "a section (KEY: VALUE entries)")
    hints = field_types(cls)
    for name, value in node.items():
        key = f"{prefix}.{name}"
        if name not in hints:
            raise unknown_key(key, value, keys)
        sub = dataclass_of(hints[name])
        if sub is not None:
            _check_section(value, sub, key, keys)


def find_interpolations(tree: Any, prefix: str = "") -> Dict[str, str]:
    """Every interpolation in a tree, unresolved: {dotted key: its text}."""
    from omegaconf import DictConfig, ListConfig, OmegaConf

    found: Dict[str, str] = {}
    keys = tree.keys() if isinstance(tree, DictConfig) else range(len(tree))
    for key in keys:
        path = f"{prefix}{key}"
        if OmegaConf.is_interpolation(tree, key):
            found[path] = str(tree._get_node(key)._value())
            continue
        child = tree._get_node(key)
        if isinstance(child, (DictConfig, ListConfig)) and not child._is_none() and not child._is_missing():
            found.update(find_interpolations(child, path + "."))
    return found


def _unresolvable(tree: Any, exc: BaseException) -> UserError:
    """An interpolation that does not resolve (``${oc.env:USER}`` with USER unset, ``${no.such.key}``), named: the
    key whose value it is, as written, and why; of several, the one the others fail through (``cluster.run_root``,
    not ``run.dir`` which reads it)."""
    import re

    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    failing: Dict[str, Tuple[str, str]] = {}
    for key, text in find_interpolations(tree).items():
        try:
            OmegaConf.select(tree, key)
        except OmegaConfBaseException as inner:
            reason = re.sub(r" \(key: [^)]*\)$", "", one_line(inner))
            reason = reason.replace("KeyError raised while resolving interpolation: ", "").strip('"')
            failing[key] = (text, reason)
    for key, (text, reason) in failing.items():
        if not set(re.findall(r"\$\{([\w.]+)\}", text)) & set(failing):
            return ConfigError(key, text, problem=f"does not resolve ({reason})",
                               hint="set what it reads, or give the key a value of its own")
    return UserError(one_line(exc))


def one_line(exc: BaseException) -> str:
    """OmegaConf's errors span several lines; keep the first and the key."""
    lines = [ln.strip() for ln in str(exc).strip().splitlines() if ln.strip()]
    first = lines[0] if lines else type(exc).__name__
    key = getattr(exc, "full_key", None)
    if key and key not in first:
        first += f" (key: {key})"
    return first


def build(tree: Any, cwd: Optional[Path] = None, settings: Any = None,
          interpolations: Optional[Dict[str, str]] = None) -> Config:
    """The typed config of a tree (unchecked: :meth:`Config.check` is the caller's, after any last changes).

    Args:
        tree: a DictConfig (typed and resolved in place) or a plain mapping of a whole config.
        cwd: where the settings module is imported from (the working directory by default).
        settings: the settings class, when the caller already has it (else found from ``tree.task``).
        interpolations: filled with every interpolation of the typed tree, before it is resolved ({dotted key:
            its text}; the sections' defaults included).
    """
    from omegaconf import DictConfig, ListConfig, OmegaConf, open_dict
    from omegaconf.errors import MissingMandatoryValue, OmegaConfBaseException, ValidationError

    if not isinstance(tree, DictConfig):
        tree = OmegaConf.create(tree)
    if settings is None:
        _, settings = task_settings(tree, cwd)
    declared = section_types(settings)
    keys = typed_keys(settings)
    for name, cls in {**SECTIONS, **declared}.items():
        if name in tree and OmegaConf.get_type(tree, name) is not cls:  # (what Hydra typed, it checked)
            _check_section(_plain(tree[name]), cls, name, keys)
    for name in tree:
        if name in RESERVED and name not in SECTIONS:
            raise ConfigError(str(name), _plain(tree[name]), problem="is not a section name a task can use",
                              hint=f"{', '.join(sorted(RESERVED))} are hpcrun's own")

    # Type the sections in place: each merged onto its dataclass's defaults (a wrong type fails here, naming the
    # key); sections Hydra already typed (hpcrun's own, when composing) are left as they are.
    typed_sections = {**{name: (cls, _defaults(cls)) for name, cls in SECTIONS.items()},
                      **{name: (cls, _defaults(settings)[name]) for name, cls in declared.items()}}
    merging = ""  # the section being merged onto its defaults: its errors name the key within it
    try:
        with open_dict(tree):
            for name, (cls, defaults) in typed_sections.items():
                if name not in tree or OmegaConf.get_type(tree, name) is not cls:
                    merging = str(name)
                    tree[name] = OmegaConf.merge(defaults, tree[name] if name in tree else {})
            merging = ""
        if interpolations is not None:
            interpolations.update(find_interpolations(tree))
        OmegaConf.resolve(tree)
        _escape_resolved(tree)
        typed = {name: OmegaConf.to_object(tree[name]) for name in typed_sections}
    except ValidationError as exc:
        key = str(exc.full_key)
        if merging and f"{merging}.{key}" in keys:  # (a saved config's value, as `hpcrun resume` merges it)
            key = f"{merging}.{key}"
        if key in keys:
            value = OmegaConf.select(tree, key, throw_on_missing=False, throw_on_resolution_failure=False)
            expected = describe_type(keys[key])
            hint = (f"write '{key}=[{_plain(value)}]'" if expected.startswith("a list") and isinstance(value, str)
                    else None)  # (one name where a list was wanted: train.report_to=wandb)
            raise ConfigError(key, _plain(value), expected, hint=hint) from None
        raise UserError(one_line(exc)) from None
    except MissingMandatoryValue as exc:
        raise ConfigError(str(exc.full_key), "???", problem="is missing",
                          hint=f"set it: {exc.full_key}=VALUE") from None
    except OmegaConfBaseException as exc:
        raise _unresolvable(tree, exc) from None

    extra: Dict[str, Any] = {}
    for name in tree:
        if name in typed_sections:
            continue
        node = tree[name]
        if isinstance(node, (DictConfig, ListConfig)):  # detached from the tree: no struct flag, no parent
            node = OmegaConf.create(OmegaConf.to_container(node, resolve=False))  # (resolved, literals escaped)
        extra[str(name)] = node
    return Config(
        run=typed["run"], cluster=typed["cluster"], checkpoint=typed["checkpoint"], task=typed["task"],
        settings=settings(**{name: typed[name] for name in declared}) if settings is not None else None,
        extra=extra,
    )


def from_container(data: Any, cwd: Optional[Path] = None) -> Config:
    """The checked config of a whole-config mapping (a plain dict or a DictConfig), as config.yaml holds it.

    Args:
        data: the whole config: hpcrun's sections and the task's.
        cwd: where the task's settings module is imported from (the working directory by default).

    Raises:
        ConfigError: an unknown key, a wrong type or a bad value, named in one line.
    """
    from omegaconf import DictConfig, OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    if not isinstance(data, (dict, DictConfig)):
        raise UserError(f"not an hpcrun config: a mapping of sections was expected, not {type(data).__name__}")
    try:
        tree = copy.deepcopy(data) if isinstance(data, DictConfig) else OmegaConf.create(data)  # typed in place
    except OmegaConfBaseException as exc:
        raise UserError(one_line(exc)) from None
    cfg = build(tree, cwd)
    cfg.check()
    return cfg


def to_container(cfg: Config) -> Dict[str, Any]:
    """The whole config as plain dicts, lists and scalars (what config.yaml holds): hpcrun's sections, then the
    task's."""
    from dataclasses import asdict

    from omegaconf import DictConfig, ListConfig, OmegaConf

    out: Dict[str, Any] = {name: asdict(getattr(cfg, name)) for name in SECTIONS}
    for name, section in cfg.sections().items():
        if is_dataclass(section):
            out[name] = asdict(section)
        elif isinstance(section, (DictConfig, ListConfig)):
            out[name] = OmegaConf.to_container(section, resolve=True)
        else:
            out[name] = section
    return _literal(out)


def _escape_resolved(tree: Any) -> None:
    """Escapes again, in a tree just resolved in place, the strings that hold a literal ``${`` (written ``\\${``):
    OmegaConf.resolve stores the resolved string as the node's value, which OmegaConf then reads as an interpolation
    (omegaconf 2.3). Every ``${`` left after resolving is a literal one."""
    from omegaconf import DictConfig, ListConfig

    for key in (tree.keys() if isinstance(tree, DictConfig) else range(len(tree))):
        child = tree._get_node(key)
        if isinstance(child, (DictConfig, ListConfig)):
            if not child._is_none() and not child._is_missing():
                _escape_resolved(child)
        elif child is not None and isinstance(child._value(), str) and "${" in child._value():
            tree[key] = _literal(child._value())


def _literal(value: Any) -> Any:
    """``value`` with every ``${`` in its strings escaped (``\\${``), so that OmegaConf reading it back (config.yaml,
    a resume's merge) gets the same strings: a resolved value can hold a literal ``${`` (a command's argument
    written ``\\${...}``, for a Hydra app's own interpolation), which OmegaConf would otherwise read as an
    interpolation of hpcrun's config. Backslashes right before it are doubled, as OmegaConf's grammar wants."""
    kind = type(value)
    if kind is str:
        return _LITERAL.sub(lambda m: m.group(1) * 2 + "\\${", value) if "${" in value else value
    if kind is dict:
        return {k: _literal(v) for k, v in value.items()}
    if kind is list:
        return [_literal(v) for v in value]
    return value


_LITERAL = re.compile(r"(\\*)\$\{")
