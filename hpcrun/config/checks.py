"""Value checks for config sections, hpcrun's own and a task's (a settings class may use them too).

Each raises :class:`~hpcrun.errors.ConfigError` naming the full key and the value. Standard library only.
"""

from __future__ import annotations

from typing import Any, List, Optional

from hpcrun.durations import EXPECTED as DURATION_FORMS
from hpcrun.durations import parse_duration
from hpcrun.errors import ConfigError


def positive_int(key: str, value: Any, upper: Optional[int] = None) -> None:
    """``value`` is an integer from 1 (to ``upper``)."""
    if not isinstance(value, int) or value < 1 or (upper is not None and value > upper):
        bound = f"an integer from 1 to {upper}" if upper else "a positive integer"
        raise ConfigError(key, value, bound)


def duration(key: str, value: Any) -> int:
    """``value`` as seconds (a Slurm time or a number with a unit)."""
    try:
        return parse_duration(value)
    except ValueError:
        raise ConfigError(key, value, DURATION_FORMS) from None


TRACKERS = ("tensorboard", "wandb")  # what train.report_to may name (hpcrun.frameworks.transformers.trackers)


def trackers(key: str, value: Any) -> List[str]:
    """The tracker names of ``value`` (a list, or one name), each once, in order."""
    names = [value] if isinstance(value, str) else list(value)
    for name in names:
        if name not in TRACKERS:
            hint = "mlflow is not supported: each requeue would open a new MLflow run" if name == "mlflow" else None
            raise ConfigError(key, name, choices=TRACKERS, problem="names no tracker hpcrun supports",
                              hint=hint or "use [] for none")
    return list(dict.fromkeys(names))
