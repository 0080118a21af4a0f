"""Benchmark 1: goodput under a fixed, seeded schedule of interruptions, on the dev cluster, side by side.

    python benchmarks/goodput.py [--seed 0] [--interruptions 4] [--out benchmarks/results/goodput.json]

The same tiny Llama (same data, same steps; tests/training.py's model shrunk further so 1500 steps take about a
minute on 2 cores) is trained to the end by each system in turn, while the harness interrupts it with the same
seeded schedule: each interruption comes a random 15-35 s of training after the job (re)started, and is one of

- timeout: Slurm's time-limit warning, `scancel --signal=USR2` (what `--signal=USR2@N` sends);
- preempt: SIGTERM to the job's processes, then, if the job is still running after a 15 s grace time, `scontrol
  requeue` (what PreemptMode=REQUEUE with GraceTime does);
- kill: `kill -9` of the training process, then `scontrol requeue` (a node failure with the job requeued).

After each interruption the harness skips Slurm's ~120 s requeue hold (`scontrol update StartTime=now`, the same
for every system). Systems:

- hpcrun, `checkpoint.save_every=auto`;
- hpcrun, `checkpoint.save_every=30m` (the default: only the announced stops and the deadline save);
- transformers Trainer with its default step-based saves (every 500 steps) under submitit's requeue
  (benchmarks/baselines/trainer_submitit.py: resumes from the Trainer's last checkpoint);
- submitit's requeue restarting from scratch (no saves).

Measured per system: allocated time (sacct, every run of the job), recomputed steps (steps whose loss was logged
more than once), and goodput = steps x median step time / allocated time. For the hpcrun systems also
`hpcrun report`'s own goodput. Quote ratios measured in the same run.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Callable, Dict, List

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(REPO))

from tests.slurm import task_pids  # noqa: E402 - the repository's own helpers

STEPS = 1200
MODEL = ["+experiment=tiny_llama", f"train.max_steps={STEPS}", "train.log_every=1", "train.warmup_steps=30",
         "model.hidden_size=64", "model.intermediate_size=128", "model.num_attention_heads=4",
         "model.num_key_value_heads=4", "model.num_hidden_layers=2", "data.seq_len=64", "train.batch_size=8",
         "model.attention_dropout=0.1"]
KINDS = ("timeout", "preempt", "kill")


def sh(*cmd: str, check: bool = False) -> subprocess.CompletedProcess:
    return subprocess.run(list(cmd), capture_output=True, text=True, check=check)


def squeue_state(job: str) -> str:
    return sh("squeue", "-h", "-j", job, "-o", "%T").stdout.strip()


def sacct_runs(job: str) -> List[Dict[str, str]]:
    out = sh("sacct", "-X", "-D", "-n", "-P", "-o", "State,ElapsedRaw,Start,End", "-j", job).stdout
    return [dict(zip(("state", "elapsed", "start", "end"), ln.split("|"))) for ln in out.splitlines() if ln]


def wait(cond: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if cond():
            return
        time.sleep(0.3)
    raise TimeoutError(what)


def logged(run_dir: Path) -> List[dict]:
    path = run_dir / "metrics.jsonl"
    if not path.exists():
        return []
    return [r for r in (json.loads(ln) for ln in path.read_text().splitlines() if ln.strip()) if "loss" in r]


def release(job: str) -> None:
    wait(lambda: squeue_state(job) == "PENDING", 120, "the requeued job pending")
    time.sleep(2.5)  # not in the second its credential was revoked (docs/dev-cluster.md)
    sh("scontrol", "update", f"JobId={job}", "StartTime=now")


def interrupt(job: str, kind: str, grace: float = 15.0) -> None:
    runs_before = len(sacct_runs(job))
    if kind == "timeout":
        sh("scancel", "--signal=USR2", job)
    elif kind == "preempt":
        sh("scancel", "--signal=TERM", job)
        deadline = time.time() + grace
        while time.time() < deadline and len(sacct_runs(job)) == runs_before and squeue_state(job) == "RUNNING":
            time.sleep(0.5)
        if len(sacct_runs(job)) == runs_before and squeue_state(job) == "RUNNING":
            sh("scontrol", "requeue", job)  # the grace ran out: Slurm kills and requeues
    elif kind == "kill":
        for pid in task_pids(job, rank=0):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        sh("scontrol", "requeue", job)
    release(job)


def failure(logs: Path) -> str:
    """The last exception line in the job's logs (why it failed)."""
    lines = [ln for f in sorted(logs.glob("*.err")) + sorted(logs.glob("*.log")) if f.is_file()
             for ln in f.read_text(errors="replace").splitlines()]
    errors = [ln.strip() for ln in lines if re.match(r"^\w*(Error|Exception)\b.*:", ln.strip())]
    return errors[-1] if errors else "see the job's logs"


