"""A Hydra app that trains with the transformers Trainer, written for these tests; it knows nothing of hpcrun. It is
shaped the way lightning-hydra-template shapes its train.py: ``@hydra.main``, a structured config, and every output
under Hydra's run directory (``output_dir: ${hydra:runtime.output_dir}``), which Hydra names by the time it starts
(``outputs/DATE/TIME``), so each start of the same command writes into a new folder. Its training is
clm_trainer.py's for the same values (tokenize, group into blocks, the same TrainingArguments), so both end with
the same weights.

    python hydra_trainer.py config=MODEL_CONFIG tokenizer=TOKENIZER train_file=TRAIN.txt max_steps=30
"""

from dataclasses import dataclass
from itertools import chain

import hydra
from hydra.core.config_store import ConfigStore
from omegaconf import DictConfig


@dataclass
class TrainConfig:
    config: str = "???"
    tokenizer: str = "???"
    train_file: str = "???"
    output_dir: str = "${hydra:runtime.output_dir}"
    block_size: int = 32
    batch_size: int = 4
    max_steps: int = 30
    lr: float = 1e-3
    seed: int = 7


ConfigStore.instance().store(name="train", node=TrainConfig)


@hydra.main(version_base=None, config_name="train")
def main(cfg: DictConfig) -> None:
    from datasets import load_dataset
    from transformers import (AutoConfig, AutoModelForCausalLM, AutoTokenizer, Seq2SeqTrainingArguments, Trainer,
                              default_data_collator, set_seed)

    set_seed(cfg.seed)
    raw = load_dataset("text", data_files={"train": cfg.train_file}, keep_linebreaks=True)
    tokenizer = AutoTokenizer.from_pretrained(cfg.tokenizer)
    model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(cfg.config))
    tokenized = raw.map(lambda b: tokenizer(b["text"]), batched=True, remove_columns=["text"])

    def group_texts(examples):
        joined = {k: list(chain(*examples[k])) for k in examples}
        total = (len(joined[list(examples)[0]]) // cfg.block_size) * cfg.block_size
        result = {k: [t[i:i + cfg.block_size] for i in range(0, total, cfg.block_size)] for k, t in joined.items()}
        result["labels"] = result["input_ids"].copy()
        return result

    lm = tokenized.map(group_texts, batched=True)
    args = Seq2SeqTrainingArguments(
        output_dir=cfg.output_dir, do_train=True, per_device_train_batch_size=cfg.batch_size, max_steps=cfg.max_steps,
        learning_rate=cfg.lr, logging_steps=1, save_strategy="no", report_to="none", seed=cfg.seed, use_cpu=True,
        dataloader_num_workers=0)
    trainer = Trainer(model=model, args=args, train_dataset=lm["train"], processing_class=tokenizer,
                      data_collator=default_data_collator)
    trainer.train()
    trainer.save_model()
    trainer.save_state()


if __name__ == "__main__":
    main()
