"""Helpers for tests that train: the common tiny config, waiting on progress, comparing weights."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Callable, List

# Dropout on and a shuffled sampler: resume is exact only if RNG states and the data position are restored.
TINY = ["+experiment=tiny_llama", "train.max_steps=30", "train.log_every=1", "model.attention_dropout=0.1",
        "checkpoint.save_every=0"]


def logged_steps(run_dir: Path) -> List[int]:
    """The steps whose training loss was logged, across every start of the run (log_every=1: every step)."""
    path = Path(run_dir) / "metrics.jsonl"
    if not path.exists():
        return []
    records = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [r["step"] for r in records if "loss" in r]


def wait_until(condition: Callable[[], bool], timeout: float = 300, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.3)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def wait_for_step(run_dir: Path, step: int, timeout: float = 300) -> None:
    wait_until(lambda: max(logged_steps(run_dir), default=0) >= step, timeout, f"step {step} in {run_dir}")


def state(run_dir: Path) -> dict:
    return json.loads((Path(run_dir) / "state.json").read_text())


def assert_same_weights(a: Path, b: Path) -> None:
    """Bitwise equality of two save_pretrained folders' safetensors (the model's, or a LoRA adapter's)."""
    from safetensors.torch import load_file

    names = sorted(p.name for p in Path(a).glob("*.safetensors"))
    assert names and names == sorted(p.name for p in Path(b).glob("*.safetensors")), (a, b)
    for name in names:
        wa, wb = load_file(str(Path(a) / name)), load_file(str(Path(b) / name))
        assert wa.keys() == wb.keys()
        different = [k for k in wa if not (wa[k] == wb[k]).all()]
        assert different == [], f"{name}: {len(different)} of {len(wa)} tensors differ, e.g. {different[:3]}"
