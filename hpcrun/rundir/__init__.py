"""The run directory on disk, owned here: paths, config, state, ledger, checkpoints, the run index, atomic writes.

Both sides (login node and compute node) use it; no other module spells a file name of a run directory. Standard
library only at import time (no torch).
"""

from hpcrun.rundir.layout import RunDir

__all__ = ["RunDir"]
