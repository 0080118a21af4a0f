"""``hpcrun run -- COMMAND``: the user's own command is the job (docs/own-script.md).

The command runs as a child of the job's entry (:class:`hpcrun.job.entry.JobEntry`), which keeps everything else
as for the built-in task: the run directory, its state and ledger, the lock, requeue, the crash-loop breaker.
This module is both halves of that task: its settings (the ``command`` section, read on the login node too, so no
torch and nothing heavy) and :func:`run`, the job side, which starts the command, passes the stop signals on, and
turns how the command ended into the run's end:

- the command asked to be requeued (``hpcrun.script``, or a Trainer hpcrun adopted, saved and stopped): stopped;
- it exited after a stop signal (time limit, preemption, Ctrl-C), whatever its exit status: stopped; unless the
  signal came after its training had ended (an adopted Trainer's train() had returned, an ``hpcrun.script`` loop
  was done) and it then exited with status 0: completed;
- exit status 0 otherwise: completed; any other: failed, not requeued (a script error would repeat).

A stopped run requeues itself on Slurm (``run.max_requeues`` and the crash-loop breaker still apply) and prints
the command that resumes it locally.
"""

from __future__ import annotations

import logging
import os
import shlex
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence

from hpcrun.config.checks import duration
from hpcrun.config.command import starts_workers
from hpcrun.errors import ConfigError

log = logging.getLogger("hpcrun")


@dataclass
class CommandSection:
    """The command the job runs (``hpcrun run [KEY=VALUE ...] -- COMMAND [ARGS ...]``)."""

    # The command and its arguments, what follows `--` on the command line; ${KEY} takes a config value (${lr} for
    # +lr=3e-4, ${run.dir}); hpcrun sets it.
    argv: List[str] = field(default_factory=list)
    # Give every transformers Trainer the command creates hpcrun's wall-clock saves, stop, deadline, atomic
    # checkpoints and resume (false: the Trainer is left alone; HPCRUN_PATCH_TRAINER=0 in the job's environment too).
    patch_trainer: bool = True
    # Whether the command starts its own worker processes (torchrun, accelerate launch): it then runs once per node;
    # otherwise once per process under srun (one per GPU). Empty: detected from the command.
    starts_workers: Optional[bool] = None
    # Once the command has saved and asked to stop (an adopted Trainer, hpcrun.script), how long it may take to exit
    # before it is killed: a process of torch.distributed can hang at exit (docs/own-script.md).
    exit_grace: str = "60s"

    def launcher(self) -> bool:
        return starts_workers(self.argv) if self.starts_workers is None else bool(self.starts_workers)

    def exit_grace_seconds(self) -> int:
        return duration("command.exit_grace", self.exit_grace)

    def check(self) -> None:
        if not self.argv or not str(self.argv[0]).strip():
            raise ConfigError("command.argv", self.argv, "a command: hpcrun run [KEY=VALUE ...] -- COMMAND [ARGS ...]")
        self.exit_grace_seconds()


@dataclass
class CommandSettings:
    """The settings of ``hpcrun run``: the one ``command`` section."""

    command: CommandSection = field(default_factory=CommandSection)

    def check(self, cfg: Any) -> None:
        if self.command.launcher():  # one launcher per node starts the per-GPU processes itself
            cfg.cluster.tasks_per_node = 1


def command_env(cfg: Any, ctx: Any, start: int, launcher: bool, signals: Sequence[str]) -> Dict[str, str]:
    """The command's environment: the job's, plus where it is (documented in docs/own-script.md)."""
    from hpcrun.resources import inject_dir

    env = dict(os.environ)
    env.update(
        HPCRUN_RUN_DIR=str(ctx.run_dir), HPCRUN_RUN_NAME=str(cfg.run.name), HPCRUN_START=str(start),
        HPCRUN_RESTART="1" if start > 1 else "0", HPCRUN_END_TIME="" if ctx.end_time is None else f"{ctx.end_time:.0f}",
        HPCRUN_JOB_ID=ctx.job_id or "", HPCRUN_SIGNALS=",".join(signals),
        HPCRUN_CHECKPOINT_DIR=str(ctx.checkpoints.root) if ctx.checkpoints else "",
        HPCRUN_PATCH_TRAINER=env.get("HPCRUN_PATCH_TRAINER", "1" if cfg.command.patch_trainer else "0"),
        HPCRUN_WRAPPER_PID=str(os.getpid()), PYTHONUNBUFFERED="1",
    )
    # Every python the command starts reads hpcrun's sitecustomize (it chains to any other): it gives Trainers
    # hpcrun's behaviour and undoes, in workers, the ignored stop signals their launcher was started with.
    env["PYTHONPATH"] = os.pathsep.join([str(inject_dir()), *filter(None, [env.get("PYTHONPATH")])])
    if launcher:
        # torchrun (and accelerate launch, through it) would turn SIGTERM into "kill the workers 30 s later", cutting
        # a save short, and dies of SIGUSR2: it ignores the stop signals (they reach the workers directly).
        # (torchrun's --signals-to-handle reads PET_SIGNALS_TO_HANDLE and sets TORCHELASTIC_SIGNALS_TO_HANDLE.)
        env["HPCRUN_LAUNCHER_IGNORES"] = ",".join(signals)
        env["PET_SIGNALS_TO_HANDLE"] = env["TORCHELASTIC_SIGNALS_TO_HANDLE"] = ",".join(
            s for s in ("SIGHUP", "SIGQUIT") if s not in signals)  # (locally SIGHUP is a stop signal)
    return env


