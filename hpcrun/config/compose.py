"""Composing a run's config from conf/ folders and command-line overrides, with one-line errors.

Where configs are found, first match wins:

1. every ``--config-dir DIR`` given on the command line, in order;
2. ``./conf`` in the working directory, when it exists (a user's project folder);
3. the ``conf/`` shipped with hpcrun.

So a user's ``conf/experiment/mine.yaml`` is found as ``+experiment=mine``, and a user's
``conf/cluster/greene.yaml`` replaces the packaged one. Hydra appends ``hydra.searchpath`` entries *after* the
primary config folder, which would let the packaged files win; the search path is built here instead.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, Iterable, Optional, Sequence

from hpcrun.config.identity import run_id
from hpcrun.config.overrides import check_once
from hpcrun.config.schema import BUILTIN_SETTINGS, BUILTIN_TASK, GROUPS, RESERVED, SECTIONS, Config, register
from hpcrun.config.typed import (build, describe_type, from_container, is_known, one_line, section_types,
                                 task_settings, to_container, typed_keys, unknown_key)
from hpcrun.errors import ConfigError, UserError
from hpcrun.resources import conf_dir

PRIMARY = "hpcrun"
_ABSENT = object()
# Hydra's error for a group no config in the defaults list picks (e.g. model=NAME with task=custom).
_NOT_PICKED = re.compile(r"^(?:In '(?P<where>[^']+)': )?Could not override '(?P<group>[^']+)'\. "
                         r"No match in the defaults")
__all__ = ["available", "compose", "from_container", "load_saved", "search_dirs", "to_container"]


def search_dirs(config_dirs: Sequence[str | os.PathLike] = (), cwd: Optional[Path] = None) -> list[Path]:
    """The config folders, in the order they are searched (see the module docstring)."""
    dirs = []
    for d in config_dirs:
        path = Path(d).expanduser().resolve()
        if not path.is_dir():
            raise ConfigError("--config-dir", str(d), "an existing folder")
        dirs.append(path)
    local = (cwd or Path.cwd()) / "conf"
    if local.is_dir() and local.resolve() not in dirs:
        dirs.append(local.resolve())
    packaged = conf_dir().resolve()
    if packaged not in dirs:
        dirs.append(packaged)
    return dirs


def available(group: str, dirs: Iterable[Path]) -> list[str]:
    """The choices of a config group across the search folders (file names without .yaml)."""
    names = set()
    for d in dirs:
        g = d / group
        if g.is_dir():
            names.update(p.stem for p in g.glob("*.yaml"))
    return sorted(names)


def _is_group(bare: str, dirs: list[Path]) -> bool:
    """Whether an override's key names a config group (hpcrun's, or one in a user's conf/)."""
    return bare in GROUPS or ("." not in bare and bool(available(bare, dirs)))


def _check_override(text: str, dirs: list[Path]) -> bool:
    """Rejects an unknown key of hpcrun's own or an unknown group choice with a one-line error before Hydra sees it.

    Returns:
        True for an override Hydra applies (a group choice, a key of hpcrun's sections); False for a key of the
        task's sections, which :func:`_apply_task_overrides` checks and applies once the task's settings are known.
    """
    if "=" not in text:
        raise ConfigError(text, "", "KEY=VALUE (e.g. train.max_steps=100) or GROUP=CHOICE (e.g. cluster=slurm)")
    key, value = text.split("=", 1)
    bare = key.lstrip("+~")
    if bare.startswith("hydra.") or bare.startswith("hydra/"):
        raise ConfigError(bare, value, "an hpcrun key; hydra.* settings are hpcrun's own")
    if _is_group(bare, dirs):
        choices = available(bare, dirs)
        for v in value.split(","):
            if v and v not in choices:
                raise ConfigError(bare, v, choices=choices)
        if bare == "experiment" and not key.startswith("+"):
            raise ConfigError(key, value, f"+experiment={value} (experiments are added with a leading +)")
        if bare in ("cluster", "task") and key.startswith("+"):  # Hydra: "Multiple values for cluster"
            raise ConfigError(key, value, f"{bare}={value} (hpcrun's config always picks a {bare}: choose another "
                                          "without +)")
        for v in value.split(","):
            _check_header(bare, v, dirs)
        return True
    if bare.split(".", 1)[0] not in SECTIONS:
        return False
    keys = typed_keys(None)
    if bare in keys or bare.startswith("cluster.sbatch_extra."):  # sbatch_extra is a free-form dict
        return True
    raise unknown_key(bare, value, keys)


