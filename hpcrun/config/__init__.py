"""Config schema and composition (submitting side: no torch)."""

from hpcrun.config.compose import compose, from_container, load_saved, search_dirs, to_container
from hpcrun.config.schema import ClusterConfig, Config

__all__ = ["ClusterConfig", "Config", "compose", "from_container", "load_saved", "search_dirs", "to_container"]
