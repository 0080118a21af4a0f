"""The login side, side by side in one run (issue 16's targets; ratios are what to quote, absolute times drift):

1. a sweep of N points submitted (`hpcrun -m`: composed, checked, run directories written, one sbatch per array)
   against one `hpcrun render` of the same experiment, in turns, each in a new process;
2. `hpcrun status SWEEP` of those N runs (one sacct call), and `hpcrun status SWEEP --json`;
3. `hpcrun render` against a bare Hydra compose of the same config (Hydra's compose API, the same conf/ and
   schema, printing the YAML), in turns;
4. what `hpcrun render` imports (`python -X importtime`): none of torch, transformers, accelerate, datasets, peft,
   trl, numpy.

    python benchmarks/login_side.py [--points 1000] [--pairs 3]    # needs the dev cluster; ~2 min

Every sweep is submitted to begin in an hour (`cluster.sbatch_extra.begin=now+1hour`; not a hold, so hpcrun's own
hold-until-recorded and its release are measured) into a new temporary run root, and cancelled after: this
measures the login side, not the cluster running the jobs. Results: benchmarks/results/login_side.json.
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
EXPERIMENT = ["+experiment=tiny_llama", "cluster=slurm"]
HEAVY = ("torch", "transformers", "accelerate", "datasets", "peft", "trl", "numpy")
BARE_HYDRA = """
import sys
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf
from hpcrun.config.schema import register
register()
with initialize_config_dir(config_dir=sys.argv[1], version_base=None):
    cfg = compose("hpcrun", overrides=sys.argv[2:])
print(OmegaConf.to_yaml(cfg, resolve=True))
"""


def timed(cmd: list, env: dict) -> float:
    began = time.perf_counter()
    subprocess.run(cmd, check=True, capture_output=True, cwd=REPO, env=env)
    return time.perf_counter() - began


def sweep_overrides(points: int, run_root: Path) -> list:
    lrs = 10 if points >= 10 else 1
    return [*EXPERIMENT, f"train.seed=range(0,{points // lrs})",
            "train.lr=" + ",".join(f"{(i + 1) * 1e-4:g}" for i in range(lrs)),
            f"cluster.run_root={run_root}", "+cluster.sbatch_extra.begin=now+1hour"]


def cancel(sweep: Path, env: dict) -> None:
    subprocess.run([*HPCRUN, "cancel", str(sweep)], capture_output=True, cwd=REPO, env=env)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--points", type=int, default=1000)
    parser.add_argument("--pairs", type=int, default=3)
    parser.add_argument("--dir", default=None, help="where the temporary run roots go (default: the temp dir)")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="hpcrun-login-bench-", dir=args.dir))
    env = {**os.environ, "HPCRUN_STATE_DIR": str(work / "state")}
    render = [*HPCRUN, "render", *EXPERIMENT]
    timed(render, env)  # warm the file cache

    sweeps, renders, ratios, last = [], [], [], None
    for i in range(args.pairs):
        renders.append(timed(render, env))
        root = work / f"runs-{i}"
        sweeps.append(timed([*HPCRUN, "-m", *sweep_overrides(args.points, root)], env))
        ratios.append(sweeps[-1] / renders[-1])
        last = next((root / "sweeps").iterdir())
        runs = len(list(root.glob("tiny_llama/*")))
        assert runs == args.points, f"{runs} run directories, not {args.points}"
        if i < args.pairs - 1:
            cancel(last, env)
    status = [timed([*HPCRUN, "status", str(last)], env) for _ in range(3)]
    status_json = [timed([*HPCRUN, "status", str(last), "--json"], env) for _ in range(3)]
    cancel(last, env)

    bare = [sys.executable, "-c", BARE_HYDRA, str(REPO / "conf"), *EXPERIMENT]
    pairs = []
    for _ in range(5):
        r, b = timed(render, env), timed(bare, env)
        pairs.append((r, b, r / b))

    out = subprocess.run([sys.executable, "-X", "importtime", "-m", "hpcrun", "render", *EXPERIMENT],
                         capture_output=True, text=True, cwd=REPO, env=env, check=True).stderr
    imported = {line.split("|")[2].strip().split(".")[0] for line in out.splitlines() if line.count("|") == 2}
    imported.discard("package")
    result = {
        "command": f"python benchmarks/login_side.py --points {args.points} --pairs {args.pairs}",
        "date": time.strftime("%Y-%m-%d %H:%M"), "machine": f"{os.cpu_count()} cores",
        "sweep": {"points": args.points, "submit_s": [round(s, 2) for s in sweeps],
                  "render_s": [round(r, 3) for r in renders],
                  "submit_over_render_median": round(statistics.median(ratios), 1)},
        "status": {"runs": args.points, "table_s_median": round(statistics.median(status), 2),
                   "json_s_median": round(statistics.median(status_json), 2)},
        "render_vs_bare_hydra": {"render_s_median": round(statistics.median(p[0] for p in pairs), 3),
                                 "bare_hydra_s_median": round(statistics.median(p[1] for p in pairs), 3),
                                 "ratio_median": round(statistics.median(p[2] for p in pairs), 2)},
        "render_imports": {"top_level_packages": len(imported), "heavy_imported": sorted(set(HEAVY) & imported)},
    }
    (HERE / "results").mkdir(exist_ok=True)
    (HERE / "results" / "login_side.json").write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result, indent=1))
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