def run(cfg: Any, ctx: Any) -> Any:
    """The job side of ``hpcrun run``: runs the command once (per node or per process), returns how it ended."""
    from hpcrun.job.context import Stopped
    from hpcrun.job.processes import Child
    from hpcrun.job.signals import job_signals, signal_reason
    from hpcrun.rundir import RunDir
    from hpcrun.rundir.atomic import read_json
    from hpcrun.rundir.ledger import progress, read_ledger

    rd = RunDir(ctx.run_dir)
    start = ctx.ledger.start if ctx.ledger is not None else 1
    if ctx.is_main:
        from hpcrun.rundir.checkpoints import untouched_outputs_as_they_were

        rd.stop_request.unlink(missing_ok=True)
        rd.signal_after_training.unlink(missing_ok=True)
        for out in untouched_outputs_as_they_were(ctx.run_dir):  # (before any process of the command looks)
            log.info("%s holds no checkpoint yet: hpcrun's mark removed, as the script left it", out)
    argv = [str(a) for a in cfg.command.argv]
    launcher = cfg.command.launcher()
    signals = job_signals(cfg.cluster.signal, local=not ctx.on_slurm)
    env = command_env(cfg, ctx, start, launcher, signals)
    log.info("command: %s%s", shlex.join(argv), " (a launcher: it starts the workers)" if launcher else "")
    child = Child(argv, env, log_path=rd.start_log(start, ctx.rank), ignore=signals if launcher else (),
                  forward=not ctx.on_slurm)
    local_signal = None if ctx.on_slurm else (f"SIG{cfg.cluster.signal}", cfg.cluster.signal_delay_seconds())

    def request() -> Optional[dict]:  # the command saved and asked to stop (rank 0 wrote it, in the shared run dir)
        found = read_json(rd.stop_request, {}) if rd.stop_request.exists() else {}
        return found if isinstance(found, dict) and found.get("start") == start else None

    rc = child.wait(signals, ctx.end_time, local_signal, earlier=ctx.stop_flags,
                    stopped=(lambda: request() is not None, cfg.command.exit_grace_seconds()))

    def last_step() -> Optional[int]:
        step, _ = progress([e for e in read_ledger(ctx.run_dir) if e.get("start") == start])
        return step or None

    if ctx.ledger is not None:  # the steps the command's Trainer (or hpcrun.script) recorded, for the run's end
        ctx.ledger.last_step = last_step()
    asked = request()  # on every rank: its exit status, killed after a hang at exit or not, is moot
    if asked is not None:
        return Stopped(step=int(asked.get("step") or 0), reason=str(asked.get("reason") or "stopped"),
                       signal=asked.get("signal") or child.first_signal)
    late = read_json(rd.signal_after_training, {}) if rd.signal_after_training.exists() else {}
    if rc == 0 and isinstance(late, dict) and late.get("start") == start:
        # Its training had ended (a Trainer's train() had returned, an hpcrun.script loop was done), so nothing was
        # saved for the signal; what came after (the final save_model, an evaluation) ran to its end: the run is
        # complete, and requeueing it would train again from its last checkpoint.
        log.info("the stop signal (%s) came after the command's training had ended; it finished with status 0",
                 late.get("signal"))
        return "the command exited with status 0 (a stop signal came after its training had ended)"
    if child.first_signal is not None:
        how = ("was killed: it outlived the job's time" if child.killed
               else f"was killed by signal {-rc}" if rc < 0 else f"exited with status {rc}")
        return Stopped(step=last_step() or 0, signal=child.first_signal, saved=False,
                       reason=f"{signal_reason(child.first_signal)}; the command {how}")
    if rc == 0:
        return "the command exited with status 0"
    from hpcrun.errors import JobError

    what = f"was killed by signal {-rc}" if rc < 0 else f"exited with status {rc}"
    raise JobError(f"the command {what} (its output: {rd.start_log(start, ctx.rank)})")
