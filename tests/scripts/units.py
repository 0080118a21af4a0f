"""A script that knows nothing of hpcrun: it works through N units, keeps its own progress file, and on SIGUSR2 or
SIGTERM saves its progress and exits 0, as a careful user's script does. Each finished unit is appended to
units.log, so a test can check that every unit was done exactly once across restarts.

    python units.py OUT_DIR N [SECONDS_PER_UNIT]
"""

import json
import os
import signal
import sys
import time
from pathlib import Path

stop = []
signal.signal(signal.SIGUSR2, lambda s, f: stop.append(s))
signal.signal(signal.SIGTERM, lambda s, f: stop.append(s))

out, n = Path(sys.argv[1]), int(sys.argv[2])
pause = float(sys.argv[3]) if len(sys.argv) > 3 else 0.1
out.mkdir(parents=True, exist_ok=True)
progress = out / "progress.json"
done = json.loads(progress.read_text())["next"] if progress.exists() else 0
log = (out / "units.log").open("a")


def save(next_unit: int) -> None:
    tmp = out / "progress.json.tmp"
    tmp.write_text(json.dumps({"next": next_unit}))
    os.replace(tmp, progress)


for unit in range(done, n):
    time.sleep(pause)
    log.write(f"{unit}\n")
    log.flush()
    if stop:
        save(unit + 1)
        print(f"signal {stop[0]}: saved, next unit {unit + 1}", flush=True)
        sys.exit(0)
save(n)
print(f"all {n} units done (HPCRUN_RESTART={os.environ.get('HPCRUN_RESTART')})", flush=True)
