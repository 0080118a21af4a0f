"""``hpcrun results SWEEP``: which point of a sweep did best. Login node (no torch; matplotlib for ``--plot`` only).

One row per point: the values the sweep varied (the keys whose values differ between its points, as the sweep
record lists each point's overrides), the run's state and step (``hpcrun status``'s, with its one sacct call), and
the last value of every number the task logged in ``metrics.jsonl`` (the built-in task: ``loss``, ``eval_loss``,
``learning_rate``, ``grad_norm``, ...; any task that writes the file, its own), NaN and infinity included: a point
that diverged shows ``nan``. Sorted by one metric (default ``eval_loss`` where any point has it, else ``loss``),
smallest first (``--desc`` for an accuracy); a diverged point (any last value not finite) after the others, whatever
the direction: its finite numbers mislead (the Trainer logs ``loss`` 0.0 once every step's loss was NaN); points
without the metric last. As a table, ``--json`` (every metric; NaN as ``"nan"``: strict JSON) or ``--csv``;
``--plot FILE.png`` draws the metric against a swept value (``--x KEY``; default the first swept key whose values
are numbers), one line per value of a second swept key.
"""

from __future__ import annotations

import csv
import io
import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

from hpcrun.errors import UserError
from hpcrun.rundir.index import is_sweep_dir, read_sweep
from hpcrun.rundir.layout import RunDir

SKIP = ("step", "time", "epoch")  # bookkeeping fields of a metrics record, not results
SHOWN = ("eval_loss", "loss")  # the table's metric columns besides the one it is sorted by


@dataclass
class PointResult:
    run_dir: str
    values: Dict[str, str]  # swept key -> its value in this point
    state: str
    step: int
    max_steps: int
    metrics: Dict[str, float] = field(default_factory=dict)  # the last logged value of each (NaN, inf kept)


def final_metrics(run_dir: Path) -> Dict[str, float]:
    """The last value the run logged for each numeric field of its metrics.jsonl (a torn line is skipped)."""
    last: Dict[str, float] = {}
    try:
        lines = RunDir(run_dir).metrics.read_text(errors="replace").splitlines()
    except OSError:
        return last
    for line in lines:
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if not isinstance(record, dict):
            continue
        for key, value in record.items():
            if key in SKIP or isinstance(value, bool):
                continue
            try:
                number = float(value)
            except (TypeError, ValueError):
                continue
            last[key] = number  # NaN and inf too: the last value is the last one, a diverged run's included
    return last


def diverged(row: PointResult) -> bool:
    """Whether any last value of the point is NaN or infinite (its loss may still read 0.0: see ranked)."""
    return not all(math.isfinite(v) for v in row.metrics.values())


def swept_values(points: Sequence[Sequence[str]]) -> Tuple[List[str], List[Dict[str, str]]]:
    """The keys whose values differ between the points (in the order they appear), and each point's values (as the
    sweep wrote them: Hydra's sweeper's text, ``0.0001`` for ``1e-4``)."""
    parsed = [dict((o.split("=", 1)[0].lstrip("+~"), o.split("=", 1)[1]) for o in p if "=" in o) for p in points]
    keys: List[str] = []
    for values in parsed:
        for key in values:
            if key not in keys and len({v.get(key) for v in parsed}) > 1:
                keys.append(key)
    return keys, [{k: v.get(k, "") for k in keys} for v in parsed]


def results(sweep_dir: Path) -> Tuple[List[str], List[PointResult]]:
    """The sweep's swept keys and one result per point, in point order."""
    from hpcrun.observe.status import statuses

    if not is_sweep_dir(sweep_dir):
        raise UserError(f"{sweep_dir} is not a sweep directory (no sweep.json): hpcrun results shows a sweep's "
                        "points side by side (hpcrun status or report for one run)")
    points = read_sweep(sweep_dir).get("points", [])
    keys, values = swept_values([p.get("overrides", []) for p in points])
    run_dirs = [Path(p["run_dir"]) for p in points]
    rows = []
    for run_dir, status, vals in zip(run_dirs, statuses(run_dirs), values):
        rows.append(PointResult(str(run_dir), vals, status.state, status.step, status.max_steps,
                                final_metrics(run_dir)))
    return keys, rows


def sort_metric(rows: Sequence[PointResult], metric: Optional[str]) -> str:
    """The metric to sort by: the one asked for (a one-line error naming what was logged when no point has it),
    else eval_loss where any point logged it, else loss."""
    logged = sorted({k for r in rows for k in r.metrics})
    if metric:
        if logged and metric not in logged:
            raise UserError(f"--sort {metric}: no point logged it; logged: {', '.join(logged)}")
        return metric
    return next((m for m in SHOWN if m in logged), SHOWN[-1])