def _check_header(group: str, choice: str, dirs: list[Path]) -> None:
    """Hydra reads a config's ``# @package`` line only among the file's first lines (before any other comment or
    content): one further down is silently ignored, and the file's keys land under the wrong package with an error
    that does not say why. Refused here, naming the file and the line."""
    path = next((d / group / f"{choice}.yaml" for d in dirs if (d / group / f"{choice}.yaml").is_file()), None)
    if path is None:
        return
    try:
        lines = path.read_text().splitlines()
    except OSError:
        return
    header = True
    for n, line in enumerate(lines, 1):
        text = line.strip()
        if not text:
            continue
        is_directive = re.match(r"^#\s*@", text) is not None
        if header and not is_directive:
            header = False
        if not header and re.match(r"^#\s*@package\b", text):
            raise UserError(f"{path}: line {n}, {text!r}, comes after other lines, where Hydra ignores it: make it "
                            "the file's first line")


def _task_choice(overrides: Sequence[str]) -> Optional[str]:
    """``task=custom`` when the command line names a task of one's own (task._target_ or task.settings) but no
    ``task=`` group: the built-in task's groups (model, data) and settings are then left out. Declaring the built-in
    settings (``task.settings=hpcrun.tasks.settings.CausalLMSettings``) keeps ``task=causal_lm`` and its groups."""
    given = {o.split("=", 1)[0].lstrip("+~"): o.split("=", 1)[1].strip("'\"") for o in overrides if "=" in o}
    if "task" in given:
        return None
    target, settings = given.get("task._target_"), given.get("task.settings")
    if settings == BUILTIN_SETTINGS or (settings is None and target in (None, BUILTIN_TASK)):
        return None
    return "task=custom"


def _apply_task_overrides(cfg: Any, overrides: Sequence[str], settings: Optional[type], target: str) -> None:
    """Checks the overrides of the task's sections against its settings and applies them, as Hydra would.

    A key of a declared section is set whether or not a config file set it (the section's defaults come from its
    dataclass, after composition); a free-form section follows Hydra's rules: ``+KEY=VALUE`` adds, ``KEY=VALUE``
    changes what a config file set.
    """
    from hydra._internal.config_loader_impl import ConfigLoaderImpl
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.types import RunMode
    from omegaconf import OmegaConf

    parser = OverridesParser.create()
    # As Hydra does for its own: a comma list is a sweep, for `hpcrun -m` only.
    ConfigLoaderImpl.validate_sweep_overrides_legal(parser.parse_overrides(list(overrides)), RunMode.RUN, True)
    keys = typed_keys(settings)
    declared = set(section_types(settings))
    texts = []
    for text in overrides:
        key, value = text.split("=", 1)
        bare = key.lstrip("+~")
        head = bare.split(".", 1)[0]
        if head in RESERVED:
            raise ConfigError(bare, value, problem="is not a section name a task can use",
                              hint=f"{', '.join(sorted(RESERVED))} are hpcrun's own")
        if head in declared:
            if not is_known(bare, keys):
                raise unknown_key(bare, value, keys)
            texts.append(text if key.startswith("~") else f"++{bare}={value}")
        elif key.startswith("+") or key.startswith("~") or OmegaConf.select(cfg, bare, default=_ABSENT) is not _ABSENT:
            texts.append(text)
        else:
            section = (f"task._target_={target} has no {head} section (its settings declare "
                       f"{', '.join(sorted(declared)) or 'none'}); add one of its own with +{bare}={value}")
            raise unknown_key(bare, value, keys, hint=section if head not in cfg else f"add it with +{bare}={value}")
    ConfigLoaderImpl._apply_overrides_to_config(parser.parse_overrides(texts), cfg)