def drive(job: str, run_dir: Path, schedule: List[tuple], job_logs: Path,
          timeout: float = 1200) -> Dict[str, object]:
    """Applies the schedule to the running job, then waits for it to complete."""
    t0 = time.time()

    def ended() -> bool:
        runs = sacct_runs(job)
        return squeue_state(job) == "" and bool(runs) and runs[-1]["state"] in ("COMPLETED", "FAILED", "CANCELLED")

    for delay, kind in schedule:
        seen = len(logged(run_dir))
        wait(lambda: ended() or (squeue_state(job) == "RUNNING" and len(logged(run_dir)) > seen), 600,
             "training to (re)start")
        if ended():
            break  # finished, or failed and will not come back by itself
        started = time.time()
        wait(lambda: time.time() - started >= delay or squeue_state(job) not in ("RUNNING", ""), delay + 60, "delay")
        if squeue_state(job) != "RUNNING":
            break  # it finished before this interruption
        interrupt(job, kind)
    wait(ended, timeout, "the job to end")
    runs = sacct_runs(job)
    records = logged(run_dir)
    steps = [r["step"] for r in records]
    gaps = [b["time"] - a["time"] for a, b in zip(records, records[1:]) if b["step"] == a["step"] + 1]
    step_s = statistics.median(gaps) if gaps else float("nan")
    allocated = sum(int(r["elapsed"] or 0) for r in runs)
    done = max(steps, default=0)
    return {
        "final_state": runs[-1]["state"], "failure": failure(job_logs) if runs[-1]["state"] == "FAILED" else None,
        "starts": len(runs), "allocated_s": allocated,
        "wall_s": round(time.time() - t0, 1), "steps_done": done,
        "steps_computed": len(steps), "recomputed_steps": sum(n - 1 for n in Counter(steps).values()),
        "median_step_s": round(step_s, 4),
        "goodput": round(done * step_s / allocated, 4) if allocated else None,
    }


def run_hpcrun(work: Path, name: str, save_every: str, schedule: List[tuple]) -> Dict[str, object]:
    run_dir = work / name
    out = sh(sys.executable, "-m", "hpcrun", *MODEL, "cluster=slurm", "cluster.cpus_per_task=2",
             f"checkpoint.save_every={save_every}", f"run.dir={run_dir}", check=True)
    job = next(ln.split()[3] for ln in out.stdout.splitlines() if ln.startswith("submitted Slurm job"))
    result = drive(job, run_dir, schedule, run_dir / "logs")
    report = json.loads(sh(sys.executable, "-m", "hpcrun", "report", str(run_dir), "--json", check=True).stdout)
    result["hpcrun_report"] = report["runs"][0]
    sh(sys.executable, "-m", "hpcrun", "report", str(run_dir), "--plot", str(work / f"{name}.png"))
    return result


def run_baseline(work: Path, mode: str, schedule: List[tuple]) -> Dict[str, object]:
    run_dir = work / mode
    out = sh(sys.executable, str(HERE / "baselines" / "trainer_submitit.py"), "--mode", mode, "--run-dir",
             str(run_dir), "--slurm-folder", str(work / f"{mode}-submitit"), "--cpus", "2", "--", *MODEL,
             "cluster=local", check=True)
    return drive(out.stdout.strip().splitlines()[-1], run_dir, schedule, work / f"{mode}-submitit")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--interruptions", type=int, default=4)
    p.add_argument("--out", default=str(HERE / "results" / "goodput.json"))
    p.add_argument("--only", nargs="*", help="systems to run (default: all)")
    a = p.parse_args()
    rng = random.Random(a.seed)
    kinds = [KINDS[i % len(KINDS)] for i in range(a.interruptions)]
    rng.shuffle(kinds)
    schedule = [(round(rng.uniform(15, 35), 1), k) for k in kinds]
    work = Path(tempfile.mkdtemp(prefix="hpcrun-goodput-"))
    systems = {
        "hpcrun_auto": lambda: run_hpcrun(work, "hpcrun_auto", "auto", schedule),
        "hpcrun_30m": lambda: run_hpcrun(work, "hpcrun_30m", "30m", schedule),
        "trainer_default_submitit": lambda: run_baseline(work, "trainer_default", schedule),
        "submitit_from_scratch": lambda: run_baseline(work, "from_scratch", schedule),
    }
    result = {"date": time.strftime("%Y-%m-%d %H:%M"), "machine": f"{os.cpu_count()} cores", "steps": STEPS,
              "seed": a.seed, "schedule": [{"after_s": d, "kind": k} for d, k in schedule], "work_dir": str(work),
              "systems": {}}
    for name, run in systems.items():
        if a.only and name not in a.only:
            continue
        print(f"== {name}", flush=True)
        result["systems"][name] = run()
        print(json.dumps(result["systems"][name]), flush=True)
        partial = Path(a.out).with_suffix(".partial.json")
        partial.parent.mkdir(parents=True, exist_ok=True)
        partial.write_text(json.dumps(result, indent=1) + "\n")
    out = Path(a.out)
    if a.only and out.exists():  # a partial rerun: keep the other systems' figures from the same schedule
        previous = json.loads(out.read_text())
        if previous.get("schedule") == result["schedule"]:
            result["systems"] = {**previous["systems"], **result["systems"]}
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
