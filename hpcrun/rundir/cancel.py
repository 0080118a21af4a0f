"""A cancel of a local run: ``hpcrun cancel`` writes who asked, then sends the run's process SIGTERM.

A Slurm job is cancelled with ``scancel`` (Slurm records it, the job reads it back). A local run has no scheduler to
ask: ``hpcrun cancel`` writes ``cancel-request.json`` for the process that holds the run (its pid and start ticks,
so a request for a process that is gone never applies to a later one), then sends it SIGTERM, which it treats as
any stop signal: it saves at the next step boundary and stops. Reading the request, the start records the stop as
a cancel (CANCELLED, exit 143) instead of a stop to be continued at once (exit 75, which a batch script of the
user's own may requeue).
"""

from __future__ import annotations

import os
import socket
import time
from pathlib import Path
from typing import Any, Dict, Optional

from hpcrun.rundir.atomic import atomic_write_json, read_json
from hpcrun.rundir.layout import RunDir
from hpcrun.rundir.lock import start_ticks


def request_cancel(run_dir: Path, holder: Dict[str, Any], by: str) -> None:
    """Records that ``by`` cancels the start whose process is ``holder`` (the run lock's record)."""
    atomic_write_json(RunDir(run_dir).cancel_request, {
        "pid": holder["pid"], "start_ticks": holder["start_ticks"], "by": by, "host": socket.gethostname(),
        "at": time.time()}, durable=False)


def cancel_request_of(run_dir: Path, process: Dict[str, Any]) -> Optional[str]:
    """Who cancelled the start whose process is ``process`` (pid and start ticks): "root on login1 at 14:02:11";
    None when nobody did."""
    request = read_json(RunDir(run_dir).cancel_request, {})
    if not isinstance(request, dict) or request.get("pid") != process.get("pid") \
            or request.get("start_ticks") != process.get("start_ticks"):
        return None
    at = request.get("at")
    when = time.strftime(" at %H:%M:%S", time.localtime(at)) if isinstance(at, (int, float)) else ""
    return f"by {request.get('by', '?')} on {request.get('host', '?')}{when}"


def cancel_request(run_dir: Path) -> Optional[str]:
    """Who cancelled this process's start, or None when nobody did."""
    return cancel_request_of(run_dir, {"pid": os.getpid(), "start_ticks": start_ticks()})
