"""The ``hpcrun`` command. Submitting side: it must not import torch, transformers or accelerate.

    hpcrun [--config-dir DIR] [OVERRIDES...]          run locally in the foreground, or submit to Slurm
    hpcrun render [--config-dir DIR] [OVERRIDES...]   print the sbatch script that would be submitted
"""

from __future__ import annotations

import argparse
import shutil
import sys
import textwrap
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence

from hpcrun import __version__
from hpcrun.errors import JobError, UserError

PROG = "hpcrun"
# The keys --help shows; docs/configuration.md lists every key.
MAIN_KEYS = (
    "run.name", "run.dir", "train.max_steps", "train.lr", "train.batch_size", "train.precision",
    "model.name_or_path", "data.corpus", "cluster.time", "cluster.partition", "cluster.account",
    "cluster.gpus_per_node", "cluster.gpu_type", "cluster.mem",
)


def _say(message: str) -> None:
    print(f"{PROG}: {message}", file=sys.stderr, flush=True)


def _epilog(config_dirs: Sequence[str]) -> str:
    from hpcrun.config.compose import available, search_dirs
    from hpcrun.config.describe import key_docs

    try:
        dirs = search_dirs(config_dirs)
    except UserError:
        dirs = search_dirs(())
    docs = {d.key: d for d in key_docs()}
    width = max(len(k) for k in MAIN_KEYS) + 2
    keys = "\n".join(f"  {k:<{width}}{textwrap.shorten(docs[k].doc, 76)}" for k in MAIN_KEYS)
    return f"""\
commands:
  (none)           compose the config and run it: in the foreground here (cluster=local) or through
                   sbatch (a Slurm cluster), returning at once with the job id and run directory
  render           print the exact sbatch script that would be submitted; submit nothing

experiments (+experiment=NAME):  {", ".join(available("experiment", dirs))}
clusters    (cluster=NAME):      {", ".join(available("cluster", dirs))}
models      (model=NAME):        {", ".join(available("model", dirs))}
data        (data=NAME):         {", ".join(available("data", dirs))}

main keys (KEY=VALUE; every key: docs/configuration.md):
{keys}

Without cluster=, hpcrun uses $HPCRUN_CLUSTER if set, cluster=local inside a Slurm allocation, cluster=slurm where
sbatch is on the PATH, and cluster=local otherwise.
Configs are looked up in each --config-dir, then ./conf, then hpcrun's own conf/: a conf/experiment/mine.yaml in
your project folder is +experiment=mine.

examples:
  hpcrun +experiment=tiny_llama cluster=local train.max_steps=100
  hpcrun +experiment=tiny_llama cluster=slurm cluster.partition=preemptible
  hpcrun render +experiment=llama7b cluster=greene cluster.account=pr_123_general
"""


def _parser(command: Optional[str], config_dirs: Sequence[str]) -> argparse.ArgumentParser:
    usage = f"{PROG} [render] [--config-dir DIR] [OVERRIDES ...]"
    if command == "render":
        description = "Print the exact sbatch script `hpcrun OVERRIDES` would submit, and submit nothing."
        prog = f"{PROG} render"
    else:
        description = "Train Hugging Face models on Slurm GPU clusters without losing wall-clock time."
        prog = PROG
    parser = argparse.ArgumentParser(
        prog=prog, usage=usage, description=description, epilog=_epilog(config_dirs),
        formatter_class=argparse.RawDescriptionHelpFormatter, add_help=True,
    )
    parser.add_argument("overrides", nargs="*", metavar="OVERRIDES",
                        help="Hydra overrides: +experiment=NAME, GROUP=CHOICE, KEY=VALUE")
    parser.add_argument("--config-dir", action="append", default=[], metavar="DIR",
                        help="an extra folder of configs, searched before ./conf and hpcrun's own (repeatable)")
    parser.add_argument("--version", action="version", version=f"{PROG} {__version__}")
    return parser