def ranked(rows: Sequence[PointResult], metric: str, descending: bool = False) -> List[PointResult]:
    """``rows`` by ``metric``, best first; then the diverged points (a value not finite: never best, whatever the
    direction; the Trainer's NaN filter logs ``loss`` 0.0 for one whose every step was NaN), in point order; then the
    points without ``metric``, in point order."""
    have = [r for r in rows if metric in r.metrics and not diverged(r)]
    have.sort(key=lambda r: r.metrics[metric], reverse=descending)
    return (have + [r for r in rows if metric in r.metrics and diverged(r)]
            + [r for r in rows if metric not in r.metrics])


def _number(x: Optional[float]) -> str:
    return "-" if x is None else f"{x:.4g}"


def table(keys: Sequence[str], rows: Sequence[PointResult], metric: str) -> str:
    columns = [metric] + [m for m in SHOWN if m != metric and any(m in r.metrics for r in rows)]
    head = ["#", *keys, "STATE", "STEP", *[c.upper() for c in columns]]
    cells = [[str(i), *[r.values.get(k, "") for k in keys], r.state,
              f"{r.step}/{r.max_steps}" if r.max_steps else str(r.step or "-"),
              *[_number(r.metrics.get(c)) for c in columns]] for i, r in enumerate(rows, 1)]
    widths = [max([len(h)] + [len(c[i]) for c in cells]) for i, h in enumerate(head)]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(line, widths)).rstrip() for line in [head, *cells])


def as_json(keys: Sequence[str], rows: Sequence[PointResult], metric: str) -> str:
    """Strict JSON: a value that is not finite is the string ``"nan"``, ``"inf"`` or ``"-inf"`` (bare NaN is no
    JSON: jq and most parsers refuse it)."""
    points = [{**asdict(r), "metrics": {k: v if math.isfinite(v) else str(v) for k, v in r.metrics.items()}}
              for r in rows]
    return json.dumps({"swept": list(keys), "sorted_by": metric, "points": points}, indent=1, allow_nan=False)


def as_csv(keys: Sequence[str], rows: Sequence[PointResult]) -> str:
    metrics = sorted({k for r in rows for k in r.metrics})
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow([*keys, "state", "step", "max_steps", *metrics, "run_dir"])
    for r in rows:
        writer.writerow([*[r.values.get(k, "") for k in keys], r.state, r.step, r.max_steps,
                         *[r.metrics.get(m, "") for m in metrics], r.run_dir])
    return out.getvalue()


def _as_float(text: str) -> Optional[float]:
    try:
        return float(text)
    except (TypeError, ValueError):
        return None


def plot_axis(keys: Sequence[str], rows: Sequence[PointResult], x: Optional[str] = None) -> str:
    """The swept key a plot puts on its x axis: ``x``, or the first swept key whose values are numbers. Raises
    UserError for a key the sweep does not vary, or one whose values are not numbers (before anything is printed)."""
    numeric = [k for k in keys if all(_as_float(r.values.get(k, "")) is not None for r in rows)]
    if x is None:
        if not numeric:
            raise UserError("--plot needs a swept key whose values are numbers (--x KEY names one)")
        x = numeric[0]
    elif x not in keys:
        raise UserError(f"--x {x}: not a key this sweep varies ({', '.join(keys) or 'none'})")
    if x not in numeric:
        raise UserError(f"--x {x}: its values are not all numbers")
    return x


def plot(keys: Sequence[str], rows: Sequence[PointResult], metric: str, path: Path, x: Optional[str] = None) -> str:
    """``metric`` against the swept value ``x`` (default: the first swept key whose values are numbers), one line
    per value of the next swept key; returns the x key used."""
    x = plot_axis(keys, rows, x)
    group = next((k for k in keys if k != x), None)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    series: Dict[str, List[Tuple[float, float]]] = {}
    for r in rows:
        if math.isfinite(r.metrics.get(metric, math.nan)):  # a diverged point has no place on the axis
            label = f"{group}={r.values.get(group, '')}" if group else metric
            series.setdefault(label, []).append((float(r.values[x]), r.metrics[metric]))
    if not series:
        raise UserError(f"nothing to plot: no point logged a finite {metric} yet")
    fig, ax = plt.subplots(figsize=(7, 4.2))
    for label, pts in sorted(series.items()):
        pts.sort()
        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=label)
    xs = [float(r.values[x]) for r in rows]
    if min(xs) > 0 and max(xs) / min(xs) >= 10:
        ax.set_xscale("log")
    ax.set_xlabel(x)
    ax.set_ylabel(metric)
    if group:
        ax.legend(fontsize=7, ncol=2 if len(series) > 6 else 1)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=130)
    plt.close(fig)
    return x
