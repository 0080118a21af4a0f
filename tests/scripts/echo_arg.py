"""Writes its first argument into value.txt in the run directory hpcrun gives it (HPCRUN_RUN_DIR)."""

import os
import sys
from pathlib import Path

Path(os.environ.get("HPCRUN_RUN_DIR", "."), "value.txt").write_text(sys.argv[1])
