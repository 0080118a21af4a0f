"""What the ranks of a job agree on: a barrier, a shared max of flags, and ending the process group.

No torch at import time: torch.distributed is used only when a process group is up (one process needs nothing).
"""

from __future__ import annotations

from typing import List


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
    abort at exit ("terminate called without an active exception"), and Slurm then marks a finished job FAILED."""
    try:
        import torch.distributed as dist
    except ImportError:
        return
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
