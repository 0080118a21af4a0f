"""Benchmark 2: a 500-task sweep, submitted and shown, hpcrun against Hydra's submitit launcher; and cold start.

    python benchmarks/sweep_scale.py [--points 500] [--out benchmarks/results/sweep_scale.json]

Needs the dev cluster (`scripts/dev-cluster up`) and, for the Hydra side, a separate venv with
hydra-submitit-launcher from PyPI (created in benchmarks/.venv-hydra on first use: it is kept apart so that its
Hydra plugins do not change hpcrun's own timings). Every job is submitted held (`--hold`): the benchmark measures
submission and status, not the cluster running 500 jobs; they are cancelled at the end.

Measured, with PATH shims that log every sbatch, sacct and squeue call:
- hpcrun: `hpcrun -m ... train.seed=range(0,N)` until it returns; then `hpcrun status SWEEP --json`.
- Hydra: `python my_app.py -m seed='range(0,N)'` with hydra/launcher=submitit_slurm until its sbatch returned (it
  then stays in the foreground, waiting for the jobs and polling sacct: those calls are counted for 60 s).
- Cold start: `hpcrun render +experiment=llama7b cluster=greene` against `python -c "import transformers"`.
Ratios are what to quote: absolute times depend on the machine.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
HPCRUN = [sys.executable, "-m", "hpcrun"]
HYDRA_VENV = HERE / ".venv-hydra"


def make_shims(bin_dir: Path, log: Path) -> dict:
    """sbatch/sacct/squeue wrappers that log '<name> <start> <end>' per call, then behave as the real ones."""
    bin_dir.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ)
    for name in ("sbatch", "sacct", "squeue"):
        real = shutil.which(name)
        shim = bin_dir / name
        shim.write_text(f'#!/bin/bash\nstart=$(date +%s.%N)\n{real} "$@"\nrc=$?\n'
                        f'echo "{name} $start $(date +%s.%N)" >> {log}\nexit $rc\n')
        shim.chmod(0o755)
    env["PATH"] = f"{bin_dir}:{env['PATH']}"
    return env


def calls(log: Path, name: str, since: float = 0.0, until: float = float("inf")) -> list:
    if not log.exists():
        return []
    out = []
    for line in log.read_text().splitlines():
        n, start, end = line.split()
        if n == name and since <= float(start) <= until:
            out.append((float(start), float(end)))
    return out


def hpcrun_side(work: Path, points: int) -> dict:
    log = work / "hpcrun-calls.log"
    env = make_shims(work / "bin-hpcrun", log)
    t0 = time.time()
    out = subprocess.run([*HPCRUN, "-m", "+experiment=tiny_llama", "cluster=slurm", f"train.seed=range(0,{points})",
                          "cluster.sbatch_extra.hold=true", f"cluster.run_root={work / 'runs'}"],
                         cwd=work, env=env, capture_output=True, text=True)
    submit_s = time.time() - t0
    if out.returncode != 0:
        raise SystemExit(f"hpcrun sweep failed: {out.stderr[-2000:]}")
    sweep = next(work.glob("runs/sweeps/*"))
    t1 = time.time()
    status = subprocess.run([*HPCRUN, "status", str(sweep), "--json"], cwd=work, env=env, capture_output=True,
                            text=True, check=True)
    status_s = time.time() - t1
    rows = json.loads(status.stdout)
    subprocess.run([*HPCRUN, "cancel", str(sweep)], cwd=work, capture_output=True, text=True)
    return {
        "submit_wall_s": round(submit_s, 2), "sbatch_calls": len(calls(log, "sbatch", t0, t1)),
        "sacct_calls_submit": len(calls(log, "sacct", t0, t1)), "squeue_calls_submit": len(calls(log, "squeue", t0, t1)),
        "status_wall_s": round(status_s, 2), "status_runs": len(rows),
        "sacct_calls_status": len(calls(log, "sacct", t1)), "squeue_calls_status": len(calls(log, "squeue", t1)),
    }


def hydra_python() -> str:
    py = HYDRA_VENV / "bin" / "python"
    if not py.exists():
        subprocess.run([sys.executable, "-m", "venv", str(HYDRA_VENV)], check=True)
        subprocess.run([str(py), "-m", "pip", "install", "-q", "hydra-submitit-launcher", "hydra-core>=1.3.2,<1.4"], check=True)
    return str(py)


def hydra_side(work: Path, points: int, watch_s: float = 60.0) -> dict:
    py = hydra_python()
    log = work / "hydra-calls.log"
    env = make_shims(work / "bin-hydra", log)
    t0 = time.time()
    proc = subprocess.Popen([py, str(HERE / "hydra_app" / "my_app.py"), "-m", f"seed=range(0,{points})",
                             f"hydra.sweep.dir={work / 'multirun'}"], cwd=work, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.time() + 600
    while not calls(log, "sbatch") and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    if not calls(log, "sbatch"):
        proc.kill()
        raise SystemExit(f"the Hydra launcher never called sbatch: {proc.communicate()[0][-2000:]}")
    submitted = calls(log, "sbatch")[-1][1]
    time.sleep(watch_s)  # the launcher now blocks, polling the jobs
    watched = calls(log, "sacct", submitted)
    still_running = proc.poll() is None
    proc.kill()
    proc.communicate()
    ids = subprocess.run(["squeue", "-h", "-u", os.environ.get("USER", "root"), "-n", "my_app", "-o", "%A"],
                         capture_output=True, text=True).stdout.split()
    if ids:
        subprocess.run(["scancel", *sorted(set(ids))], capture_output=True)
    return {
        "submit_wall_s": round(submitted - t0, 2), "sbatch_calls": len(calls(log, "sbatch")),
        "sacct_calls_submit": len(calls(log, "sacct", t0, submitted)),
        "blocks_after_submit": still_running, "sacct_calls_per_min_while_waiting": round(len(watched) * 60 / watch_s, 1),
        "status_command": None,
    }


def cold_start(repeats: int = 5) -> dict:
    def median_time(cmd: list) -> float:
        times = []
        for _ in range(repeats):
            t = time.perf_counter()
            subprocess.run(cmd, capture_output=True, check=True, cwd=REPO)
            times.append(time.perf_counter() - t)
        return statistics.median(times)

    render = median_time([*HPCRUN, "render", "+experiment=llama7b", "cluster=greene"])
    transformers = median_time([sys.executable, "-c", "import transformers"])
    torch = median_time([sys.executable, "-c", "import torch"])
    return {"render_s": round(render, 3), "import_transformers_s": round(transformers, 3),
            "import_torch_s": round(torch, 3), "render_over_import_transformers": round(render / transformers, 3)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--points", type=int, default=500)
    p.add_argument("--out", default=str(HERE / "results" / "sweep_scale.json"))
    p.add_argument("--skip-hydra", action="store_true")
    a = p.parse_args()
    work = Path(tempfile.mkdtemp(prefix="hpcrun-sweep-bench-"))
    result = {"points": a.points, "date": time.strftime("%Y-%m-%d %H:%M"), "machine": f"{os.cpu_count()} cores",
              "cold_start": cold_start(), "hpcrun": hpcrun_side(work, a.points)}
    if not a.skip_hydra:
        result["hydra_submitit_launcher"] = hydra_side(work, a.points)
        h, s = result["hydra_submitit_launcher"], result["hpcrun"]
        result["ratio_submit_wall_hydra_over_hpcrun"] = round(h["submit_wall_s"] / s["submit_wall_s"], 2)
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result, indent=1))
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
