"""hpcrun's exceptions. A :class:`UserError` is printed as one line (no traceback) with a non-zero exit."""

from __future__ import annotations

from typing import Iterable, Optional


class HpcrunError(Exception):
    """Base class of every error hpcrun raises on purpose."""


class UserError(HpcrunError):
    """Something the user can fix: bad input, a missing file, an unreachable scheduler."""


class ConfigError(UserError):
    """A config key has a bad value, or does not exist.

    Args:
        key: the full dotted key, e.g. ``cluster.time``.
        value: the offending value as the user wrote it.
        expected: what would have been valid, in words (e.g. ``"a Slurm time such as 48:00:00"``).
        choices: the valid choices, when there is a closed set.
        problem: what is wrong, after ``key=value`` (default ``"is invalid"``).
        hint: a last clause, e.g. ``"did you mean train.lr?"``.
    """

    def __init__(
        self,
        key: str,
        value: object,
        expected: Optional[str] = None,
        choices: Optional[Iterable[str]] = None,
        problem: str = "is invalid",
        hint: Optional[str] = None,
    ) -> None:
        self.key = key
        self.value = value
        self.choices = sorted(choices) if choices is not None else None
        message = f"{key}={value!r} {problem}"
        if expected:
            message += f": expected {expected}"
        if self.choices is not None:
            message += f"; valid choices: {', '.join(self.choices) if self.choices else '(none)'}"
        if hint:
            message += f"; {hint}"
        super().__init__(message)


class SubmissionError(UserError):
    """sbatch refused the job, or Slurm could not be reached."""


class SubmissionUncertain(SubmissionError):
    """sbatch's answer was lost: the job may have been submitted, so its run directory must stay."""


class JobError(HpcrunError):
    """The job failed on the compute side."""


class DiskFullError(JobError):
    """A save ran out of disk space or quota: the run stops resumable, its previous checkpoint intact."""
