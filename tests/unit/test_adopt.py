"""What tells one training of a command from another across its starts (hpcrun.frameworks.transformers.adopt)."""

import torch
from transformers import LlamaConfig, LlamaForCausalLM, Trainer, TrainingArguments

from hpcrun.frameworks.transformers.adopt import trainer_key


def _trainer(tmp_path, output_dir, **args):
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(hidden_size=16, intermediate_size=32, num_attention_heads=2,
                                         num_key_value_heads=2, num_hidden_layers=1, vocab_size=50))
    return Trainer(model=model, args=TrainingArguments(output_dir=str(tmp_path / output_dir), report_to=[],
                                                       use_cpu=True, **args))


def test_the_same_training_has_the_same_key_in_another_folder_and_another_stage_another_key(tmp_path):
    first = trainer_key(_trainer(tmp_path, "outputs/10-00-00", max_steps=800, learning_rate=1e-3))
    # the next start: the same training in the folder Hydra named by the time (run_name and logging_dir follow)
    assert trainer_key(_trainer(tmp_path, "outputs/10-05-00", max_steps=800, learning_rate=1e-3)) == first
    # another stage, or another job of a sweep
    assert trainer_key(_trainer(tmp_path, "outputs/10-00-00", max_steps=1500, learning_rate=1e-3)) != first
    assert trainer_key(_trainer(tmp_path, "outputs/10-00-00", max_steps=800, learning_rate=3e-4)) != first
