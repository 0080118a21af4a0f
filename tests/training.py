"""Helpers for tests that train: the common tiny config, waiting on progress, comparing weights."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Callable, List

# Dropout on and a shuffled sampler: resume is exact only if RNG states and the data position are restored.
# Batch 8: a step takes about 0.25 s on 2 cores, so a signal sent after step 8 still finds about 5 s of training left.
TINY = ["+experiment=tiny_llama", "train.max_steps=30", "train.batch_size=8", "train.log_every=1",
        "model.attention_dropout=0.1", "checkpoint.save_every=0"]


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


class Terminal:
    """``hpcrun ARGS`` in a terminal of its own (a pseudo-terminal, the session it leads, as a login shell's job), its
    output read as it comes; :meth:`close` closes the terminal, as a dropped ssh connection does."""

    def __init__(self, args: List[str], cwd: Path, prefix: List[str] = ()) -> None:
        import os
        import pty
        import signal
        import sys

        argv = [*prefix, sys.executable, "-m", "hpcrun", *args]
        pid, fd = pty.fork()
        if pid == 0:  # the child: exec at once (nothing else is safe after a fork in a threaded process)
            try:
                signal.signal(signal.SIGHUP, signal.SIG_DFL)  # a terminal's job, even if the tests run under nohup
                os.chdir(cwd)
                os.execvp(argv[0], argv)
            finally:
                os._exit(127)
        self.pid, self.fd, self.output = pid, fd, b""

    def read(self) -> bytes:
        """What the terminal showed so far."""
        import os
        import select

        while self.fd is not None and select.select([self.fd], [], [], 0)[0]:
            try:
                chunk = os.read(self.fd, 65536)
            except OSError:  # EIO: every process holding the terminal has ended
                break
            if not chunk:
                break
            self.output += chunk
        return self.output

    def wait_for(self, condition: Callable[[], bool], timeout: float, what: str) -> None:
        wait_until(lambda: bool(self.read()) is not None and condition(), timeout, what)

    def close(self, timeout: float = 120) -> int:
        """Closes the terminal and returns hpcrun's exit status."""
        import os

        os.close(self.fd)
        self.fd = None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            pid, status = os.waitpid(self.pid, os.WNOHANG)
            if pid:
                return os.waitstatus_to_exitcode(status)
            time.sleep(0.2)
        os.kill(self.pid, 9)
        os.waitpid(self.pid, 0)
        raise AssertionError(f"hpcrun still ran {timeout} s after its terminal closed")
