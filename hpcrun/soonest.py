"""``hpcrun plan --soonest``: of the shapes a user allows, which one finishes the run first on today's queue.

The candidates are the values given to ``cluster.*`` keys, comma-separated as in a sweep (``cluster.partition=a100,
l40s cluster.gpus_per_node=2,4 cluster.time=4:00:00,48:00:00``: every combination). For each, in order:

1. **When it would start:** Slurm's own answer, ``sbatch --test-only`` with the options hpcrun would submit (one call
   per candidate, one after the other). Slurm counts the queue, running jobs' time limits, preemption and backfill;
   a shape it can never run is shown with Slurm's reason.
2. **How long a step takes on it:** measured when the run has a ledger (seconds per step of each earlier start,
   scaled to the candidate: data parallel over the same global batch, so ``x processes_then / processes_now``, and
   by the GPUs' peak bf16 throughput when the GPU type differs); otherwise arithmetic: ``6 x parameters x tokens per
   step`` at ``--mfu`` (default 40 %) of the GPU type's peak. A CPU shape without a ledger has no estimate.
3. **How many starts:** a time limit shorter than the work chains starts by requeue. Each start loses its start-up
   (measured, else 3 minutes) and the save before its limit; each start after the first waits again in the queue
   (assumed as long as the first wait, and at least Slurm's 2-minute requeue delay).

finish = first start + remaining steps x step time + starts x start-up + (starts - 1) x (save + wait again)

The table is ranked by estimated finish; ``--submit`` submits the first one. docs/plan.md says what the figures are
worth.
"""

from __future__ import annotations

import json
import math
import os
import re
import statistics
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

from hpcrun.durations import format_human
from hpcrun.errors import UserError

# Dense bf16 peak per GPU (TFLOP/s, without sparsity): the vendors' data sheets.
PEAK_TFLOPS = {"a100": 312, "a100_40": 312, "a100_80": 312, "h100": 989, "h200": 989, "v100": 125, "v100_16": 125,
               "rtx8000": 130, "l40s": 362, "a40": 150, "rtx6000": 130}
STARTUP_GUESS = 180.0  # seconds from allocation to the first step, when the run has no ledger to say
REQUEUE_DELAY = 121.0  # a requeued job is eligible again after about 2 minutes (../shared/SLURM_FACTS.md)
_ESCAPED = re.compile(r"\\(.)")  # Hydra's escapes in an expanded override (10\:00)
_START = re.compile(r"to start at (\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)")


@dataclass
class Candidate:
    values: Dict[str, str]  # the candidate's cluster.* overrides
    processes: int = 1
    gpu_type: Optional[str] = None
    time_limit: float = 0.0
    start: Optional[float] = None  # Slurm's estimate (epoch seconds)
    refused: str = ""
    backfill: bool = False  # starts now through backfill, where sbatch --test-only said later
    step_seconds: Optional[float] = None
    step_source: str = ""
    starts: int = 0
    finish: Optional[float] = None

    @property
    def label(self) -> str:
        parts = [(k.split(".", 1)[1], _ESCAPED.sub(r"\1", v)) for k, v in self.values.items()]
        return " ".join(f"{k}={v}" for k, v in parts) or "(as configured)"

    @property
    def overrides(self) -> List[str]:
        return [f"{k}={v}" for k, v in self.values.items()]


@dataclass
class Measured:
    """What a run's earlier starts measured: seconds per step by (processes, GPU type), start-up, save time."""

    step_seconds: Dict[Tuple[int, Optional[str]], float] = field(default_factory=dict)
    startup: Optional[float] = None
    save: Optional[float] = None


def split_candidates(overrides: Sequence[str]) -> Tuple[List[str], List[Dict[str, str]]]:
    """The overrides every candidate shares, and each candidate's own ``cluster.*`` values.

    Raises:
        UserError: a key other than ``cluster.*`` has several values (that is a sweep, not a choice of shape).
    """
    from hpcrun.launch.sweep import expand

    points = expand(overrides)
    keys = {o.split("=", 1)[0] for p in points for o in p}
    varying = sorted(k for k in keys if len({o for p in points for o in p if o.split("=", 1)[0] == k}) > 1)
    bad = [k for k in varying if not k.lstrip("+~").startswith("cluster.")]
    if bad:
        raise UserError(f"{bad[0]} has several values: --soonest compares where and how a run runs (cluster.* keys); "
                        "several values of a training key are a sweep (hpcrun --multirun)")
    shared = [o for o in points[0] if o.split("=", 1)[0] not in varying]
    per = [{o.split("=", 1)[0]: o.split("=", 1)[1] for o in p if o.split("=", 1)[0] in varying} for p in points]
    return shared, per


