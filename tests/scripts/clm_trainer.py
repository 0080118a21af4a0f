"""A causal-LM fine-tuning script of the kind users bring to hpcrun, written for these tests; it knows nothing of
hpcrun. It follows what transformers' examples/pytorch/language-modeling/run_clm.py does, the way it does it:
HfArgumentParser over model, data and TrainingArguments dataclasses; text files through datasets; tokenize, then
group into blocks; a Trainer; ``trainer.train(resume_from_checkpoint=training_args.resume_from_checkpoint)``;
save_model, metrics and state; an evaluation with perplexity. Everything it reads is local (made by the test).

--trainer_class picks Trainer (default) or a subclass (Seq2SeqTrainer, with its own TrainingArguments subclass), as
scripts grown from other examples do.
"""

import logging
import math
import os
import sys
from dataclasses import dataclass, field
from itertools import chain
from typing import Optional

import datasets
import transformers
from datasets import load_dataset
from transformers import (AutoConfig, AutoModelForCausalLM, AutoTokenizer, HfArgumentParser, Seq2SeqTrainer,
                          Seq2SeqTrainingArguments, Trainer, default_data_collator, set_seed)
from transformers.trainer_utils import get_last_checkpoint

logger = logging.getLogger(__name__)


@dataclass
class ModelArguments:
    model_name_or_path: Optional[str] = field(default=None, metadata={"help": "a pretrained model folder"})
    config_name: Optional[str] = field(default=None, metadata={"help": "a config folder, to train from scratch"})
    tokenizer_name: Optional[str] = field(default=None, metadata={"help": "a tokenizer folder"})


@dataclass
class DataTrainingArguments:
    train_file: Optional[str] = field(default=None, metadata={"help": "a .txt training file"})
    validation_file: Optional[str] = field(default=None, metadata={"help": "a .txt validation file"})
    block_size: Optional[int] = field(default=None, metadata={"help": "tokens per training block"})
    trainer_class: str = field(default="Trainer", metadata={"help": "Trainer or Seq2SeqTrainer"})
    refuse_used_output_dir: bool = field(default=False, metadata={
        "help": "what scripts grown from transformers 4's run_clm.py do before training: an output_dir that holds "
                "anything but no checkpoint is refused ('already exists and is not empty')"})
    wait_for_sigint_after_training: Optional[str] = field(default=None, metadata={
        "help": "a test's window: once train() returned, touch this file and wait (2 min at most) until a SIGINT "
                "came, passed on to the handler installed before (the script's post-training code then runs)"})


def main():
    parser = HfArgumentParser((ModelArguments, DataTrainingArguments, Seq2SeqTrainingArguments))
    if len(sys.argv) == 2 and sys.argv[1].endswith(".json"):  # all arguments in one file, as run_clm.py takes them
        model_args, data_args, training_args = parser.parse_json_file(json_file=sys.argv[1])
    else:
        model_args, data_args, training_args = parser.parse_args_into_dataclasses()
    logging.basicConfig(format="%(asctime)s - %(levelname)s - %(name)s - %(message)s",
                        handlers=[logging.StreamHandler(sys.stdout)])
    log_level = training_args.get_process_log_level()
    logger.setLevel(log_level)
    datasets.utils.logging.set_verbosity(log_level)
    transformers.utils.logging.set_verbosity(log_level)

    if data_args.refuse_used_output_dir and os.path.isdir(training_args.output_dir) and training_args.do_train:
        if get_last_checkpoint(training_args.output_dir) is None and len(os.listdir(training_args.output_dir)) > 0:
            raise ValueError(f"Output directory ({training_args.output_dir}) already exists and is not empty. "
                             "Use --overwrite_output_dir to overcome.")
    set_seed(training_args.seed)
    data_files = {"train": data_args.train_file}
    if data_args.validation_file:
        data_files["validation"] = data_args.validation_file
    raw = load_dataset("text", data_files=data_files, keep_linebreaks=True)

    if model_args.config_name:
        config = AutoConfig.from_pretrained(model_args.config_name)
    else:
        config = AutoConfig.from_pretrained(model_args.model_name_or_path)
    tokenizer = AutoTokenizer.from_pretrained(model_args.tokenizer_name or model_args.model_name_or_path)
    if model_args.model_name_or_path:
        model = AutoModelForCausalLM.from_pretrained(model_args.model_name_or_path, config=config)
    else:
        model = AutoModelForCausalLM.from_config(config)
    if len(tokenizer) > model.get_input_embeddings().weight.shape[0]:
        model.resize_token_embeddings(len(tokenizer))

    columns = list(raw["train"].features)
    text_column = "text" if "text" in columns else columns[0]

    def tokenize(examples):
        return tokenizer(examples[text_column])

    with training_args.main_process_first(desc="tokenizing"):
        tokenized = raw.map(tokenize, batched=True, remove_columns=columns)
    block_size = data_args.block_size or min(1024, config.max_position_embeddings)

    def group_texts(examples):
        joined = {k: list(chain(*examples[k])) for k in examples}
        total = (len(joined[list(examples)[0]]) // block_size) * block_size
        result = {k: [t[i:i + block_size] for i in range(0, total, block_size)] for k, t in joined.items()}
        result["labels"] = result["input_ids"].copy()
        return result

    with training_args.main_process_first(desc="grouping"):
        lm = tokenized.map(group_texts, batched=True)

    trainer_class = {"Trainer": Trainer, "Seq2SeqTrainer": Seq2SeqTrainer}[data_args.trainer_class]
    trainer = trainer_class(
        model=model, args=training_args,
        train_dataset=lm["train"] if training_args.do_train else None,
        eval_dataset=lm["validation"] if training_args.do_eval else None,
        processing_class=tokenizer, data_collator=default_data_collator,
    )
    if training_args.do_train:
        checkpoint = None
        if training_args.resume_from_checkpoint is not None:
            checkpoint = training_args.resume_from_checkpoint
        result = trainer.train(resume_from_checkpoint=checkpoint)
        if data_args.wait_for_sigint_after_training:
            _wait_for_sigint(data_args.wait_for_sigint_after_training)
        trainer.save_model()
        metrics = result.metrics
        metrics["train_samples"] = len(lm["train"])
        trainer.log_metrics("train", metrics)
        trainer.save_metrics("train", metrics)
        trainer.save_state()
    if training_args.do_eval:
        metrics = trainer.evaluate()
        try:
            metrics["perplexity"] = math.exp(metrics["eval_loss"])
        except OverflowError:
            metrics["perplexity"] = float("inf")
        trainer.log_metrics("eval", metrics)
        trainer.save_metrics("eval", metrics)


def _wait_for_sigint(marker: str) -> None:
    import pathlib
    import signal
    import threading

    came = threading.Event()
    before = signal.getsignal(signal.SIGINT)

    def chained(signum, frame):
        came.set()
        if callable(before):
            before(signum, frame)

    signal.signal(signal.SIGINT, chained)
    pathlib.Path(marker).touch()
    came.wait(120)


if __name__ == "__main__":
    main()
