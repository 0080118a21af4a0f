"""A command's process tree, as the job's entry runs it: started, its output kept, signals passed on, waited for.

Linux only (it reads /proc), as Slurm's compute nodes are. No torch.

Signals. On Slurm, slurmstepd delivers a job step's signals (``--signal``, scancel, preemption, the time limit) to
every process of the step, the command's too, so nothing is forwarded there. Locally the command runs in its own
process group (Ctrl-C reaches hpcrun alone) and hpcrun passes each stop signal to every process of the command's
tree. A launcher (torchrun, accelerate launch) starts with the stop signals ignored, so only its workers act on
them (hpcrun's sitecustomize restores them in the workers, see hpcrun/frameworks/inject/sitecustomize.py).
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

log = logging.getLogger("hpcrun")
KILL_BEFORE_END = 5.0  # seconds before the job's end a command still running after a stop signal is killed


def descendants(pid: int) -> List[int]:
    """Every process below ``pid`` (children first), from /proc."""
    children: Dict[int, List[int]] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        ppid = int(stat.rpartition(")")[2].split()[1])  # the name, in parentheses, may hold spaces
        children.setdefault(ppid, []).append(int(entry.name))
    out, todo = [], [pid]
    while todo:
        for c in children.get(todo.pop(0), []):
            out.append(c)
            todo.append(c)
    return out


def _die_with_parent() -> None:
    """The command is killed when hpcrun's job process dies (kill -9, out of memory), rather than left running
    unwatched (Linux's PR_SET_PDEATHSIG; elsewhere nothing)."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # 1: PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def _send(pids: Sequence[int], signum: int) -> None:
    for pid in pids:
        try:
            os.kill(pid, signum)
        except OSError:
            pass


class Child:
    """The command, started at once: its output copied to ours and to ``log_path``.

    Args:
        argv: the command.
        env: its environment.
        log_path: the log of this start (the command's output is appended).
        ignore: signal names it starts with ignored (a launcher's).
        forward: pass stop signals on to the whole tree (locally; on Slurm they reach it anyway).
    """

    def __init__(self, argv: Sequence[str], env: Dict[str, str], log_path: Path, ignore: Sequence[str] = (),
                 forward: bool = True) -> None:
        self.forward = forward
        self.first_signal: Optional[str] = None
        self.killed = False
        self.ctrl_c = 0  # Ctrl-Cs so far: the second stops the command at once
        ignored = [signal.Signals[n] for n in ignore]

        def before_exec() -> None:  # in the child, between fork and exec
            _die_with_parent()
            if forward:
                os.setpgid(0, 0)  # its own process group: a Ctrl-C in the terminal reaches hpcrun only
            for s in ignored:
                signal.signal(s, signal.SIG_IGN)

        log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log = open(log_path, "ab")
        try:
            self.proc = subprocess.Popen(list(argv), env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                         stderr=subprocess.STDOUT, preexec_fn=before_exec)
        except OSError as exc:
            self._log.close()
            from hpcrun.errors import JobError

            raise JobError(f"cannot start the command {argv[0]!r}: {exc.strerror or exc}") from None
        self._copier = threading.Thread(target=self._copy, daemon=True)
        self._copier.start()

    def _copy(self) -> None:
        """The command's output, as it comes (progress bars too), to our stdout and the start's log."""
        out = getattr(sys.stdout, "buffer", None)
        fd = self.proc.stdout.fileno()  # type: ignore[union-attr]
        while True:
            chunk = os.read(fd, 65536)
            if not chunk:
                break
            try:
                self._log.write(chunk)
                self._log.flush()
            except ValueError:  # closed: hpcrun is leaving after a second Ctrl-C
                break
            if out is not None:
                try:
                    out.write(chunk)
                    out.flush()
                except (OSError, ValueError):
                    out = None

    def tree(self) -> List[int]:
        return [self.proc.pid, *descendants(self.proc.pid)]

    def signal_tree(self, name: str) -> None:
        _send(self.tree(), signal.Signals[name])

    def _handle(self, signum: int, frame: object) -> None:
        name = signal.Signals(signum).name
        self.ctrl_c += name == "SIGINT"
        if self.ctrl_c > 1:  # the second Ctrl-C (after whatever stopped it first): stop now, no save
            self.killed = True
            self.signal_tree("SIGKILL")
            raise KeyboardInterrupt
        if name == "SIGHUP":  # the terminal closed: our copy of the command's output goes to the log alone
            from hpcrun.job.signals import leave_terminal

            leave_terminal()
        if self.first_signal is not None:  # it has its stop signal, and is saving: a second kind would kill it
            log.info("%s: the command is stopping already (%s)", name, self.first_signal)
            return
        self.first_signal = name
        log.info("%s: %s", name, "passed on to the command" if self.forward else
                 "Slurm signals the command's processes too; waiting for the command to stop")
        if self.forward:
            self.signal_tree(name)

    def wait(self, signals: Sequence[str], end_time: Optional[float],
             local_signal: Optional[Tuple[str, float]] = None, earlier: Any = None,
             stopped: Optional[Tuple[Callable[[], bool], float]] = None) -> int:
        """Waits for the command to end; returns its exit status (negative: killed by that signal).

        Args:
            signals: the stop signals (names) hpcrun listens to meanwhile.
            end_time: the job's end (Unix time): a command still running ``KILL_BEFORE_END`` seconds before it,
                after a stop signal, is killed, so the run can still be requeued.
            local_signal: (name, seconds before end_time): sent to the command then, as Slurm's ``--signal`` would
                (locally).
            earlier: the job's :class:`~hpcrun.job.signals.StopFlags`: a stop signal that came before this wait
                took the signals over (while the job started, say) never reached the command: it is passed on now.
            stopped: (whether the command has saved and asked to stop, seconds it then has to exit): a command
                still running that long after is killed (a torch.distributed process can hang at exit, gloo's
                destructor waiting for a thread that waits for the interpreter's lock).
        """
        previous = [(s, signal.signal(signal.Signals[s], self._handle)) for s in signals]
        came = earlier.pending() if earlier is not None else None
        if came and self.first_signal is None:
            self.first_signal = came[0]
            log.info("%s came before the command started: passed on to it", came[0])
            self.signal_tree(came[0])
        asked_at: Optional[float] = None  # when the command was first seen to have asked to stop
        try:
            while True:
                try:
                    rc = self.proc.wait(timeout=0.5)
                    break
                except subprocess.TimeoutExpired:
                    pass
                now = time.time()
                if stopped is not None and not self.killed:
                    if asked_at is None and stopped[0]():
                        asked_at = now
                    if asked_at is not None and now - asked_at >= stopped[1]:
                        log.warning("the command saved and asked to stop %.0f s ago but has not exited (a hang at "
                                    "exit): killing it; the save is complete", now - asked_at)
                        self.killed = True
                        self.signal_tree("SIGKILL")
                if end_time is None:
                    continue
                if local_signal and self.first_signal is None and now >= end_time - local_signal[1]:
                    log.info("cluster.time is nearly over: sending %s, as Slurm would", local_signal[0])
                    self._handle(signal.Signals[local_signal[0]], None)
                if self.first_signal is not None and now >= end_time - KILL_BEFORE_END:
                    log.warning("the command did not stop after %s before the job's end: killing it (its work "
                                "since its last save is lost)", self.first_signal)
                    self.killed = True
                    self.signal_tree("SIGKILL")
        finally:
            from hpcrun.job.signals import after_hangup

            for s, handler in previous:
                signal.signal(signal.Signals[s], after_hangup(signal.Signals[s], handler))
            self._copier.join(timeout=10)
            self._log.close()
        return rc
