import pytest

from hpcrun.durations import format_human, format_slurm_time, parse_duration


@pytest.mark.parametrize(
    "text, seconds",
    [
        ("48:00:00", 48 * 3600),
        ("2-00:00:00", 2 * 86400),
        ("7-00:00:00", 7 * 86400),
        ("1-12", 86400 + 12 * 3600),
        ("1-12:30", 86400 + 12 * 3600 + 30 * 60),
        ("90", 90 * 60),  # a bare number is minutes, as in Slurm
        ("5:30", 5 * 60 + 30),
        ("30m", 1800),
        ("90s", 90),
        ("2h", 7200),
        ("1.5h", 5400),
        ("1d", 86400),
        ("45min", 2700),
        (90, 90 * 60),
    ],
)
def test_slurm_times_and_unit_durations_parse_to_seconds(text, seconds):
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["30 mins", "", "abc", "1:2:3:4", "-5", "2-", "1w", "h", True])
def test_malformed_durations_are_refused_with_the_accepted_forms(text):
    with pytest.raises(ValueError, match="expected a Slurm time"):
        parse_duration(text)


@pytest.mark.parametrize(
    "seconds, slurm",
    [(48 * 3600, "2-00:00:00"), (3600, "01:00:00"), (61, "00:02:00"), (7 * 86400, "7-00:00:00"), (59, "00:01:00")],
)
def test_slurm_time_format_rounds_up_to_whole_minutes(seconds, slurm):
    assert format_slurm_time(seconds) == slurm
    assert parse_duration(slurm) >= seconds


def test_human_format_is_short():
    assert [format_human(s) for s in (5, 750, 3 * 3600 + 300, 2 * 86400 + 4 * 3600)] == ["5s", "12m30s", "3h05m", "2d04h"]
