"""The probe job of ``hpcrun doctor``: run with the run's exact launch chain (sbatch, srun, the container, the ranks),
it shows whether the stop signal reaches python on every rank and whether the job can requeue itself.

Each rank installs the run's stop-signal handlers and writes ``ready-R`` into the probe folder; ``hpcrun doctor``
then sends the signal as Slurm's ``--signal`` would (``scancel --signal``), each rank writes ``signal-R`` (what came,
when), and rank 0 asks for the requeue the way a run does (:func:`hpcrun.job.requeue.requeue_job`, from here or
from the batch script on the host). No torch.
"""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path
from typing import List


class Probe:
    """The callable submitit runs on every rank of the probe job (picklable: it holds only plain values)."""

    def __init__(self, folder: str, signals: List[str], wait: float) -> None:
        self.folder, self.signals, self.wait = folder, list(signals), wait

    def __call__(self) -> str:
        from hpcrun.job.context import slurm_job_id
        from hpcrun.job.requeue import requeue_job

        folder = Path(self.folder)
        rank = int(os.environ.get("SLURM_PROCID", "0"))
        got: list = []
        for name in self.signals:
            signal.signal(signal.Signals[name], lambda s, f: got.append((signal.Signals(s).name, time.time())))
        if int(os.environ.get("SLURM_RESTART_COUNT", "0") or 0) > 0:
            (folder / f"back-{rank}").write_text(str(time.time()))
            return "back after the requeue"
        (folder / f"ready-{rank}").write_text(str(time.time()))
        deadline = time.time() + self.wait
        while not got and time.time() < deadline:
            time.sleep(0.05)
        if not got:
            return "no signal"
        (folder / f"signal-{rank}").write_text(json.dumps({"signal": got[0][0], "t": got[0][1]}))
        if rank == 0:  # (Slurm may kill this process as soon as the requeue is taken: say so first)
            (folder / "requeue").write_text("asking")
            continued = requeue_job(folder, slurm_job_id(os.environ) or "")
            (folder / "requeue").write_text("asked" if continued else "refused")
        return "signalled"