def parse_test_only(text: str) -> Optional[float]:
    """The start time in ``sbatch --test-only``'s answer (``Job 12 to start at 2026-12-07T04:57:38 using ...``)."""
    m = _START.search(text)
    from hpcrun.slurm.jobs import parse_slurm_timestamp

    return parse_slurm_timestamp(m.group(1)) if m else None


def slurm_start(cfg: Any) -> Tuple[Optional[float], str]:
    """When Slurm would start this config's job now (``sbatch --test-only``), or why it cannot."""
    from hpcrun.slurm.sbatch import standalone_options
    from hpcrun.slurm.site import check_site_limits

    try:
        check_site_limits([cfg])
    except UserError as exc:
        return None, str(exc)
    options = [f"--{k}={v}" if v else f"--{k}" for k, v in standalone_options(cfg)
               if k not in ("output", "error", "open-mode")]
    env = {**os.environ, "SLURM_TIME_FORMAT": "standard"}  # a user's own format (relative, ...) would not parse
    try:
        out = subprocess.run(["sbatch", "--test-only", *options, "--output=/dev/null", "--wrap", "true"],
                             capture_output=True, text=True, timeout=60, env=env)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return None, f"sbatch --test-only: {exc}"
    text = (out.stderr + out.stdout).strip()
    start = parse_test_only(text) if out.returncode == 0 else None
    if start is None:
        last = (text.splitlines() or [f"exit {out.returncode}"])[-1]
        return None, f"Slurm: {last.removeprefix('sbatch: error: ').removeprefix('allocation failure: ')}"
    return start, ""


def _gpus(text: str) -> int:
    """GPUs in a ``Gres=``/``GresUsed=`` value: ``gpu:a100:4``, ``gpu:2(IDX:0-1)``, ``gpu:a100:1(IDX:0),...``."""
    return sum(int(m.group(1)) for m in re.finditer(r"gpu(?::[\w.-]+)?:(\d+)", text or ""))


def free_nodes(partition_names: Sequence[str], nodes_text: str) -> List[Dict[str, int]]:
    """The idle CPUs, memory (MB) and GPUs of each usable node in the partitions (``scontrol -d -o show node``)."""
    from hpcrun.slurm.site import parse_fields

    out = []
    for line in nodes_text.splitlines():
        if not line.strip().startswith("NodeName="):
            continue
        f = parse_fields(line.strip())
        state = f.get("State", "").upper()
        if not set(f.get("Partitions", "").split(",")) & set(partition_names) or \
                any(bad in state for bad in ("DOWN", "DRAIN", "FAIL", "MAINT", "RESERVED", "NOT_RESPONDING")):
            continue
        num = lambda key: int(re.match(r"\d*", f.get(key, "0")).group() or 0)  # noqa: E731
        out.append({"cpus": num("CPUTot") - num("CPUAlloc"), "mem": num("RealMemory") - num("AllocMem"),
                    "gpus": _gpus(f.get("Gres", "")) - _gpus(f.get("GresUsed", ""))})
    return out


def backfill_start(cfg: Any, now: float) -> Optional[float]:
    """``now`` when the backfill scheduler can start this job at once: enough nodes of its partition hold its
    request idle now, and it ends (its time limit) before the earliest start Slurm has planned for a job pending in
    that partition (``squeue --start``). None otherwise, and while a pending job has no planned start yet (Slurm's
    backfill pass plans them every half minute or so). ``sbatch --test-only`` does not count backfill, so a short
    limit would look no sooner than a long one."""
    from hpcrun.slurm.jobs import parse_slurm_timestamp
    from hpcrun.slurm.sbatch import overcommits
    from hpcrun.slurm.site import memory_mb, parse_partitions

    c = cfg.cluster
    try:
        parts = parse_partitions(subprocess.run(["scontrol", "-o", "show", "partition"], capture_output=True,
                                                text=True, timeout=30).stdout)
        names = [c.partition] if c.partition else [n for n, p in parts.items() if p.default]
        nodes = free_nodes(names, subprocess.run(["scontrol", "-d", "-o", "show", "node"], capture_output=True,
                                                 text=True, timeout=30).stdout)
        planned = subprocess.run(["squeue", "-h", "-t", "PD", "--start", "-p", ",".join(names), "-o", "%S"],
                                 capture_output=True, text=True, timeout=30,
                                 env={**os.environ, "SLURM_TIME_FORMAT": "standard"}).stdout.split()
    except (OSError, subprocess.TimeoutExpired):
        return None
    need_cpus = (1 if overcommits(c) else c.tasks_per_node) * c.cpus_per_task
    need_mb = memory_mb(c.mem) if c.mem else 0
    fit = [n for n in nodes if n["cpus"] >= need_cpus and n["mem"] >= (need_mb or 0) and n["gpus"] >= c.gpus_per_node]
    if len(fit) < c.nodes:
        return None
    starts = [parse_slurm_timestamp(t) for t in planned]
    if None in starts:
        return None  # a pending job the scheduler has not planned yet (N/A): its reservation is unknown
    if starts and now + c.time_seconds() > min(starts):
        return None
    return now


