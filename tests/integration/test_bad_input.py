"""Bad input, table-driven: one clear line naming the key and the value, exit status 2, no traceback, nothing
submitted (a PATH shim counts sbatch calls), and no run directory created or overwritten."""

import os
import pwd
import subprocess
import time
from pathlib import Path

import pytest

from tests.slurm import calls, counting_shims, node_cpus, node_memory_mb

BUILTIN = Path(__file__).resolve().parents[2] / "hpcrun" / "data" / "shakespeare.txt.gz"  # a file that is there

CASES = [
    # (arguments, what the one line must contain)
    (["+experiment=llama8b"], "experiment='llama8b' is invalid; valid choices: full_ft_1b, llama7b, lora_sft_chat, tiny_llama"),
    (["cluster=gren"], "cluster='gren' is invalid; valid choices: greene, local, slurm"),
    (["cluster=slurm", "train.max_step=10"], "train.max_step='10' is an unknown key; did you mean train.max_steps"),
    (["cluster=slurm", "checkpoint.save_every=30 mins"], "checkpoint.save_every='30 mins' is invalid"),
    (["cluster=slurm", "cluster.time=90mins"], "cluster.time='90mins' is invalid"),
    (["cluster=slurm", "cluster.gpus_per_node=-1"], "cluster.gpus_per_node=-1 is invalid"),
    (["cluster=greene", "cluster.gpus_per_node=64"], "cluster.gpus_per_node=64 is invalid: expected an integer from 0 to 4"),
    (["cluster=slurm", "cluster.nodes=0"], "cluster.nodes=0 is invalid"),
    (["cluster=slurm", "cluster.nodes=100000"], "cluster.nodes=100000 is invalid"),
    (["cluster=greene", "cluster.time=8-00:00:00"], "cluster.time='8-00:00:00' is invalid: expected at most cluster.max_time"),
    (["cluster=greene", "cluster.gpus_per_node=1", "cluster.gpu_type=h100"], "cluster.gpu_type='h100' is invalid"),
    (["cluster=slurm", "cluster.mem=64GB"], "cluster.mem='64GB' is invalid"),
    (["cluster=slurm", "cluster.signal=USR9"], "cluster.signal='USR9' is invalid"),
    (["cluster=slurm", "cluster.signal_delay=2h"], "cluster.signal_delay='2h' is invalid"),
    (["cluster=slurm", "train.lr=-1"], "train.lr=-1.0 is invalid"),
    (["cluster=slurm", "train.precision=fp8"], "train.precision='fp8' is invalid"),
    (["cluster=slurm", "checkpoint.keep_last=1"], "checkpoint.keep_last=1 is invalid"),
    (["cluster=slurm", "data.seq_len=100000"], "data.seq_len=100000 is invalid"),
    (["cluster=slurm", "model.hidden_size=100", "model.num_attention_heads=6"], "model.hidden_size=100 is invalid"),
    (["cluster=slurm", "task._target_=nope.train"], "task._target_='nope.train' is invalid"),
    (["cluster=slurm", "train.lr=1e-4,3e-4"], "train.lr='1e-4,3e-4' is a list of values; to run one job per value, "
                                              "add -m"),
    (["cluster=slurm", "train.report_to=wandb"], "train.report_to='wandb' is invalid: expected a list; write "
                                                 "'train.report_to=[wandb]'"),
    (["cluster=slurm", f"data.corpus={BUILTIN}z"],  # beside the file it misspells: a typo, not a node's own path
     f"data.corpus='{BUILTIN}z' is invalid: expected an existing file or folder: {BUILTIN.parent} has no "
     f"{BUILTIN.name}z; did you mean {BUILTIN}?"),
    (["cluster=slurm", "cluster.sbatch_extra.time=5"], "cluster.sbatch_extra.time=5 is invalid"),
    (["cluster=slurm", "run.name=a/b"], "run.name='a/b' is invalid"),
    (["-m", "cluster=slurm", "train.lr=1e-3,3e-4", "run.dir=same"],
     "run.dir='same' is every point's (the points train.lr=0.001 and train.lr=0.0003 share the run directory"),
    # A sweep's override it cannot parse or expand, named (before: Hydra's words alone, or a traceback for glob)
    (["-m", "cluster=slurm", "train.lr_scheduler=cosine,"],
     "cannot parse the override 'train.lr_scheduler=cosine,' (mismatched input '<EOF>')"),
    (["-m", "cluster=slurm", "train.lr=glob(*)"], "'train.lr=glob(*)': hpcrun's sweep takes listed values"),
    (["-m", "cluster=slurm", "~train.lr"], "'~train.lr': a sweep's overrides set values"),
    # A group or a top-level key given twice (a dotted key keeps its last value: hpcrun/config/overrides.py).
    (["cluster=slurm", "cluster=local", "train.seed=1"], "cluster is given twice (cluster=slurm, cluster=local)"),
    (["run", "cluster=slurm", "+x=1", "++x=2", "--", "true", "--x", "1", "--x", "2"],
     "x is given twice (+x=1, ++x=2): give it once"),
    (["cluster=local", "+cluster=slurm"], "+cluster='slurm' is invalid: expected cluster=slurm"),
    (["render", "--standalone", "cluster=slurm", "cluster.partition=a b"], "cluster.partition='a b' is invalid"),
    (["plan", "--bandwidth", "fast", "+experiment=llama7b"], "--bandwidth='fast' is invalid"),
    (["resume", "not-a-run"], "not-a-run is not a run directory (no config.yaml)"),
    (["status", "nowhere"], "nowhere is neither a run directory"),
]


