"""Signal handlers that only set a flag; the training loop acts on it at the next step boundary.

Slurm sends the timeout signal (``cluster.signal``, USR2 by default) ``cluster.signal_delay`` before the time
limit, and SIGTERM on preemption, on ``scancel`` and at the limit itself. Locally, Ctrl-C sends SIGINT, and a
closed terminal (a dropped ssh connection) SIGHUP. Saving inside a handler is fragile (it interrupts arbitrary code,
possibly a collective or a half-written file), so the handler records the signal and returns; a second SIGINT
interrupts at once, for a user who really means it.
"""

from __future__ import annotations

import errno
import logging
import os
import signal
import stat
import time
from typing import Any, Iterable, Optional, Tuple

log = logging.getLogger("hpcrun")


class StopFlags:
    """Remembers the first stop signal and when it came."""

    def __init__(self) -> None:
        self.signal: Optional[str] = None
        self.received_at: Optional[float] = None
        self.ctrl_c = 0
        self._installed: list = []

    def _handle(self, signum: int, frame: object) -> None:
        name = signal.Signals(signum).name
        if name == "SIGINT":
            self.ctrl_c += 1
            if self.ctrl_c > 1:  # the second Ctrl-C, whatever stopped the run first (hpcrun cancel): now, no save
                raise KeyboardInterrupt
        if name == "SIGHUP":
            leave_terminal()
        if self.signal is None:
            self.signal, self.received_at = name, time.time()

    def install(self, signals: Iterable[str]) -> "StopFlags":
        """Installs the handler for each signal name (e.g. ``["SIGUSR2", "SIGTERM"]``)."""
        for name in signals:
            signum = signal.Signals[name]
            self._installed.append((signum, signal.signal(signum, self._handle)))
        return self

    def uninstall(self) -> None:
        for signum, previous in reversed(self._installed):
            signal.signal(signum, after_hangup(signum, previous))
        self._installed.clear()

    def pending(self) -> Optional[Tuple[str, Optional[float]]]:
        return (self.signal, self.received_at) if self.signal else None

    def learned(self, name: str) -> None:
        """A stop signal another rank received (shared at a step's end): this rank stops for it too, and names
        it (when it came here is unknown)."""
        if self.signal is None:
            self.signal = name


def job_signals(timeout_signal: str, local: bool) -> list:
    """The signals a job treats as "save now and stop".

    Locally also Ctrl-C (SIGINT) and a closed terminal (SIGHUP), unless SIGHUP is ignored: a run started under
    ``nohup`` (or anything else that ignores it) keeps running when its terminal closes, as the user asked.
    """
    names = [f"SIG{timeout_signal}", "SIGTERM"]
    if local:
        names.append("SIGINT")
        if signal.getsignal(signal.SIGHUP) != signal.SIG_IGN:
            names.append("SIGHUP")
    return list(dict.fromkeys(names))


def signal_reason(name: str) -> str:
    """What a stop by this signal is called in the run's state and log: ``signal SIGTERM``."""
    return f"signal {name}" + (" (the terminal closed)" if name == "SIGHUP" else "")


_left_terminal = False


def leave_terminal() -> None:
    """After SIGHUP: the terminal is gone, and a write to it would fail (EIO) in the middle of the save; a pipe to
    it (``hpcrun ... | tee out``: tee got the SIGHUP too) would fail with EPIPE. Standard output and error that are
    a terminal or a pipe go to /dev/null from here on; the start's log keeps everything."""
    global _left_terminal
    _left_terminal = True
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        for fd in (1, 2):
            try:
                pipe = stat.S_ISFIFO(os.fstat(fd).st_mode)
            except OSError:
                continue
            if pipe or os.isatty(fd) or _hung_up(fd):  # (a terminal already hung up is no longer a tty to isatty)
                os.dup2(devnull, fd)
    finally:
        os.close(devnull)


def after_hangup(signum: int, previous: Any) -> Any:
    """The handler to restore for ``signum`` when a job's handlers come off: once the terminal has closed, SIGHUP
    stays ignored (a late one, from the shell or the kernel, must not kill hpcrun while it records the stop)."""
    return signal.SIG_IGN if signum == signal.SIGHUP and _left_terminal else previous


def _hung_up(fd: int) -> bool:
    try:
        os.write(fd, b"")
    except OSError as exc:
        return exc.errno == errno.EIO
    return False
