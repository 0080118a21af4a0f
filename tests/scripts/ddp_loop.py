"""A plain torch.distributed loop that uses hpcrun.script's four calls (the documented API for loops of one's own),
started by torchrun (or srun). Every step records, per rank, which samples it trained on (``seen/rank-R.jsonl``,
append-only across restarts) so a test can check that each was trained on exactly once in the final history.

    python ddp_loop.py OUT_DIR STEPS
"""

import gc
import json
import os
import sys
import time
from pathlib import Path

import torch
import torch.distributed as dist

from hpcrun import script


def main() -> None:
    out, steps = Path(sys.argv[1]), int(sys.argv[2])
    delay = float(os.environ.get("STEP_SECONDS", "0.05"))
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    torch.manual_seed(0)
    model = torch.nn.parallel.DistributedDataParallel(torch.nn.Linear(8, 1))
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    start = 0
    script.planned(steps)
    ckpt = script.latest_checkpoint()
    if ckpt is not None:
        state = torch.load(ckpt / "state.pt")
        model.module.load_state_dict(state["model"])
        opt.load_state_dict(state["opt"])
        start = state["step"]
    (out / "seen").mkdir(parents=True, exist_ok=True)
    seen = (out / "seen" / f"rank-{rank}.jsonl").open("a")
    for step in range(start, steps):
        sample = step * world + rank  # this rank's sample of this step
        g = torch.Generator().manual_seed(sample)
        x, y = torch.randn(4, 8, generator=g), torch.randn(4, 1, generator=g)
        loss = torch.nn.functional.mse_loss(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        time.sleep(delay)
        seen.write(json.dumps({"step": step + 1, "sample": sample, "start": os.environ.get("HPCRUN_START")}) + "\n")
        seen.flush()
        decision = script.step_ended(step + 1)
        if decision.save:
            with script.saving(step + 1) as folder:
                if rank == 0:
                    torch.save({"model": model.module.state_dict(), "opt": opt.state_dict(), "step": step + 1},
                               folder / "state.pt")
        if decision.stop:
            (out / f"signal-rank-{rank}.txt").write_text(str(script.session().flags.signal))
            script.stop_and_requeue(step + 1)
    if rank == 0:
        torch.save(model.module.state_dict(), out / "final.pt")
    # DDP let go of before the process group: with torch 2.13's gloo, a DDP model still alive at
    # destroy_process_group (or at exit) makes a process abort now and then as it exits ("terminate called without
    # an active exception", SIGABRT after the last step: 2 of 20 two-process runs, 10 of 30 without the destroy,
    # 0 of 40 like this; plain torchrun, no hpcrun). See docs/own-script.md.
    del model, opt
    gc.collect()
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
