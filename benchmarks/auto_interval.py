"""checkpoint.save_every=auto against fixed intervals, at real scale, by simulation through hpcrun's own triggers.

    python benchmarks/auto_interval.py [--seeds 200] [--out benchmarks/results/auto_interval.json]

A dev-cluster run cannot show what the save interval is worth: the tiny model saves in 0.1 s and its runs last
minutes. So this drives hpcrun.job.triggers.TimeTriggers (the code a real run uses) with a simulated clock through a
llama7b-like run: 10 s optimizer steps, 48 h of training work, saves of 81 s (`hpcrun plan`'s figure at 1 GB/s),
5 minutes from a restart to the first step, and unannounced interruptions (kill -9, node failure, OOM) arriving
at random with a mean time between them of MTBF. Announced stops are left out: every policy saves for them.

For each MTBF and policy, over the same seeded interruption times: goodput (training work over wall clock) and the
hours lost to recomputed steps and to saving. The auto policy learns the MTBF as a real run does (24 h prior, then
the run's own history: wall clock so far over interruptions seen).
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import time
from pathlib import Path
from typing import Dict, Optional

from hpcrun.job.triggers import TimeTriggers

HERE = Path(__file__).resolve().parent
STEP_S, WORK_S, SAVE_S, RESTART_S = 10.0, 48 * 3600.0, 81.0, 300.0


class Clock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


def simulate(policy: str, mtbf: float, seed: int) -> Dict[str, float]:
    rng = random.Random(seed)
    clock = Clock()
    next_failure = rng.expovariate(1 / mtbf)
    done = saved_at = 0.0          # training work done, and done as of the last save (seconds of work)
    lost = saving = 0.0
    failures = 0
    while done < WORK_S:
        observed: Optional[float] = clock.t / failures if failures else None
        if policy == "auto":
            triggers = TimeTriggers(auto_save=True, mtbf=observed, save_guess=SAVE_S, clock=clock, wall=clock)
            triggers.estimates.add_save(SAVE_S)  # restored from the checkpoint, as on a real resume
            triggers.update_auto_interval()
        else:
            triggers = TimeTriggers(save_every=float(policy), clock=clock, wall=clock)
        clock.t += RESTART_S
        done = saved_at
        while done < WORK_S:
            if clock.t + STEP_S > next_failure:  # killed mid-step: everything since the last save is lost
                lost += done - saved_at + (next_failure - clock.t)
                clock.t = next_failure
                next_failure = clock.t + rng.expovariate(1 / mtbf)
                failures += 1
                break
            triggers.step_started()
            clock.t += STEP_S
            done += STEP_S
            if triggers.step_ended().save and done < WORK_S:
                if clock.t + SAVE_S > next_failure:  # killed during the save: it never completes
                    lost += done - saved_at + (next_failure - clock.t)
                    saving += next_failure - clock.t
                    clock.t = next_failure
                    next_failure = clock.t + rng.expovariate(1 / mtbf)
                    failures += 1
                    break
                clock.t += SAVE_S
                saving += SAVE_S
                saved_at = done
                triggers.saved(SAVE_S)
    return {"wall_h": clock.t / 3600, "goodput": WORK_S / clock.t, "lost_h": lost / 3600, "saving_h": saving / 3600,
            "failures": failures}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", type=int, default=200)
    p.add_argument("--out", default=str(HERE / "results" / "auto_interval.json"))
    a = p.parse_args()
    policies = {"every 30m (default)": "1800", "every 2h": "7200", "every 10m": "600", "auto (Young/Daly)": "auto"}
    table: Dict[str, Dict[str, Dict[str, float]]] = {}
    for mtbf_h in (1, 3, 12, 48):
        row = {}
        for name, policy in policies.items():
            runs = [simulate(policy, mtbf_h * 3600.0, seed) for seed in range(a.seeds)]
            row[name] = {k: round(statistics.mean(r[k] for r in runs), 4) for k in runs[0]}
        table[f"MTBF {mtbf_h}h"] = row
    result = {"date": time.strftime("%Y-%m-%d %H:%M"), "seeds": a.seeds, "step_s": STEP_S, "work_h": WORK_S / 3600,
              "save_s": SAVE_S, "restart_s": RESTART_S, "results": table}
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(result, indent=1) + "\n")
    for mtbf, row in table.items():
        print(mtbf)
        for name, r in row.items():
            print(f"  {name:<22} goodput {r['goodput']:.3f}  lost {r['lost_h']:6.2f} h  saving {r['saving_h']:5.2f} h"
                  f"  wall {r['wall_h']:6.1f} h")


if __name__ == "__main__":
    main()
