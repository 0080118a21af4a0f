"""Wall-clock triggers: periodic intervals and the deadline. Pure logic with an injectable clock.

Used by the Trainer callback (:mod:`hpcrun.frameworks.transformers.callback`) and by custom training loops (:class:`TimeTriggers`):

    triggers = TimeTriggers(save_every=1800, end_time=deadline.end_time)
    for batch in loader:
        triggers.step_started()
        ...                                   # forward, backward, optimizer step
        decision = triggers.step_ended()
        if decision.save or decision.stop:
            t0 = time.monotonic(); save(); triggers.saved(time.monotonic() - t0)
        if decision.stop:
            break
"""

from __future__ import annotations

import math
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Callable, Deque, Dict, Optional, Tuple

Clock = Callable[[], float]


class Interval:
    """Fires once every ``seconds`` of wall clock (never when ``seconds`` is None or 0)."""

    def __init__(self, seconds: Optional[float], clock: Clock = time.monotonic) -> None:
        self.seconds = seconds or None
        self.clock = clock
        self.last = clock()

    def due(self) -> bool:
        return self.seconds is not None and self.clock() - self.last >= self.seconds

    def reset(self) -> None:
        self.last = self.clock()

    def elapsed(self) -> float:
        return self.clock() - self.last

    def restore(self, elapsed: float) -> None:
        """Continue as if ``elapsed`` seconds had already passed since the last firing."""
        self.last = self.clock() - elapsed


@dataclass
class Estimates:
    """Measured step and save times, kept conservative: the longest of the recent ones."""

    save_guess: float = 30.0
    window: int = 20
    steps: Deque[float] = field(default_factory=deque)
    saves: Deque[float] = field(default_factory=deque)
    blocked: Deque[float] = field(default_factory=deque)  # of background saves: what training waited

    def add_step(self, seconds: float) -> None:
        self.steps.append(seconds)
        while len(self.steps) > self.window:
            self.steps.popleft()

    def add_save(self, seconds: float) -> None:
        self.saves.append(seconds)
        while len(self.saves) > 5:
            self.saves.popleft()

    def add_blocked(self, seconds: float) -> None:
        self.blocked.append(seconds)
        while len(self.blocked) > 5:
            self.blocked.popleft()

    @property
    def step(self) -> float:
        return max(self.steps) if self.steps else 0.0

    @property
    def save(self) -> float:
        return max(self.saves) if self.saves else self.save_guess


def seconds_needed_to_stop(estimates: Estimates, margin: float) -> float:
    """How long before the end a step must *end* for the job to still fit one more step and a save.

    Deadline arithmetic: after a step ends at time t, going on costs one more step, then the final save, and the
    save must finish ``margin`` seconds before the end. So stop at the end of the current step when
    ``end - t < step + save + margin``.
    """
    return estimates.step + estimates.save + margin


# checkpoint.save_every=auto: the bounds of the interval, and the mean time between unannounced interruptions
# assumed until the run has seen one (one a day: a guess for a shared university cluster, replaced by observation).
AUTO_MIN_SECONDS = 60.0
AUTO_MAX_SECONDS = 2 * 3600.0
PRIOR_MTBF_SECONDS = 24 * 3600.0


def daly_interval(save_seconds: float, mtbf: float) -> float:
    """The checkpoint interval that minimises expected lost time (Daly 2006, "A higher order estimate of the
    optimum checkpoint interval for restart dumps"): for a save time d and a mean time between failures M,
    ``sqrt(2 d M) (1 + sqrt(d/2M)/3 + (d/2M)/9) - d`` when d < 2M, else M. To first order it is Young's (1974)
    ``sqrt(2 d M)``: saving more often wastes save time, less often wastes recomputed work."""
    d, m = max(save_seconds, 0.0), max(mtbf, 1e-9)
    if d >= 2 * m:
        return m
    x = d / (2 * m)
    return math.sqrt(2 * d * m) * (1 + math.sqrt(x) / 3 + x / 9) - d


