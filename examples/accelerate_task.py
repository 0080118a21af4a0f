"""Your own training loop as an hpcrun task: a plain accelerate loop with hpcrun's saves, signals and requeue.

A task is any importable function ``task(cfg, ctx)``. Run this one from the repository root (the directory hpcrun
starts in is importable in the job, locally and on Slurm, as with ``python -m``):

    hpcrun +experiment=tiny_llama task._target_=examples.accelerate_task.train \
        task.settings=hpcrun.tasks.settings.CausalLMSettings run.name=accelerate_loop

It trains the configured Llama on the configured text (hpcrun's data helpers; swap in your own). What makes it
requeue-safe is four calls on ``ctx``: ``step_started``/``step_ended`` around each optimizer step, ``saving`` to
write a checkpoint atomically, ``stopped`` to hand back after the final save. Resume is exact: accelerate's
``save_state`` keeps the model, optimizer, scheduler and every RNG; the data position is the step count (a seeded
shuffle per epoch, then ``skip_first_batches``).

A task owns its settings. This one reuses the built-in task's model, data and train sections, so it declares them
with ``task.settings``: ``train.max_steps=...`` and ``model=NAME`` then work as for the built-in task. (Without it,
``task._target_`` on the command line picks ``task=custom``, which has none of those sections.)
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Union

log = logging.getLogger("hpcrun")


def train(cfg: Any, ctx: Any) -> Union[Path, Any]:
    import torch
    from accelerate import Accelerator
    from accelerate.utils import DataLoaderConfiguration, set_seed
    from torch.utils.data import DataLoader
    from transformers import get_scheduler

    from hpcrun.rundir import RunDir
    from hpcrun.tasks.models import build_model
    from hpcrun.tasks.text import tokenizer_for
    from hpcrun.tasks.tokens import TOKENS_DIR, corpus_blocks

    accelerator = Accelerator(
        cpu=not torch.cuda.is_available(),
        mixed_precision={"fp32": "no"}.get(cfg.train.precision, cfg.train.precision),
        # A sampler seeded with train.seed + epoch: the data order is a function of the step, so resuming at
        # step N sees the same batches as a run that never stopped.
        dataloader_config=DataLoaderConfiguration(use_seedable_sampler=True),
    )
    set_seed(cfg.train.seed)
    with accelerator.main_process_first():  # rank 0 writes the tokenizer and token caches, the others read them
        tokenizer = tokenizer_for(cfg, ctx.run_dir, ctx.is_main)
        train_set, _ = corpus_blocks(cfg, tokenizer, RunDir(ctx.run_dir).task_file(TOKENS_DIR), write=ctx.is_main)
    model = build_model(cfg, tokenizer)
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.train.lr, weight_decay=cfg.train.weight_decay)
    scheduler = get_scheduler(cfg.train.lr_scheduler, optimizer, num_warmup_steps=cfg.train.warmup_steps,
                              num_training_steps=cfg.train.max_steps)
    # Its own generator: starting an epoch's iterator then draws from it, not from the global RNG that the
    # checkpoint restores for dropout (else a resumed run's dropout would be one draw off).
    loader = DataLoader(train_set, batch_size=cfg.train.batch_size, shuffle=True,
                        generator=torch.Generator().manual_seed(cfg.train.seed))
    model, optimizer, loader, scheduler = accelerator.prepare(model, optimizer, loader, scheduler)

    step = 0
    if ctx.resume_from is not None:
        accelerator.load_state(str(ctx.resume_from.path))
        step = ctx.resume_from.step
        log.info("resuming from %s", ctx.resume_from.path)

    model.train()
    ctx.planned(cfg.train.max_steps)  # hpcrun status shows step N/max_steps
    while step < cfg.train.max_steps:
        epoch, skip = divmod(step, len(loader))
        loader.set_epoch(epoch)
        batches = accelerator.skip_first_batches(loader, skip) if skip else loader
        for batch in batches:
            ctx.step_started()
            loss = model(**batch).loss
            accelerator.backward(loss)
            if cfg.train.max_grad_norm > 0:
                accelerator.clip_grad_norm_(model.parameters(), cfg.train.max_grad_norm)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad()
            step += 1
            if step % cfg.train.log_every == 0 and ctx.is_main:
                log.info("step %d loss %.4f lr %.2e", step, loss.item(), scheduler.get_last_lr()[0])
                with (ctx.run_dir / "metrics.jsonl").open("a") as f:
                    f.write(f'{{"step": {step}, "loss": {loss.item()}}}\n')

            decision = ctx.step_ended(step)
            if decision.save:
                with ctx.saving(step) as folder:
                    accelerator.save_state(str(folder))
            if decision.stop:
                return ctx.stopped(step, decision)
            if step >= cfg.train.max_steps:
                break

    final = ctx.run_dir / "final"
    accelerator.wait_for_everyone()
    accelerator.unwrap_model(model).save_pretrained(str(final), is_main_process=ctx.is_main,
                                                    save_function=accelerator.save)
    if ctx.is_main:
        tokenizer.save_pretrained(final)
        log.info("final weights in %s", final)
    return final
