"""Where the packaged files are: conf/, slurm_templates/ and the built-in corpus.

In a source checkout (or an editable install) conf/ and slurm_templates/ sit at the repository root; a wheel
carries them inside the package (pyproject's force-include). Both layouts are looked up here, and only here.
"""

from __future__ import annotations

import os
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent


def _packaged(name: str) -> Path:
    inside = PACKAGE_DIR / name  # installed wheel
    if inside.is_dir():
        return inside
    beside = PACKAGE_DIR.parent / name  # source checkout
    if beside.is_dir():
        return beside
    raise FileNotFoundError(f"hpcrun's {name}/ folder is missing from {PACKAGE_DIR}: reinstall hpcrun-slurm")


def inject_dir() -> Path:
    """The folder put first on a command's PYTHONPATH (``hpcrun run``): it holds hpcrun's ``sitecustomize``."""
    return Path(__file__).resolve().parent / "frameworks" / "inject"


def conf_dir() -> Path:
    """The packaged config folder (groups cluster/, experiment/, model/, data/)."""
    return _packaged("conf")


def templates_dir() -> Path:
    """The packaged sbatch templates folder."""
    return _packaged("slurm_templates")


def corpus_path(name: str) -> Path:
    """A built-in text corpus shipped in hpcrun/data/ (e.g. ``shakespeare``)."""
    return PACKAGE_DIR / "data" / f"{name}.txt.gz"


def builtin_corpora() -> list[str]:
    """Names of the corpora shipped with hpcrun."""
    return sorted(p.name[: -len(".txt.gz")] for p in (PACKAGE_DIR / "data").glob("*.txt.gz"))


def cache_dir() -> Path:
    """hpcrun's cache (``$HPCRUN_CACHE_DIR``, else ``$XDG_CACHE_HOME/hpcrun``, else ``~/.cache/hpcrun``): the
    cluster's MaxArraySize, trained tokenizers. Anything in it can be deleted; it is made again."""
    base = os.environ.get("HPCRUN_CACHE_DIR") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "hpcrun")
    return Path(base)
