"""Saves that do not stop training: how long a ~100M-parameter model's save blocks training, written in the
background (checkpoint.async_save=true) against written before training goes on (false), side by side in one
process; and torch.distributed.checkpoint's async_save on the same state, for the choice between the two.

    python benchmarks/async_save.py [--saves 4] [--dir DIR]     # ~3 min on 2 cores; results/async_save.json

The same run three times (a Llama of ~95M parameters built from a config, AdamW, the transformers Trainer with hpcrun's
atomic checkpoints, a save every few steps), once per mode and once without saves, each save recorded in a ledger as hpcrun's job records
it: `seconds` is how long training was blocked, `written` (background) how long until the checkpoint was complete.
Then the model's and optimizer's state dicts saved with torch.distributed.checkpoint.async_save (gloo, one
process): blocked until it returns, complete when its future is. --dir: where the checkpoints go (default: the
temporary folder; it must be on a disk, not tmpfs, for the write to cost what it costs).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))


def build_model():
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(hidden_size=768, intermediate_size=2048, num_hidden_layers=10, num_attention_heads=12,
                         num_key_value_heads=12, vocab_size=16000, max_position_embeddings=256)
    return LlamaForCausalLM(config)


def run_trainer(work: Path, background: bool, saves: int, every: int, save: bool = True) -> dict:
    import torch
    from datasets import Dataset
    from transformers import TrainerCallback, TrainingArguments

    from hpcrun.frameworks.transformers import TimeTriggerCallback, hpcrun_trainer
    from hpcrun.job.background import BackgroundSaves
    from hpcrun.job.steps import take_background
    from hpcrun.job.triggers import TimeTriggers
    from hpcrun.rundir.checkpoints import CheckpointDir
    from hpcrun.rundir.ledger import Ledger, read_ledger

    run = work / ("background" if background else "synchronous" if save else "none")
    shutil.rmtree(run, ignore_errors=True)
    (run / "checkpoints").mkdir(parents=True)
    model = build_model()
    ids = torch.randint(0, 16000, (64, 32)).tolist()
    data = Dataset.from_dict({"input_ids": ids, "labels": ids})
    triggers = TimeTriggers()
    triggers.writer = BackgroundSaves() if background else None
    ledger = Ledger(run, 1)
    callback = TimeTriggerCallback(triggers=triggers, ledger=ledger)
    step_times: list = []

    class EveryN(TrainerCallback):
        def on_step_begin(self, args, state, control, **kwargs):
            self.t = time.perf_counter()

        def on_step_end(self, args, state, control, **kwargs):
            step_times.append((state.global_step, time.perf_counter() - self.t, triggers.writer is not None
                               and triggers.writer.busy))
            if save and state.global_step % every == 0:
                control.should_save = True

    args = TrainingArguments(output_dir=str(run / "trainer"), max_steps=saves * every + 2,
                             per_device_train_batch_size=1, save_strategy="no", report_to="none", use_cpu=True,
                             logging_steps=1000, disable_tqdm=True, seed=0)
    trainer = hpcrun_trainer(__import__("transformers").Trainer)(
        model=model, args=args, train_dataset=data, callbacks=[EveryN(), callback],
        checkpoints=CheckpointDir(run / "checkpoints", keep_last=2), triggers=callback)
    began = time.perf_counter()
    trainer.train()
    take_background(triggers, ledger)
    wall = time.perf_counter() - began
    events = [e for e in read_ledger(run) if e["event"] == "save"]
    if not save:
        return {"train_s": round(wall, 2)}
    size = sum(f.stat().st_size for f in next((run / "checkpoints").glob("step-*")).rglob("*") if f.is_file())
    busy = [t for _, t, b in step_times[1:] if b]
    idle = [t for _, t, b in step_times[1:] if not b]
    return {"saves": len(events), "checkpoint_mb": round(size / 2**20), "train_s": round(wall, 2),
            "blocked_s": [round(e["seconds"], 2) for e in events],
            "complete_s": [round(e.get("written", e["seconds"]), 2) for e in events],
            "step_s_while_writing": round(statistics.median(busy), 3) if busy else None,
            "step_s_otherwise": round(statistics.median(idle), 3) if idle else None}


def dcp_async(work: Path) -> dict:
    import torch
    import torch.distributed as dist
    import torch.distributed.checkpoint as dcp

    model = build_model()
    optimizer = torch.optim.AdamW(model.parameters())
    loss = model(input_ids=torch.randint(0, 16000, (1, 32)), labels=torch.randint(0, 16000, (1, 32))).loss
    loss.backward()
    optimizer.step()
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    os.environ.setdefault("MASTER_PORT", "29533")
    dist.init_process_group("gloo", rank=0, world_size=1)
    out = []
    try:
        for i in range(3):
            folder = work / f"dcp-{i}"
            state = {"model": model.state_dict(), "optimizer": optimizer.state_dict()}
            began = time.perf_counter()
            future = dcp.async_save(state, checkpoint_id=str(folder))
            blocked = time.perf_counter() - began
            future.result()
            out.append((blocked, time.perf_counter() - began))
            shutil.rmtree(folder, ignore_errors=True)
    finally:
        dist.destroy_process_group()
    return {"blocked_s": [round(b, 2) for b, _ in out], "complete_s": [round(c, 2) for _, c in out]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--saves", type=int, default=4)
    parser.add_argument("--every", type=int, default=4, help="steps between saves")
    parser.add_argument("--dir", default=None)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="hpcrun-async-bench-", dir=args.dir))
    import logging

    logging.basicConfig(level=logging.WARNING)
    params = sum(p.numel() for p in build_model().parameters())
    none = run_trainer(work, False, args.saves, args.every, save=False)
    sync = run_trainer(work, False, args.saves, args.every)
    background = run_trainer(work, True, args.saves, args.every)
    dcp = dcp_async(work)
    # The first save of each run includes one-time work (folders, the first pickling of the optimizer's layout):
    # medians over all of them.
    sync_s = statistics.median(sync["complete_s"])
    result = {
        "command": f"python benchmarks/async_save.py --saves {args.saves} --every {args.every}",
        "date": time.strftime("%Y-%m-%d %H:%M"), "machine": f"{os.cpu_count()} cores", "parameters": params,
        "no_saves": none, "synchronous": sync, "background": background, "dcp_async_save": dcp,
        # What each save cost the run in all: its training time over the same steps without saves, per save (the
        # background write shares the CPU with training, so steps are slower while it runs).
        "lost_per_save_s": {"synchronous": round((sync["train_s"] - none["train_s"]) / sync["saves"], 2),
                            "background": round((background["train_s"] - none["train_s"]) / background["saves"], 2)},
        "background_blocked_over_synchronous": round(statistics.median(background["blocked_s"]) / sync_s, 3),
        "dcp_blocked_over_synchronous": round(statistics.median(dcp["blocked_s"]) / sync_s, 3),
    }
    (HERE / "results").mkdir(exist_ok=True)
    (HERE / "results" / "async_save.json").write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result, indent=1))
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
