"""Config schema and composition (submitting side: no torch)."""

from hpcrun.config.compose import compose, load_saved, search_dirs
from hpcrun.config.schema import ClusterConfig, Config

__all__ = ["ClusterConfig", "Config", "compose", "load_saved", "search_dirs"]
