"""The ``hpcrun`` command. Submitting side: it must not import torch, transformers or accelerate.

    hpcrun [-m] [--wait] [--config-dir DIR] [OVERRIDES...]   run here, or submit to Slurm (-m: a sweep, as arrays)
    hpcrun run [-m] [--wait] [OVERRIDES...] -- COMMAND [ARGS...]   the same, for a command of your own
    hpcrun render [OVERRIDES...]                              print the sbatch script that would be submitted
    hpcrun config [OVERRIDES... | RUN]                        print the composed config (a run's: its config.yaml)
    hpcrun doctor [OVERRIDES...] [--no-probe] [--json]        whether saves and requeues work here, before you queue
    hpcrun plan [OVERRIDES...]                                parameters, memory per GPU, checkpoint size and time
    hpcrun plan --soonest [--submit] cluster.KEY=A,B ...      which shape would finish first on today's queue
    hpcrun status [RUN_OR_SWEEP] [--json]                     one line per run
    hpcrun report [RUN_OR_SWEEP] [--json] [--plot FILE.png]   where the allocated time went; goodput
    hpcrun results SWEEP [--sort M] [--json|--csv] [--plot F]  one row per point: swept values, state, metrics
    hpcrun logs RUN [-f] [--restart N]                        a run's log
    hpcrun cancel RUN_OR_SWEEP                                stop its jobs and local runs (saved)
    hpcrun resume RUN [OVERRIDES...]                          resubmit a stopped or failed run
    hpcrun wait RUN_OR_SWEEP                                  block until its runs end
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
import textwrap
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence

from hpcrun import __version__
from hpcrun.console import say
from hpcrun.errors import JobError, UserError

PROG = "hpcrun"
# The keys --help shows; docs/configuration.md lists every key.
MAIN_KEYS = (
    "run.name", "run.dir", "run.fresh", "train.max_steps", "train.lr", "train.batch_size", "train.precision",
    "checkpoint.save_every", "model.name_or_path", "data.corpus", "cluster.time", "cluster.partition",
    "cluster.account", "cluster.gpus_per_node", "cluster.gpu_type", "cluster.array_throttle",
)
COMMAND_HELP = {
    "run": "run a command of your own (after --) as the job: saves, requeue and resume around it (docs/own-script.md)",
    "render": "print the exact sbatch script that would be submitted; submit nothing",
    "config": "print the composed config of a command line, or a run's (its config.yaml); `--cfg job` does the same",
    "doctor": "before you queue: whether saves and requeues work on this cluster with this config (site, storage, "
              "a probe job)",
    "plan": "parameters, memory per GPU, checkpoint size and save time of a config, without a GPU or a download",
    "status": "one line per run (a run or sweep directory, or your recent runs): state, restarts, step, ...",
    "report": "where a run's (or sweep's) allocated time went: start-up, training, saving, lost work; goodput",
    "results": "one row per point of a sweep, best first: its swept values, state, step and final metrics (--plot: "
               "the metric against a swept value)",
    "logs": "print a run's log (-f to follow; --restart N for an earlier start)",
    "cancel": "cancel a run or a sweep: its Slurm jobs, and its local runs on this host (each saves before it "
              "stops; hpcrun resume continues it)",
    "resume": "resubmit a stopped or failed run from its saved config (launcher keys may change)",
    "wait": "block until every run of a run or sweep has ended; non-zero if any failed",
}


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
    commands = "\n".join(f"  {name:<9}{text}" for name, text in COMMAND_HELP.items())
    return f"""\
commands (hpcrun COMMAND --help for each):
  (none)   compose the config and run it: in the foreground here (cluster=local) or through sbatch, returning
           at once with the job id and run directory; -m runs a sweep (one job array per sbatch call)
{commands}

experiments (+experiment=NAME):  {", ".join(available("experiment", dirs))}
clusters    (cluster=NAME):      {", ".join(available("cluster", dirs))}
models      (model=NAME):        {", ".join(available("model", dirs))}
data        (data=NAME):         {", ".join(available("data", dirs))}

