"""``python -m hpcrun.job prepare``: the compute-node half of a standalone script (``hpcrun render --standalone``).

The script carries its run's config (one YAML document per run; a sweep's array carries one per task). On the batch
host, before srun, this writes the config into its run directory, exactly as submitting would, and records the
Slurm job so ``hpcrun status``, ``logs`` and ``cancel`` find it. A requeued job runs the script again: the same
config is found and the run resumes.
"""

from __future__ import annotations

from pathlib import Path

from hpcrun.errors import UserError


def prepare(text: str, index: int, job_id: str = "") -> Path:
    """Writes config ``index`` of the embedded YAML documents into its run directory (refusing a directory that
    holds another run, or that is not a run), records the Slurm job, and returns the run directory."""
    import yaml

    from hpcrun.config.compose import from_container
    from hpcrun.rundir import RunDir
    from hpcrun.rundir.create import record_submission, refuse_another_run, refuse_foreign, write_run_dir
    from hpcrun.rundir.index import remember
    from hpcrun.rundir.state import read_state

    docs = [d for d in yaml.safe_load_all(text) if d]
    if not 0 <= index < len(docs):
        raise UserError(f"SLURM_ARRAY_TASK_ID={index}: the script holds {len(docs)} run(s)")
    cfg = from_container(docs[index])
    run_dir = Path(cfg.run.dir)
    refuse_foreign(run_dir)
    if RunDir(run_dir).is_run():
        refuse_another_run(cfg, run_dir)  # the job fails with that line rather than mixing two runs
    else:
        cfg.run.fresh = False
        write_run_dir(cfg, run_dir)
        remember(run_dir)
    state = read_state(run_dir)
    if job_id and state.get("status") != "completed" and state.get("job_id") != job_id:
        record_submission(run_dir, job_id, cfg)  # hpcrun status/cancel/logs find the job
    return run_dir