def measured(run_dir: Path) -> Measured:
    """Seconds per step of each earlier start of the run (its training time over the steps it trained), by
    shape; its median start-up and save time."""
    from hpcrun.observe.report import run_report
    from hpcrun.rundir.ledger import read_ledger

    found = Measured()
    events = read_ledger(run_dir)
    if not events:
        return found
    shapes = {int(e["start"]): e.get("gpu_type") for e in events if e["event"] == "start"}
    report = run_report(run_dir, None, events)
    per_shape: Dict[Tuple[int, Optional[str]], List[Tuple[float, int]]] = {}
    for s in report.starts:
        steps = s.last_step - s.resumed_from
        if steps > 0 and s.total("training") > 0:
            per_shape.setdefault((s.processes, shapes.get(s.n)), []).append((s.total("training"), steps))
    found.step_seconds = {k: sum(t for t, _ in v) / sum(n for _, n in v) for k, v in per_shape.items()}
    startups = [s.total("startup") for s in report.starts if s.phases]
    found.startup = statistics.median(startups) if startups else None
    saves = [float(e["seconds"]) for e in events if e["event"] == "save" and e.get("seconds")]
    found.save = statistics.median(saves) if saves else None
    return found


def scaled_step(found: Measured, processes: int, gpu_type: Optional[str], kept: bool = True
                ) -> Tuple[Optional[float], str]:
    """A measured step time carried over to another shape: the same shape's when measured; else the closest
    measured count's, times its processes over these when the run keeps its global batch (``kept``; otherwise each
    process's share is the same and so is the step), times its GPU's peak over this one's."""
    if (processes, gpu_type) in found.step_seconds:
        return found.step_seconds[(processes, gpu_type)], "measured"
    usable = [(k, v) for k, v in found.step_seconds.items()
              if k[1] == gpu_type or (k[1] in PEAK_TFLOPS and gpu_type in PEAK_TFLOPS)]
    if not usable:
        return None, ""
    (p, g), seconds = min(usable, key=lambda kv: abs(kv[0][0] - processes))
    factor = p / processes if kept else 1.0
    how = f"measured on {p} process{'es' if p > 1 else ''}"
    if g != gpu_type:
        factor *= PEAK_TFLOPS[g] / PEAK_TFLOPS[gpu_type]
        how += f" of {g}"
    return seconds * factor, how + ", scaled"


def arithmetic_step(cfg: Any, parameters: int, mfu: float, global_batch: Optional[int] = None
                    ) -> Tuple[Optional[float], str]:
    """``6 x parameters x tokens per step`` at ``mfu`` of the GPUs' peak; None on CPUs or an unknown GPU type.
    ``global_batch``: the run's, kept from its checkpoint; None: a new run's, made by this shape."""
    c = cfg.cluster
    peak = PEAK_TFLOPS.get(c.gpu_type or "")
    if not c.gpus_per_node or peak is None:
        return None, ""
    t = cfg.train
    tokens = (global_batch or t.batch_size * t.grad_accum * c.nodes * c.tasks_per_node) * cfg.data.seq_len
    gpus = c.nodes * c.gpus_per_node
    return 6.0 * parameters * tokens / (gpus * peak * 1e12 * mfu), f"6ND at {mfu:.0%} of {c.gpu_type} peak"


