"""The built-in task's models and data, locally: bad input caught on the login node where it can be (nothing made),
else at the job's start (the run marked failed, not requeued), each in one line naming the key and the value; and
the paths the Slurm tests do not take (a random init by model type in bfloat16, a merged LoRA model, parallel
tokenizing)."""

from __future__ import annotations

import json

import pytest

from tests.builtin_data import make_builtin_work, write_tokenizer, write_text_jsonl
from tests.training import state

pytestmark = pytest.mark.training
SMALL = ["+experiment=tiny_llama", "train.max_steps=4", "train.batch_size=2", "data.seq_len=32", "cluster=local"]


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    return make_builtin_work(tmp_path_factory.mktemp("builtin"))


def _one_line(out, fragment, status=2):
    """One line naming the key: exit 2 when refused before anything ran, 1 when the run started and failed."""
    assert out.returncode == status, out.stderr[-2000:]
    assert "Traceback" not in out.stderr
    last = out.stderr.strip().splitlines()[-1]
    assert last.startswith("hpcrun: error: ") and fragment in last, last


def test_a_data_file_without_the_text_field_is_refused_before_anything_is_made(hpcrun, tmp_path):
    data = write_text_jsonl(tmp_path / "d.jsonl", rows=5, field="body")
    out = hpcrun(*SMALL, f"data.corpus={data}")
    _one_line(out, "data.text_field='text' is invalid: expected a column of d.jsonl (it has: id, body)")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d.jsonl"]
    out = hpcrun(*SMALL, f"data.corpus={data}", "data.format=chat", "data.tokenizer=x")
    _one_line(out, "data.messages_field='messages' is invalid: expected a column of d.jsonl")
    _one_line(hpcrun(*SMALL, "data.format=chat", "data.tokenizer=x"), "data.corpus='shakespeare' is invalid")
    _one_line(hpcrun(*SMALL, "train.report_to=[mlflow]"), "train.report_to='mlflow' names no tracker")
    _one_line(hpcrun(*SMALL, "model.lora.r=-1"), "model.lora.r=-1 is invalid")
    _one_line(hpcrun(*SMALL, "model.dtype=int8"), "model.dtype='int8' is invalid")


@pytest.mark.parametrize("args, fragment", [
    (["model.type=nope"], "model.type='nope' is invalid: expected a transformers model type"),
    (["model.lora.r=4", "model.lora.target_modules=[q_proj,attn_proj]"],
     "model.lora.target_modules=['q_proj', 'attn_proj'] is invalid: expected module names of LlamaForCausalLM (no "
     "attn_proj; its linear layers: down_proj, gate_proj, k_proj, o_proj, q_proj, up_proj, v_proj)"),
    (["@plain", "data.format=chat"], "data.tokenizer="),
    (["@llama", "model.quantize=4bit", "model.lora.r=4"],  # bitsandbytes is not in the test environment itself
     "model.quantize='4bit' is invalid: expected bitsandbytes installed where the job runs"),
], ids=["model type", "lora target", "no chat template", "qlora without bitsandbytes"])
def test_what_only_the_job_can_check_fails_the_run_at_its_start_without_a_requeue(args, fragment, hpcrun, tmp_path,
                                                                                   work):
    if args[0] == "@plain":  # chat data for a tokenizer without a chat template
        plain = write_tokenizer(tmp_path / "plain", chat=False)
        args = [f"data.tokenizer={plain}", f"data.corpus={work / 'chat.jsonl'}", *args[1:]]
    if args[0] == "@llama":  # a pretrained folder to quantize
        args = ["model.type=null", f"model.name_or_path={work / 'llama'}", "model.pretrained=true",
                "data.tokenizer=model", *args[1:]]
    out = hpcrun(*SMALL, "run.dir=run", *args)
    _one_line(out, fragment, status=1)  # the run started (and is marked failed): a failed run
    st = state(tmp_path / "run")
    assert st["status"] == "failed" and "not requeued" in st["reason"] and fragment in st["reason"]
    if args[-1] == "data.format=chat":
        assert "has no chat template" in st["reason"] or "a chat template" in st["reason"]


def test_a_random_gpt2_in_bfloat16_trains_and_a_merged_lora_model_loads_as_a_plain_model(hpcrun, tmp_path, work):
    out = hpcrun(*SMALL, "run.dir=gpt2", "model.type=gpt2", "model.dtype=bfloat16",
                 "model.config_overrides={n_inner: 64}",
                 "model.hidden_size=32", "model.num_hidden_layers=2", "model.num_attention_heads=2",
                 "model.num_key_value_heads=2")
    assert out.returncode == 0, out.stderr[-2000:]
    from safetensors import safe_open

    with safe_open(str(tmp_path / "gpt2" / "final" / "model.safetensors"), "pt") as f:
        assert {str(f.get_tensor(k).dtype) for k in f.keys()} == {"torch.bfloat16"}
    config = json.loads((tmp_path / "gpt2" / "final" / "config.json").read_text())
    assert (config["model_type"], config["n_embd"], config["n_inner"]) == ("gpt2", 32, 64)

    out = hpcrun(*SMALL, "run.dir=lora", "model.lora.r=2", "model.lora.merge=true")
    assert out.returncode == 0, out.stderr[-2000:]
    from transformers import AutoModelForCausalLM

    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "lora" / "final" / "merged")
    assert type(merged).__name__ == "LlamaForCausalLM" and not any("lora" in n for n, _ in merged.named_parameters())
    assert (tmp_path / "lora" / "final" / "adapter_model.safetensors").exists()
