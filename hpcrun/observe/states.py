"""What a run's state is shown as (``hpcrun status``'s STATE and why; ``hpcrun report``'s label): its own
state.json read together with Slurm's word on its jobs. One home for the decision, so that status and report
never disagree. Submitting side: no torch.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, Optional, Sequence, Tuple

from hpcrun.rundir.lock import holder_gone
from hpcrun.rundir.state import FINISHED, read_state
from hpcrun.slurm.jobs import SLURM_ACTIVE


# Why a job may have ended as sacct says, when its run recorded no end of its own (a guess: the run cannot tell).
SLURM_ENDS = {
    "CANCELLED": "killed before it could save (scancel --signal=KILL, or its save outlasted KillWait)?",
    "FAILED": "killed (kill -9, the out-of-memory killer)?",
    "OUT_OF_MEMORY": "out of memory",
    "TIMEOUT": "its time limit came before it could save",
    "NODE_FAIL": "its node failed",
    "BOOT_FAIL": "its node did not boot",
    "PREEMPTED": "preempted, and not requeued",
    "DEADLINE": "its --deadline passed",
}


def _unrecorded_end(status: Optional[str], slurm: str) -> str:
    """The why of a run whose job ended (``slurm``: sacct's state) while the run recorded ``status``, which does
    not explain it; what Slurm says, never the run's reason from an earlier start."""
    if status in (None, "submitted"):  # no start of it ran hpcrun
        if slurm == "CANCELLED":
            return "cancelled in the queue before it started (CANCELLED in sacct)"
        return f"the job ended {slurm} (sacct) before hpcrun started in it: its Slurm log says why"
    if status == "requeued":  # its start saved and asked for a requeue; the new start never came
        if slurm == "CANCELLED":
            return ("cancelled in the queue while it waited to restart (CANCELLED in sacct); `hpcrun resume RUN` "
                    "continues it from its newest checkpoint")
        return (f"the job ended {slurm} (sacct) while it waited to restart; `hpcrun resume RUN` continues it from "
                "its newest checkpoint")
    hint = SLURM_ENDS.get(slurm, "its Slurm log may say")
    return (f"the job ended {slurm} (sacct) without hpcrun recording why: {hint}; `hpcrun resume RUN` continues it "
            "from its newest checkpoint")


def shown_state(run_dir: Path, state: Dict[str, Any], slurm_states: Dict[str, str]) -> Tuple[str, str, bool]:
    """What status shows for a run (``state``: its state.json) given Slurm's states of its jobs: (STATE, why,
    ended). ``hpcrun report`` labels its runs with it too."""
    job = state.get("job_id")
    slurm = slurm_states.get(str(job)) if job else None
    status = state.get("status")
    allocation = _allocation(state)
    allocation_state = slurm_states.get(allocation) if allocation else None
    reason = state.get("reason", "")
    ended = status in FINISHED or bool(slurm and slurm not in SLURM_ACTIVE)
    if status in FINISHED:
        shown = status.upper()
        if status == "stopped" and (slurm == "CANCELLED" or state.get("cancelled")):
            shown = "CANCELLED"
    elif status == "requeued" and slurm == "COMPLETED":
        # it saved and asked for a requeue that never came (`scontrol requeue` refused on the host, say)
        shown = "STOPPED"
        reason = (f"{state.get('reason', '')}; but job {job} ended {slurm} without being requeued: the same "
                  "hpcrun command (or hpcrun resume) continues it")
    elif slurm and slurm not in SLURM_ACTIVE:
        # the job ended without telling its run (killed, node failure, cancelled while pending): Slurm's word, not
        # the reason the run kept from an earlier start (a preemption's "signal SIGTERM")
        shown = slurm
        reason = _unrecorded_end(status, slurm)
    elif allocation_state and allocation_state not in SLURM_ACTIVE:
        ended = True  # a local run inside an allocation that ended without the run recording why
        shown = "FAILED"
        reason = (f"the Slurm allocation it ran in (job {allocation}) ended ({allocation_state}) without the run "
                  "recording why (killed at the allocation's end, out of memory, a node failure); the same command "
                  "resumes it from its newest checkpoint")
    elif status == "running" and slurm is None and (gone := holder_gone(run_dir)) is not None:
        ended = True
        # A start on this host ended without a word (kill -9, out of memory), and no Slurm job
        # will start it again: a local run, or one whose job Slurm does not know. Its lock's holder is gone.
        shown = "FAILED"
        reason = (f"its process (pid {gone['pid']} on {gone['host']}) ended without recording why (killed: "
                  "kill -9, out of memory); `hpcrun resume RUN` continues it from its newest "
                  "checkpoint")
    elif status == "requeued" and slurm in (None, "PENDING", "REQUEUED"):
        shown = "REQUEUED"
    else:
        shown = slurm or (status or "NEW").upper()
    return shown, reason, ended


def slurm_states_of(run_dirs: Sequence[Path]) -> Dict[str, str]:
    """Slurm's state of the runs' jobs (and of the allocations local runs run in), from one sacct call."""
    from hpcrun.slurm.jobs import job_states

    jobs = [s.get("job_id") or _allocation(s) for s in (read_state(d) for d in run_dirs)]
    return job_states([j for j in jobs if j]) if any(jobs) else {}


def _allocation(state: Dict[str, Any]) -> Optional[str]:
    """The Slurm allocation a running local run runs inside (srun --pty bash, a batch script of the user's own)."""
    starts = state.get("starts") or []
    if state.get("status") != "running" or state.get("job_id") or not starts:
        return None
    return starts[-1].get("allocation")