# Requests only the cluster itself can judge (hpcrun/slurm/site.py asks it: ONE `scontrol show partition` and ONE
# `scontrol show node` call; the dev cluster's partitions normal (default) and preemptible have MaxTime=7-00:00:00
# and one node with 4 GPUs, as many CPUs as the machine has cores and 80% of its memory; the last two differ between
# machines, so the cases name them as {cpus} and {mem} (and {over}, one task per node too many with 2 CPUs each)
# and the test reads them from the cluster). sbatch itself accepts most of these and they pend forever
# (EnforcePartLimits=NO, reason PartitionConfig for the CPUs); the others it refuses only after the run directory
# was made.
SITE_CASES = [
    (["cluster=slurm", "cluster.time=8-00:00:00"],
     "cluster.time='8-00:00:00' is invalid: expected at most 7-00:00:00 (MaxTime of the default partition normal)"),
    (["cluster=slurm", "cluster.partition=preemptible", "cluster.time=7-00:01:00"],
     "cluster.time='7-00:01:00' is invalid: expected at most 7-00:00:00 (MaxTime of partition preemptible)"),
    (["cluster=slurm", "cluster.nodes=2"],
     "cluster.nodes=2 is invalid: expected at most 1 (the default partition normal has 1 node)"),
    (["cluster=slurm", "cluster.gpus_per_node=8"],
     "cluster.gpus_per_node=8 is invalid: expected at most 4 (the default partition normal has 4 GPUs on 1 node)"),
    (["cluster=slurm", "cluster.partition=nope"], "cluster.partition='nope' is invalid; valid choices: normal, "
                                                  "preemptible"),
    (["cluster=slurm", "cluster.tasks_per_node={over}", "cluster.cpus_per_task=2"],
     "cluster.tasks_per_node={over} is invalid: expected at most {fit} with cluster.cpus_per_task=2 (the default "
     "partition normal: its largest node has {cpus} CPUs)"),
    (["cluster=slurm", "cluster.mem=64G"],
     "cluster.mem='64G' is invalid: expected at most {mem}M (the default partition normal: its largest node has "
     "{mem} MB)"),
    (["-m", "cluster=slurm", "train.lr=1e-3,3e-4", "cluster.time=8-00:00:00"],
     "cluster.time='8-00:00:00' is invalid: expected at most 7-00:00:00"),
]


