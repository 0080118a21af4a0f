"""The retry policy for sbatch, with sbatch's real messages (copied from the dev cluster with slurmctld stopped)
and a stand-in for the submission itself. The real controller outage is tests/integration/test_slurm_faults.py."""

import pytest
import submitit

from hpcrun.errors import SubmissionError, SubmissionUncertain
from hpcrun.slurm import client as slurm_info

UNREACHABLE = "sbatch: error: Batch job submission failed: Unable to contact slurm controller (connect failure)"
TIMED_OUT = "sbatch: error: Batch job submission failed: Socket timed out on send/recv operation"
REFUSED = "sbatch: error: invalid partition specified: gpu"


class FlakySbatch:
    def __init__(self, *failures):
        self.failures = list(failures)
        self.calls = 0

    def __call__(self):
        self.calls += 1
        if self.failures:
            raise submitit.core.utils.FailedJobError(f"Command failed\n{self.failures.pop(0)}\n")
        return "job"


@pytest.fixture(autouse=True)
def no_sleep(monkeypatch):
    slept = []
    monkeypatch.setattr(slurm_info.time, "sleep", slept.append)
    monkeypatch.setenv("HPCRUN_SLURM_ATTEMPTS", "4")
    monkeypatch.setenv("HPCRUN_SLURM_BACKOFF", "2")
    return slept


def test_an_unreachable_controller_is_retried_with_doubling_back_off_until_it_answers(no_sleep, capsys):
    sbatch = FlakySbatch(UNREACHABLE, UNREACHABLE)
    assert slurm_info.submit_with_retries(sbatch) == "job"
    assert sbatch.calls == 3 and no_sleep == [2, 4]
    assert "trying again in 4 s (attempt 3 of 4)" in capsys.readouterr().err


def test_the_retries_are_bounded_and_end_in_one_error_saying_nothing_was_submitted(no_sleep):
    sbatch = FlakySbatch(*[UNREACHABLE] * 10)
    with pytest.raises(SubmissionError, match=r"sbatch failed 4 times over \d+ s and submitted nothing: .*"
                                              r"Unable to contact slurm controller"):
        slurm_info.submit_with_retries(sbatch)
    assert sbatch.calls == 4 and no_sleep == [2, 4, 8]


def test_a_lost_answer_is_not_retried_a_retry_could_submit_twice(no_sleep):
    sbatch = FlakySbatch(TIMED_OUT)
    with pytest.raises(SubmissionUncertain, match="may or may not have been submitted; check `squeue --me`"):
        slurm_info.submit_with_retries(sbatch)
    assert sbatch.calls == 1 and no_sleep == []


def test_a_refusal_is_not_retried(no_sleep):
    sbatch = FlakySbatch(REFUSED)
    with pytest.raises(SubmissionError, match="^sbatch refused the job: sbatch: error: invalid partition specified"):
        slurm_info.submit_with_retries(sbatch)
    assert sbatch.calls == 1 and no_sleep == []