def chain(remaining_seconds: float, time_limit: float, startup: float, save: float, signal_delay: float,
          wait: float) -> Tuple[int, float]:
    """How many starts ``remaining_seconds`` of training take under ``time_limit``, and the wall-clock time from
    the first start to the end. Each start trains for ``time_limit - startup - signal_delay`` at most (the save
    before the limit happens within the signal's delay); each later one first waits ``wait`` and saves once more.

    Raises:
        ValueError: the limit leaves no time to train.
    """
    per_start = time_limit - startup - signal_delay
    if per_start <= 0:
        raise ValueError(f"the time limit {format_human(time_limit)} is shorter than start-up and the save before it")
    starts = max(1, math.ceil(remaining_seconds / per_start))
    return starts, remaining_seconds + starts * startup + (starts - 1) * (save + wait)


def remaining_steps(cfg: Any) -> Tuple[int, int, Optional[Any]]:
    """(steps left, steps done, shape): the run's newest complete checkpoint against its planned steps, and the
    shape that saved it, whose global batch the run keeps on any shape (None: a new run, whose first start makes
    it)."""
    from hpcrun.rundir import RunDir
    from hpcrun.rundir.checkpoints import newest_complete
    from hpcrun.rundir.shape import read_shape
    from hpcrun.rundir.state import read_state

    total = int(cfg.train.max_steps)
    run_dir = Path(cfg.run.dir)
    if not RunDir(run_dir).is_run():
        return total, 0, None
    latest, _ = newest_complete(run_dir)
    shape = read_shape(latest.path) if latest else None
    if read_state(run_dir).get("status") == "completed":  # (its checkpoints may be pruned: final/ holds it)
        return 0, total, shape
    return max(0, total - (latest.step if latest else 0)), latest.step if latest else 0, shape


def cannot_continue(cfg: Any, saved: Optional[Any], processes: int) -> str:
    """Why a started run cannot continue on ``processes`` processes ('' when it can): what ``hpcrun resume``
    would refuse (docs/elastic.md)."""
    from hpcrun.rundir.shape import continue_on

    if saved is None:
        return ""
    try:
        continue_on(saved, processes, cfg.train.batch_size, fsdp=cfg.train.fsdp)
    except UserError as exc:
        return str(exc)
    return ""


def rank(overrides: Sequence[str], config_dirs: Sequence[str] = (), mfu: float = 0.4,
         bandwidth: float = 1e9) -> Tuple[List[str], List[Candidate], Dict[str, Any]]:
    """Every candidate, estimated and ranked (soonest finish first; those without an estimate by their start,
    then the refused). Returns the shared overrides, the candidates and what the estimates stood on."""
    from hpcrun.config.compose import compose

    shared, per = split_candidates(overrides)
    cfgs = [compose([*shared, *[f"{k}={v}" for k, v in values.items()]], config_dirs) for values in per]
    if not {"model", "data", "train"} <= set(cfgs[0].sections()):
        raise UserError("hpcrun plan --soonest estimates the built-in causal-LM task (its steps and model); "
                        f"task._target_={cfgs[0].task._target_} declares none")
    left, done, saved = remaining_steps(cfgs[0])
    if left == 0:
        raise UserError(f"run {cfgs[0].run.dir} has trained all its {done} steps: nothing to plan (a new run needs "
                        "other training keys, or run.fresh=true)")
    global_batch = saved.global_batch if saved else None
    found = measured(Path(cfgs[0].run.dir))
    basis: Dict[str, Any] = {"run_dir": cfgs[0].run.dir, "steps_left": left, "steps_done": done,
                             "global_batch": global_batch,
                             "measured_shapes": {f"{p}x{g or 'cpu'}": round(s, 4)
                                                 for (p, g), s in found.step_seconds.items()}}
    plan = None
    if found.save is None or not found.step_seconds:
        from hpcrun.plan import make_plan

        plan = make_plan(cfgs[0], bandwidth)  # the model on the meta device: its parameters and save time
    startup = found.startup if found.startup is not None else STARTUP_GUESS
    save = found.save if found.save is not None else plan.save_seconds if plan else 0.0
    basis.update(startup_s=round(startup, 1), startup_from="measured" if found.startup is not None else "assumed",
                 save_s=round(save, 1))
    now = time.time()
    out = []
    for values, cfg in zip(per, cfgs):
        c = cfg.cluster
        cand = Candidate(values, c.nodes * c.tasks_per_node, c.gpu_kind(), float(c.time_seconds()))
        out.append(cand)
        cand.refused = cannot_continue(cfg, saved, cand.processes)
        if cand.refused:
            continue
        cand.start, cand.refused = slurm_start(cfg)
        if cand.refused:
            continue
        if cand.start is not None and cand.start > now + 60 and backfill_start(cfg, now) is not None:
            cand.start, cand.backfill = now, True
        cand.step_seconds, cand.step_source = scaled_step(found, cand.processes, cand.gpu_type,
                                                          kept=global_batch is not None)
        if cand.step_seconds is None and plan is not None:
            cand.step_seconds, cand.step_source = arithmetic_step(cfg, plan.parameters, mfu, global_batch)
        if cand.step_seconds is None or cand.start is None:
            continue
        wait = max(cand.start - now, REQUEUE_DELAY)
        try:
            cand.starts, took = chain(left * cand.step_seconds, cand.time_limit, startup, save,
                                      c.signal_delay_seconds(), wait)
        except ValueError as exc:
            cand.refused = str(exc)
            continue
        if cand.starts - 1 > cfg.run.max_requeues:
            cand.refused = (f"needs {cand.starts} starts under cluster.time={c.time}, more than run.max_requeues="
                            f"{cfg.run.max_requeues} allows")
            continue
        cand.finish = cand.start + took
    out.sort(key=lambda c: (bool(c.refused), c.finish is None, c.finish or 0.0, c.start or 0.0))
    return shared, out, basis