def auto_interval(save_seconds: Optional[float], mtbf: Optional[float]) -> Tuple[float, str]:
    """The bounded Daly interval, and why (for the log and the ledger). With no save measured yet
    (``save_seconds`` None), the shortest interval: the first save measures what a save costs."""
    if save_seconds is None:
        return AUTO_MIN_SECONDS, (f"every {AUTO_MIN_SECONDS:.0f}s until a save has been measured (then Daly's "
                                  "interval from its time)")
    observed = mtbf is not None
    m = mtbf if observed else PRIOR_MTBF_SECONDS
    raw = daly_interval(save_seconds, m)
    seconds = min(AUTO_MAX_SECONDS, max(AUTO_MIN_SECONDS, raw))
    bound = "" if seconds == raw else f", bounded to [{AUTO_MIN_SECONDS:.0f}s, {AUTO_MAX_SECONDS:.0f}s]"
    source = "observed in this run" if observed else "assumed: none seen yet"
    return seconds, (f"every {seconds:.0f}s (Daly's interval ~ sqrt(2 x save x MTBF) = {raw:.0f}s{bound}; save "
                     f"{save_seconds:.1f}s measured, mean time between unannounced interruptions {m:.0f}s, {source})")


@dataclass
class Decision:
    """What to do at this step boundary."""

    save: bool = False
    log: bool = False
    evaluate: bool = False
    stop: bool = False
    reason: str = ""
    why: str = ""  # the kind of save asked for: periodic, deadline or signal (hpcrun.job.steps.decide)


