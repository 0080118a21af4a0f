"""What writing the ledger costs: microseconds per event, against the one-a-minute rate a run writes them.

    python benchmarks/ledger_cost.py [--events 20000] [--dir DIR]

DIR defaults to a temporary folder; pass a folder on the filesystem your runs use (e.g. /scratch) to measure that.
"""

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

from hpcrun.rundir.ledger import Ledger


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--events", type=int, default=20000)
    p.add_argument("--dir", default=None)
    a = p.parse_args()
    with tempfile.TemporaryDirectory(dir=a.dir) as d:
        ledger = Ledger(Path(d), start=1)
        rounds = []
        for _ in range(5):
            t = time.perf_counter()
            for i in range(a.events):
                ledger.step(i, force=True)  # a progress event, the most frequent kind
            rounds.append((time.perf_counter() - t) / a.events)
        per_event = statistics.median(rounds)
    result = {"events": a.events, "us_per_event": round(per_event * 1e6, 2),
              "share_of_wall_clock_at_one_event_per_minute": f"{per_event / 60:.1e}"}
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