def _one_line(exc: BaseException) -> str:
    """Hydra and OmegaConf errors span several lines; keep the first sentence and the key."""
    from hydra.errors import OverrideParseException

    if isinstance(exc, OverrideParseException):
        return (f"cannot parse the override {exc.override!r}: quote a value that has spaces or special "
                "characters, e.g. 'run.name=\"my run\"'")
    cause = exc.__cause__ or exc.__context__
    if cause is not None and getattr(cause, "full_key", None):
        exc = cause  # Hydra's "Error merging override" hides OmegaConf's precise reason
    return one_line(exc)


def compose(
    overrides: Sequence[str] = (),
    config_dirs: Sequence[str | os.PathLike] = (),
    cwd: Optional[Path] = None,
    command: Sequence[str] = (),
) -> Config:
    """Composes and checks a run's config.

    Args:
        overrides: Hydra overrides as typed by the user (``+experiment=tiny_llama``, ``train.max_steps=10``).
        config_dirs: extra config folders searched before ``./conf`` and the packaged one.
        cwd: the folder relative paths (``./conf``, ``run.dir``) are taken from; the working directory by default.
        command: ``hpcrun run -- COMMAND``'s command: the job runs it (task=command, hpcrun/tasks/command.py); its
            ``${KEY}`` arguments take config values; it is part of the run's identity.

    Hydra applies the group choices and hpcrun's own keys; the keys of the task's sections are applied after, once
    ``task.settings`` is known (:func:`_apply_task_overrides`), then everything is typed and checked. A sweep's
    points are composed by :class:`hpcrun.config.points.PointComposer`, which gives the same configs faster.

    Returns:
        The composed config, checked: hpcrun's sections and the task's declared ones as dataclass instances, its
        free-form ones as given (``run.dir`` made absolute).

    Raises:
        ConfigError: an unknown key or choice, or a bad value; the message is one line naming both.
        UserError: a key or group given twice (:func:`hpcrun.config.overrides.check_once`), naming both.
    """
    cwd = cwd or Path.cwd()
    tree, settings = compose_tree(overrides, search_dirs(config_dirs, cwd), cwd, command)
    typed = type_tree(tree, settings, cwd)
    return check_composed(typed, cwd, command)


def compose_tree(overrides: Sequence[str], dirs: list[Path], cwd: Path, command: Sequence[str] = (),
                 bases: Optional[dict] = None) -> tuple[Any, Optional[type]]:
    """The first half of :func:`compose`: the composed tree (an untyped, unresolved DictConfig, every override
    applied, ``run.id`` set) and the task's settings class. ``bases``: see :func:`_hydra_compose`."""
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    register()
    to_hydra = {text: _check_override(text, dirs) for text in overrides}  # each one's own error first
    overrides = check_once(overrides)  # the last of a key given twice (said), and the run named after it alone
    hydra_overrides, task_overrides = [], []
    for text in overrides:
        (hydra_overrides if to_hydra[text] else task_overrides).append(text)
    choice = _task_choice(overrides)
    if command and not any(o.split("=", 1)[0].lstrip("+~") == "task" for o in overrides):
        choice = "task=command"
    # cluster.sbatch_extra is a free-form dict: its keys may or may not exist yet, so add-or-override them.
    hydra_overrides = [f"++{o}" if o.startswith("cluster.sbatch_extra.") else o for o in hydra_overrides]

    try:
        cfg = _hydra_compose(dirs, hydra_overrides + ([choice] if choice else []), bases)
        if not any(o.split("=", 1)[0].lstrip("+~") == "run.id" for o in overrides):
            cfg.run.id = run_id(overrides, command)  # the user's overrides: task=custom chosen here is no part of it
        task, settings = task_settings(cfg, cwd)
        _apply_task_overrides(cfg, task_overrides, settings, task._target_)
        if command:
            _set_command(cfg, command, overrides, cwd, settings)
    except (HydraException, OmegaConfBaseException) as exc:
        raise _hydra_error(exc, overrides, dirs) from None
    return cfg, settings


