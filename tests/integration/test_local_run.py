"""A real training run in the foreground, as `hpcrun +experiment=tiny_llama` runs on a laptop."""

import json
import sys

import pytest

pytestmark = pytest.mark.training


def test_tiny_llama_trains_locally_and_leaves_final_weights_and_its_config(hpcrun, tmp_path):
    out = hpcrun("+experiment=tiny_llama", "cluster=local", "train.max_steps=12", "train.log_every=4")
    assert out.returncode == 0, out.stderr[-3000:]
    run_dir = tmp_path / "runs" / "tiny_llama" / "train.log_every=4,train.max_steps=12"
    assert f"done: final weights in {run_dir / 'final'}" in out.stderr
    assert "INFO hpcrun: machine: " in (run_dir / "logs" / "start-1.log").read_text()  # host, CPU, CPUs

    from omegaconf import OmegaConf
    from transformers import AutoTokenizer, LlamaForCausalLM

    saved = OmegaConf.load(run_dir / "config.yaml")
    assert saved.train.max_steps == 12 and saved.cluster.launcher == "local"
    final = run_dir / "final"
    assert (final / "model.safetensors").exists()
    assert not list(final.glob("*.bin"))  # nothing that needs unpickling
    model = LlamaForCausalLM.from_pretrained(final)
    tokenizer = AutoTokenizer.from_pretrained(final)
    assert model.config.vocab_size == len(tokenizer) == 4096
    assert 2e6 < model.num_parameters() < 1e7  # "a few million parameters"

    # It learned something: the logged training loss fell from its random-init value (ln 4096 = 8.3).
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    losses = [float(r["loss"]) for r in records if "loss" in r]
    assert len(losses) >= 3 and losses[-1] < losses[0] - 0.3
    assert any("eval_loss" in r for r in records)


def test_the_run_directory_is_private_to_the_user(hpcrun, tmp_path):
    out = hpcrun("+experiment=tiny_llama", "cluster=local", "train.max_steps=1", "data.vocab_size=300")
    assert out.returncode == 0, out.stderr[-3000:]
    (run_dir,) = (tmp_path / "runs" / "tiny_llama").iterdir()
    assert run_dir.stat().st_mode & 0o077 == 0


MATMUL = "import torch; a = torch.ones(300, 300); print(float((a @ a)[0, 0]))"


def _dynamic_flags(text: str) -> set:
    """The ``Dyn:`` field of every MKL_VERBOSE line (MKL's dynamic threading: 1 on, 0 off)."""
    return {part for line in text.splitlines() if line.startswith("MKL_VERBOSE") and "GEMM" in line
            for part in line.split() if part.startswith("Dyn:")}


@pytest.mark.skipif(not __import__("torch").backends.mkl.is_available(), reason="this torch has no MKL")
def test_a_job_turns_off_mkls_dynamic_threading_so_a_step_runs_on_the_threads_asked_unless_the_user_set_it(
        hpcrun, tmp_path):
    """MKL_DYNAMIC on (MKL's default) lets a matrix multiply take fewer threads than asked, decided at run time,
    which changes its result where the thread count matters (docs/reliability.md). MKL_VERBOSE=1 makes MKL print
    each call with its Dyn: setting."""
    verbose = {"MKL_VERBOSE": "1"}
    out = hpcrun("+experiment=tiny_llama", "cluster=local", "train.max_steps=1", "data.vocab_size=300",
                 "run.dir=builtin", env=verbose)
    assert out.returncode == 0, out.stderr[-3000:]
    assert _dynamic_flags(out.stdout) == {"Dyn:0"}  # the built-in task, in the job's own process

    out = hpcrun("run", "cluster=local", "run.dir=own", "--", sys.executable, "-c", MATMUL, env=verbose)
    assert out.returncode == 0, out.stderr[-3000:]
    assert _dynamic_flags((tmp_path / "own" / "logs" / "start-1.log").read_text()) == {"Dyn:0"}  # a command's

    out = hpcrun("run", "cluster=local", "run.dir=theirs", "--", sys.executable, "-c", MATMUL,
                 env={**verbose, "MKL_DYNAMIC": "TRUE"})
    assert out.returncode == 0, out.stderr[-3000:]
    assert _dynamic_flags((tmp_path / "theirs" / "logs" / "start-1.log").read_text()) == {"Dyn:1"}
