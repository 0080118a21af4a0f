"""Epochs of the built-in task cut to whole global batches, each at another place: every sample is trained, and a
run stopped in the middle of a later epoch resumes on exactly the samples of a straight run (local, CPU)."""

import json
import random
import re
import shutil
from collections import Counter
from pathlib import Path

import pytest

from tests.samples_probe import samples_by_step

pytestmark = pytest.mark.training

WORDS = "the quick brown fox jumps over a lazy dog while seven wizards quietly judge boxing matches near an old river".split()
EPOCHS = 3


def _corpus(path: Path) -> Path:
    rng = random.Random(1)
    with path.open("w") as f:
        for _ in range(12):  # about 22 blocks of 32 tokens: not a whole number of global batches of 4
            f.write(json.dumps({"text": " ".join(rng.choice(WORDS) for _ in range(rng.randint(20, 40)))}) + "\n")
    return path


def _args(run: str, steps: int):
    return ["+experiment=tiny_llama", "cluster=local", "data.corpus=corpus.jsonl", "data.vocab_size=300",
            "data.seq_len=32", "train.batch_size=2", "train.grad_accum=2", f"train.max_steps={steps}",
            "train.log_every=1", "task._target_=samples_probe.train",
            "task.settings=hpcrun.tasks.settings.CausalLMSettings", f"run.dir={run}"]


def _eval_loss(run: Path) -> str:
    return re.findall(r"eval loss (\S+)", (run / "logs" / "latest.log").read_text())[-1]


def test_each_epoch_is_cut_at_another_place_and_a_stop_in_a_later_epoch_resumes_on_the_same_samples(hpcrun,
                                                                                                   tmp_path):
    _corpus(tmp_path / "corpus.jsonl")
    shutil.copy(Path(__file__).parent.parent / "samples_probe.py", tmp_path)
    first = hpcrun(*_args("straight", 1))
    assert first.returncode == 0, first.stderr[-3000:]
    n, g, keep = map(int, re.search(r"training set: (\d+) samples, (\d+) a step: (\d+) an epoch",
                                    (tmp_path / "straight" / "logs" / "latest.log").read_text()).groups())
    assert (g, keep) == (4, n // 4 * 4) and keep < n  # a cut, or the test would prove nothing
    per_epoch = keep // g
    steps = EPOCHS * per_epoch
    shutil.rmtree(tmp_path / "straight")

    straight = hpcrun(*_args("straight", steps))
    assert straight.returncode == 0, straight.stderr[-3000:]
    by_step = samples_by_step(tmp_path / "straight")
    assert sorted(by_step) == list(range(1, steps + 1))
    epochs = [[d for s in range(e * per_epoch + 1, (e + 1) * per_epoch + 1) for d in by_step[s]]
              for e in range(EPOCHS)]
    for e, samples in enumerate(epochs):
        assert len(samples) == len(set(samples)) == keep, f"epoch {e} trained a sample twice"
    every = set(epochs[0]) | set(epochs[1])
    assert len(every) == n, "the samples epoch 0 left out were not the next epoch's first"
    counts = Counter(d for samples in epochs for d in samples)
    assert max(counts.values()) - min(counts.values()) <= 1, counts  # each sample trained equally often

    # Stopped (Ctrl-C) after a step in the middle of epoch 1, then the same command: the same samples, step by step
    stop_at = per_epoch + per_epoch // 2 + 1
    stopped = hpcrun(*_args("stopped", steps), env={"HPCRUN_TEST_STOP_AT_STEP": str(stop_at)})
    assert f"stopping after step {stop_at}" in stopped.stderr, stopped.stderr[-3000:]
    saved = json.loads((tmp_path / "stopped" / "checkpoints" / f"step-{stop_at}" / "hpcrun-shape.json").read_text())
    assert saved["epochs"] == "rotating"
    resumed = hpcrun(*_args("stopped", steps))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"resuming from {tmp_path / 'stopped' / 'checkpoints' / f'step-{stop_at}'}" in resumed.stderr
    assert samples_by_step(tmp_path / "stopped") == by_step
    assert _eval_loss(tmp_path / "stopped") == _eval_loss(tmp_path / "straight")


def test_a_run_saved_before_epochs_rotated_keeps_its_one_cut_when_it_resumes(hpcrun, tmp_path):
    _corpus(tmp_path / "corpus.jsonl")
    shutil.copy(Path(__file__).parent.parent / "samples_probe.py", tmp_path)
    steps, stop_at = 15, 7  # 5 steps an epoch: stopped in epoch 1. Rotating, epoch 2 would take every left-over
    stopped = hpcrun(*_args("old", steps), env={"HPCRUN_TEST_STOP_AT_STEP": str(stop_at)})
    assert f"stopping after step {stop_at}" in stopped.stderr, stopped.stderr[-3000:]
    shape_file = tmp_path / "old" / "checkpoints" / f"step-{stop_at}" / "hpcrun-shape.json"
    shape = json.loads(shape_file.read_text())
    del shape["epochs"]  # as hpcrun wrote it before 2026-11-30: one cut, the first `keep` samples, every epoch
    shape_file.write_text(json.dumps(shape))
    marker = shape_file.parent / "hpcrun-complete.json"  # the sizes it records: the file as it was written then
    complete = json.loads(marker.read_text())
    complete["files"]["hpcrun-shape.json"] = shape_file.stat().st_size
    marker.write_text(json.dumps(complete))
    resumed = hpcrun(*_args("old", steps))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"resuming from {shape_file.parent}" in resumed.stderr
    by_step = samples_by_step(tmp_path / "old")
    first_epoch = {d for s in range(1, 6) for d in by_step[s]}
    after = {d for s in range(stop_at + 1, steps + 1) for d in by_step[s]}
    assert after <= first_epoch, "the resumed start trained samples outside its run's one cut"
