"""``python -m hpcrun.job``: what a standalone sbatch script (``hpcrun render --standalone``) runs.

    python -m hpcrun.job prepare [--index N] < CONFIG_YAML   write the run's config; print its run directory
    python -m hpcrun.job run RUN_DIR                          one rank of the job (under srun)
"""

from __future__ import annotations

import argparse
import os
import sys


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m hpcrun.job")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("prepare", help="read the embedded config(s) on stdin, write the run directory, print it")
    p.add_argument("--index", type=int, default=0, help="which config (the array task id)")
    r = sub.add_parser("run", help="run (or resume) the run in RUN_DIR: one rank, as under srun")
    r.add_argument("run_dir")
    args = parser.parse_args()

    from hpcrun.errors import HpcrunError, UserError

    try:
        if args.command == "prepare":
            from hpcrun.job.standalone import prepare

            from hpcrun.job.context import slurm_job_id

            print(prepare(sys.stdin.read(), args.index, slurm_job_id(os.environ) or ""))
            return 0
        from hpcrun.job.entry import JobEntry

        JobEntry(args.run_dir)()
        return 0
    except HpcrunError as exc:
        print(f"hpcrun: error: {exc}", file=sys.stderr, flush=True)
        return 2 if isinstance(exc, UserError) else 1


if __name__ == "__main__":
    sys.exit(main())
