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

    python benchmarks/goodput.py --realistic [--seed 0]    # ~20 min; benchmarks/results/goodput-realistic.json

``--realistic``: the shape of a real job, scaled down: a 17M-parameter Llama whose steps take about a second here,
400 steps, and 2 interruptions each 2-3 minutes after the job (re)started; hpcrun (save_every=auto) against the
Trainer's default saves (every 500 steps) under submitit's requeue. Each system is also measured against its
physical limit, 1 - (start-up + final save) / allocated: what no checkpointing scheme can win back (the first
start-up: allocation to first step; the end: last step to the job's end, evaluation and the final save included).
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
REALISTIC_STEPS = 400
REALISTIC = ["+experiment=tiny_llama", f"train.max_steps={REALISTIC_STEPS}", "train.log_every=1",
             "train.warmup_steps=30", "model.hidden_size=512", "model.intermediate_size=1376",
             "model.num_attention_heads=8", "model.num_key_value_heads=8", "model.num_hidden_layers=4",
             "data.seq_len=128", "train.batch_size=16", "model.attention_dropout=0.1"]


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
    # The physical limit: the first start-up (allocation to the first step) and the end (the last step to the job's
    # end: evaluation and the final save) are spent whatever the checkpointing
    unavoidable = None
    if records and runs and runs[0]["start"] not in ("", "Unknown") and runs[-1]["end"] not in ("", "Unknown"):
        first = time.mktime(time.strptime(runs[0]["start"], "%Y-%m-%dT%H:%M:%S"))
        end = time.mktime(time.strptime(runs[-1]["end"], "%Y-%m-%dT%H:%M:%S"))
        unavoidable = max(0.0, min(r["time"] for r in records) - first) + max(0.0, end - records[-1]["time"])
    limit = 1 - unavoidable / allocated if unavoidable is not None and allocated else None
    goodput = done * step_s / allocated if allocated else None
    return {
        "final_state": runs[-1]["state"], "failure": failure(job_logs) if runs[-1]["state"] == "FAILED" else None,
        "starts": len(runs), "allocated_s": allocated,
        "wall_s": round(time.time() - t0, 1), "steps_done": done,
        "steps_computed": len(steps), "recomputed_steps": sum(n - 1 for n in Counter(steps).values()),
        "median_step_s": round(step_s, 4),
        "goodput": round(goodput, 4) if goodput is not None else None,
        "physical_limit": round(limit, 4) if limit is not None else None,
        "of_limit": round(goodput / limit, 4) if goodput is not None and limit else None,
    }


def run_hpcrun(work: Path, name: str, save_every: str, schedule: List[tuple], model: List[str] = MODEL
               ) -> Dict[str, object]:
    run_dir = work / name
    out = sh(sys.executable, "-m", "hpcrun", *model, "cluster=slurm", "cluster.cpus_per_task=2",
             f"checkpoint.save_every={save_every}", f"run.dir={run_dir}", check=True)
    job = next(ln.split()[3] for ln in out.stdout.splitlines() if ln.startswith("submitted Slurm job"))
    result = drive(job, run_dir, schedule, run_dir / "logs")
    report = json.loads(sh(sys.executable, "-m", "hpcrun", "report", str(run_dir), "--json", check=True).stdout)
    result["hpcrun_report"] = report["runs"][0]
    sh(sys.executable, "-m", "hpcrun", "report", str(run_dir), "--plot", str(work / f"{name}.png"))
    return result


def run_baseline(work: Path, mode: str, schedule: List[tuple], model: List[str] = MODEL) -> Dict[str, object]:
    run_dir = work / mode
    out = sh(sys.executable, str(HERE / "baselines" / "trainer_submitit.py"), "--mode", mode, "--run-dir",
             str(run_dir), "--slurm-folder", str(work / f"{mode}-submitit"), "--cpus", "2", "--", *model,
             "cluster=local", check=True)
    return drive(out.stdout.strip().splitlines()[-1], run_dir, schedule, work / f"{mode}-submitit")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--interruptions", type=int, default=4)
    p.add_argument("--out", default=str(HERE / "results" / "goodput.json"))
    p.add_argument("--only", nargs="*", help="systems to run (default: all)")
    p.add_argument("--realistic", action="store_true",
                   help="steps of about a second, interruptions minutes apart, hpcrun against the Trainer (~20 min)")
    a = p.parse_args()
    rng = random.Random(a.seed)
    n = 2 if a.realistic and a.interruptions == 4 else a.interruptions
    kinds = [KINDS[i % len(KINDS)] for i in range(n)]
    rng.shuffle(kinds)
    low, high = (120, 180) if a.realistic else (15, 35)
    schedule = [(round(rng.uniform(low, high), 1), k) for k in kinds]
    work = Path(tempfile.mkdtemp(prefix="hpcrun-goodput-"))
    model, steps = (REALISTIC, REALISTIC_STEPS) if a.realistic else (MODEL, STEPS)
    if a.realistic and a.out == p.get_default("out"):
        a.out = str(HERE / "results" / "goodput-realistic.json")
    systems = {
        "hpcrun_auto": lambda: run_hpcrun(work, "hpcrun_auto", "auto", schedule, model),
        "hpcrun_30m": lambda: run_hpcrun(work, "hpcrun_30m", "30m", schedule, model),
        "trainer_default_submitit": lambda: run_baseline(work, "trainer_default", schedule, model),
        "submitit_from_scratch": lambda: run_baseline(work, "from_scratch", schedule, model),
    }
    if a.realistic and not a.only:
        a.only = ["hpcrun_auto", "trainer_default_submitit"]
    result = {"date": time.strftime("%Y-%m-%d %H:%M"), "machine": f"{os.cpu_count()} cores", "steps": steps,
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
