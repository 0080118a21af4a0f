"""A real training run in the foreground, as `hpcrun +experiment=tiny_llama` runs on a laptop."""

import json

import pytest

pytestmark = pytest.mark.training


def test_tiny_llama_trains_locally_and_leaves_final_weights_and_its_config(hpcrun, tmp_path):
    out = hpcrun("+experiment=tiny_llama", "cluster=local", "train.max_steps=12", "train.log_every=4")
    assert out.returncode == 0, out.stderr[-3000:]
    run_dir = tmp_path / "runs" / "tiny_llama" / "train.log_every=4,train.max_steps=12"
    assert f"done: final weights in {run_dir / 'final'}" in out.stderr

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
