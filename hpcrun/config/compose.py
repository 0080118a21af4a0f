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

import difflib
import os
from dataclasses import fields, is_dataclass
from pathlib import Path
from typing import Any, Iterable, Optional, Sequence

from hpcrun.config.identity import run_id
from hpcrun.config.schema import GROUPS, Config, register
from hpcrun.errors import ConfigError, UserError
from hpcrun.resources import conf_dir

PRIMARY = "hpcrun"


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


def schema_keys(cls: type = Config, prefix: str = "") -> dict[str, type]:
    """Every dotted key of the schema, mapped to its dataclass field type (for checking overrides)."""
    keys: dict[str, type] = {}
    for f in fields(cls):
        key = f"{prefix}{f.name}"
        sub = f.default_factory if f.default_factory is not None and is_dataclass(f.default_factory) else None  # type: ignore[misc]
        if sub is not None:
            keys[key] = dict
            keys.update(schema_keys(sub, key + "."))
        else:
            keys[key] = f.type  # type: ignore[assignment]
    return keys


def _check_override(text: str, dirs: list[Path]) -> None:
    """Rejects an unknown key or group choice with a one-line error before Hydra sees it."""
    if "=" not in text:
        raise ConfigError(text, "", "KEY=VALUE (e.g. train.max_steps=100) or GROUP=CHOICE (e.g. cluster=slurm)")
    key, value = text.split("=", 1)
    bare = key.lstrip("+~")
    if bare.startswith("hydra.") or bare.startswith("hydra/"):
        raise ConfigError(bare, value, "an hpcrun key; hydra.* settings are hpcrun's own")
    if bare in GROUPS:
        choices = available(bare, dirs)
        for v in value.split(","):
            if v and v not in choices:
                raise ConfigError(bare, v, choices=choices)
        if bare == "experiment" and not key.startswith("+"):
            raise ConfigError(key, value, f"+experiment={value} (experiments are added with a leading +)")
        return
    keys = schema_keys()
    if bare in keys or bare.startswith("cluster.sbatch_extra."):  # sbatch_extra is a free-form dict
        return
    parent, _, leaf = bare.rpartition(".")
    if parent and parent in keys:  # a known section: compare the last name with its siblings
        siblings = sorted(k.rpartition(".")[2] for k in keys if k.rpartition(".")[0] == parent)
    else:  # an unknown section: compare the whole key with every key of the same depth
        siblings = sorted(k for k in keys if k.count(".") == bare.count("."))
        leaf, parent = bare, ""
    close = difflib.get_close_matches(leaf, siblings, n=3, cutoff=0.6)
    prefix = f"{parent}." if parent else ""
    hint = f"did you mean {' or '.join(prefix + c for c in close)}?" if close else None
    raise ConfigError(bare, value, problem="is an unknown key", hint=hint or "hpcrun --help lists the keys",
                      choices=siblings if parent and not close else None)


def _one_line(exc: BaseException) -> str:
    """Hydra and OmegaConf errors span several lines; keep the first sentence and the key."""
    from hydra.errors import OverrideParseException

    if isinstance(exc, OverrideParseException):
        return (f"cannot parse the override {exc.override!r}: quote a value that has spaces or special "
                "characters, e.g. 'run.name=\"my run\"'")
    cause = exc.__cause__ or exc.__context__
    if cause is not None and getattr(cause, "full_key", None):
        exc = cause  # Hydra's "Error merging override" hides OmegaConf's precise reason
    text = str(exc).strip()
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    first = lines[0] if lines else type(exc).__name__
    key = getattr(exc, "full_key", None)
    if key and key not in first:
        first += f" (key: {key})"
    return first


def compose(
    overrides: Sequence[str] = (),
    config_dirs: Sequence[str | os.PathLike] = (),
    cwd: Optional[Path] = None,
) -> Config:
    """Composes and checks a run's config.

    Args:
        overrides: Hydra overrides as typed by the user (``+experiment=tiny_llama``, ``train.max_steps=10``).
        config_dirs: extra config folders searched before ``./conf`` and the packaged one.
        cwd: the folder relative paths (``./conf``, ``run.dir``) are taken from; the working directory by default.

    Returns:
        The composed config, checked, as dataclass instances (``run.dir`` made absolute).

    Raises:
        ConfigError: an unknown key or choice, or a bad value; the message is one line naming both.
    """
    from hydra._internal.config_loader_impl import ConfigLoaderImpl
    from hydra._internal.config_search_path_impl import ConfigSearchPathImpl
    from hydra.core.plugins import Plugins
    from hydra.errors import HydraException
    from hydra.types import RunMode
    from omegaconf import OmegaConf, open_dict
    from omegaconf.errors import OmegaConfBaseException

    register()
    cwd = cwd or Path.cwd()
    dirs = search_dirs(config_dirs, cwd)
    for text in overrides:
        _check_override(text, dirs)
    # cluster.sbatch_extra is a free-form dict: its keys may or may not exist yet, so add-or-override them.
    overrides = [f"++{o}" if o.startswith("cluster.sbatch_extra.") else o for o in overrides]

    Plugins.instance()  # registers Hydra's config sources (pkg://, file://, structured://)
    search_path = ConfigSearchPathImpl()
    search_path.append("hydra", "pkg://hydra.conf")
    for d in dirs:
        search_path.append("hpcrun", f"file://{d}")
    search_path.append("schema", "structured://")
    loader = ConfigLoaderImpl(config_search_path=search_path)
    try:
        cfg = loader.load_configuration(config_name=PRIMARY, overrides=list(overrides), run_mode=RunMode.RUN)
        with open_dict(cfg):
            del cfg["hydra"]
        if not any(o.split("=", 1)[0].lstrip("+~") == "run.id" for o in overrides):
            cfg.run.id = run_id(overrides)
        OmegaConf.resolve(cfg)
    except (HydraException, OmegaConfBaseException) as exc:
        raise UserError(_one_line(exc)) from None
    run_dir = Path(os.path.expanduser(str(cfg.run.dir)))
    cfg.run.dir = str(run_dir if run_dir.is_absolute() else (cwd / run_dir).resolve())
    typed = check(cfg)
    typed.task.check_importable(cwd)
    return typed


def to_object(cfg: Any) -> Config:
    """The typed view of a composed config (dataclass instances)."""
    from omegaconf import OmegaConf

    return OmegaConf.to_object(cfg)  # type: ignore[return-value]


def check(cfg: Any) -> Config:
    """Checks a composed config's values; raises ConfigError naming the first bad key."""
    typed = to_object(cfg)
    typed.check()
    return typed


def load_saved(path: Path) -> Config:
    """Loads a run's saved config.yaml and checks it against the schema."""
    import yaml
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    register()
    try:
        saved = OmegaConf.load(path)
        cfg = OmegaConf.merge(OmegaConf.structured(Config), saved)
    except (OSError, OmegaConfBaseException, ValueError, yaml.YAMLError) as exc:
        raise UserError(f"{path}: not a readable hpcrun config ({_one_line(exc)})") from None
    return check(cfg)