class TimeTriggers:
    """Time-based save/log/eval intervals plus the deadline, for any training loop.

    Args:
        save_every: seconds between periodic saves (None: no periodic saves).
        log_every: seconds between log records (None: off).
        eval_every: seconds between evaluations (None: off).
        end_time: the job's end, as a Unix time (None: no deadline).
        margin: seconds the final save must finish before ``end_time``.
        save_guess: the save time assumed until one has been measured.
        clock: monotonic clock for intervals (tests pass a fake).
        wall: Unix-time clock for the deadline (tests pass a fake).
        auto_save: derive the save interval from the measured save time (checkpoint.save_every=auto), with
            ``mtbf`` the observed mean time between unannounced interruptions (None: the prior).
    """

    def __init__(
        self,
        save_every: Optional[float] = None,
        log_every: Optional[float] = None,
        eval_every: Optional[float] = None,
        end_time: Optional[float] = None,
        margin: float = 120.0,
        save_guess: float = 30.0,
        clock: Clock = time.monotonic,
        wall: Clock = time.time,
        auto_save: bool = False,
        mtbf: Optional[float] = None,
    ) -> None:
        self.clock, self.wall = clock, wall
        self.auto_save, self.mtbf = auto_save, mtbf
        self.on_interval: Optional[Callable[[float, str], Any]] = None  # told each auto interval and why
        self.save_interval = Interval(save_every, clock)
        self.log_interval = Interval(log_every, clock)
        self.eval_interval = Interval(eval_every, clock)
        self.end_time = end_time
        self.margin = margin
        self.estimates = Estimates(save_guess=save_guess)
        self._step_start: Optional[float] = None
        # Where saves are written in the background (a hpcrun.job.background.BackgroundSaves; None: each save is
        # written before training goes on), and since when one is being written.
        self.writer: Any = None
        self._writing_since: Optional[float] = None

    @classmethod
    def from_config(cls, cfg: Any, end_time: Optional[float], mtbf: Optional[float] = None) -> "TimeTriggers":
        """The run's triggers from checkpoint.* and the job's end (``mtbf``: the run's observed mean time between
        unannounced interruptions, for save_every=auto). Logging and evaluation intervals are the task's: see
        :meth:`set_intervals`."""
        from hpcrun.durations import parse_duration

        c = cfg.checkpoint
        return cls(save_every=c.save_every_seconds(), end_time=end_time,
                   margin=float(parse_duration(c.deadline_margin)), save_guess=float(parse_duration(c.save_time_guess)),
                   auto_save=c.save_every_auto, mtbf=mtbf)

    def set_intervals(self, log_every: Optional[float] = None, eval_every: Optional[float] = None) -> None:
        """Wall-clock logging and evaluation intervals (seconds; None: off), a task's own settings. Keeps the time
        elapsed since the last log and evaluation (restored from the checkpoint)."""
        self.log_interval.seconds = log_every or None
        self.eval_interval.seconds = eval_every or None

    def update_auto_interval(self) -> None:
        """save_every=auto: recompute the interval from the current save-time estimate (at start, after saves)."""
        if not self.auto_save:
            return
        # What a save costs training: the time it blocked it (a background save), else the whole save.
        measured = max(self.estimates.blocked or self.estimates.saves) if self.estimates.saves else None
        seconds, why = auto_interval(measured, self.mtbf)
        if self.estimates.blocked and seconds < self.estimates.save:  # never sooner than the last one is written
            seconds, why = self.estimates.save, f"{why}; raised to the background save's {self.estimates.save:.0f}s"
        old = self.save_interval.seconds
        if old is None or abs(seconds - old) > 0.1 * old:
            self.save_interval.seconds = seconds
            if self.on_interval is not None:
                self.on_interval(seconds, why)

    def step_started(self) -> None:
        self._step_start = self.clock()

    def time_left(self) -> Optional[float]:
        return None if self.end_time is None else self.end_time - self.wall()

    def step_ended(self) -> Decision:
        """Records the step's duration and decides; call once per optimizer step, on every rank."""
        if self._step_start is not None:
            self.estimates.add_step(self.clock() - self._step_start)
            self._step_start = None
        d = Decision(
            save=self.save_interval.due(), log=self.log_interval.due(), evaluate=self.eval_interval.due()
        )
        if d.save:
            d.reason = f"periodic save (every {self.save_interval.seconds:.0f}s)"
        left = self.time_left()
        if left is not None:
            # A save still being written in the background must finish before the final one can start.
            writing = 0.0 if self._writing_since is None else \
                max(0.0, self.estimates.save - (self.clock() - self._writing_since))
            needed = seconds_needed_to_stop(self.estimates, self.margin) + writing
            if left < needed:
                d.stop = d.save = True
                d.reason = (
                    f"deadline: {left:.0f}s left < step {self.estimates.step:.1f}s + save "
                    f"{self.estimates.save:.1f}s + margin {self.margin:.0f}s"
                    + (f" + the background save's remaining {writing:.1f}s" if writing else "")
                )
        if d.log:
            self.log_interval.reset()
        if d.evaluate:
            self.eval_interval.reset()
        return d

    def saved(self, seconds: float) -> None:
        """Records a finished save (periodic or final) and restarts the save interval."""
        self.estimates.add_save(seconds)
        self.save_interval.reset()
        self.update_auto_interval()

    def handed_off(self) -> None:
        """A save's state is copied out and training goes on while it is written in the background: the save
        interval restarts now, and the deadline counts the write until :meth:`written`."""
        self.save_interval.reset()
        self._writing_since = self.clock()

    def written(self, seconds: float, blocked: float) -> None:
        """A background save is complete, ``seconds`` after it began, of which training was blocked ``blocked``.
        The deadline arithmetic keeps the whole time (the final save is written before the job ends); the auto
        interval weighs what training lost (the blocked time)."""
        self._writing_since = None
        self.estimates.add_save(seconds)
        self.estimates.add_blocked(blocked)
        self.update_auto_interval()

    def state(self) -> Dict[str, Any]:
        """What a checkpoint keeps so a resumed run continues the same intervals and knows its save time."""
        return {
            "since_log": self.log_interval.elapsed(),
            "since_eval": self.eval_interval.elapsed(),
            "step_seconds": list(self.estimates.steps),
            "save_seconds": list(self.estimates.saves),
        }

    def restore(self, state: Dict[str, Any]) -> None:
        # The save interval restarts at resume: the checkpoint we resume from is a save that just happened.
        self.log_interval.restore(float(state.get("since_log", 0.0)))
        self.eval_interval.restore(float(state.get("since_eval", 0.0)))
        for s in state.get("save_seconds", []):
            self.estimates.add_save(float(s))
        # Step times are not restored: the new allocation may be a different node or GPU; one step re-measures.
