"""The built-in task beyond the tiny Llama, through a requeue on the real dev cluster: a pretrained GPT-2 folder on a
JSON Lines dataset with LoRA and both trackers, chat SFT through TRL, and QLoRA on a 4-bit base (bitsandbytes on
the CPU). Each interrupted run ends with the weights of the same run trained straight through, bit for bit
(docs/fine-tune.md, docs/sft.md, docs/trackers.md)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from tests import step_gate
from tests.builtin_data import make_builtin_work
from tests.slurm import job_id_from, sacct_runs, timeout_signal_at_step, wait_for_end
from tests.training import assert_same_weights, logged_steps, state
from tests.wandb_files import wandb_history

pytestmark = pytest.mark.training
OFFLINE = {"WANDB_MODE": "offline", "WANDB_SILENT": "true", "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    return make_builtin_work(tmp_path_factory.mktemp("builtin"))


def gpt2_lora(work):
    return ["+experiment=tiny_llama", "run.name=gpt2_lora", "model.type=null", f"model.name_or_path={work / 'gpt2'}",
            "model.pretrained=true", "model.lora.r=4", "model.lora.target_modules=[c_attn,c_proj]",
            f"data.corpus={work / 'text.jsonl'}", "data.text_field=body", "data.tokenizer=model", "data.seq_len=64",
            "train.max_steps=40", "train.log_every=1", "train.batch_size=4", "train.warmup_steps=5",
            "checkpoint.save_every=0", "train.report_to=[tensorboard,wandb]"]


def chat_sft(work):
    return ["+experiment=tiny_llama", "run.name=chat_sft", "model.type=null", f"model.name_or_path={work / 'gpt2'}",
            "model.pretrained=true", f"data.corpus={work / 'chat.jsonl'}", "data.format=chat", "data.tokenizer=model",
            "data.seq_len=64", "train.max_steps=30", "train.log_every=1", "train.batch_size=4",
            "train.warmup_steps=5", "checkpoint.save_every=0"]


# bitsandbytes for the QLoRA jobs only (scripts/bootstrap installs it apart: beside the rest, peft would import it in
# every other test's jobs too).
QLORA_EXTRA = Path(__file__).resolve().parents[2] / ".venv" / "qlora-extra"


def qlora_env():
    if not (QLORA_EXTRA / "bitsandbytes").is_dir():
        pytest.fail(f"bitsandbytes is not installed in {QLORA_EXTRA}: run scripts/bootstrap")
    return {"PYTHONPATH": os.pathsep.join(p for p in (str(QLORA_EXTRA), os.environ.get("PYTHONPATH")) if p)}


def qlora(work):
    return ["+experiment=tiny_llama", "run.name=qlora", "model.type=null", f"model.name_or_path={work / 'llama'}",
            "model.pretrained=true", "model.quantize=4bit", "model.lora.r=8", "model.lora.merge=true",
            f"data.corpus={work / 'text.jsonl'}", "data.text_field=body", "data.tokenizer=model", "data.seq_len=64",
            "train.max_steps=30", "train.log_every=1", "train.batch_size=4", "train.warmup_steps=5",
            "checkpoint.save_every=0"]


def _straight(hpcrun, args, env=None):
    out = hpcrun(*args, "cluster=local", "run.dir=straight", env=env)
    assert out.returncode == 0, out.stderr[-3000:]


def _interrupted(hpcrun, tmp_path, args, step, env=None):
    """The run on Slurm, signalled once it logged ``step``; its first start waits at the next step for the signal."""
    gate = step_gate.install(tmp_path)  # these runs train 20 to 50 steps a second: it waits at its step
    env = {**(env or {}), "HPCRUN_TEST_HOLD_AT_STEP": str(step)}
    out = hpcrun(*args, *gate, "cluster=slurm", "run.dir=run", env=env)
    assert out.returncode == 0, out.stderr[-3000:]
    job = job_id_from(out.stdout)
    timeout_signal_at_step(job, tmp_path / "run", step)
    assert wait_for_end(job) == "COMPLETED"
    assert sacct_runs(job) == ["REQUEUED", "COMPLETED"]
    st = state(tmp_path / "run")
    assert st["status"] == "completed" and st["requeues"] == 1
    assert st["starts"][0]["step"] == step + 1  # saved at the step the signal came in, and resumed from there
    return tmp_path / "run"


def _tensorboard_steps(folder, tag):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    steps = []
    for events in sorted(folder.glob("events.out.tfevents.*")):
        acc = EventAccumulator(str(events))
        acc.Reload()
        if tag in acc.Tags()["scalars"]:
            steps += [e.step for e in acc.Scalars(tag)]
    return steps


def test_a_pretrained_gpt2_with_lora_on_jsonl_resumes_exactly_and_its_trackers_keep_one_run(
        hpcrun, tmp_path, slurm_cluster, work):
    args = gpt2_lora(work)
    _straight(hpcrun, args, env=OFFLINE)
    run = _interrupted(hpcrun, tmp_path, args, 12, env=OFFLINE)

    assert_same_weights(run / "final", tmp_path / "straight" / "final")  # adapter_model.safetensors
    assert (run / "final" / "adapter_config.json").exists() and not (run / "final" / "model.safetensors").exists()
    assert logged_steps(run) == list(range(1, 41))
    assert json.loads((run / "tokens" / "meta.json").read_text())["documents"] == 400
    # TensorBoard: one folder across both starts, every step's loss once, the restart visible
    tb = run / "tensorboard"
    assert sorted(_tensorboard_steps(tb, "train/loss")) == list(range(1, 41))
    assert len(_tensorboard_steps(tb, "hpcrun/start")) == 2
    # W&B offline: both starts wrote to the one run id kept in the run directory
    run_id = json.loads((run / "trackers.json").read_text())["wandb"]["run_id"]
    folders, rows = wandb_history(run, run_id)
    assert len(folders) == 2 == len(list((run / "wandb").glob("offline-run-*")))  # one per start, one id
    assert [row["train/global_step"] for row in rows if "train/loss" in row] == list(range(1, 41))
    assert sorted(row["hpcrun/start"] for row in rows if "hpcrun/start" in row) == [1, 2]


def test_chat_sft_through_trl_resumes_exactly_with_the_loss_on_the_answers_only(hpcrun, tmp_path, slurm_cluster,
                                                                                 work):
    args = chat_sft(work)
    _straight(hpcrun, args)
    run = _interrupted(hpcrun, tmp_path, args, 10)
    assert_same_weights(run / "final", tmp_path / "straight" / "final")
    assert logged_steps(run) == list(range(1, 31))
    log = (run / "logs" / "start-2.log").read_text()
    assert "resuming from" in log and "GPT2LMHeadModel" in log


def test_qlora_on_a_4bit_base_resumes_exactly_and_merges_into_the_unquantized_base(hpcrun, tmp_path, slurm_cluster,
                                                                                  work):
    import torch
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    args, env = qlora(work), qlora_env()
    _straight(hpcrun, args, env=env)
    run = _interrupted(hpcrun, tmp_path, args, 12, env=env)
    assert_same_weights(run / "final", tmp_path / "straight" / "final")  # the adapter
    assert logged_steps(run) == list(range(1, 31))
    log = (run / "logs" / "start-2.log").read_text()
    assert "resuming from" in log and "base quantized 4bit (14 linear layers)" in log  # 2 blocks x 7
    # the checkpoint holds the adapter and its optimizer state, not the (quantized) base
    adapter = load_file(run / "final" / "adapter_model.safetensors")
    assert adapter and all("lora_" in k for k in adapter)
    # merged: the adapter on the base loaded again in full precision, a plain model anyone can load
    merged = AutoModelForCausalLM.from_pretrained(run / "final" / "merged")
    base = AutoModelForCausalLM.from_pretrained(work / "llama")
    name = "model.layers.0.self_attn.q_proj.weight"
    got, was = merged.state_dict()[name], base.state_dict()[name]
    assert got.dtype == torch.float32 and not torch.equal(got, was)  # the adapter's update is in it
    assert torch.equal(merged.state_dict()["model.layers.0.mlp.up_proj.weight"],
                       base.state_dict()["model.layers.0.mlp.up_proj.weight"])  # no adapter there: the base's own
