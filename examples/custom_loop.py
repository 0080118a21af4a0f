"""The same time-based triggers in a hand-written torch training loop (the accelerate version is the same loop
with `accelerator.backward` and `accelerator.save_state`).

    python examples/custom_loop.py --save-every 10m --out ./out

A save every --save-every of wall clock; on SIGUSR2/SIGTERM (or Ctrl-C) a save at the next step boundary, then
a clean exit; under Slurm, a save early enough to finish before the job's end time.
"""

import argparse
import os
import time
from pathlib import Path

import torch
from safetensors.torch import save_file

from hpcrun.durations import parse_duration
from hpcrun.job.deadline import slurm_end_time
from hpcrun.job.signals import StopFlags
from hpcrun.job.triggers import TimeTriggers


def save(model: torch.nn.Module, out: Path, step: int) -> None:
    tmp = out / f".step-{step}.tmp"
    tmp.mkdir(parents=True, exist_ok=True)
    save_file(model.state_dict(), str(tmp / "model.safetensors"))
    os.replace(tmp, out / f"step-{step}")  # complete or absent, never half-written


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--save-every", default="10m")
    p.add_argument("--max-steps", type=int, default=200)
    p.add_argument("--step-seconds", type=float, default=0.0, help="pretend each step takes this long")
    p.add_argument("--out", default="out")
    a = p.parse_args()
    out = Path(a.out)

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(32, 64), torch.nn.ReLU(), torch.nn.Linear(64, 1))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    flags = StopFlags().install(["SIGUSR2", "SIGTERM", "SIGINT"])
    end_time, _ = slurm_end_time(os.environ)  # None outside Slurm: no deadline
    triggers = TimeTriggers(save_every=parse_duration(a.save_every), end_time=end_time, margin=60)

    for step in range(1, a.max_steps + 1):
        triggers.step_started()
        x = torch.randn(16, 32)
        loss = (model(x) - x.sum(dim=1, keepdim=True)).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        time.sleep(a.step_seconds)
        decision = triggers.step_ended()
        stop = decision.stop or flags.pending() is not None
        if decision.save or stop:
            t0 = time.monotonic()
            save(model, out, step)
            triggers.saved(time.monotonic() - t0)
            print(f"saved step {step} ({decision.reason or flags.signal})", flush=True)
        if stop:
            print(f"stopped at step {step}", flush=True)
            return
    save(model, out, a.max_steps)
    print(f"finished {a.max_steps} steps", flush=True)


if __name__ == "__main__":
    main()