def _with_cluster(overrides: List[str]) -> List[str]:
    """Adds the default cluster choice when the command line names none, and says why."""
    from hpcrun.launch.choose import default_cluster

    if any(o.split("=", 1)[0] == "cluster" for o in overrides):
        return overrides
    choice, reason = default_cluster()
    _say(f"cluster={choice} ({reason})")
    return [f"cluster={choice}", *overrides]


def cmd_run(args: argparse.Namespace) -> int:
    from hpcrun.config.compose import compose
    from hpcrun.launch.rundir import prepare_run_dir

    cfg = compose(_with_cluster(args.overrides), args.config_dir)
    prepared = prepare_run_dir(cfg)
    _say(prepared.message)
    if prepared.kind in ("complete", "active"):
        return 0
    run_dir = prepared.run_dir
    if cfg.cluster.launcher == "slurm":
        from hpcrun.launch.rundir import record_submission
        from hpcrun.launch.slurm import SLURM_SUBDIR, submit

        try:
            job_id = submit(cfg)
        except UserError:
            if prepared.created:  # sbatch refused a new run: leave no trace of it
                shutil.rmtree(run_dir, ignore_errors=True)
            raise
        record_submission(run_dir, job_id)
        logs = run_dir / SLURM_SUBDIR
        print(textwrap.dedent(f"""\
            submitted Slurm job {job_id} for run {cfg.run.name} on {cfg.cluster.name}
              run dir: {run_dir}
              logs:    tail -f {run_dir}/logs/latest.log   (all output: {logs}/{job_id}_0_log.err)
              state:   squeue -j {job_id}   (after it ends: sacct -j {job_id})
              cancel:  scancel {job_id}"""), flush=True)
        return 0

    from hpcrun.launch.local import run_local

    from hpcrun.job.runstate import read_state

    _say(f"running in the foreground in {run_dir} (Ctrl-C saves and stops)")
    result = run_local(run_dir)
    state = read_state(run_dir)
    if state.get("status") == "stopped":
        # Resumable, not finished: 130 after Ctrl-C as shells expect, else 75 (EX_TEMPFAIL: try again).
        _say(f"stopped: {state.get('reason')}; the same command resumes it")
        return 130 if "SIGINT" in str(state.get("reason")) else 75
    _say(f"done: final weights in {result}")
    return 0


def cmd_render(args: argparse.Namespace) -> int:
    from hpcrun.config.compose import compose
    from hpcrun.launch.slurm import render

    overrides = args.overrides
    if not any(o.split("=", 1)[0] == "cluster" for o in overrides):
        overrides = ["cluster=slurm", *overrides]  # rendering is about sbatch: default to the generic Slurm
    cfg = compose(overrides, args.config_dir)
    if cfg.cluster.launcher != "slurm":
        raise UserError(f"cluster={cfg.cluster.name} runs locally (cluster.launcher=local): there is no sbatch "
                        "script to render; pick a Slurm cluster, e.g. cluster=slurm")
    sys.stdout.write(render(cfg))
    sys.stdout.write("\n")
    return 0


COMMANDS: Dict[Optional[str], Callable[[argparse.Namespace], int]] = {None: cmd_run, "render": cmd_render}


def main(argv: Optional[Sequence[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    command = argv[0] if argv and argv[0] in COMMANDS else None
    rest = argv[1:] if command else argv
    # --config-dir must be known before --help lists the experiments it adds.
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--config-dir", action="append", default=[])
    known, _ = pre.parse_known_args(rest)
    try:
        args = _parser(command, known.config_dir).parse_args(rest)
        return COMMANDS[command](args)
    except UserError as exc:
        _say(f"error: {exc}")
        return 2
    except JobError as exc:  # the job itself failed (locally); its log has the details
        _say(f"error: {exc}")
        return 1
    except KeyboardInterrupt:
        _say("interrupted")
        return 130


if __name__ == "__main__":
    sys.exit(main())