main keys (KEY=VALUE; every key: docs/configuration.md):
{keys}

Without cluster=, hpcrun uses $HPCRUN_CLUSTER if set, cluster=local inside a Slurm allocation, cluster=slurm where
sbatch is on the PATH, and cluster=local otherwise. Configs are looked up in each --config-dir, then ./conf, then
hpcrun's own conf/: a conf/experiment/mine.yaml in your project folder is +experiment=mine.

examples:
  hpcrun +experiment=tiny_llama cluster=local train.max_steps=100
  hpcrun +experiment=tiny_llama cluster=slurm cluster.partition=preemptible
  hpcrun -m +experiment=tiny_llama train.lr=1e-4,3e-4,1e-3 train.seed=0,1
  hpcrun render +experiment=llama7b cluster=greene cluster.account=pr_123_general
  hpcrun status runs/sweeps/<sweep> --json
"""


def _base_parser(prog: str, description: str, epilog: Optional[str] = None) -> argparse.ArgumentParser:
    return argparse.ArgumentParser(prog=prog, description=description, epilog=epilog,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)


def _add_overrides(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("overrides", nargs="*", metavar="OVERRIDES",
                        help="Hydra overrides: +experiment=NAME, GROUP=CHOICE, KEY=VALUE")
    parser.add_argument("--config-dir", action="append", default=[], metavar="DIR",
                        help="an extra folder of configs, searched before ./conf and hpcrun's own (repeatable)")


def _add_cfg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--cfg", choices=("job", "all", "hydra"), metavar="job",
                        help="print the composed config and exit, as Hydra's --cfg job does (= hpcrun config)")


def _parser(command: Optional[str], config_dirs: Sequence[str]) -> argparse.ArgumentParser:
    if command is None:
        parser = _base_parser(PROG, "Train Hugging Face models on Slurm GPU clusters without losing wall-clock time.",
                              _epilog(config_dirs))
        parser.usage = f"{PROG} [COMMAND] [-m] [--wait] [--config-dir DIR] [OVERRIDES ...]"
        _add_overrides(parser)
        parser.add_argument("-m", "--multirun", action="store_true",
                            help="a sweep: every combination of the comma lists, one job array per sbatch call")
        parser.add_argument("--wait", action="store_true", help="after submitting, wait until every run has ended")
        _add_cfg(parser)
        parser.add_argument("--version", action="version", version=f"{PROG} {__version__}")
        return parser
    parser = _base_parser(f"{PROG} {command}", COMMAND_HELP[command][0].upper() + COMMAND_HELP[command][1:] + ".")
    if command == "run":
        parser.usage = f"{PROG} run [-m] [--wait] [--config-dir DIR] [OVERRIDES ...] -- COMMAND [ARGS ...]"
        parser.epilog = textwrap.dedent("""\
            examples:
              hpcrun run cluster=greene cluster.time=48:00:00 -- python run_clm.py --output_dir '${run.dir}/out' ...
              hpcrun -m run +lr=1e-4,3e-4 -- python train.py --learning_rate '${lr}'
              hpcrun run cluster.gpus_per_node=4 -- torchrun --nproc_per_node=4 train.py""")
        _add_overrides(parser)
        parser.add_argument("-m", "--multirun", action="store_true",
                            help="a sweep: every combination of the comma lists, one job array per sbatch call")
        parser.add_argument("--wait", action="store_true", help="after submitting, wait until every run has ended")
        _add_cfg(parser)
    elif command == "config":
        parser.usage = (f"{PROG} config [--config-dir DIR] [OVERRIDES ...] [-- COMMAND [ARGS ...]]\n"
                        f"       {PROG} config RUN_DIR")
        _add_overrides(parser)
    elif command == "render":
        _add_overrides(parser)
        parser.add_argument("--standalone", action="store_true",
                            help="a self-contained script from slurm_templates/ that you sbatch yourself")
        parser.add_argument("--template", default="", metavar="NAME",
                            help="with --standalone: single, multi_gpu, multi_node, array or singularity "
                                 "(default: chosen from the config)")
        parser.add_argument("-m", "--multirun", action="store_true",
                            help="with --standalone: the sweep as one job array")
        parser.add_argument("-o", "--output", metavar="FILE", help="write the script here (default: stdout)")
    elif command == "doctor":
        _add_overrides(parser)
        parser.add_argument("--no-probe", action="store_true", help="skip the probe job (site and storage only)")
        parser.add_argument("--probe-timeout", type=float, default=300, metavar="S",
                            help="the most seconds the probe job may take, queue wait included (default 300)")
        parser.add_argument("--json", action="store_true", help="the checks as JSON")
        parser.add_argument("--write-cluster", metavar="FILE.yaml",
                            help="draft a cluster preset from what Slurm reports into FILE.yaml (never overwrites)")
    elif command == "plan":
        _add_overrides(parser)
        parser.add_argument("--bandwidth", default="1GB/s",
                            help="aggregate write bandwidth of the run directory's filesystem (default 1GB/s)")
        parser.add_argument("--gpu-memory", type=float, metavar="GB",
                            help="memory of one GPU (default: from cluster.gpu_type)")
        parser.add_argument("--json", action="store_true", help="the figures as JSON")
        parser.add_argument("--soonest", action="store_true",
                            help="rank the shapes given as comma-separated cluster.* values by estimated finish: "
                                 "Slurm's start (sbatch --test-only) plus the run's measured steps (docs/plan.md)")
        parser.add_argument("--submit", action="store_true", help="with --soonest: submit the first")
        parser.add_argument("--mfu", type=float, default=0.4,
                            help="with --soonest, for a run not measured yet: the share of the GPUs' peak a step "
                                 "reaches (default 0.4)")
    elif command == "status":
        parser.add_argument("target", nargs="?", metavar="RUN_OR_SWEEP", help="default: your recent runs")
        parser.add_argument("--json", action="store_true", help="a JSON list, one object per run (docs/commands.md)")
    elif command == "report":
        parser.add_argument("target", nargs="?", metavar="RUN_OR_SWEEP", help="default: your recent runs")
        parser.add_argument("--json", action="store_true", help="the figures as JSON (per run, per start, total)")
        parser.add_argument("--plot", metavar="FILE.png", help="also draw a timeline per run into FILE.png")
    elif command == "results":
        parser.add_argument("target", metavar="SWEEP")
        parser.add_argument("--sort", metavar="METRIC", help="the metric to rank by (default eval_loss, else loss)")
        parser.add_argument("--desc", action="store_true", help="largest first (an accuracy)")
        out = parser.add_mutually_exclusive_group()
        out.add_argument("--json", action="store_true", help="every point and every metric as JSON")
        out.add_argument("--csv", action="store_true", help="every point and every metric as CSV")
        parser.add_argument("--plot", metavar="FILE.png", help="also draw the metric against a swept value")
        parser.add_argument("--x", metavar="KEY", help="with --plot: the swept key on the x axis")
    elif command == "logs":
        parser.add_argument("target", metavar="RUN")
        parser.add_argument("-f", "--follow", action="store_true", help="keep printing as the log grows")
        parser.add_argument("--restart", type=int, metavar="N", help="the log of start N+1 (0: the first start)")
    elif command == "cancel":
        parser.add_argument("target", metavar="RUN_OR_SWEEP")
    elif command == "resume":
        parser.add_argument("target", metavar="RUN")
        parser.add_argument("overrides", nargs="*", metavar="OVERRIDES",
                            help="launcher keys only: cluster.*, checkpoint.*, run.max_requeues, ...")
    elif command == "wait":
        parser.add_argument("target", metavar="RUN_OR_SWEEP")
        parser.add_argument("--poll", type=float, default=15.0, help="seconds between checks (default 15)")
    return parser


def _with_cluster(overrides: List[str], quiet: bool = False, about_sbatch: bool = False) -> List[str]:
    """Adds the default cluster choice when the command line names none, and says why (unless ``quiet``).
    ``about_sbatch``: a command about Slurm's side (render, plan, doctor), which never picks ``local``."""
    from hpcrun.launch.choose import default_cluster, sbatch_cluster

    if any(o.split("=", 1)[0] == "cluster" for o in overrides):
        return overrides
    choice, reason = sbatch_cluster() if about_sbatch else default_cluster()
    if not quiet:
        say(f"cluster={choice} ({reason})")
    return [f"cluster={choice}", *overrides]


