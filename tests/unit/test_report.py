"""The goodput arithmetic of `hpcrun report`, on hand-written ledgers with known answers (the real runs that
produce ledgers are in tests/integration/test_report_slurm.py)."""

import json

import pytest

from hpcrun.observe.report import report_json, report_text, run_report, start_segments, totals

T0 = 1_000_000.0


def ev(event, t, start=1, **fields):
    return {"event": event, "t": T0 + t, "start": start, **fields}


def by_kind(report):
    return {k: round(report.total(k), 6) for k in ("startup", "training", "saving", "lost", "other")}


def test_a_clean_stop_splits_into_startup_training_saving_and_other():
    events = [ev("start", 0, resumed_from=0), ev("first_step", 10, step=1), ev("progress", 70, step=61),
              ev("save", 102, step=90, began=T0 + 100, seconds=2, why="signal"), ev("end", 105, status="requeued")]
    r = start_segments(events, (T0, T0 + 110), next_resumed_from=90, times_from="ledger")
    # start-up to the first step; training 10->100; the stop save 100->102; then exit and requeue
    assert by_kind(r) == {"startup": 10, "training": 90, "saving": 2, "lost": 0, "other": 8}
    assert r.end == "requeued" and r.last_step == 90


def test_the_step_recorded_again_after_a_stop_save_is_not_lost_work():
    # The Trainer's on_train_end records the step it stopped at once more, after the stop save: no step past the
    # saved one was computed, so nothing is lost (CI saw 0.01 s "lost" on a loaded machine).
    events = [ev("start", 0, resumed_from=0), ev("first_step", 10, step=1),
              ev("signal", 99.5, step=90, signal="SIGUSR2"),
              ev("save", 102, step=90, began=T0 + 100, seconds=2, why="signal"), ev("progress", 103, step=90),
              ev("end", 105, status="requeued")]
    r = start_segments(events, (T0, T0 + 110), next_resumed_from=90, times_from="ledger", logged=[(T0 + 102.5, 90)])
    assert by_kind(r) == {"startup": 10, "training": 90, "saving": 2, "lost": 0, "other": 8}


def test_a_killed_start_loses_everything_after_the_checkpoint_the_next_start_resumed_from():
    events = [ev("start", 0, resumed_from=0), ev("first_step", 10, step=1),
              ev("save", 51, step=40, began=T0 + 50, seconds=1, why="periodic"), ev("progress", 80, step=70)]
    r = start_segments(events, (T0, T0 + 100), next_resumed_from=40, times_from="sacct")
    # killed at 100 (sacct's end): 10->50 kept, the save 50->51, 51->100 recomputed by the next start
    assert by_kind(r) == {"startup": 10, "training": 40, "saving": 1, "lost": 49, "other": 0}
    assert r.end == "killed"


def test_a_start_stopped_without_a_save_or_a_step_loses_its_training_after_the_last_checkpoint(tmp_path):
    # A second Ctrl-C (or the command's crash): the end event knows no step. The start trained from its save at
    # step 20 (t=50) until that end (t=60): lost, as for a killed start, not "other"; and its recomputed steps (the
    # ledger saw none past 20) are only a lower bound, which the report says.
    run = tmp_path / "name" / "id"
    run.mkdir(parents=True)
    lines = [ev("start", 0, 1, resumed_from=0), ev("first_step", 10, 1, step=1),
             ev("save", 50, 1, step=20, began=T0 + 49, seconds=1, why="trainer"),
             ev("end", 60, 1, status="stopped", reason="interrupted by a second Ctrl-C, without a save", step=None),
             ev("start", 70, 2, resumed_from=20), ev("first_step", 75, 2, step=21), ev("progress", 100, 2, step=60),
             ev("end", 101, 2, status="completed", step=60)]
    (run / "ledger.jsonl").write_text("".join(json.dumps(e) + "\n" for e in lines))
    r = run_report(run, None)
    first, second = r.starts
    assert by_kind(first) == {"startup": 10, "training": 39, "saving": 1, "lost": 10, "other": 0}
    assert first.step_unknown and not second.step_unknown
    assert r.recomputed_steps == 0 and r.recomputed_at_least
    assert "(at least: start 1 ended without recording its last step)" in report_text([r])
    assert "steps 0-20+" in report_text([r])
    assert json.loads(report_json([r]))["total"]["recomputed_steps_at_least"] is True


