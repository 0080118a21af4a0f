"""Durations as users write them: Slurm times (``48:00:00``, ``2-00:00:00``) and intervals (``30m``, ``90s``).

Pure functions, no imports beyond the standard library: both sides use them.
"""

from __future__ import annotations

import re

# Slurm's --time forms: "M", "M:S", "H:M:S", "D-H", "D-H:M", "D-H:M:S" (sbatch(1)).
_SLURM_TIME = re.compile(
    r"^(?:(?P<days>\d+)-(?P<dh>\d+)(?::(?P<dm>\d+)(?::(?P<ds>\d+))?)?"
    r"|(?P<a>\d+)(?::(?P<b>\d+)(?::(?P<c>\d+))?)?)$"
)
_UNIT_TIME = re.compile(r"^(?P<n>\d+(?:\.\d+)?)(?P<unit>s|m|min|h|d)$")
_UNIT_SECONDS = {"s": 1, "m": 60, "min": 60, "h": 3600, "d": 86400}
EXPECTED = "a Slurm time (MM, HH:MM:SS, D-HH:MM:SS) or a number with a unit (90s, 30m, 2h, 1d)"


def parse_duration(text: str | int | float) -> int:
    """Parses a duration and returns whole seconds.

    Accepts Slurm's ``--time`` forms (a bare number means minutes, as in Slurm) and a number with one unit
    (``s``, ``m``/``min``, ``h``, ``d``).

    Args:
        text: the duration as written.

    Returns:
        The duration in seconds.

    Raises:
        ValueError: the text is neither form; the message lists the accepted forms.
    """
    if isinstance(text, bool):
        raise ValueError(f"{text!r} is not a duration; expected {EXPECTED}")
    if isinstance(text, (int, float)):
        text = str(int(text)) if float(text).is_integer() else str(text)
    s = str(text).strip()
    m = _UNIT_TIME.match(s)
    if m:
        return int(round(float(m["n"]) * _UNIT_SECONDS[m["unit"]]))
    m = _SLURM_TIME.match(s)
    if m:
        if m["days"] is not None:
            return (
                int(m["days"]) * 86400 + int(m["dh"]) * 3600 + int(m["dm"] or 0) * 60 + int(m["ds"] or 0)
            )
        if m["c"] is not None:  # H:M:S
            return int(m["a"]) * 3600 + int(m["b"]) * 60 + int(m["c"])
        if m["b"] is not None:  # M:S
            return int(m["a"]) * 60 + int(m["b"])
        return int(m["a"]) * 60  # M
    raise ValueError(f"{text!r} is not a duration; expected {EXPECTED}")


def seconds_or_none(value: "str | int | float | None") -> "float | None":
    """A duration setting as seconds, or None when it is off (None, empty or 0)."""
    if value in (None, "", 0, "0"):
        return None
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else float(
        parse_duration(value))


def format_slurm_time(seconds: int) -> str:
    """Formats seconds as Slurm's ``D-HH:MM:SS`` (or ``HH:MM:SS`` under a day), rounding up to whole minutes.

    Slurm's time limit has a resolution of one minute; rounding up never asks for less than the user wrote.
    """
    if seconds <= 0:
        raise ValueError(f"a time limit must be positive, got {seconds} s")
    minutes = -(-seconds // 60)
    days, rest = divmod(minutes, 1440)
    hours, mins = divmod(rest, 60)
    hms = f"{hours:02d}:{mins:02d}:00"
    return f"{days}-{hms}" if days else hms


def format_human(seconds: float) -> str:
    """Formats seconds for people: ``45s``, ``12m30s``, ``3h05m``, ``2d04h``."""
    s = int(round(seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    if s < 86400:
        return f"{s // 3600}h{(s % 3600) // 60:02d}m"
    return f"{s // 86400}d{(s % 86400) // 3600:02d}h"
