"""Bad input, table-driven: one clear line naming the key and the value, exit status 2, no traceback, nothing
submitted (a PATH shim counts sbatch calls), and no run directory created or overwritten."""

import pytest

from tests.slurm import calls, counting_shims

CASES = [
    # (arguments, what the one line must contain)
    (["+experiment=llama8b"], "experiment='llama8b' is invalid; valid choices: llama7b, tiny_llama"),
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
    (["cluster=slurm", "cluster.sbatch_extra.time=5"], "cluster.sbatch_extra.time=5 is invalid"),
    (["cluster=slurm", "run.name=a/b"], "run.name='a/b' is invalid"),
    (["-m", "cluster=slurm", "train.lr=1e-3,3e-4", "run.dir=same"], "two sweep points share a run directory"),
    (["render", "--standalone", "cluster=slurm", "cluster.partition=a b"], "cluster.partition='a b' is invalid"),
    (["plan", "--bandwidth", "fast", "+experiment=llama7b"], "--bandwidth='fast' is invalid"),
    (["resume", "not-a-run"], "not-a-run is not a run directory (no config.yaml)"),
    (["status", "nowhere"], "nowhere is neither a run directory"),
]


def _check(out, fragment, tmp_path, before):
    assert out.returncode == 2, out.stderr
    assert "Traceback" not in out.stderr
    last = out.stderr.strip().splitlines()[-1]
    assert last.startswith("hpcrun: error: ") and fragment in last, last
    assert calls(tmp_path, "sbatch") == []  # nothing submitted
    assert {p.name for p in tmp_path.iterdir()} == before  # no run directory created


@pytest.mark.parametrize("args, fragment", CASES, ids=[" ".join(a)[:60] for a, _ in CASES])
def test_bad_input_gives_one_line_with_the_key_and_value_and_touches_nothing(args, fragment, hpcrun, tmp_path):
    shims = counting_shims(tmp_path, "sbatch")
    before = {p.name for p in tmp_path.iterdir()}
    out = hpcrun(*args, env=shims)
    _check(out, fragment, tmp_path, before)


def test_a_corrupted_saved_config_is_refused_and_left_as_it_was(hpcrun, tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text("train: [unclosed\n")
    out = hpcrun("resume", "run")
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert "config.yaml" in out.stderr.strip().splitlines()[-1]
    assert (run / "config.yaml").read_text() == "train: [unclosed\n"
    out = hpcrun("cluster=local", "run.dir=run")
    assert out.returncode == 2 and "unreadable" in out.stderr.strip().splitlines()[-1]
    assert (run / "config.yaml").read_text() == "train: [unclosed\n" and sorted(p.name for p in run.iterdir()) == [
        "config.yaml"]