def cmd_config(args: argparse.Namespace) -> int:
    """The composed config as config.yaml would hold it (every default filled in, interpolations resolved); with
    one argument that is a run directory, that run's config.yaml."""
    from hpcrun.config.compose import compose
    from hpcrun.rundir import RunDir
    from hpcrun.rundir.create import config_yaml

    if len(args.overrides) == 1 and "=" not in args.overrides[0]:
        rd = RunDir(Path(args.overrides[0]))
        if not rd.config.is_file():
            raise UserError(f"{args.overrides[0]} is not a run directory (no config.yaml)")
        sys.stdout.write(rd.config.read_text())
        return 0
    if getattr(args, "multirun", False):
        raise UserError("--cfg prints one config: leave out -m (hpcrun render --standalone -m shows a sweep's)")
    sys.stdout.write(config_yaml(compose(_with_cluster(args.overrides, quiet=True), args.config_dir,
                                         command=args.argv or ())))
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    from hpcrun.launch.runner import launch, launch_sweep

    if args.cfg == "hydra":
        raise UserError("--cfg hydra: hpcrun has no hydra.* settings of its own; --cfg job (or hpcrun config) "
                        "prints the run's config")
    if args.cfg:
        return cmd_config(args)
    argv = args.argv or ()
    overrides = _with_cluster(args.overrides)
    command = shlex.join([PROG, *sys.argv[1:]])
    if args.multirun:
        return launch_sweep(overrides, args.config_dir, command, wait=args.wait, argv=argv)
    return launch(overrides, args.config_dir, wait=args.wait, command=argv)