def _when(t: Optional[float], now: float) -> str:
    if t is None:
        return "?"
    return f"{format_human(max(0.0, t - now))} ({time.strftime('%a %H:%M', time.localtime(t))})"


def render_text(candidates: Sequence[Candidate], basis: Dict[str, Any], now: Optional[float] = None) -> str:
    now = time.time() if now is None else now
    batch = (f"{basis['global_batch']} samples a step on any shape (docs/elastic.md)" if basis["global_batch"] else
             "samples a step: train.batch_size x grad_accum x each shape's processes (a new run)")
    lines = [f"{basis['steps_left']} steps left of run {basis['run_dir']} (done: {basis['steps_done']}); {batch}; "
             f"start-up {format_human(basis['startup_s'])} ({basis['startup_from']}), save "
             f"{format_human(basis['save_s'])}"]
    rows = [("#", "shape", "starts in", "s/step", "", "starts", "finishes in")]
    for i, c in enumerate(candidates, 1):
        if c.refused:
            rows.append((str(i), c.label, "never", "", "", "", c.refused))
            continue
        step = f"{c.step_seconds:.3g}" if c.step_seconds is not None else "?"
        rows.append((str(i), c.label, _when(c.start, now) + (" backfill" if c.backfill else ""), step, c.step_source,
                     str(c.starts) if c.starts else "?", _when(c.finish, now)))
    widths = [max(len(r[k]) for r in rows) for k in range(len(rows[0]) - 1)]
    for r in rows:
        lines.append("  ".join(v.ljust(w) for v, w in zip(r, widths)) + "  " + r[-1])
    if not any(c.finish for c in candidates):
        lines.append("no finish estimate: no earlier start of this run measured its steps, and a CPU shape has no "
                     "arithmetic one (ranked by start)")
    return "\n".join(lines)


def render_json(candidates: Sequence[Candidate], basis: Dict[str, Any]) -> str:
    return json.dumps({**basis, "candidates": [
        {"overrides": c.overrides, "processes": c.processes, "start": c.start, "backfill": c.backfill,
         "refused": c.refused or None,
         "step_seconds": c.step_seconds, "step_from": c.step_source or None, "starts": c.starts or None,
         "finish": c.finish} for c in candidates]}, indent=1)


def soonest(overrides: Sequence[str], config_dirs: Sequence[str], as_json: bool, submit: bool, mfu: float,
            bandwidth: float) -> int:
    """``hpcrun plan --soonest``: prints the ranking; with ``submit``, submits the first (exit 1 if none can
    run)."""
    from hpcrun.console import say

    shared, candidates, basis = rank(overrides, config_dirs, mfu, bandwidth)
    print(render_json(candidates, basis) if as_json else render_text(candidates, basis))
    best = next((c for c in candidates if not c.refused), None)
    if best is None:
        return 1
    if submit:
        from hpcrun.launch.runner import launch

        say(f"submitting the first: {best.label}")
        return launch([*shared, *best.overrides], config_dirs)
    return 0
