"""``<run.dir>/metrics.jsonl``: one JSON record per logged step, for a task that writes one (the built-in task does,
one per log: step, time, loss, learning rate, eval loss). Optional: every task has the ledger; these records only
refine where a run is and when each step ended (``hpcrun status``, ``hpcrun report``)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import List, Optional, Tuple

from hpcrun.rundir.layout import RunDir


def logged_steps(run_dir: Path, tail_bytes: Optional[int] = None, loss_only: bool = False) -> List[Tuple[float, int]]:
    """(time, step) of each record, oldest first (``tail_bytes``: only the file's end; ``loss_only``: training-loss
    records only, not evaluations). A torn or foreign line is skipped."""
    path = RunDir(run_dir).metrics
    try:
        with path.open("rb") as f:
            if tail_bytes:
                f.seek(max(0, path.stat().st_size - tail_bytes))
            lines = f.read().decode(errors="replace").splitlines()
    except OSError:
        return []
    out = []
    for line in lines:
        try:
            r = json.loads(line)
            if not loss_only or "loss" in r:
                out.append((float(r.get("time", 0)), int(r["step"])))
        except (ValueError, KeyError, TypeError, AttributeError):
            continue
    return out