def type_tree(tree: Any, settings: Optional[type], cwd: Path, interpolations: Optional[dict] = None) -> Config:
    """The typed config of a composed tree (resolved in place), ``run.dir`` made absolute; not yet checked.
    ``interpolations``: filled with the tree's interpolations before they are resolved (:func:`typed.build`)."""
    typed = build(tree, cwd, settings, interpolations)
    run_dir = Path(os.path.expanduser(str(typed.run.dir)))
    typed.run.dir = str(run_dir if run_dir.is_absolute() else (cwd / run_dir).resolve())
    return typed


def check_composed(typed: Config, cwd: Path, command: Sequence[str] = (), values_only: bool = False) -> Config:
    """The last half of :func:`compose`: every section's checks; then, unless ``values_only`` (a sweep point that
    differs in values only from one checked in full), that the task can be found and the command run."""
    typed.check()
    if values_only:
        return typed
    typed.task.check_importable(cwd)
    if command:
        from hpcrun.config.command import check_runnable

        check_runnable(typed.command.argv, typed, cwd)
    return typed


def _hydra_compose(dirs: list[Path], overrides: Sequence[str], bases: Optional[dict] = None) -> Any:
    """Hydra's composition of the primary config with ``overrides`` (its ``hydra`` node removed).

    Hydra composes the defaults list (the group choices: ``+experiment=``, ``cluster=``, ``task=``, ...) into one
    config and then applies the value overrides (``train.lr=...``) to it. With ``bases``, the first half is done once
    per distinct set of group choices and kept there; each call applies its value overrides to a deep copy, as
    Hydra itself would (``ConfigLoaderImpl._apply_overrides_to_config``, the function its loader ends with). A sweep's
    points share their group choices: composing each point from scratch was nearly all of a sweep's time.
    """
    import copy

    from hydra._internal.config_loader_impl import ConfigLoaderImpl
    from hydra._internal.config_search_path_impl import ConfigSearchPathImpl
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.core.plugins import Plugins
    from hydra.types import RunMode
    from omegaconf import open_dict

    groups = [o for o in overrides if _is_group(o.split("=", 1)[0].lstrip("+~"), dirs)]
    values = [o for o in overrides if o not in groups]
    key = (tuple(str(d) for d in dirs), tuple(groups))
    base = bases.get(key) if bases is not None else None
    if base is None:
        Plugins.instance()  # registers Hydra's config sources (pkg://, file://, structured://)
        search_path = ConfigSearchPathImpl()
        search_path.append("hydra", "pkg://hydra.conf")
        for d in dirs:
            search_path.append("hpcrun", f"file://{d}")
        search_path.append("schema", "structured://")
        loader = ConfigLoaderImpl(config_search_path=search_path)
        if bases is None:  # one composition: Hydra applies the value overrides itself
            cfg = loader.load_configuration(config_name=PRIMARY, overrides=list(overrides), run_mode=RunMode.RUN)
            with open_dict(cfg):
                del cfg["hydra"]
            return cfg
        base = loader.load_configuration(config_name=PRIMARY, overrides=groups, run_mode=RunMode.RUN)
        with open_dict(base):
            del base["hydra"]
        bases[key] = base
    cfg = copy.deepcopy(base)
    if values:
        parsed = OverridesParser.create().parse_overrides(values)
        ConfigLoaderImpl.validate_sweep_overrides_legal(parsed, RunMode.RUN, True)
        ConfigLoaderImpl._apply_overrides_to_config(parsed, cfg)
    return cfg


