"""A task for tests: the built-in task, whose first start waits at one step until its stop signal has come.

A test that signals a run "once it logged step K" races the run when its steps are fast: the test's polling and
``scancel`` take a few tenths of a second, and QLoRA or LoRA on a tiny model trains 20 to 50 steps a second on the CPU,
so the run may finish before the signal reaches it (it did in CI: the job completed instead of requeueing). With
``task._target_=step_gate.train`` and ``HPCRUN_TEST_HOLD_AT_STEP=K`` in the job's environment, the first start
begins step K+1 only once SIGUSR2 or SIGTERM has come (or after 10 minutes, so that a test that never signals does
not hang), and hpcrun's own handlers still see the signal first. The run then stops after step K+1 whatever the
speeds. Without the variable it is the built-in task unchanged. Copied by a test into the folder it runs hpcrun in.
"""

import os
import signal
import threading
import time

HOLD = "HPCRUN_TEST_HOLD_AT_STEP"
WAIT_AT_MOST = 600.0
OVERRIDES = ["task._target_=step_gate.train", "task.settings=hpcrun.tasks.settings.CausalLMSettings"]


def install(folder) -> list:
    """Copies this module into ``folder`` (where the test runs hpcrun, so that the job imports it) and returns the
    overrides that make it the run's task."""
    import shutil

    shutil.copy(__file__, folder)
    return OVERRIDES


def train(cfg, ctx):
    from hpcrun.tasks import causal_lm

    if HOLD in os.environ and os.environ.get("SLURM_RESTART_COUNT", "0") == "0":
        _hold_at(int(os.environ[HOLD]))
    return causal_lm.train(cfg, ctx)


def _hold_at(hold: int) -> None:
    import transformers

    original = transformers.Trainer.training_step
    came = threading.Event()
    state = {"chained": False, "held": False}

    def training_step(self, model, inputs, *args, **kwargs):
        if not state["chained"]:  # the first micro-batch: hpcrun's stop handlers are installed by now
            _chain(("SIGUSR2", "SIGTERM"), came)
            state["chained"] = True
        if self.state.global_step == hold and not state["held"]:
            state["held"] = True
            deadline = time.monotonic() + WAIT_AT_MOST
            while not came.is_set() and time.monotonic() < deadline:
                time.sleep(0.05)
        return original(self, model, inputs, *args, **kwargs)

    transformers.Trainer.training_step = training_step


def _chain(names, came: threading.Event) -> None:
    """After each signal's current handler has run, marks that the signal came."""
    for name in names:
        signum = signal.Signals[name]
        previous = signal.getsignal(signum)
        if not callable(previous):
            raise RuntimeError(f"no Python handler for {name} at the first step: nothing to wait for")

        def handler(sig, frame, previous=previous):
            previous(sig, frame)
            came.set()

        signal.signal(signum, handler)