def test_a_start_stopped_after_its_stop_save_knows_its_step():
    events = [ev("start", 0, resumed_from=0), ev("first_step", 10, step=1),
              ev("save", 50, step=40, began=T0 + 49, seconds=1, why="signal"),
              ev("end", 55, status="stopped", reason="signal SIGINT", step=40)]
    r = start_segments(events, (T0, T0 + 56), next_resumed_from=40, times_from="ledger")
    assert by_kind(r) == {"startup": 10, "training": 39, "saving": 1, "lost": 0, "other": 6}
    assert not r.step_unknown


def test_a_start_that_saved_nothing_the_next_one_used_lost_all_its_training():
    events = [ev("start", 0, resumed_from=40), ev("first_step", 5, step=41), ev("progress", 65, step=100)]
    r = start_segments(events, (T0, T0 + 70), next_resumed_from=40, times_from="sacct")
    assert by_kind(r) == {"startup": 5, "training": 0, "saving": 0, "lost": 65, "other": 0}


def test_a_start_that_never_reached_a_step_is_all_startup():
    r = start_segments([ev("start", 0, resumed_from=0), ev("end", 30, status="failed")], (T0, T0 + 30), None,
                       "ledger")
    assert by_kind(r) == {"startup": 30, "training": 0, "saving": 0, "lost": 0, "other": 0}


def test_a_run_sums_its_starts_and_the_queue_wait_between_them(tmp_path):
    run = tmp_path / "name" / "id"
    run.mkdir(parents=True)
    lines = [ev("start", 0, 1, resumed_from=0, job_id="7", restart=0), ev("first_step", 10, 1, step=1),
             ev("save", 101, 1, step=90, began=T0 + 100, seconds=1, why="signal"), ev("end", 104, 1, status="requeued"),
             ev("start", 200, 2, resumed_from=90, job_id="7", restart=1), ev("first_step", 210, 2, step=91),
             ev("progress", 300, 2, step=180), ev("end", 305, 2, status="completed")]
    (run / "ledger.jsonl").write_text("".join(json.dumps(e) + "\n" for e in lines) + '{"event": "torn li')
    sacct = {"7": [(T0, T0 + 105, T0 - 50), (T0 + 190, T0 + 310, T0 - 50)]}  # Slurm's own allocation times
    r = run_report(run, sacct)
    assert [s.times_from for s in r.starts] == ["sacct", "sacct"]
    assert r.allocated == 105 + 120
    assert r.queue_waits == [85]
    # start 1: 10 s start-up, 90 training, 1 saving, 4 other; start 2 (from 190): 20 s start-up, 90 training, 10 other
    assert round(r.total("training"), 6) == 180 and round(r.total("startup"), 6) == 30
    assert r.goodput == pytest.approx(180 / 225)
    assert r.recomputed_steps == 0
    data = json.loads(report_json([r]))
    assert data["total"]["goodput"] == round(180 / 225, 4) and len(data["runs"][0]["per_start"]) == 2
    assert totals([r, r])["allocated_s"] == 450


def test_each_start_shows_where_its_start_up_went_phase_by_phase_and_its_first_step():
    events = [ev("start", 0, resumed_from=40), ev("phase", 0.1, name="launch", seconds=1.7),
              ev("phase", 0.2, name="interpreter", seconds=0.9), ev("phase", 0.4, name="setup", seconds=0.4),
              ev("phase", 2.4, name="imports", seconds=2.0), ev("phase", 2.5, name="data", seconds=0.1),
              ev("phase", 2.8, name="model", seconds=0.3), ev("phase", 3.4, name="checkpoint load", seconds=0.6),
              ev("first_step", 4.0, step=41), ev("end", 10, status="completed")]
    r = start_segments(events, (T0 - 2.6, T0 + 10), None, "sacct")
    assert [name for name, _ in r.phases] == ["launch", "interpreter", "setup", "imports", "data", "model",
                                               "checkpoint load", "first step"]
    assert r.phases[-1][1] == pytest.approx(0.6)  # the first step: after the last phase, to its end
    assert sum(s for _, s in r.phases) == pytest.approx(r.total("startup"))  # the phases cover the start-up