def cmd_run_command(args: argparse.Namespace) -> int:
    if not args.argv:
        raise UserError("hpcrun run needs a command after --: hpcrun run [KEY=VALUE ...] -- COMMAND [ARGS ...]")
    return cmd_run(args)


def cmd_render(args: argparse.Namespace) -> int:
    from hpcrun.config.compose import compose

    overrides = _with_cluster(args.overrides, quiet=True, about_sbatch=True)
    if args.multirun and not args.standalone:
        raise UserError("render -m needs --standalone (hpcrun -m submits a sweep as job arrays itself)")
    from hpcrun.launch.launchers import launcher_for

    if args.multirun:
        from hpcrun.launch.sweep import compose_sweep, distinct_runs

        sweep = compose_sweep(overrides, args.config_dir, args.argv or ())
        distinct_runs(sweep)
        cfgs = [p.cfg for p in sweep.points]
    else:
        cfgs = [compose(overrides, args.config_dir, command=args.argv or ())]
    launcher = launcher_for(cfgs[0])
    if not launcher.submits:
        launcher.render(cfgs[0])  # raises: a local cluster has no script to render
    if args.standalone:
        from hpcrun.launch.standalone import render_standalone

        command = shlex.join([PROG, *sys.argv[1:]])
        throttle = cfgs[0].cluster.array_throttle if args.multirun else 0
        text = render_standalone(cfgs, command, args.template, throttle)
    else:
        text = launcher.render(cfgs[0]) + "\n"
    if args.output:
        from hpcrun.rundir.atomic import atomic_write

        out = Path(args.output)
        if out.exists() and not args.output.endswith(".sbatch"):
            raise UserError(f"-o {args.output} exists and is not a .sbatch file: not overwritten")
        atomic_write(out, text, mode=0o755)
        say(f"wrote {out}; submit it with: sbatch {shlex.quote(str(out))}")
    else:
        sys.stdout.write(text)
    return 0


