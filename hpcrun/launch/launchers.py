"""Where a prepared run goes: the foreground here (local) or sbatch (Slurm). One small interface, two launchers.

A launcher takes runs whose directories are written (:mod:`hpcrun.launch.prepare`) and starts their job entry
(:class:`hpcrun.job.entry.JobEntry`, the one job code path). A new launcher (another scheduler) is a class here with
the same four methods; the commands in :mod:`hpcrun.launch.runner` never ask which launcher they hold.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, List, Sequence

from hpcrun.console import say
from hpcrun.errors import JobError, UserError

CANCELLED_EXIT = 143  # a local run cancelled with hpcrun cancel (saved; hpcrun resume continues it)
STOPPED_EXITS = (75, 130, CANCELLED_EXIT)  # a local run that saved and stopped: a local sweep stops there too


class LocalLauncher:
    """Runs each run in the foreground, exactly as the Slurm job would (the same JobEntry)."""

    submits = False

    def check(self, cfgs: Sequence[Any], sweep: bool = False) -> None:
        """That here is where the run should train: not salloc's shell on a login node, off the allocation."""
        from hpcrun.launch.choose import copies_under_srun, off_the_allocation

        problem = off_the_allocation() or copies_under_srun()
        if problem:
            raise UserError(problem)

    def render(self, cfg: Any) -> str:
        raise UserError(f"cluster={cfg.cluster.name} runs locally (cluster.launcher=local): there is no sbatch "
                        "script to render; pick a Slurm cluster, e.g. cluster=slurm")

    def launch(self, cfg: Any, prepared: Any) -> int:
        """Runs the job here and returns the exit status (0 done, 130 after Ctrl-C, 75 stopped resumable, 143
        cancelled with hpcrun cancel)."""
        from hpcrun.job.entry import JobEntry
        from hpcrun.rundir.state import read_state

        run_dir = prepared.run_dir
        say(f"running in the foreground in {run_dir} (Ctrl-C saves and stops)")
        try:
            result = JobEntry(run_dir, local=True)()
        except UserError as exc:
            if read_state(run_dir).get("status") == "failed":  # found at the run's start: a failed run, status 1
                raise JobError(str(exc)) from None
            raise  # refused before it started (another process holds the run, ...): status 2
        state = read_state(run_dir)
        if state.get("status") == "stopped" and state.get("cancelled"):
            # 128 + SIGTERM, as a shell reports a process that SIGTERM ended: not 75, which asks to go on at once
            say(f"{state.get('reason')}; `hpcrun resume {run_dir}` continues it")
            return CANCELLED_EXIT
        if state.get("status") == "stopped":
            # Resumable, not finished: 130 after Ctrl-C as shells expect, else 75 (EX_TEMPFAIL: try again).
            say(f"stopped: {state.get('reason')}; the same command resumes it")
            return 130 if "SIGINT" in str(state.get("reason")) else 75
        say(f"done: final weights in {result}" if Path(result).is_dir() else f"done: {result}")
        return 0

    def launch_array(self, cfgs: Sequence[Any], folder: Path) -> List[str]:
        raise NotImplementedError("a local sweep runs its points one after another (launch)")


class SlurmLauncher:
    """Submits each run with sbatch through submitit; returns at once."""

    submits = True

    def check(self, cfgs: Sequence[Any], sweep: bool = False) -> None:
        """The site's own limits, before anything is written (one query per submission)."""
        from hpcrun.slurm.site import check_site_limits

        self._partitions = check_site_limits(list(cfgs), sweep=sweep)

    def render(self, cfg: Any) -> str:
        from hpcrun.slurm.sbatch import render

        return render(cfg)

    def launch(self, cfg: Any, prepared: Any) -> str:
        """sbatch for one prepared run (inside :func:`hpcrun.launch.prepare.claimed`); returns the job id."""
        from hpcrun.job.entry import JobEntry
        from hpcrun.rundir.create import record_submission
        from hpcrun.slurm.client import submit_with_retries
        from hpcrun.slurm.sbatch import make_executor

        executor = make_executor(cfg)  # a refused one: claimed() removes what the launch created
        job = submit_with_retries(lambda: executor.submit(JobEntry(cfg.run.dir)))
        prepared.submitted = True
        job_id = str(job.job_id)
        record_submission(prepared.run_dir, job_id, cfg, take_lock=False)  # claimed() holds it
        return job_id

    def check_job_limit(self, cfgs: Sequence[Any]) -> None:
        """The user's job limit (MaxSubmitJobs) against the array tasks about to be submitted (after
        :meth:`check`, whose partitions it reuses)."""
        from hpcrun.slurm.site import check_job_limit

        if cfgs:
            check_job_limit(list(cfgs), getattr(self, "_partitions", None))

    def launch_array(self, cfgs: Sequence[Any], folder: Path, what: str = "sbatch", held: bool = False) -> List[str]:
        """ONE sbatch call for a job array of runs whose sbatch options are the same; returns the task ids.
        ``held``: submitted with ``--hold`` (no task starts until ``scontrol release``)."""
        from hpcrun.job.entry import JobEntry
        from hpcrun.slurm.client import submit_with_retries
        from hpcrun.slurm.sbatch import make_executor, teardown_lines

        if held:
            _held_array_fits(cfgs[0], len(cfgs))
        executor = make_executor(cfgs[0], folder=folder)
        executor.update_parameters(array_parallelism=cfgs[0].cluster.array_throttle or len(cfgs),
                                   teardown=teardown_lines("", [c.run.dir for c in cfgs]))
        if held:
            extra = dict(executor.parameters.get("additional_parameters") or {}, hold=True)
            executor.update_parameters(additional_parameters=extra)

        def submit_array() -> List[Any]:
            with executor.batch():
                return [executor.submit(JobEntry(c.run.dir)) for c in cfgs]

        return [str(j.job_id) for j in submit_with_retries(submit_array, what=what)]


def _held_array_fits(cfg: Any, tasks: int) -> None:
    """Asks Slurm whether the array could ever run (``sbatch --test-only``, nothing submitted), since it is
    submitted held: Slurm skips its node-configuration check for a held job, and an array asking for what no node
    has (a GPU type the cluster lacks) would go in and pend for ever (BadConstraints), where the same request
    unheld is refused at once (checked on the dev cluster). Only that refusal is raised: any other answer, or none,
    leaves the real sbatch to speak."""
    import subprocess

    from hpcrun.errors import SubmissionError
    from hpcrun.slurm.sbatch import render

    try:
        out = subprocess.run(["sbatch", "--test-only", f"--array=0-{tasks - 1}"], input=render(cfg),
                             capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return
    text = f"{out.stderr}\n{out.stdout}"
    if out.returncode != 0 and "node configuration is not available" in text.lower():
        raise SubmissionError("sbatch refused the job: Requested node configuration is not available (no node of "
                              "the cluster has what one task asks for: cluster.gpu_type, gpus_per_node, "
                              "cpus_per_task, mem, constraint)")


def launcher_for(cfg: Any) -> Any:
    """The launcher of ``cluster.launcher``."""
    return SlurmLauncher() if cfg.cluster.launcher == "slurm" else LocalLauncher()