def _set_command(cfg: Any, command: Sequence[str], overrides: Sequence[str], cwd: Path, settings: Any) -> None:
    """Puts ``hpcrun run``'s command into ``command.argv`` with its ``${KEY}`` arguments resolved (one line naming
    the argument and the key when one is missing), and names the run after it unless the user did."""
    from omegaconf import OmegaConf, open_dict
    from omegaconf.errors import OmegaConfBaseException

    from hpcrun.config.command import command_name

    if "command" not in section_types(settings):
        raise ConfigError("task._target_", OmegaConf.select(cfg, "task._target_"),
                          "hpcrun.tasks.command.run (task=command) for hpcrun run -- COMMAND")
    with open_dict(cfg):
        if "command" not in cfg:
            cfg.command = {}
        if _given("run.name", overrides) is None and cfg.run.name == "default":
            cfg.run.name = command_name(command)
        # ${run.dir} in the command is the absolute run directory, as the job sees it
        run_dir = Path(os.path.expanduser(str(cfg.run.dir)))
        cfg.run.dir = str(run_dir if run_dir.is_absolute() else (cwd / run_dir).resolve())
        cfg.command.argv = list(command)
    for i, arg in enumerate(command):
        if "${" not in arg:
            continue
        try:
            cfg.command.argv[i]  # resolves it
        except OmegaConfBaseException as exc:
            raise ConfigError("command", arg, problem=f"takes a value the config does not have ({one_line(exc)})",
                              hint="add a key of your own with +KEY=VALUE; a shell variable is $NAME, without "
                                   "braces; one the command reads itself (a Hydra app's): \\${...}"
                              ) from None


def _given(key: str, overrides: Sequence[str]) -> Optional[str]:
    """The value the command line gave ``key`` (the last one), or None."""
    given = [o.split("=", 1)[1] for o in overrides if "=" in o and o.split("=", 1)[0].lstrip("+~") == key]
    return given[-1] if given else None


def _pickers(group: str, dirs: list[Path]) -> list[str]:
    """The task configs (conf/task/*.yaml) whose defaults pick ``group``, e.g. causal_lm for model."""
    import yaml

    found = []
    for choice in available("task", dirs):
        path = next(d / "task" / f"{choice}.yaml" for d in dirs if (d / "task" / f"{choice}.yaml").is_file())
        try:
            defaults = (yaml.safe_load(path.read_text()) or {}).get("defaults") or []
        except (OSError, yaml.YAMLError, AttributeError):
            continue
        names = [next(iter(d)) if isinstance(d, dict) else str(d) for d in defaults]
        if any(n.split("@")[0].removeprefix("override ").strip().lstrip("/") == group for n in names):
            found.append(f"task={choice}")
    return found


def _hydra_error(exc: BaseException, overrides: Sequence[str], dirs: list[Path]) -> UserError:
    """One line for a Hydra or OmegaConf error: a wrong type names the key, the value and the type expected; a
    group the task does not use says which task uses it."""
    from omegaconf.errors import ValidationError

    cause = exc.__cause__ or exc.__context__
    keys = typed_keys(None)
    if isinstance(cause, ValidationError) and str(cause.full_key) in keys:
        key = str(cause.full_key)
        value = _given(key, overrides)
        if value is not None:
            return ConfigError(key, value, describe_type(keys[key]))
    ambiguous = re.match(r"Ambiguous value for argument '([^']*)'", str(exc))
    if ambiguous:  # a comma list without -m: Hydra's own three-line advice, in one
        key, _, value = ambiguous[1].partition("=")
        return ConfigError(key.lstrip("+~"), value, problem="is a list of values",
                           hint=f"to run one job per value, add -m (hpcrun -m ... {ambiguous[1]}); for a list "
                                f"value write '{key}=[{value}]', for a string \"{key}='{value}'\"")
    unused = _NOT_PICKED.match(str(exc))
    if unused:
        group, where = unused["group"], unused["where"]
        users = " or ".join(_pickers(group, dirs))
        picked = f"only {users} does" if users else "none does"
        if where:
            return UserError(f"{where} overrides /{group}, but this task's config picks no {group} ({picked}): "
                             f"that experiment is for another task")
        return ConfigError(group, _given(group, overrides), problem="is a choice this task does not use",
                           hint=f"its config picks no {group} ({picked})")
    return UserError(_one_line(exc))


def load_saved(path: Path) -> Config:
    """Loads a run's saved config.yaml and checks it (hpcrun's sections against the schema, the task's against
    its settings, imported from the working directory)."""
    import yaml
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    try:
        saved = OmegaConf.load(path)
    except (OSError, OmegaConfBaseException, ValueError, yaml.YAMLError) as exc:
        raise UserError(f"{path}: not a readable hpcrun config ({_one_line(exc)})") from None
    try:
        return from_container(saved)
    except UserError as exc:
        raise UserError(f"{path}: not a readable hpcrun config ({exc})") from None
