"""A resume from a checkpoint saved at the last step trains nothing more (hpcrun's own Trainer, the built-in task's).

transformers 5 starts the epoch anyway and trains one step past max_steps before it checks: a run killed after its
final checkpoint (a preemption during the evaluation) ended with other weights than an uninterrupted run's."""

import torch
from transformers import LlamaConfig, LlamaForCausalLM, Trainer, TrainingArguments

from hpcrun.frameworks.transformers.trainer import hpcrun_trainer
from hpcrun.rundir.checkpoints import CheckpointDir


def _trainer(tmp_path, checkpoints, max_steps=4):
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(hidden_size=16, intermediate_size=32, num_attention_heads=2,
                                         num_key_value_heads=2, num_hidden_layers=1, vocab_size=50))
    ids = torch.arange(48).remainder(50).reshape(6, 8)
    data = [{"input_ids": row, "labels": row} for row in ids]  # 3 steps an epoch: max_steps falls inside the 2nd
    args = TrainingArguments(output_dir=str(tmp_path / "out"), max_steps=max_steps, per_device_train_batch_size=2,
                             save_strategy="steps", save_steps=max_steps, report_to=[], use_cpu=True, seed=0,
                             logging_steps=1)
    return hpcrun_trainer(Trainer)(model=model, args=args, train_dataset=data, checkpoints=checkpoints)


def test_a_resume_from_the_checkpoint_at_max_steps_trains_no_step_more(tmp_path):
    checkpoints = CheckpointDir(tmp_path / "checkpoints")
    first = _trainer(tmp_path, checkpoints)
    first.train()
    final, _ = checkpoints.latest()
    assert final.step == 4
    weights = {k: v.clone() for k, v in first.model.state_dict().items()}

    again = _trainer(tmp_path, checkpoints)
    result = again.train(resume_from_checkpoint=str(final.path))
    assert result.global_step == 4 and again.state.global_step == 4  # the old code: 5
    assert [c.step for c in checkpoints.folders()] == [4]
    resumed = again.model.state_dict()
    assert all(torch.equal(resumed[k], w) for k, w in weights.items())  # the checkpoint's weights, loaded
