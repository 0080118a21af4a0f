"""What the ranks of a job agree on: a barrier, a shared max of flags, and ending the process group.

No torch at import time: torch.distributed is used only when a process group is up (one process needs nothing).
"""

from __future__ import annotations

import random
import time
from pathlib import Path
from typing import List, Optional, Tuple

GIL_HANDOVER = 0.05  # seconds close_process_group leaves the interpreter's lock to gloo's threads
PORTS = (20000, 60000)  # submitit's range, where the node's ephemeral ports cannot be kept out


def ephemeral_ports(path: Path = Path("/proc/sys/net/ipv4/ip_local_port_range")) -> Optional[Tuple[int, int]]:
    """The range the kernel picks outgoing connections' local ports from (Linux), or None."""
    try:
        low, high = (int(x) for x in path.read_text().split())
        return low, high
    except (OSError, ValueError):
        return None


def master_port(job_id: str, restart: int, ephemeral: Optional[Tuple[int, int]] = None) -> int:
    """The rendezvous port of one start of a job, the same on every rank: derived from the job id and the restart
    count (a requeued start on the same node never meets the previous start's socket), and below the kernel's
    ephemeral range, where no outgoing connection of any process on the node can hold it (submitit's default,
    a port from 20000-60000 per job id, collides with them now and then: EADDRINUSE at init_process_group)."""
    low, high = PORTS
    if ephemeral is not None and ephemeral[0] - 1 - 10000 >= 1000:
        low, high = 10000, ephemeral[0] - 1
    return random.Random(f"{job_id}:{restart}").randint(low, high)


def _distributed() -> bool:
    try:
        import torch.distributed as dist
    except ImportError:
        return False
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def barrier() -> None:
    """Waits for every rank (no-op in a single process)."""
    if _distributed():
        import torch.distributed as dist

        dist.barrier()


def share_max(flags: List[int]) -> List[int]:
    """Element-wise max of integer flags over all ranks (identity in a single process)."""
    if not _distributed():
        return flags
    import torch
    import torch.distributed as dist

    t = torch.tensor(flags, dtype=torch.int32)
    if dist.get_backend() == "nccl":
        t = t.cuda()
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return [int(x) for x in t.cpu().tolist()]


def close_process_group() -> None:
    """Ends torch.distributed before the process exits: a process leaving with gloo's threads still running can
    abort at exit ("terminate called without an active exception"), and Slurm then marks a finished job FAILED.

    First it lets go of the interpreter's lock for a moment: gloo's worker threads drop a finished collective's
    tensors under that lock, and one still waiting for it when the group's destructor joins it (under the lock,
    when the process exits with a DistributedDataParallel model that still holds the group) hangs the process."""
    try:
        import torch.distributed as dist
    except ImportError:
        return
    if dist.is_available() and dist.is_initialized():
        if dist.get_world_size() > 1:
            time.sleep(GIL_HANDOVER)
        dist.destroy_process_group()