def cmd_plan(args: argparse.Namespace) -> int:
    """Exit status 0 when the run fits its GPUs, 1 when it cannot (the figures say why), 2 on bad input."""
    from hpcrun.config.compose import compose
    from hpcrun.plan import make_plan, parse_bandwidth, render_json, render_text

    bandwidth = parse_bandwidth(args.bandwidth)
    if args.argv is not None:
        raise UserError("hpcrun plan is for the built-in task; a command of your own (after --) has no plan")
    overrides = _with_cluster(args.overrides, quiet=True, about_sbatch=True)
    if args.soonest:
        from hpcrun.soonest import soonest

        if not 0 < args.mfu <= 1:
            raise UserError(f"--mfu {args.mfu} is invalid: expected a share of the peak between 0 and 1")
        return soonest(overrides, args.config_dir, args.json, args.submit, args.mfu, bandwidth)
    if args.submit:
        raise UserError("--submit goes with --soonest (it submits the shape that would finish first)")
    cfg = compose(overrides, args.config_dir)
    plan = make_plan(cfg, bandwidth, args.gpu_memory)
    print(render_json(plan) if args.json else render_text(cfg, plan))
    return 0 if plan.fits else 1


def cmd_doctor(args: argparse.Namespace) -> int:
    """Exit status 0 when every check passed, 1 when one failed, 2 on bad input."""
    from hpcrun.doctor import doctor, draft_cluster, render_json

    if args.write_cluster:
        out = Path(args.write_cluster)
        if out.exists():
            raise UserError(f"--write-cluster {out} exists: not overwritten")
        text = draft_cluster(out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(text)
        say(f"wrote {out}: check it, then use cluster={out.stem} (from {out.parent.parent or '.'} as ./conf)")
        return 0
    from hpcrun.config.compose import compose

    overrides = _with_cluster(args.overrides, about_sbatch=True)
    cfg = compose(overrides, args.config_dir, command=args.argv or ())
    if cfg.cluster.launcher != "slurm":
        raise UserError(f"cluster={cfg.cluster.name} runs locally: doctor checks a Slurm cluster (cluster=slurm, "
                        "cluster=greene, ...)")
    checks = doctor(cfg, probe=not args.no_probe, timeout=args.probe_timeout, say=say)
    print(render_json(checks) if args.json else "\n".join(c.line() for c in checks), flush=True)
    return 0 if all(c.ok for c in checks) else 1


def cmd_status(args: argparse.Namespace) -> int:
    from hpcrun.observe.status import status_json, statuses, table
    from hpcrun.rundir.index import resolve_targets

    rows = statuses(resolve_targets(args.target))
    if args.json:
        print(status_json(rows))
    elif not rows:
        say("no runs yet (hpcrun status RUN_OR_SWEEP_DIR shows one)")
    else:
        print(table(rows))
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from hpcrun.observe.report import plot, report_json, report_text, reports as run_reports
    from hpcrun.rundir.index import resolve_targets

    reports = run_reports(resolve_targets(args.target))
    if not reports:
        say("no runs yet (hpcrun report RUN_OR_SWEEP_DIR reports one)")
        return 0
    print(report_json(reports) if args.json else report_text(reports))
    if args.plot:
        if not any(r.starts for r in reports):
            raise UserError("nothing to plot: no run has started yet")
        plot(reports, Path(args.plot))
        say(f"timeline written to {args.plot}")
    return 0


def cmd_results(args: argparse.Namespace) -> int:
    from hpcrun.observe.results import as_csv, as_json, plot, plot_axis, ranked, results, sort_metric, table

    keys, rows = results(Path(args.target).expanduser().resolve())
    metric = sort_metric(rows, args.sort)
    rows = ranked(rows, metric, args.desc)
    if args.plot:
        plot_axis(keys, rows, args.x)  # a bad --x is said before the table, not after it
    if args.json:
        print(as_json(keys, rows, metric))
    elif args.csv:
        sys.stdout.write(as_csv(keys, rows))
    else:
        print(table(keys, rows, metric))
    if args.plot:
        x = plot(keys, rows, metric, Path(args.plot), args.x)
        say(f"{metric} against {x} written to {args.plot}")
    return 0


def cmd_logs(args: argparse.Namespace) -> int:
    from hpcrun.observe.manage import logs

    return logs(args.target, args.follow, args.restart)


def cmd_cancel(args: argparse.Namespace) -> int:
    from hpcrun.observe.manage import cancel

    return cancel(args.target)


def cmd_resume(args: argparse.Namespace) -> int:
    from hpcrun.launch.runner import resume

    return resume(args.target, args.overrides)


def cmd_wait(args: argparse.Namespace) -> int:
    from hpcrun.observe.manage import wait

    return wait(args.target, args.poll)


COMMANDS: Dict[Optional[str], Callable[[argparse.Namespace], int]] = {
    None: cmd_run, "run": cmd_run_command, "config": cmd_config, "render": cmd_render, "doctor": cmd_doctor,
    "plan": cmd_plan, "status": cmd_status, "report": cmd_report, "results": cmd_results, "logs": cmd_logs,
    "cancel": cmd_cancel, "resume": cmd_resume, "wait": cmd_wait,
}


def _split(argv: List[str]) -> tuple:
    """(hpcrun's own arguments, the command after ``--`` or None); ``hpcrun -m run ...`` is ``hpcrun run -m ...``."""
    command_argv: Optional[List[str]] = None
    if "--" in argv:
        i = argv.index("--")
        argv, command_argv = argv[:i], argv[i + 1:]
    if argv and argv[0].startswith("-"):  # options first: `hpcrun -m run ...`, `hpcrun --config-dir D config ...`
        for k, a in enumerate(argv):
            if "=" in a:
                break  # an override: no subcommand after it
            if a in COMMANDS and argv[k - 1] != "--config-dir":  # (a folder named like a command is a folder)
                argv = [a, *argv[:k], *argv[k + 1:]]
                break
    return argv, command_argv


def main(argv: Optional[Sequence[str]] = None) -> int:
    argv, command_argv = _split(list(sys.argv[1:] if argv is None else argv))
    command = argv[0] if argv and argv[0] in COMMANDS else None
    rest = argv[1:] if command else argv
    if command == "render" and command_argv is not None and rest[:1] == ["run"]:
        rest = rest[1:]  # hpcrun render run ... -- COMMAND
    # --config-dir must be known before --help lists the experiments it adds.
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--config-dir", action="append", default=[])
    known, _ = pre.parse_known_args(rest)
    try:
        args = _parser(command, known.config_dir).parse_intermixed_args(rest)  # options anywhere
        args.argv = command_argv
        if command_argv is not None and command not in ("run", "render", "plan", "doctor", "config"):
            raise UserError(f"hpcrun {command or ''} takes no command after --: hpcrun run ... -- COMMAND runs one"
                            .replace("hpcrun  ", "hpcrun "))
        return COMMANDS[command](args)
    except UserError as exc:
        say(f"error: {exc}")
        return 2
    except JobError as exc:  # the job itself failed (locally); its log has the details
        say(f"error: {exc}")
        return 1
    except KeyboardInterrupt:
        say("interrupted")
        return 130
    except BrokenPipeError:  # `hpcrun report SWEEP --json | head`: the reader has what it wanted
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # (no second error at exit's flush)
        return 141


if __name__ == "__main__":
    sys.exit(main())
