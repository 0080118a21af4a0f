"""A task for tests: the built-in task, recording which samples each optimizer step trained on.

Copied by a test into the folder it runs hpcrun in, and run as ``task._target_=samples_probe.train
task.settings=hpcrun.tasks.settings.CausalLMSettings``. Every micro-batch a rank trains on appends one line to
``<run.dir>/samples.rank-R.jsonl``: the step it belongs to, the Slurm job and restart of the start, and a digest of
each of its rows of token ids (a sample is one block of tokens). Read back with :func:`samples_by_step`.

With ``HPCRUN_TEST_STOP_AT_STEP=K`` in its environment, a start that resumes from no checkpoint sends itself SIGINT
(a Ctrl-C) as step K begins: it then saves after step K and stops, whatever the speeds (a local run's interruption
at a known step).
"""

import hashlib
import json
import os
import signal
from pathlib import Path


def train(cfg, ctx):
    import transformers

    from hpcrun.tasks import causal_lm

    out = Path(ctx.run_dir) / f"samples.rank-{ctx.rank}.jsonl"
    start = f"{os.environ.get('SLURM_JOB_ID', 'local')}/{os.environ.get('SLURM_RESTART_COUNT', '0')}"
    original = transformers.Trainer.training_step
    stop_at = int(os.environ.get("HPCRUN_TEST_STOP_AT_STEP", 0)) if ctx.resume_from is None else 0
    sent = []

    def training_step(self, model, inputs, *args, **kwargs):
        if self.state.global_step + 1 == stop_at and not sent:  # once: a second Ctrl-C interrupts at once
            sent.append(True)
            os.kill(os.getpid(), signal.SIGINT)
        rows = [hashlib.sha1(row.cpu().numpy().tobytes()).hexdigest()[:16] for row in inputs["input_ids"]]
        with out.open("a") as f:
            f.write(json.dumps({"step": self.state.global_step + 1, "start": start, "rows": rows}) + "\n")
        return original(self, model, inputs, *args, **kwargs)

    transformers.Trainer.training_step = training_step
    return causal_lm.train(cfg, ctx)


def samples_by_step(run_dir):
    """{step: sorted digests of every sample it trained on, over all ranks}, each step from the last start that
    trained it (an interrupted start's steps after its save were trained again by the next)."""
    records = []
    for path in sorted(Path(run_dir).glob("samples.rank-*.jsonl")):
        records += [json.loads(line) for line in path.read_text().splitlines()]
    order = {}
    for r in records:  # each rank's file is in time order; a start's first line comes after its predecessor's
        order.setdefault(r["start"], len(order))
    last = {}
    for r in records:
        last[r["step"]] = max(last.get(r["step"], -1), order[r["start"]])
    steps = {}
    for r in records:
        if order[r["start"]] == last[r["step"]]:
            steps.setdefault(r["step"], []).extend(r["rows"])
    return {step: sorted(rows) for step, rows in sorted(steps.items())}
