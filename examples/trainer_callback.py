"""hpcrun's time-based triggers in a plain transformers Trainer script, without the rest of hpcrun.

    python examples/trainer_callback.py --save-every 30m --log-every 1m --out ./out

Saves a checkpoint every --save-every of wall clock (alongside any step-based strategy you configure), logs every
--log-every, and, under Slurm, saves and stops before the job's end time (read from Slurm) or on SIGUSR2/SIGTERM.
The Trainer's own checkpointing writes the files; resume with `trainer.train(resume_from_checkpoint=...)`.
"""

import argparse

import torch
from transformers import LlamaConfig, LlamaForCausalLM, Trainer, TrainingArguments

from hpcrun.frameworks.transformers.callback import TimeTriggerCallback
from hpcrun.job.signals import StopFlags


class RandomTokens(torch.utils.data.Dataset):
    def __init__(self, n: int = 512, seq_len: int = 32, vocab: int = 256) -> None:
        g = torch.Generator().manual_seed(0)
        self.data = torch.randint(0, vocab, (n, seq_len), generator=g)

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, i: int) -> dict:
        return {"input_ids": self.data[i], "labels": self.data[i]}


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--save-every", default="30m")
    p.add_argument("--log-every", default="1m")
    p.add_argument("--max-steps", type=int, default=100)
    p.add_argument("--out", default="out")
    a = p.parse_args()

    model = LlamaForCausalLM(LlamaConfig(vocab_size=256, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                         num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=64))
    args = TrainingArguments(output_dir=a.out, max_steps=a.max_steps, per_device_train_batch_size=8,
                             save_strategy="no", logging_steps=1000, report_to="none", use_cpu=True)
    flags = StopFlags().install(["SIGUSR2", "SIGTERM"])  # the handlers only set a flag
    triggers = TimeTriggerCallback(save_every=a.save_every, log_every=a.log_every, end_time="slurm",
                                   stop_flags=flags)
    trainer = Trainer(model=model, args=args, train_dataset=RandomTokens(), callbacks=[triggers])
    trainer.train()
    if triggers.stop_reason:
        print(f"stopped after a save at step {triggers.stop_step}: {triggers.stop_reason}")


if __name__ == "__main__":
    main()
