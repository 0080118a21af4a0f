"""How long composing a sweep's points takes: each point from scratch (hpcrun.config.compose.compose), against
hpcrun.config.points.PointComposer (each shape of point composed in full once, the others by their values), side by
side in one process; and one whole `hpcrun render` (a fresh process) for scale. The whole submission, run
directories and sbatch included, is benchmarks/login_side.py.

    python benchmarks/sweep_compose.py --points 1000      # benchmarks/results/sweep_compose.json

No cluster needed: this is the login side's composing and checking only (what `hpcrun -m` does before it writes run
directories and calls sbatch). Both ways must give equal configs (checked on every point here too).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "sweep_compose.json"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--points", type=int, default=1000)
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT))
    from hpcrun.config.compose import compose, to_container
    from hpcrun.config.points import PointComposer
    from hpcrun.launch.sweep import expand

    lrs = max(1, args.points // 100)
    points = expand(["+experiment=tiny_llama", "cluster=slurm", f"train.seed=range(0,{args.points // lrs})",
                     "train.lr=" + ",".join(f"{(i + 1) * 1e-4:g}" for i in range(lrs))])
    compose(points[0])  # imports and Hydra's plugin scan, out of both timings

    began = time.perf_counter()
    composer = PointComposer()
    fast = [composer.compose(p) for p in points]
    fast_s = time.perf_counter() - began
    began = time.perf_counter()
    slow = [compose(p) for p in points]
    slow_s = time.perf_counter() - began
    assert all(to_container(a) == to_container(b) for a, b in zip(fast, slow))

    renders = []
    for _ in range(3):
        began = time.perf_counter()
        subprocess.run([sys.executable, "-m", "hpcrun", "render", "+experiment=tiny_llama", "cluster=slurm"],
                       check=True, capture_output=True, cwd=ROOT)
        renders.append(time.perf_counter() - began)
    render_s = sorted(renders)[1]
    result = {"command": f"python benchmarks/sweep_compose.py --points {args.points}", "date": time.strftime("%Y-%m-%d"),
              "points": len(points), "point_by_point_s": round(slow_s, 3), "point_composer_s": round(fast_s, 3),
              "speedup": round(slow_s / fast_s, 2), "full_compositions": len(composer.templates),
              "one_render_s": round(render_s, 3), "point_composer_over_one_render": round(fast_s / render_s, 2)}
    RESULTS.write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
