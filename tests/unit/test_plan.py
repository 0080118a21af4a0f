"""`hpcrun plan`: the real parameter count from the meta device, and memory arithmetic that decides fit."""

import json
import subprocess
import sys

from hpcrun.config.compose import compose
from hpcrun.plan import GB, make_plan, parse_bandwidth


def _plan(*args):
    return subprocess.run([sys.executable, "-m", "hpcrun", "plan", *args], capture_output=True, text=True,
                          timeout=300, env={"HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin"})


def llama_parameters(V, h, i, L):
    """Llama with untied embeddings: embeddings + per layer (q, k, v, o; gate, up, down; 2 norms) + norm + head."""
    return V * h + L * (4 * h * h + 3 * h * i + 2 * h) + h + V * h


def test_llama7b_plan_counts_the_known_7b_parameters_and_fits_four_a100s_with_fsdp():
    out = _plan("--json", "+experiment=llama7b", "cluster=greene")
    assert out.returncode == 0, out.stderr
    plan = json.loads(out.stdout)
    n = plan["parameters"]
    assert n == llama_parameters(32000, 4096, 11008, 32)  # = 6,738,415,616, Llama-2-7B's published 6.74e9
    assert round(n / 1e9, 2) == 6.74
    assert plan["ranks"] == 4 and plan["sharded"] is True
    assert plan["per_gpu"]["optimizer (AdamW, 2 x fp32)"] == 8 * n / 4
    assert plan["checkpoint_bytes"] == 12 * n
    assert plan["gpu_memory"] == 80 * GB and plan["fits"] is True
    assert plan["save_seconds"] == plan["checkpoint_bytes"] / 1e9  # at the default 1GB/s


def test_llama7b_on_one_gpu_does_not_fit_and_the_plan_says_why_with_a_non_zero_exit():
    out = _plan("+experiment=llama7b", "cluster=greene", "cluster.gpus_per_node=1", "cluster.tasks_per_node=1",
                "--bandwidth", "2GB/s")
    assert out.returncode == 1, out.stderr
    assert "DOES NOT FIT" in out.stdout
    warning = next(line for line in out.stdout.splitlines() if line.startswith("warning: does not fit"))
    assert "one a100 has 80 GB" in warning and "train.fsdp=true" in warning
    assert "at 2 GB/s" in out.stdout


def test_without_fsdp_every_rank_holds_the_whole_training_state():
    cfg = compose(["+experiment=llama7b", "cluster=greene", "train.fsdp=false"])
    counts = {"total": 1_000_000_000, "layer": 10_000_000}
    replicated, sharded = make_plan(cfg, 1e9, counts=counts), None
    cfg.train.fsdp = True
    sharded = make_plan(cfg, 1e9, counts=counts)
    assert replicated.per_gpu["weights (fp32 master)"] == 4e9
    assert sharded.per_gpu["weights (fp32 master)"] == 1e9
    assert replicated.per_gpu_total - sharded.per_gpu_total > 11e9  # 16 B/param over 4 ranks saves 12 B/param


def test_gradient_checkpointing_shrinks_the_activation_estimate():
    cfg = compose(["+experiment=llama7b", "cluster=greene"])
    counts = {"total": 10, "layer": 1}
    with_ckpt = make_plan(cfg, 1e9, counts=counts).per_gpu["activations (one micro-batch)"]
    cfg.model.gradient_checkpointing = False
    without = make_plan(cfg, 1e9, counts=counts).per_gpu["activations (one micro-batch)"]
    assert without > 5 * with_ckpt


def test_bandwidths_parse_with_their_units_and_a_bare_number_is_refused():
    assert parse_bandwidth("2GB/s") == 2e9 and parse_bandwidth("500MB/s") == 5e8 and parse_bandwidth("1.5G") == 1.5e9
    out = _plan("--bandwidth", "3", "+experiment=llama7b")
    assert out.returncode == 2 and out.stderr.strip().splitlines() == [
        "hpcrun: error: --bandwidth='3' is invalid: expected a write bandwidth such as 2GB/s or 500MB/s"]


# Published parameter counts of the shipped experiments' models (their hub model cards), counted here from the
# architecture keys the experiments carry, without a download.
PUBLISHED = {"llama7b": 6_738_415_616, "full_ft_1b": 1_100_048_384, "lora_sft_chat": 494_032_768}


def test_every_shipped_experiment_is_plannable_offline_and_counts_its_models_published_parameters():
    from hpcrun.config.compose import available
    from hpcrun.resources import conf_dir

    for experiment in available("experiment", [conf_dir()]):
        out = _plan("--json", f"+experiment={experiment}", "cluster=greene")
        assert out.returncode in (0, 1), (experiment, out.stderr)
        plan = json.loads(out.stdout)
        assert plan["parameters"] == PUBLISHED.get(experiment, plan["parameters"]) > 0, experiment
        assert plan["fits"] is True, experiment  # each is sized for the GPUs it asks for
    lora = json.loads(_plan("--json", "+experiment=lora_sft_chat", "cluster=greene").stdout)
    assert 0 < lora["trained_parameters"] < 0.02 * lora["parameters"]
    assert lora["checkpoint_bytes"] == 12 * lora["trained_parameters"]  # fp32 adapters and their AdamW moments


def test_a_4bit_base_is_planned_at_about_half_a_byte_a_linear_parameter_and_its_bad_settings_refused():
    import pytest

    from hpcrun.errors import ConfigError

    plain = make_plan(compose(["+experiment=lora_sft_chat"]), GB)
    q = make_plan(compose(["+experiment=lora_sft_chat", "model.quantize=4bit"]), GB)
    (base,) = [v for k, v in q.per_gpu.items() if k.startswith("base weights (4bit")]
    (bf16,) = [v for k, v in plain.per_gpu.items() if k.startswith("weights (bfloat16)")]
    # Qwen2.5-0.5B: 358M parameters in linear layers (0.53 bytes each), 136M embeddings in fp32
    assert 0.6 * GB < base < 0.8 * GB < bf16
    assert q.checkpoint_bytes == plain.checkpoint_bytes  # the adapters and their AdamW state either way
    for bad, key in ((["model.quantize=4bit", "model.lora.r=0"], "model.quantize"),
                     (["model.quantize=4bit", "model.pretrained=false"], "model.quantize"),
                     (["model.quantize=4bit", "train.fsdp=true"], "train.fsdp"),
                     (["model.quantize=2bit"], "model.quantize")):
        with pytest.raises(ConfigError, match=key):
            compose(["+experiment=lora_sft_chat", *bad])
