"""Wall-clock triggers and deadline arithmetic, on a fake clock."""

import math

import pytest

from hpcrun.job.triggers import Estimates, Interval, TimeTriggers, seconds_needed_to_stop


class FakeClock:
    def __init__(self, t: float = 1000.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t

    def advance(self, seconds: float) -> None:
        self.t += seconds


def _steps(triggers, clock, n, seconds):
    decisions = []
    for _ in range(n):
        triggers.step_started()
        clock.advance(seconds)
        decisions.append(triggers.step_ended())
    return decisions


def test_an_interval_fires_once_per_period_and_never_when_off():
    clock = FakeClock()
    every = Interval(60, clock)
    clock.advance(59)
    assert not every.due()
    clock.advance(1)
    assert every.due()
    every.reset()
    assert not every.due()
    assert not Interval(None, clock).due() and not Interval(0, clock).due()


def test_periodic_saves_come_every_save_every_seconds_of_wall_clock():
    clock = FakeClock()
    t = TimeTriggers(save_every=30, clock=clock, wall=clock)
    saves = []
    for i in range(20):
        (d,) = _steps(t, clock, 1, 4.0)
        if d.save:
            saves.append(i + 1)
            t.saved(1.0)
    assert saves == [8, 16]  # 32 s, then 32 s after the save


def test_time_based_logging_and_evaluation_fire_on_their_own_intervals():
    clock = FakeClock()
    t = TimeTriggers(log_every=10, eval_every=25, clock=clock, wall=clock)
    ds = _steps(t, clock, 10, 5.0)
    assert [i + 1 for i, d in enumerate(ds) if d.log] == [2, 4, 6, 8, 10]
    assert [i + 1 for i, d in enumerate(ds) if d.evaluate] == [5, 10]
    assert not any(d.save or d.stop for d in ds)


def test_the_deadline_stops_when_one_more_step_and_a_save_would_not_fit_before_the_margin():
    clock = FakeClock(0.0)
    # Ends at t=100; steps take 5 s, a save 10 s (guess), margin 20 s: stop once end - now < 35.
    t = TimeTriggers(end_time=100.0, margin=20.0, save_guess=10.0, clock=clock, wall=clock)
    ds = _steps(t, clock, 20, 5.0)
    first_stop = next(i for i, d in enumerate(ds) if d.stop) + 1
    assert first_stop == 14  # at t=70, 30 s left < 35; at t=65, 35 s left was still enough
    assert ds[first_stop - 1].save and "deadline" in ds[first_stop - 1].reason
    # The save then finishes by t=80, 20 s (the margin) before the end.


def test_a_measured_save_time_replaces_the_guess_and_moves_the_deadline_stop_earlier():
    clock = FakeClock(0.0)
    t = TimeTriggers(end_time=1000.0, margin=0.0, save_guess=1.0, clock=clock, wall=clock)
    t.saved(300.0)
    ds = _steps(t, clock, 200, 5.0)
    assert next(i for i, d in enumerate(ds) if d.stop) + 1 == 140  # 1000 - 700 = 300 < 5 + 300


def test_the_estimates_are_the_longest_recent_times():
    e = Estimates(save_guess=7.0)
    assert (e.step, e.save) == (0.0, 7.0)
    for s in (1.0, 3.0, 2.0):
        e.add_step(s)
    e.add_save(4.0)
    assert (e.step, e.save) == (3.0, 4.0)
    assert seconds_needed_to_stop(e, margin=10.0) == 17.0


def test_trigger_state_round_trips_through_a_checkpoint():
    clock = FakeClock()
    t = TimeTriggers(log_every=100, save_every=50, clock=clock, wall=clock)
    clock.advance(40)
    t.saved(12.0)
    state = t.state()
    clock2 = FakeClock(5000.0)
    resumed = TimeTriggers(log_every=100, save_every=50, clock=clock2, wall=clock2)
    resumed.restore(state)
    clock2.advance(60)
    d = resumed.step_ended()
    assert d.log  # 40 s before the save + 60 s after the resume = 100 s of training since the last log
    assert resumed.estimates.save == 12.0


def test_daly_interval_matches_youngs_square_root_to_first_order_and_the_mtbf_when_saves_are_slow():
    from hpcrun.job.triggers import daly_interval

    # Young: sqrt(2 d M); Daly adds small corrections and subtracts d: 60 s saves, 24 h MTBF -> ~53 min.
    assert daly_interval(60, 86400) == pytest.approx(math.sqrt(2 * 60 * 86400) * (1 + math.sqrt(60 / 172800) / 3
                                                                                  + 60 / 172800 / 9) - 60)
    assert 3100 < daly_interval(60, 86400) < 3250
    assert daly_interval(600, 200) == 200  # d >= 2M: checkpoint every MTBF
    assert daly_interval(60, 4 * 3600) < daly_interval(60, 24 * 3600)  # more interruptions -> save more often


def test_auto_interval_is_bounded_and_starts_short_until_a_save_is_measured():
    from hpcrun.job.triggers import AUTO_MAX_SECONDS, AUTO_MIN_SECONDS, auto_interval

    assert auto_interval(None, None)[0] == AUTO_MIN_SECONDS
    assert auto_interval(0.3, 120)[0] == AUTO_MIN_SECONDS  # ~8 s by Daly: bounded
    assert auto_interval(600, 10 * 86400)[0] == AUTO_MAX_SECONDS
    seconds, why = auto_interval(60, None)
    assert 3100 < seconds < 3250 and "assumed" in why and "60.0s measured" in why


def test_save_every_auto_follows_the_measured_save_time():
    from hpcrun.job.triggers import TimeTriggers

    clock = FakeClock()
    told = []
    t = TimeTriggers(auto_save=True, mtbf=3600.0, clock=clock, wall=clock)
    t.on_interval = lambda s, why: told.append(s)
    t.update_auto_interval()
    assert t.save_interval.seconds == 60  # nothing measured yet
    t.saved(10.0)
    assert t.save_interval.seconds == pytest.approx(daly(10.0, 3600.0))
    t.saved(40.0)  # slower saves: save less often
    assert t.save_interval.seconds == pytest.approx(daly(40.0, 3600.0)) and len(told) == 3


def daly(d, m):
    from hpcrun.job.triggers import daly_interval

    return daly_interval(d, m)


def test_the_mtbf_counts_only_starts_that_ended_without_a_clean_stop():
    from hpcrun.rundir.state import mean_time_between_failures

    starts = [{"started_at": 0, "ended_at": 1000, "end": "requeued: signal"},  # announced: not a failure
              {"started_at": 1100},                                          # killed (no ended_at)
              {"started_at": 1700},                                          # the current start
              ]
    assert mean_time_between_failures({"starts": starts}, now=2000) == (1000 + 600) / 1
    assert mean_time_between_failures({"starts": starts[:1] + [{"started_at": 1100}]}, now=2000) is None
