"""The job's entry point: the one callable both launchers run, and the run's lifecycle around the task.

On Slurm, submitit pickles a :class:`JobEntry` and runs it under ``srun`` on the compute node; locally hpcrun
calls the same object in the foreground. It holds nothing but the run directory: every start (first, requeued,
resumed) reads the saved config, the run's state and its newest complete checkpoint from disk.

A start: read the config; stop at once if the run is complete or crash-looping; find the newest complete
checkpoint (logging the incomplete ones skipped); install the stop-signal handlers; learn the job's end time;
run the task. Then, by how the task ended: completed (done marker), or stopped by a signal or the deadline after a
save, or failed (:mod:`hpcrun.job.ending`: requeue, cancel, or fail).
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib
import logging
import os
import sys
import time
from pathlib import Path
from typing import Any, Callable, Optional

from hpcrun.errors import JobError
from hpcrun.job import faults
from hpcrun.job.context import JobContext, Stopped, machine
from hpcrun.job.ending import failed, stopped
from hpcrun.job.ranks import close_process_group
from hpcrun.rundir import RunDir
from hpcrun.rundir.state import RunState, mean_time_between_failures

log = logging.getLogger("hpcrun")
LOCK_WAIT = 120.0  # seconds a start waits for a holder that lets go soon (see JobEntry._lock)
FAILING_SAVE_WAIT = 300.0  # seconds a failing start lets a background save finish (a rank may have died)


def import_target(path: str) -> Callable[..., Any]:
    """Imports ``package.module.function`` (the config's ``task._target_``)."""
    module_name, _, attr = path.rpartition(".")
    if not module_name:
        raise ImportError(f"task._target_={path!r} is not a dotted path such as package.module.function")
    return getattr(importlib.import_module(module_name), attr)


def setup_logging(ctx: JobContext, start: Optional[int] = None) -> None:
    """One log format for hpcrun and transformers; ranks other than 0 only warn.

    With ``start`` set, the log also goes to ``<run.dir>/logs/start-N.log`` (``start-N.rank-R.log`` for other
    ranks), one file per start of the job, and ``logs/latest.log`` points to rank 0's newest.
    """
    level = logging.INFO if ctx.is_main else logging.WARNING
    prefix = f"[rank {ctx.rank}] " if ctx.world_size > 1 else ""
    fmt = logging.Formatter(f"%(asctime)s {prefix}%(levelname)s %(name)s: %(message)s", "%Y-%m-%d %H:%M:%S")
    handlers: list = [logging.StreamHandler(sys.stderr)]
    if start is not None:
        rd = RunDir(ctx.run_dir)
        rd.logs.mkdir(exist_ok=True)
        path = rd.start_log(start, ctx.rank)
        handlers.append(logging.FileHandler(path))
        if ctx.is_main:
            rd.latest_log.unlink(missing_ok=True)
            rd.latest_log.symlink_to(path.name)
        _tee_stdout(path)
    for h in handlers:
        h.setFormatter(fmt)
    logging.basicConfig(level=level, handlers=handlers, force=True)


class _Tee:
    """``sys.stdout`` that also appends what the task prints to this start's log, so that ``hpcrun logs`` shows a
    task's own ``print()`` (on Slurm, stdout is otherwise only in slurm/<job>_<task>_log.out). Anything else (the
    byte buffer, fileno, isatty) is the real stream's."""

    def __init__(self, stream: Any, path: Path) -> None:
        self.stream = stream
        self.file = open(path, "a", buffering=1, errors="replace")

    def write(self, text: str) -> int:
        try:
            self.stream.write(text)
        except OSError:  # the terminal hung up (EIO), its pipe's reader is gone (EPIPE): the log keeps it
            from hpcrun.job.signals import leave_terminal

            leave_terminal()
        try:
            self.file.write(text)
        except (OSError, ValueError):  # a full disk or a closed file must not break the task's print
            pass
        return len(text)

    def flush(self) -> None:
        try:
            self.stream.flush()
        except OSError:
            pass
        try:
            self.file.flush()
        except (OSError, ValueError):
            pass

    def __getattr__(self, name: str) -> Any:
        return getattr(self.stream, name)


def _untee() -> None:
    if isinstance(sys.stdout, _Tee):
        sys.stdout.flush()
        sys.stdout.file.close()
        sys.stdout = sys.stdout.stream


def _tee_stdout(path: Path) -> None:
    previous = sys.stdout
    if isinstance(previous, _Tee):  # a later start in the same process (local): the new start's log
        previous.file.close()
        previous = previous.stream
    sys.stdout = _Tee(previous, path)


def wait_for_start(run_dir: Path, job_id: Optional[str], restart: int, timeout: float = 600) -> dict:
    """Waits until rank 0 has recorded this start of the job in state.json; returns that record."""
    from hpcrun.rundir.state import read_state

    from hpcrun.rundir.lock import START, RunBusy, RunLock

    began = time.monotonic()
    while time.monotonic() - began < timeout:
        starts = read_state(run_dir).get("starts", [])
        if starts and starts[-1].get("job_id") == job_id and starts[-1].get("restart") == restart:
            return starts[-1]
        holder = RunLock(run_dir, START).holder_now()
        if time.monotonic() - began > LOCK_WAIT + 10 and holder.get("job_id") != job_id:
            # Rank 0 was refused the run (another process owns it) and has exited: do not hold the allocation.
            raise RunBusy(f"rank 0 of job {job_id} did not start the run: {run_dir} is held by {holder or 'nobody'}")
        time.sleep(0.2)
    raise JobError(f"rank 0 did not record start {restart} of job {job_id} in {run_dir}/state.json within {timeout}s")


class JobEntry:
    """Runs (or resumes) the run in ``run_dir``.

    Args:
        run_dir: the run directory holding ``config.yaml``.
        local: run by the local launcher, in the foreground (also inside a Slurm allocation: an interactive
            session's Ctrl-C saves and stops, and its end is saved before, but nothing is requeued).
    """

    local = False  # (an entry pickled before the attribute existed reads this)

    def __init__(self, run_dir: str | Path, local: bool = False) -> None:
        self.run_dir = str(run_dir)
        self.local = local

    def __repr__(self) -> str:
        return f"JobEntry({self.run_dir!r}{', local=True' if self.local else ''})"

    def __call__(self) -> str:
        from hpcrun.config.compose import load_saved

        started = time.time()
        # MKL's dynamic threading (on by default) may run a matrix multiply on fewer threads than asked, decided
        # at run time; where the CPU's kernels split the sum by thread, that changes the float result, and a step
        # is no longer computed the same way twice (Intel's reproducibility conditions; docs/reliability.md). Off
        # before torch is imported, unless the user set it; the command's processes inherit it.
        os.environ.setdefault("MKL_DYNAMIC", "FALSE")
        # The directory the job starts in (where hpcrun was run; sbatch's default) is importable, as with
        # `python -m`: task._target_=my_module.train finds my_module.py there.
        if os.getcwd() not in sys.path:
            sys.path.insert(0, os.getcwd())
        run_dir = Path(self.run_dir)
        rd = RunDir(run_dir)
        ctx = JobContext.from_env(run_dir, local=self.local)
        if ctx.world_size > 1 and ctx.on_slurm:
            from submitit.helpers import TorchDistributedEnvironment

            from hpcrun.job.ranks import ephemeral_ports, master_port

            # Rank, world size and master address from Slurm; the port (unless set) per start and out of the
            # node's ephemeral range (hpcrun.job.ranks.master_port).
            dist_env = TorchDistributedEnvironment()
            if "MASTER_PORT" not in os.environ:  # (submitit's export refuses a variable already set)
                dist_env.master_port = master_port(ctx.job_id or "", ctx.restart, ephemeral_ports())
            dist_env.export(set_cuda_visible_devices=False)
        setup_logging(ctx)
        cfg = load_saved(rd.config)
        state = RunState(run_dir, writer=ctx.is_main)
        if state.status == "completed":
            log.info("run %s is complete (its output in %s): nothing to train", cfg.run.name, rd.final)
            return str(rd.final)

        # One owner per run: a second process (another local run, a local run beside the Slurm job) is refused
        # here, before it touches the state. Rank 0 owns the start; the other ranks follow its start record.
        lock = self._lock(run_dir, ctx) if ctx.is_main else None
        try:
            return self._start(cfg, ctx, started)
        finally:
            _untee()  # (a local run: the command goes on printing to the terminal only)
            if lock is not None:
                lock.release()

    @staticmethod
    def _lock(run_dir: Path, ctx: JobContext) -> Any:
        """The run's lock for this start. Two holders are waited for, briefly: a previous start of the same Slurm
        job still winding down (requeued, its processes not yet gone), and an ``hpcrun`` command deciding about the
        run right now (it holds the lock for seconds). Anyone else is refused."""
        from hpcrun.rundir.lock import LAUNCHING, START, RunBusy, RunLock

        lock = RunLock(run_dir, START, ctx.job_id)
        try:
            return lock.acquire()
        except RunBusy:
            holder = lock.holder_now()
            if holder.get("what") != LAUNCHING and not (ctx.job_id and holder.get("job_id") == ctx.job_id):
                raise
            return lock.acquire(wait=LOCK_WAIT)

    def _start(self, cfg: Any, ctx: JobContext, started: float) -> str:
        """One start of the run, with its lock held (rank 0). The stop signals are taken first: from the moment
        the start holds the run (and ``hpcrun cancel`` can find its process), a stop signal is acted on at the
        first step boundary, never the default death."""
        from hpcrun.job.signals import StopFlags, job_signals

        flags = StopFlags().install(job_signals(cfg.cluster.signal, local=not ctx.on_slurm))
        try:
            return self._train(cfg, ctx, started, flags)
        finally:
            flags.uninstall()  # (on Slurm already off on every path that returns)

    def _train(self, cfg: Any, ctx: JobContext, started: float, flags: Any) -> str:
        from hpcrun.job.deadline import job_times
        from hpcrun.job.steps import take_background
        from hpcrun.rundir.checkpoints import CheckpointDir
        from hpcrun.rundir.ledger import Ledger
        from hpcrun.rundir.lock import process_start_time

        run_dir = ctx.run_dir
        rd = RunDir(run_dir)
        state = RunState(run_dir, writer=ctx.is_main)  # read again: it may have changed while the lock was held
        checkpoints = CheckpointDir(rd.checkpoints, cfg.checkpoint.keep_last)
        if ctx.is_main:
            latest, start = self._begin_main(cfg, ctx, state, checkpoints)
        else:  # rank 0 decides; the others follow its start record, so every rank resumes from the same step
            start = wait_for_start(run_dir, ctx.job_id, ctx.restart)
            state = RunState(run_dir, writer=False)
            latest = next((c for c in checkpoints.folders() if c.step == start["resumed_from"]), None)
            setup_logging(ctx, start["n"])
        ledger = Ledger(run_dir, start["n"], writer=ctx.is_main)
        if state.status == "failed":  # the crash-loop breaker stopped the run at this start
            ledger.event("end", status="failed", reason=state.data.get("reason", ""), step=start.get("resumed_from"))
            raise JobError(state.data.get("reason", "run failed"))

        alloc_start, end_time, source = job_times(cfg.cluster.time_seconds(), ctx.on_slurm, started,
                                                  inside_allocation=ctx.allocation is not None)
        state.note(end_time=end_time)
        state.ledger = ledger
        ledger.event("start", job_id=ctx.job_id, restart=ctx.restart, alloc_start=alloc_start,
                     process_start=started, resumed_from=latest.step if latest else 0, end_time=end_time,
                     world_size=ctx.world_size, gpu_type=cfg.cluster.gpu_kind())
        interpreter = process_start_time() or started  # the Python process (the entry is called after imports)
        if ctx.on_slurm and alloc_start and interpreter > alloc_start:
            ledger.phase("launch", interpreter - alloc_start)  # Slurm's prolog, srun, a container's start
        ledger.phase("interpreter", started - interpreter)
        ledger.phase_mark = started
        if end_time is not None:
            log.info("job ends at %s (%s): %.0f s from now", time.strftime("%Y-%m-%d %H:%M:%S",
                     time.localtime(end_time)), source, end_time - time.time())
        triggers = self.triggers(cfg, state, latest, end_time, ledger)
        if cfg.checkpoint.async_save:
            from hpcrun.job.background import BackgroundSaves

            triggers.writer = BackgroundSaves(ctx.rank, ctx.world_size)
        ctx = dataclasses.replace(ctx, checkpoints=checkpoints, resume_from=latest, end_time=end_time,
                                  stop_flags=flags, triggers=triggers, ledger=ledger)
        # On Slurm the handlers come off before the end is recorded (submitit's are back for the requeue). A local
        # run keeps them until its end is recorded (_start): a SIGTERM then (hpcrun cancel a moment late) must not
        # kill it with the run still marked running.
        release = flags.uninstall if ctx.on_slurm else (lambda: None)
        try:
            faults.maybe_transient_error()
            if faults.setup_pause():  # ended early by a stop signal: a test's signal lands in it, however late
                log.info("%s=setup_pause: %g s before the task starts", faults.ENV, faults.setup_pause())
                resume_at = time.monotonic() + faults.setup_pause()
                while time.monotonic() < resume_at and flags.pending() is None:
                    time.sleep(0.05)
            task = import_target(cfg.task._target_)
            ledger.phase("setup")  # config, lock, state, checkpoints, signals, the task's module
            result = task(cfg, ctx)
            take_background(triggers, ledger, checkpoints=checkpoints)  # complete before the run ends or requeues
        except KeyboardInterrupt:  # a second Ctrl-C (hpcrun.job.signals): stop now, unsaved, and say so
            release()
            if ctx.is_main:
                state.end("stopped", "interrupted by a second Ctrl-C, without a save: the same command resumes "
                          "from the newest complete checkpoint", ledger.last_step)
            raise
        except Exception as exc:
            release()
            with contextlib.suppress(Exception):  # a periodic save still being written: let it complete (a while)
                take_background(triggers, ledger, checkpoints=checkpoints, timeout=FAILING_SAVE_WAIT)
            return failed(self, cfg, ctx, state, exc)
        release()
        try:
            if isinstance(result, Stopped):
                return stopped(self, cfg, ctx, state, result)
            step = ledger.last_step
            state.end("completed", f"trained to step {step}" if step is not None else "done", step)
            RunDir(ctx.run_dir).cancel_request.unlink(missing_ok=True)  # (a cancel that came as it finished)
            return str(result)
        finally:
            close_process_group()

    @staticmethod
    def triggers(cfg: Any, state: RunState, latest: Any, end_time: Optional[float], ledger: Any) -> Any:
        """The run's time triggers, continued from the checkpoint and the run's history (save times, MTBF)."""
        from hpcrun.job.triggers import TimeTriggers
        from hpcrun.rundir.checkpoints import CheckpointDir
        from hpcrun.rundir.ledger import read_ledger

        triggers = TimeTriggers.from_config(cfg, end_time, mtbf=mean_time_between_failures(state.data))
        if latest is not None:
            triggers.restore(CheckpointDir.read_state(latest))
        if not triggers.estimates.saves:  # e.g. the save we resume from was this run's first: the ledger has it
            for e in [e for e in read_ledger(state.run_dir) if e["event"] == "save"][-5:]:
                triggers.estimates.add_save(float(e.get("written", e["seconds"])))

        def chosen(seconds: float, why: str) -> None:
            log.info("checkpoint.save_every=auto: %s", why)
            ledger.event("save_every", seconds=seconds, why=why)

        triggers.on_interval = chosen
        triggers.update_auto_interval()
        return triggers

    @staticmethod
    def _begin_main(cfg: Any, ctx: JobContext, state: RunState, checkpoints: Any) -> tuple:
        """Rank 0: clear interrupted saves, pick the checkpoint, record the start, apply the crash-loop breaker."""
        from hpcrun.job.requeue import clear_request
        from hpcrun.rundir.checkpoints import newest_complete, run_checkpoint_dirs

        removed = [(name, where.root) for where in run_checkpoint_dirs(ctx.run_dir)  # and a command's output dirs
                   for name in where.clear_staging()]
        latest, skipped = newest_complete(ctx.run_dir, cfg.checkpoint.keep_last)
        clear_request(ctx.run_dir)  # an earlier start's requeue request was acted on (or its job cancelled)
        # A cancel of an earlier start, which ended before it read it. (None can be for this one yet: hpcrun cancel
        # signals a process only once the newest start record names it.)
        RunDir(ctx.run_dir).cancel_request.unlink(missing_ok=True)
        prev = state.previous_start
        start = state.begin(ctx.job_id, ctx.restart, resumed_from=latest.step if latest else 0,
                            allocation=ctx.allocation,
                            processes=ctx.world_size)
        setup_logging(ctx, start["n"])
        for name, root in removed:
            log.warning("removed %s: a save that was interrupted before it completed (in %s)", name, root)
        where = f"Slurm job {ctx.job_id} (restart {ctx.restart})" if ctx.on_slurm else "this machine (local)"
        if ctx.allocation:
            where = f"this machine (local, inside Slurm job {ctx.allocation})"
        log.info("===== start %d of run %s in %s, on %s, %d process(es) =====",
                 start["n"], cfg.run.name, ctx.run_dir, where, ctx.world_size)
        log.info("machine: %s", machine())
        for ckpt, why in skipped:
            log.warning("skipping %s: %s", ckpt.path.name, why)
        if prev is not None and "ended_at" not in prev:
            log.warning("start %d (%s) ended without a clean stop (killed, node failure, or out of time "
                        "before its save): %s", prev["n"],
                        f"Slurm job {prev['job_id']}" if prev.get("job_id") else "local",
                        f"falling back to the last complete checkpoint, {latest.path.name}" if latest
                        else "no complete checkpoint: training starts over")
        if state.data["no_progress_restarts"] > cfg.run.max_restarts_without_progress:
            reason = (f"{state.data['no_progress_restarts']} restarts in a row made no training progress (still at "
                      f"step {latest.step if latest else 0}; run.max_restarts_without_progress="
                      f"{cfg.run.max_restarts_without_progress}): stopped instead of requeueing. Fix the cause, "
                      "then run the same hpcrun command again")
            state.end("failed", reason, latest.step if latest else 0)
            log.error(reason)
        return latest, start
