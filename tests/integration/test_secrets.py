"""Secrets travel through the environment only: never into rendered scripts, configs, state, ledgers or logs.

Tokens are set the way users set them (`export HF_TOKEN=...` before hpcrun); the job must still see them (sbatch
passes the environment on), and no file hpcrun writes may contain them. Run directories are private (0700).
"""

import os
import stat
from pathlib import Path

import pytest

from tests.slurm import job_id_from, wait_for_end

SECRETS = {"HF_TOKEN": "hf_TESTSECRETdoNotLeak123", "WANDB_API_KEY": "wandbTESTSECRETdoNotLeak456"}
TASK = '''
import os


def train(cfg, ctx):
    seen = all(os.environ.get(k) for k in {keys!r})
    (ctx.run_dir / "tokens-seen").write_text("yes" if seen else "no")
    return ctx.run_dir
'''


def leaks(root: Path) -> list:
    """Files under root whose bytes contain any secret (binary files included: pickles, checkpoints)."""
    found = []
    for path in root.rglob("*"):
        if path.is_file() and not path.is_symlink():
            data = path.read_bytes()
            found += [f"{path}: {k}" for k, v in SECRETS.items() if v.encode() in data]
    return found


def env_with_secrets():
    return {**os.environ, **SECRETS}


def test_rendered_scripts_never_hold_the_secrets(hpcrun, tmp_path):
    for args in (["render", "+experiment=tiny_llama", "cluster=slurm"],
                 ["render", "--standalone", "+experiment=llama7b", "cluster=greene", "cluster.container.enabled=true"],
                 ["render", "--standalone", "-m", "+experiment=tiny_llama", "cluster=slurm", "train.seed=0,1"]):
        out = hpcrun(*args, env=env_with_secrets())
        assert out.returncode == 0, out.stderr
        assert not [k for k, v in SECRETS.items() if v in out.stdout + out.stderr], args


@pytest.mark.training
def test_a_local_run_writes_no_secret_anywhere_and_its_directory_is_private(hpcrun, tmp_path):
    # with both trackers on (W&B offline): their files are under the run directory too
    out = hpcrun("+experiment=tiny_llama", "cluster=local", "train.max_steps=4", "checkpoint.save_every=1s",
                 "run.dir=run", "train.report_to=[wandb,tensorboard]",
                 env={**env_with_secrets(), "WANDB_MODE": "offline", "WANDB_SILENT": "true"})
    assert out.returncode == 0, out.stderr[-2000:]
    run = tmp_path / "run"
    assert (run / "final" / "model.safetensors").exists() and list(run.glob("checkpoints/step-*"))
    assert list(run.glob("wandb/offline-run-*/run-*.wandb")) and list(run.glob("tensorboard/events.out.tfevents.*"))
    assert leaks(run) == []
    assert stat.S_IMODE(run.stat().st_mode) & 0o077 == 0  # no access for group or others
    assert stat.S_IMODE((run / "config.yaml").stat().st_mode) & 0o077 == 0


def test_a_slurm_job_gets_the_tokens_through_its_environment_but_no_file_holds_them(hpcrun, tmp_path,
                                                                                      slurm_cluster):
    (tmp_path / "token_task.py").write_text(TASK.format(keys=sorted(SECRETS)))
    out = hpcrun("cluster=slurm", "task._target_=token_task.train", "run.dir=run", env=env_with_secrets())
    assert out.returncode == 0, out.stderr
    assert wait_for_end(job_id_from(out.stdout)) == "COMPLETED"
    run = tmp_path / "run"
    assert (run / "tokens-seen").read_text() == "yes"
    assert leaks(run) == []  # config, state, ledger, logs, Slurm's output, submitit's script and pickles
    assert stat.S_IMODE(run.stat().st_mode) & 0o077 == 0
