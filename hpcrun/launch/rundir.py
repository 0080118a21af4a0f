"""The run directory, written on the submitting side before anything runs."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

CONFIG_FILE = "config.yaml"


def atomic_write_text(path: Path, text: str) -> None:
    """Writes a file so that readers see the old content or the new, never half of it."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def config_yaml(cfg: Any) -> str:
    """The YAML of a typed config (what ``config.yaml`` holds)."""
    from omegaconf import OmegaConf

    return OmegaConf.to_yaml(OmegaConf.structured(cfg), resolve=True)


def prepare_run_dir(cfg: Any) -> Path:
    """Creates the run directory and saves the composed config in it.

    The job reads ``config.yaml`` at every start: nothing about the run is baked into the submission, so a
    requeued job finds the same config (and, from the checkpoint issue on, its newest checkpoint) on disk.
    The folder is private to the user (0700): saved configs and logs may hold paths and tokens.
    """
    run_dir = Path(cfg.run.dir)
    run_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    atomic_write_text(run_dir / CONFIG_FILE, config_yaml(cfg))
    return run_dir
