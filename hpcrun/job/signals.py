"""Signal handlers that only set a flag; the training loop acts on it at the next step boundary.

Slurm sends the timeout signal (``cluster.signal``, USR2 by default) ``cluster.signal_delay`` before the time
limit, and SIGTERM on preemption, on ``scancel`` and at the limit itself. Locally, Ctrl-C sends SIGINT. Saving
inside a handler is fragile (it interrupts arbitrary code, possibly a collective or a half-written file), so the
handler records the signal and returns; a second SIGINT interrupts at once, for a user who really means it.
"""

from __future__ import annotations

import logging
import signal
import time
from typing import Iterable, Optional, Tuple

log = logging.getLogger("hpcrun")


class StopFlags:
    """Remembers the first stop signal and when it came."""

    def __init__(self) -> None:
        self.signal: Optional[str] = None
        self.received_at: Optional[float] = None
        self._installed: list = []

    def _handle(self, signum: int, frame: object) -> None:
        name = signal.Signals(signum).name
        if self.signal == "SIGINT" and name == "SIGINT":
            raise KeyboardInterrupt  # the second Ctrl-C: stop now, no save
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
            signal.signal(signum, previous)
        self._installed.clear()

    def pending(self) -> Optional[Tuple[str, float]]:
        return (self.signal, self.received_at) if self.signal else None


def job_signals(timeout_signal: str, local: bool) -> list:
    """The signals a job treats as "save now and stop"."""
    names = [f"SIG{timeout_signal}", "SIGTERM"]
    if local:
        names.append("SIGINT")
    return list(dict.fromkeys(names))
