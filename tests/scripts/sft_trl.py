"""Supervised fine-tuning with TRL's SFTTrainer, as a user's own script: it knows nothing of hpcrun.

    python sft_trl.py --model_config DIR --tokenizer DIR --data FILE.jsonl --output_dir OUT --max_steps N
"""

import argparse

from datasets import load_dataset
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, set_seed
from trl import SFTConfig, SFTTrainer


def main() -> None:
    parser = argparse.ArgumentParser()
    for name in ("--model_config", "--tokenizer", "--data", "--output_dir"):
        parser.add_argument(name, required=True)
    parser.add_argument("--max_steps", type=int, default=100)
    args = parser.parse_args()
    set_seed(3)
    tokenizer = AutoTokenizer.from_pretrained(args.tokenizer)
    model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(args.model_config))
    dataset = load_dataset("json", data_files=args.data, split="train")
    config = SFTConfig(output_dir=args.output_dir, max_steps=args.max_steps, per_device_train_batch_size=4,
                       learning_rate=1e-3, logging_steps=1, save_strategy="no", report_to="none", seed=3,
                       max_length=48, use_cpu=True, dataloader_num_workers=0)
    trainer = SFTTrainer(model=model, args=config, train_dataset=dataset, processing_class=tokenizer)
    trainer.train()
    trainer.save_model()


if __name__ == "__main__":
    main()
