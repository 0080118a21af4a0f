"""A task of one's own with settings of its own, through the real `hpcrun` command: free-form `+mytask.*` keys
reach the task, the built-in task's keys are not in its config, and status shows its progress from the ledger."""

import json
import textwrap

TASK = textwrap.dedent('''\
    import json


    def train(cfg, ctx):
        steps = cfg.mytask.width // 2 + 1
        ctx.planned(steps)
        for step in range(1, steps + 1):
            ctx.step_started()
            decision = ctx.step_ended(step)
            if decision.save:
                with ctx.saving(step) as folder:
                    (folder / "step.json").write_text(json.dumps({"step": step}))
        out = ctx.run_dir / "final"
        out.mkdir(exist_ok=True)
        (out / "seen.json").write_text(json.dumps({"width": cfg.mytask.width, "name": cfg.mytask.name,
                                                   "sections": sorted(cfg.sections())}))
        return out
''')


def test_a_task_of_ones_own_reads_its_free_form_settings_and_status_shows_its_progress(hpcrun, tmp_path):
    (tmp_path / "mytask.py").write_text(TASK)
    args = ["task._target_=mytask.train", "+mytask.width=7", "+mytask.name=abc", "cluster=local"]
    env = {"HPCRUN_STATE_DIR": str(tmp_path / "state")}
    out = hpcrun(*args, env=env)
    assert out.returncode == 0, out.stderr[-3000:]
    (run_dir,) = (tmp_path / "runs" / "default").iterdir()
    # Its identity: the task and its own keys (no model/data/train key of the built-in task).
    assert run_dir.name == "mytask.name=abc,mytask.width=7,task._target_=mytask.train"
    seen = json.loads((run_dir / "final" / "seen.json").read_text())
    assert seen == {"width": 7, "name": "abc", "sections": ["mytask"]}
    saved = (run_dir / "config.yaml").read_text()
    assert "mytask:" in saved and "train:" not in saved and "model:" not in saved
    (row,) = json.loads(hpcrun("status", "--json", str(run_dir), env=env).stdout)
    assert (row["state"], row["step"], row["max_steps"], row["reason"]) == ("COMPLETED", 4, 4, "trained to step 4")
    again = hpcrun(*args, env=env)
    assert again.returncode == 0 and "is already complete" in again.stderr
    typo = hpcrun("task._target_=mytask.train", "+mytask.width=7", "+mytask.name=abc", "cluster=local",
                  "train.lrr=1", env=env)
    assert typo.returncode == 2 and "train.lrr" in typo.stderr.strip().splitlines()[-1]


def test_what_a_task_prints_on_slurm_is_in_hpcrun_logs(hpcrun, tmp_path, slurm_cluster):
    """print() in a task goes to the job's stdout (slurm/<job>_0_log.out) and to the start's log, which `hpcrun
    logs` shows beside hpcrun's own lines."""
    from tests.slurm import job_id_from, wait_for_end

    (tmp_path / "printer.py").write_text("def train(cfg, ctx):\n    print('hello from the task', cfg.p.x)\n"
                                         "    return 'done'\n")
    out = hpcrun("task._target_=printer.train", "+p.x=42", "cluster=slurm", "run.dir=run")
    assert out.returncode == 0, out.stderr[-3000:]
    assert wait_for_end(job_id_from(out.stdout)) == "COMPLETED"
    logs = hpcrun("logs", str(tmp_path / "run"))
    assert "hello from the task 42" in logs.stdout and "===== start 1 of run" in logs.stdout