def _node_facts() -> dict[str, int]:
    """The dev node's CPUs and memory as Slurm reports them, with {fit}/{over}: the most tasks of 2 CPUs that fit on
    it, and one more."""
    cpus = int(node_cpus())
    return {"cpus": cpus, "mem": node_memory_mb(), "fit": cpus // 2, "over": cpus // 2 + 1}


def _check(out, fragment, tmp_path, before):
    assert out.returncode == 2, out.stderr
    assert "Traceback" not in out.stderr
    last = out.stderr.strip().splitlines()[-1]
    assert last.startswith("hpcrun: error: ") and fragment in last, last
    assert calls(tmp_path, "sbatch") == []  # nothing submitted
    # No run directory created (the shims' own call logs aside).
    assert {p.name for p in tmp_path.iterdir() if not p.name.endswith(".calls")} == before


@pytest.mark.parametrize("args, fragment", CASES, ids=[" ".join(a)[:60] for a, _ in CASES])
def test_bad_input_gives_one_line_with_the_key_and_value_and_touches_nothing(args, fragment, hpcrun, tmp_path):
    shims = counting_shims(tmp_path, "sbatch")
    before = {p.name for p in tmp_path.iterdir()}
    out = hpcrun(*args, env=shims)
    _check(out, fragment, tmp_path, before)


@pytest.mark.parametrize("args, fragment", SITE_CASES, ids=[" ".join(a)[:60] for a, _ in SITE_CASES])
def test_a_request_the_cluster_can_never_run_is_refused_before_anything_is_written(
        args, fragment, hpcrun, tmp_path, slurm_cluster):
    node = _node_facts()
    args, fragment = [a.format(**node) for a in args], fragment.format(**node)
    shims = counting_shims(tmp_path, "sbatch", "scontrol")
    before = {p.name for p in tmp_path.iterdir()}
    out = hpcrun(*args, env=shims)
    _check(out, fragment, tmp_path, before)
    # one partition query (and one node query once the partition checks passed) per submission, a sweep included
    assert len(calls(tmp_path, "scontrol")) <= 2


def _sacctmgr(*args: str) -> None:
    """sacctmgr -i ARGS, waiting out a minute or two of slurmdbd being down."""
    deadline = time.monotonic() + 180
    while True:
        out = subprocess.run(["sacctmgr", "-i", *args], capture_output=True, text=True, timeout=60)
        if out.returncode == 0 or "Nothing" in out.stdout + out.stderr or time.monotonic() > deadline:
            return
        time.sleep(10)


@pytest.fixture
def limited_account(slurm_cluster):
    """A fresh account in which this user may have at most 3 jobs (MaxSubmitJobs=3); removed afterwards.

    The dev cluster's slurm.conf has no AccountingStorageEnforce: Slurm accepts a 5-task array in it anyway, so the
    refusal below is hpcrun's own."""
    account = f"hpcrun-limit-{os.getpid()}"
    user = pwd.getpwuid(os.getuid()).pw_name
    _sacctmgr("add", "account", account)
    try:
        _sacctmgr("add", "user", user, f"account={account}", "MaxSubmitJobs=3")
        yield account, user
    finally:
        _sacctmgr("delete", "user", user, f"account={account}")
        _sacctmgr("delete", "account", account)


def test_a_sweep_over_the_users_job_limit_is_refused_before_anything_is_submitted(hpcrun, tmp_path, limited_account):
    account, user = limited_account
    shims = counting_shims(tmp_path, "sbatch", "scontrol", "sacctmgr", "squeue")
    before = {p.name for p in tmp_path.iterdir()}
    out = hpcrun("-m", "cluster=slurm", f"cluster.account={account}", "train.seed=0,1,2,3,4", env=shims)
    _check(out, f"cluster.account='{account}' allows user {user} at most 3 queued or running jobs (MaxSubmitJobs; "
                "each array task counts as one), 0 already queued: this sweep would submit 5", tmp_path, before)
    # One query of each kind: partitions and nodes, the user's associations, and (there being a limit) the queue.
    assert [len(calls(tmp_path, c)) for c in ("scontrol", "sacctmgr", "squeue")] == [2, 1, 1]
    queued = subprocess.run(["squeue", "-h", "-A", account], capture_output=True, text=True, timeout=60)
    assert queued.stdout.strip() == ""


def test_when_slurm_cannot_be_asked_the_checks_step_aside_and_sbatch_says_why(hpcrun, tmp_path, slurm_cluster):
    shims = counting_shims(tmp_path, "sbatch")
    scontrol = tmp_path / "shims" / "scontrol"
    scontrol.write_text(f'#!/bin/sh\necho "$*" >> "{tmp_path}/scontrol.calls"\n'
                        "echo 'slurm_load_partitions error: Unable to contact slurm controller (connect failure)' >&2\n"
                        "exit 1\n")
    scontrol.chmod(0o755)
    before = {p.name for p in tmp_path.iterdir()}
    out = hpcrun("cluster=slurm", "cluster.partition=nope", env=shims)
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert out.stderr.strip().splitlines()[-1] == (
        "hpcrun: error: sbatch refused the job: sbatch: error: invalid partition specified: nope"), out.stderr
    assert len(calls(tmp_path, "scontrol")) == 1  # one attempt: no retries before sbatch's own
    assert len(calls(tmp_path, "sbatch")) == 1  # the check did not stop it: sbatch had the last word
    assert {p.name for p in tmp_path.iterdir() if not p.name.endswith(".calls")} == before  # run dir removed


def test_a_corrupted_saved_config_is_refused_and_left_as_it_was(hpcrun, tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / ".hpcrun-run").write_text("")  # a run of hpcrun's whose config.yaml was damaged
    (run / "config.yaml").write_text("train: [unclosed\n")
    out = hpcrun("resume", "run")
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert "config.yaml" in out.stderr.strip().splitlines()[-1]
    assert (run / "config.yaml").read_text() == "train: [unclosed\n"
    out = hpcrun("cluster=local", "run.dir=run")
    assert out.returncode == 2 and "unreadable" in out.stderr.strip().splitlines()[-1]
    # Nothing written but the lock hpcrun held while it looked.
    assert (run / "config.yaml").read_text() == "train: [unclosed\n" and sorted(p.name for p in run.iterdir()) == [
        ".hpcrun-lock", ".hpcrun-run", "config.yaml"]
