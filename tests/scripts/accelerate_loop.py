"""An accelerate training loop of the usual shape (Accelerator, prepare, accelerator.save_state/load_state), using
hpcrun.script's calls, for ``accelerate launch --num_processes 2``. Records per rank which samples each step
trained on (``seen/rank-R.jsonl``), like ddp_loop.py.

    accelerate launch --cpu --num_processes 2 accelerate_loop.py OUT_DIR STEPS
"""

import gc
import json
import os
import sys
import time
from pathlib import Path

import torch
from accelerate import Accelerator

from hpcrun import script


def main() -> None:
    out, steps = Path(sys.argv[1]), int(sys.argv[2])
    accelerator = Accelerator(cpu=True)
    rank, world = accelerator.process_index, accelerator.num_processes
    torch.manual_seed(0)
    model = torch.nn.Linear(8, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    model, opt = accelerator.prepare(model, opt)
    script.planned(steps)
    start = 0
    ckpt = script.latest_checkpoint()
    if ckpt is not None:
        accelerator.load_state(str(ckpt))
        start = int((ckpt / "step.txt").read_text())
    (out / "seen").mkdir(parents=True, exist_ok=True)
    seen = (out / "seen" / f"rank-{rank}.jsonl").open("a")
    for step in range(start, steps):
        sample = step * world + rank
        g = torch.Generator().manual_seed(sample)
        x, y = torch.randn(4, 8, generator=g), torch.randn(4, 1, generator=g)
        loss = torch.nn.functional.mse_loss(model(x), y)
        opt.zero_grad()
        accelerator.backward(loss)
        opt.step()
        time.sleep(float(os.environ.get("STEP_SECONDS", "0.05")))
        seen.write(json.dumps({"step": step + 1, "sample": sample}) + "\n")
        seen.flush()
        decision = script.step_ended(step + 1)
        if decision.save:
            with script.saving(step + 1) as folder:
                time.sleep(float(os.environ.get("SAVE_SECONDS", "0")))  # a save as long as a large model's
                accelerator.save_state(str(folder))
                if accelerator.is_main_process:
                    (folder / "step.txt").write_text(str(step + 1))
        if decision.stop:
            (out / f"signal-rank-{rank}.txt").write_text(str(script.session().flags.signal))
            script.stop_and_requeue(step + 1)
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        torch.save(accelerator.unwrap_model(model).state_dict(), out / "final.pt")
    del model, opt  # DDP let go of before the process group ends (as in ddp_loop.py: gloo can abort at exit)
    accelerator.free_memory()
    gc.collect()
    accelerator.end_training()


if __name__ == "__main__":
    main()
