"""The arithmetic of continuing a run on another number of processes (hpcrun.rundir.shape)."""

import pytest

from hpcrun.errors import ConfigError
from hpcrun.rundir.shape import Shape, continue_on, read_shape


def test_the_global_batch_is_kept_by_changing_the_accumulation():
    saved = Shape(processes=2, batch_size=2, grad_accum=3)
    assert continue_on(saved, 1, batch_size=2) == Shape(1, 2, 6)
    assert continue_on(saved, 3, batch_size=2) == Shape(3, 2, 2)
    assert continue_on(saved, 6, batch_size=2) == Shape(6, 2, 1)
    assert continue_on(saved, 2, batch_size=2) is saved


def test_a_smaller_per_process_batch_where_the_configured_one_cannot_divide():
    saved = Shape(processes=1, batch_size=4, grad_accum=3)  # 12 samples a step
    assert continue_on(saved, 4, batch_size=4) == Shape(4, 3, 1)  # 3 samples each: batch 3, never above 4
    assert continue_on(saved, 12, batch_size=4) == Shape(12, 1, 1)
    assert continue_on(Shape(1, 8, 1), 2, batch_size=2) == Shape(2, 2, 2)  # the configured batch is the most


def test_a_count_that_cannot_split_the_global_batch_is_refused_naming_the_ones_that_can():
    with pytest.raises(ConfigError) as err:
        continue_on(Shape(2, 2, 3), 5, batch_size=2)
    assert str(err.value) == (
        "cluster.tasks_per_node=5 cannot continue this run: expected a process count that divides its global batch "
        "of 12 samples (2 process(es) x batch 2 x accumulation 3 = 12 samples a step): 1, 2, 3, 4, 6, 12")


def test_the_shape_file_round_trips_and_is_absent_from_older_checkpoints(tmp_path):
    assert read_shape(tmp_path) is None and read_shape(None) is None
    Shape(3, 2, 2).write(tmp_path)
    assert read_shape(tmp_path) == Shape(3, 2, 2)
    (tmp_path / "hpcrun-shape.json").write_text("{")
    assert read_shape(tmp_path) is None


def test_one_process_that_sees_several_gpus_trains_on_one_not_dataparallel(tmp_path, caplog):
    """A local run in an allocation of 4 GPUs is one process: the Trainer would wrap its model in DataParallel and
    make the global batch 4x what the run's shape (processes x per-process batch) says it is."""
    from transformers import TrainingArguments

    from hpcrun.tasks.causal_lm import one_gpu_per_process

    args = TrainingArguments(output_dir=str(tmp_path), use_cpu=True, per_device_train_batch_size=8)
    assert one_gpu_per_process(args).n_gpu == 0 and not caplog.records  # here: the CPU, nothing to say
    args._n_gpu = 4  # what TrainingArguments finds in one process on a node of 4 GPUs (torch.cuda.device_count())
    assert args.train_batch_size == 32
    one_gpu_per_process(args)
    assert args.n_gpu == 1 and args.train_batch_size == 8  # the batch the run's shape records
    assert "4 GPUs visible to this one process" in caplog.text and "cluster.gpus_per_node=4" in caplog.text
    caplog.clear()

    # A Trainer of the user's own (hpcrun run -- python train.py) keeps its DataParallel, and is told the way out.
    from transformers import TrainerControl, TrainerState

    from hpcrun.frameworks.transformers import TimeTriggerCallback

    args._n_gpu = 4
    TimeTriggerCallback().on_train_begin(args, TrainerState(), TrainerControl())
    assert args.n_gpu == 4 and "torchrun --nproc_per_node 4" in caplog.text
