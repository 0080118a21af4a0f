"""``hpcrun report RUN_OR_SWEEP``: where the allocated wall clock went, per start, per run, summed over a sweep.

From each run's ledger (``ledger.jsonl``, hpcrun.rundir.ledger) and ONE ``sacct`` call for all the runs' jobs (the
allocation's real start and end, and the queue waits between restarts; without sacct, the ledger's own times). Each
run is labelled with its STATE as ``hpcrun status`` shows it (hpcrun.observe.states.shown_state, on status's own
sacct call): ``CANCELLED`` for a run cancelled in the queue or while it ran, not state.json's ``submitted`` or
``stopped``.
Each start of a run is cut into segments (docs/goodput.md):

    startup   allocation start -> the end of the first training step (Slurm's launch, imports, data, model,
              loading the checkpoint, the first step)
    training  training steps whose work survived (evaluations during training included)
    saving    checkpoint saves, the time training was blocked on them
    lost      training after the point the next start resumed from: those steps were computed again
    other     after the last step: the final weights, exit, requeue; and for a start that ended without knowing its
              step, nothing: killed without an event (to its allocation's end), or stopped or failed without a
              recorded step (to its end event: a second Ctrl-C, a crash), its time after the last recorded step
              counts as lost: it was training, and no checkpoint kept it. Its recomputed steps are then a lower
              bound (the ledger records progress once a minute, not every step).

goodput = training / allocated, where allocated = the sum of the starts' allocations.

Each start's start-up is also shown by phase, as the job recorded them (ledger ``phase`` events): launch (the
allocation's start to the Python process: Slurm's prolog, srun, a container), interpreter (Python and hpcrun's
imports), setup (config, lock, state, checkpoints), imports (the task's: torch, transformers), data, model, trainer,
checkpoint load (a resume; train setup on a first start), data position, and the first step itself.

Submitting side: no torch. matplotlib only for ``--plot``.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

from hpcrun.durations import format_human

KINDS = ("startup", "training", "saving", "lost", "other")
COLOURS = {"startup": "#9e9e9e", "training": "#43a047", "saving": "#1e88e5", "lost": "#e53935", "other": "#d7ccc8"}


@dataclass
class Segment:
    kind: str
    begin: float
    end: float

    @property
    def seconds(self) -> float:
        return max(0.0, self.end - self.begin)


@dataclass
class StartReport:
    n: int
    job_id: Optional[str]
    alloc_start: float
    alloc_end: float
    times_from: str  # "sacct" or "ledger"
    resumed_from: int
    last_step: int
    end: str  # "completed", "requeued", ..., or "killed" (no end event)
    segments: List[Segment] = field(default_factory=list)
    # Where the start-up went (the ledger's phase events, then the first step itself): [(name, seconds)]
    phases: List[Tuple[str, float]] = field(default_factory=list)
    processes: int = 1  # the start's world size (a run may resume on another, docs/elastic.md)
    # It ended without knowing its step (killed, or an end event without one): its last_step is the last one the
    # ledger recorded, and it may have trained past it.
    step_unknown: bool = False
    reached_step: bool = True  # it finished a first training step (else all of it is start-up: a crash, a cancel)

    def total(self, kind: str) -> float:
        return sum(s.seconds for s in self.segments if s.kind == kind)


@dataclass
class RunReport:
    run_dir: str
    name: str
    status: Optional[str]
    starts: List[StartReport]
    queue_waits: List[float]  # between consecutive starts (seconds), from sacct
    recomputed_steps: int
    state: Optional[str] = None  # what hpcrun status shows for it (CANCELLED, ...); None where not asked for

    @property
    def recomputed_at_least(self) -> bool:
        """The recomputed steps are a lower bound: a start followed by another ended without knowing its step."""
        return any(s.step_unknown for s in self.starts[:-1])

    @property
    def allocated(self) -> float:
        return sum(s.alloc_end - s.alloc_start for s in self.starts)

    def total(self, kind: str) -> float:
        return sum(s.total(kind) for s in self.starts)

    @property
    def first_step_start(self) -> Optional[StartReport]:
        """The first start that reached a training step; None when none did."""
        return next((s for s in self.starts if s.reached_step), None)

    @property
    def time_to_first_step(self) -> Optional[float]:
        """The start-up of the first start that reached a step: a start that never did (a crash, a cancel before
        it) has no time to its first step, however long it ran."""
        first = self.first_step_start
        return first.total("startup") if first else None

    @property
    def goodput(self) -> Optional[float]:
        return self.total("training") / self.allocated if self.allocated > 0 else None

    def summary(self) -> Dict[str, Any]:
        return {
            "run_dir": self.run_dir, "name": self.name, "status": self.status, "state": self.state,
            "starts": len(self.starts),
            "allocated_s": round(self.allocated, 2), "time_to_first_step_s": _round(self.time_to_first_step),
            **{f"{k}_s": round(self.total(k), 2) for k in KINDS},
            "queue_wait_s": round(sum(self.queue_waits), 2), "recomputed_steps": self.recomputed_steps,
            "recomputed_steps_at_least": self.recomputed_at_least,
            "goodput": _round(self.goodput, 4),
        }


def _round(x: Optional[float], digits: int = 2) -> Optional[float]:
    return None if x is None else round(x, digits)


# -- from the ledger ---------------------------------------------------------------------------------------------

def _by_start(events: List[Dict[str, Any]]) -> List[List[Dict[str, Any]]]:
    groups: Dict[int, List[Dict[str, Any]]] = {}
    for e in events:
        groups.setdefault(int(e.get("start", 0)), []).append(e)
    return [groups[k] for k in sorted(groups) if any(e["event"] == "start" for e in groups[k])]


def _step_times(events: List[Dict[str, Any]]) -> List[Tuple[float, int]]:
    """(time a step ended, step) for every step the ledger saw in one start."""
    out = []
    for e in events:
        if e["event"] in ("first_step", "progress", "signal", "deadline") and e.get("step") is not None:
            out.append((float(e["t"]), int(e["step"])))
        elif e["event"] == "save":
            out.append((float(e["began"]), int(e["step"])))
    return sorted(out)


def start_segments(events: List[Dict[str, Any]], alloc: Tuple[float, float], next_resumed_from: Optional[int],
                   times_from: str, logged: Sequence[Tuple[float, int]] = ()) -> StartReport:
    """Cuts one start into segments; ``next_resumed_from`` is the step the following start resumed from, and
    ``logged`` the (time, step) pairs of metrics.jsonl (finer than the ledger's minute-apart progress events)."""
    head = next(e for e in events if e["event"] == "start")
    end_event = next((e for e in reversed(events) if e["event"] == "end"), None)
    a, e_ = alloc
    first_t = next((float(e["t"]) for e in events if e["event"] == "first_step"), None)
    # Each step at the time it was first seen: a step recorded again later (the Trainer's on_train_end after the
    # stop save, a log line written after the save) is no new work, and must not stretch training past the save.
    reached_at: Dict[int, float] = {}
    for t, s in sorted(_step_times(events) + [(t, s) for t, s in logged if first_t is not None and first_t <= t]):
        reached_at.setdefault(s, t)
    steps = sorted((t, s) for s, t in reached_at.items())
    saves = sorted(((float(e["began"]), float(e["began"]) + float(e["seconds"]), int(e["step"]))
                    for e in events if e["event"] == "save"))
    first = next((e for e in events if e["event"] == "first_step"), None)
    resumed = int(head.get("resumed_from") or 0)
    # Ended without knowing where it was: killed (no end event), or an end event without a step that is no
    # completion (a second Ctrl-C, a crash): it trained until that end, past the last step the ledger saw.
    # (A ledger from before end events carried a step: as before, the last step seen.) A start that never finished
    # a first step trained nothing: it is where it resumed from.
    step_unknown = first is not None and (end_event is None or ("step" in end_event and end_event["step"] is None
                                                                and end_event.get("status") != "completed"))
    report = StartReport(n=int(head["start"]), job_id=head.get("job_id"), alloc_start=a, alloc_end=e_,
                         times_from=times_from, resumed_from=resumed, last_step=max([s for _, s in steps], default=resumed),
                         end=end_event["status"] if end_event else "killed", phases=_phases(events),
                         processes=int(head.get("world_size") or 1), step_unknown=step_unknown,
                         reached_step=first is not None)
    if first is None:  # never trained: all start-up (or a failure before the first step)
        report.segments.append(Segment("startup", a, e_))
        return report
    f = min(max(float(first["t"]), a), e_)
    report.segments.append(Segment("startup", a, f))
    # Training runs to the last step seen; to the end of the allocation if the start was killed, to its end event
    # if that knew no step.
    last_step_t = max([t for t, _ in steps] + [end for _, end, _ in saves], default=f)
    if end_event is None:
        train_end = e_
    elif step_unknown:
        train_end = min(max(float(end_event["t"]), last_step_t, f), e_)
    else:
        train_end = min(max(last_step_t, f), e_)
    # Where work stopped counting: the moment this start reached the step the next start resumed from.
    cut = train_end
    if next_resumed_from is not None:
        if next_resumed_from <= resumed:
            cut = f
        else:
            reached = [t for t, s in steps if s >= next_resumed_from]
            at_save = [b for b, _, s in saves if s == next_resumed_from]
            cut = min(at_save or reached or [train_end])
    # Walk [f, train_end): saves are "saving", the rest "training" before the cut and "lost" after it.
    t = f
    for b, end, _ in saves:
        b, end = max(b, f), min(end, e_)
        if b > t:
            report.segments += _split(t, b, cut)
        if end > b:
            report.segments.append(Segment("saving", b, end))
        t = max(t, end)
    if train_end > t:
        report.segments += _split(t, train_end, cut)
    t = max(t, train_end)
    if e_ > t:
        report.segments.append(Segment("other", t, e_))
    return report


def _phases(events: List[Dict[str, Any]]) -> List[Tuple[str, float]]:
    """The start-up phases one start recorded, in order, and its first step (from the last phase's end)."""
    phases = [(str(e["name"]), float(e["seconds"])) for e in events if e["event"] == "phase"]
    last = max((float(e["t"]) for e in events if e["event"] == "phase"), default=None)
    first = next((float(e["t"]) for e in events if e["event"] == "first_step"), None)
    if phases and last is not None and first is not None and first >= last:
        phases.append(("first step", first - last))
    return phases


def _split(b: float, e: float, cut: float) -> List[Segment]:
    if cut <= b:
        return [Segment("lost", b, e)]
    if cut >= e:
        return [Segment("training", b, e)]
    return [Segment("training", b, cut), Segment("lost", cut, e)]


# -- allocations from sacct ---------------------------------------------------------------------------------------

def sacct_runs(job_ids: Sequence[str]) -> Optional[Dict[str, List[Tuple[float, float, Optional[float]]]]]:
    """Every run (requeue) of each job: (start, end, submit), oldest first, from ONE sacct call; None if sacct
    cannot answer (no Slurm here, slurmdbd down)."""
    from hpcrun.slurm.client import run_slurm
    from hpcrun.slurm.jobs import parse_slurm_timestamp

    ids = sorted({j for j in job_ids if j})
    if not ids:
        return None
    try:
        out = run_slurm(["sacct", "-X", "-D", "-n", "-P", "-o", "JobID,Submit,Start,End", "-j", ",".join(ids)])
    except Exception:  # noqa: BLE001 - a report without sacct falls back to the ledger's own times
        return None
    runs: Dict[str, List[Tuple[float, float, Optional[float]]]] = {}
    now = time.time()
    for line in out.splitlines():
        parts = line.split("|")
        if len(parts) < 4:
            continue
        start = parse_slurm_timestamp(parts[2])
        if start is None:
            continue
        end = parse_slurm_timestamp(parts[3]) or now
        runs.setdefault(parts[0], []).append((start, end, parse_slurm_timestamp(parts[1])))
    return runs


def run_report(run_dir: Path, sacct: Optional[Dict[str, List[Tuple[float, float, Optional[float]]]]],
               events: Optional[List[Dict[str, Any]]] = None,
               slurm_states: Optional[Dict[str, str]] = None) -> RunReport:
    """One run's report from its ledger (``events``: already read) and the sacct rows of its jobs (None: the
    ledger's own times). ``slurm_states`` (hpcrun.observe.states.slurm_states_of) labels it as ``hpcrun status``
    shows it; None leaves its ``state`` None (hpcrun status itself, which knows it)."""
    from hpcrun.rundir.ledger import read_ledger
    from hpcrun.rundir.metrics import logged_steps
    from hpcrun.rundir.state import read_state

    groups = _by_start(read_ledger(run_dir) if events is None else events)
    state = read_state(run_dir)
    logged = logged_steps(Path(run_dir), loss_only=True)  # finer than the ledger, when the task logs
    heads = [next(e for e in g if e["event"] == "start") for g in groups]
    starts, waits = [], []
    for i, (events, head) in enumerate(zip(groups, heads)):
        nxt = int(heads[i + 1].get("resumed_from") or 0) if i + 1 < len(heads) else None
        alloc, source = _allocation(events, head, sacct)
        # Steps this start logged: up to the next start (a killed start may log after sacct's whole-second end).
        until = float(heads[i + 1]["t"]) if i + 1 < len(heads) else float("inf")
        mine = [(t, s) for t, s in logged if t < until]
        starts.append(start_segments(events, alloc, nxt, source, mine))
        if i > 0:
            waits.append(max(0.0, starts[i].alloc_start - starts[i - 1].alloc_end))
    recomputed = sum(max(0, s.last_step - nxt.resumed_from) for s, nxt in zip(starts, starts[1:]))
    name = Path(run_dir).parent.name
    label = None
    if slurm_states is not None:
        from hpcrun.observe.states import shown_state

        label = shown_state(Path(run_dir), state, slurm_states)[0]
    return RunReport(str(run_dir), name, state.get("status"), starts, waits, recomputed, label)


def _allocation(events: List[Dict[str, Any]], head: Dict[str, Any],
                sacct: Optional[Dict[str, List[Tuple[float, float, Optional[float]]]]]) -> Tuple[Tuple[float, float], str]:
    job, restart = head.get("job_id"), int(head.get("restart") or 0)
    rows = (sacct or {}).get(str(job)) if job else None
    if rows and restart < len(rows):
        start, end, _ = rows[restart]
        # sacct keeps whole seconds, and a job that requeues itself ends (for Slurm) when it asks, a moment before
        # its last events: the allocation covers both.
        first, last = float(head["t"]), max(float(e["t"]) for e in events)
        return (min(start, first), max(end, last)), "sacct"
    begin = float(head.get("alloc_start") or head["t"])
    return (begin, max(float(e["t"]) for e in events)), "ledger"


def reports(run_dirs: Sequence[Path], use_sacct: bool = True) -> List[RunReport]:
    """The runs' reports, each labelled as ``hpcrun status`` shows it (its STATE, from status's own sacct call)."""
    from hpcrun.observe.states import slurm_states_of
    from hpcrun.rundir.ledger import read_ledger

    jobs = set()
    for d in run_dirs:
        jobs |= {str(e.get("job_id")) for e in read_ledger(d) if e["event"] == "start" and e.get("job_id")}
    sacct = sacct_runs(sorted(jobs)) if use_sacct and jobs else None
    states = slurm_states_of(run_dirs) if use_sacct else {}
    return [run_report(d, sacct, slurm_states=states) for d in run_dirs]


# -- output -------------------------------------------------------------------------------------------------------

def totals(reports: Sequence[RunReport]) -> Dict[str, Any]:
    allocated = sum(r.allocated for r in reports)
    training = sum(r.total("training") for r in reports)
    return {
        "runs": len(reports), "starts": sum(len(r.starts) for r in reports), "allocated_s": round(allocated, 2),
        **{f"{k}_s": round(sum(r.total(k) for r in reports), 2) for k in KINDS},
        "queue_wait_s": round(sum(sum(r.queue_waits) for r in reports), 2),
        "recomputed_steps": sum(r.recomputed_steps for r in reports),
        "recomputed_steps_at_least": any(r.recomputed_at_least for r in reports),
        "goodput": round(training / allocated, 4) if allocated > 0 else None,
    }


def report_json(reports: Sequence[RunReport]) -> str:
    runs = []
    for r in reports:
        d = r.summary()
        d["per_start"] = [{**{k: v for k, v in asdict(s).items() if k not in ("segments", "phases")},
                           **{f"{k}_s": round(s.total(k), 2) for k in KINDS},
                           "startup_phases_s": {name: round(sec, 3) for name, sec in s.phases}} for s in r.starts]
        d["queue_waits_s"] = [round(w, 2) for w in r.queue_waits]
        runs.append(d)
    return json.dumps({"runs": runs, "total": totals(reports)}, indent=1)


def _pct(x: float, whole: float) -> str:
    return f"{100 * x / whole:5.1f}%" if whole > 0 else "    -"


def report_text(reports: Sequence[RunReport]) -> str:
    lines = []
    for r in reports:
        alloc = r.allocated
        lines.append(f"{r.run_dir}  ({r.state or r.status or 'unknown'}, {len(r.starts)} start(s))")
        if not r.starts:
            lines.append("  no ledger (no start of it has run)")
            continue
        lines.append(f"  allocated        {format_human(alloc):>9}")
        first = r.first_step_start
        never = [str(s.n) for s in r.starts if first is None or s.n < first.n]  # before any step: no first step
        lines.append(f"  to first step    {format_human(r.time_to_first_step) if first else '-':>9}" + (
            f"  (start {first.n}: start {', '.join(never)} never reached a step)" if first and never else ""))
        for s in r.starts:
            shape = (f"{s.processes} process{'es' if s.processes > 1 else ''}, steps {s.resumed_from}-{s.last_step}"
                     f"{'+' if s.step_unknown else ''}")
            parts = ": " + ", ".join(f"{name} {sec:.1f}s" for name, sec in s.phases) if s.phases else ""
            never_step = "" if s.reached_step else ", never reached a step"
            lines.append(f"    start {s.n} ({shape}): {format_human(s.total('startup'))} start-up{never_step}{parts}")
        for k, label in (("startup", "start-up"), ("training", "training"), ("saving", "saving"),
                         ("lost", "lost (recomputed)"), ("other", "other")):
            lines.append(f"  {label:<17}{format_human(r.total(k)):>8} {_pct(r.total(k), alloc)}")
        if r.queue_waits:
            lines.append(f"  queue waits      {format_human(sum(r.queue_waits)):>9}  (between restarts: "
                         f"{', '.join(format_human(w) for w in r.queue_waits)})")
        unknown = [str(s.n) for s in r.starts[:-1] if s.step_unknown]
        lines.append(f"  recomputed steps {r.recomputed_steps:>9}" + (
            f"  (at least: start {', '.join(unknown)} ended without recording its last step)" if unknown else ""))
        lines.append(f"  goodput          {_pct(r.total('training'), alloc):>9}")
        sources = {s.times_from for s in r.starts}
        if "ledger" in sources:
            lines.append("  (allocation times from the ledger: sacct did not know them)")
    if len(reports) > 1:
        t = totals(reports)
        lines.append(f"sweep: {t['runs']} runs, {t['starts']} starts, allocated {format_human(t['allocated_s'])}, "
                     f"training {format_human(t['training_s'])}, saving {format_human(t['saving_s'])}, lost "
                     f"{format_human(t['lost_s'])}, recomputed steps {'at least ' if t['recomputed_steps_at_least'] else ''}"
                     f"{t['recomputed_steps']}, goodput "
                     f"{_pct(t['training_s'], t['allocated_s']).strip()}")
    return "\n".join(lines)


def plot(reports: Sequence[RunReport], path: Path) -> None:
    """A timeline per run: one row per start, segments coloured by kind, time from the run's first allocation."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    rows = [(r, s) for r in reports for s in r.starts]
    fig, ax = plt.subplots(figsize=(11, 1.4 + 0.42 * max(1, len(rows))))
    labels = []
    for i, (r, s) in enumerate(rows):
        origin = r.starts[0].alloc_start
        y = len(rows) - 1 - i
        for kind in KINDS:
            bars = [((seg.begin - origin) / 60, seg.seconds / 60) for seg in s.segments if seg.kind == kind]
            if bars:
                ax.broken_barh(bars, (y - 0.35, 0.7), facecolors=COLOURS[kind])
        ax.text((s.alloc_end - origin) / 60, y, f"  {s.end}" + (f" @ step {s.last_step}" if s.last_step else ""),
                va="center", fontsize=7)
        run_label = Path(r.run_dir).name if len(reports) > 1 else ""
        labels.append((y, f"{run_label[:28]} start {s.n}".strip()))
    ax.set_yticks([y for y, _ in labels], [lbl for _, lbl in labels], fontsize=8)
    ax.set_xlabel("minutes since the run's first allocation started")
    title = (f"{reports[0].run_dir}" if len(reports) == 1 else f"{len(reports)} runs") + \
        f": goodput {totals(reports)['goodput'] or 0:.1%}"
    ax.legend(handles=[Patch(color=COLOURS[k], label=k) for k in KINDS], loc="lower left",
              bbox_to_anchor=(0.0, 1.0), ncol=5, fontsize=8, frameon=False)
    ax.set_title(title, fontsize=9, loc="right")
    ax.grid(axis="x", alpha=0.3)
    ax.margins(x=0.12)
    fig.tight_layout()
    fig.savefig(path, dpi=130)
    plt.close(fig)