def test_a_save_written_in_the_background_counts_as_saving_only_while_it_blocked_training():
    events = [ev("start", 0, resumed_from=0), ev("first_step", 10, step=1),
              ev("save", 60, step=40, began=T0 + 50, seconds=0.5, why="periodic", written=10, background=True),
              ev("progress", 100, step=90), ev("end", 101, status="completed")]
    r = start_segments(events, (T0, T0 + 101), None, "ledger")
    assert by_kind(r)["saving"] == 0.5 and by_kind(r)["training"] == pytest.approx(89.5)


def _run_dir(tmp_path, state, events=()):
    run = tmp_path / "name" / "id"
    run.mkdir(parents=True)
    (run / "config.yaml").write_text("run:\n  name: name\n")
    (run / "state.json").write_text(json.dumps(state))
    if events:
        (run / "ledger.jsonl").write_text("".join(json.dumps(e) + "\n" for e in events))
    return run


def test_a_run_whose_start_never_reached_a_step_has_no_time_to_first_step(tmp_path):
    run = _run_dir(tmp_path, {"status": "failed", "reason": "ConfigError: ...", "job_id": None},
                   [ev("start", 0, resumed_from=0), ev("phase", 12, name="imports", seconds=11),
                    ev("end", 14, status="failed", reason="ConfigError: ...", step=None)])
    r = run_report(run, None)
    assert r.time_to_first_step is None and not r.starts[0].reached_step
    text = report_text([r])
    assert text.splitlines()[2].split() == ["to", "first", "step", "-"], text
    assert "start 1 (1 process, steps 0-0): 14s start-up, never reached a step: imports 11.0s" in text
    assert not r.starts[0].step_unknown  # it trained nothing: its step is the one it resumed from
    assert json.loads(report_json([r]))["runs"][0]["time_to_first_step_s"] is None


def test_the_time_to_first_step_is_the_first_start_that_reached_one(tmp_path):
    run = _run_dir(tmp_path, {"status": "completed", "reason": "trained to step 10", "job_id": None},
                   [ev("start", 0, 1, resumed_from=0), ev("end", 14, 1, status="failed", reason="OOM", step=None),
                    ev("start", 20, 2, resumed_from=0), ev("first_step", 25, 2, step=1),
                    ev("end", 30, 2, status="completed", step=10)])
    r = run_report(run, None)
    assert r.time_to_first_step == pytest.approx(5)
    assert "to first step           5s  (start 2: start 1 never reached a step)" in report_text([r])


@pytest.mark.parametrize("state, slurm, label", [
    # cancelled with hpcrun cancel while it ran: it saved and recorded stopped, cancelled
    ({"status": "stopped", "reason": "cancelled (SIGTERM); saved step 8", "cancelled": True, "job_id": "12_1"}, {},
     "CANCELLED"),
    # cancelled while pending: the submission's state only, and Slurm's word
    ({"status": "submitted", "reason": "", "job_id": "29_0"}, {"29_0": "CANCELLED"}, "CANCELLED"),
    ({"status": "completed", "reason": "trained to step 10", "job_id": "7"}, {"7": "COMPLETED"}, "COMPLETED"),
])
def test_the_report_labels_a_run_as_hpcrun_status_shows_it(tmp_path, monkeypatch, capsys, state, slurm, label):
    import hpcrun.observe.report
    import hpcrun.slurm.jobs
    from hpcrun.cli import main
    from hpcrun.observe.status import run_status

    events = [] if state["status"] == "submitted" else [ev("start", 0, resumed_from=0, job_id=state["job_id"]),
                                                         ev("first_step", 5, step=1), ev("end", 9, status="stopped")]
    run = _run_dir(tmp_path, state, events)
    monkeypatch.setattr(hpcrun.slurm.jobs, "job_states", lambda jobs: {j: slurm[j] for j in jobs if j in slurm})
    monkeypatch.setattr(hpcrun.observe.report, "sacct_runs", lambda jobs: None)
    assert run_status(run, slurm).state == label
    assert main(["report", str(run)]) == 0
    first = capsys.readouterr().out.splitlines()[0]
    assert first == f"{run}  ({label}, {len({e['start'] for e in events})} start(s))"
    assert main(["report", str(run), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["runs"][0]["state"] == label
