"""Slurm job states from sacct's rows (hpcrun.slurm.jobs.job_states), on sacct output as the dev cluster prints it."""

import os

from hpcrun.slurm.jobs import job_states
from tests.unit.test_status import _fake


def test_a_started_array_task_is_not_shown_pending_by_the_arrays_collapsed_row(tmp_path, monkeypatch):
    # Tasks 0 and 1 of 36 run while task 2 waits (a 2-CPU node): sacct prints the array's collapsed row of
    # unstarted tasks after the tasks' own rows, and its range still covers the two that started.
    path = _fake(tmp_path, "sacct", "36_0|RUNNING\n36_1|RUNNING\n36_[0-2%3]|PENDING\n")
    monkeypatch.setenv("PATH", f"{path}:{os.environ['PATH']}")
    assert job_states(["36_0", "36_1", "36_2"]) == {"36_0": "RUNNING", "36_1": "RUNNING", "36_2": "PENDING"}
